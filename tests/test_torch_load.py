"""The torch floor for files from elsewhere (``adapt3d.utils.torch_load``): every ``.pt`` adapt3d reads goes through
``load_weights_only``, which refuses to run torch's weights-only unpickler on a torch with published
vulnerabilities in it (before 2.10), with a message saying how to upgrade."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from adapt3d.utils import torch_load
from adapt3d.utils.torch_load import SAFE_TORCH, OldTorchError, load_weights_only, torch_version

SRC = Path(__file__).resolve().parents[1] / "src" / "adapt3d"
FIXTURE = Path(__import__("os").environ.get("ADAPT3D_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
               ) / "fixtures" / "eg3d" / "ffhq512_tiny.pkl"


@pytest.fixture
def old_torch(monkeypatch):
    monkeypatch.delenv(torch_load.ALLOW_OLD_TORCH_ENV, raising=False)
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "state.pt"
    torch.save({"w": torch.ones(2)}, path)
    return path


@pytest.mark.parametrize("text,expected", [("2.5.1+cu121", (2, 5)), ("2.10.0", (2, 10)), ("2.13.0+cpu", (2, 13)),
                                           ("3.0.0a0+git1234", (3, 0)), ("garbage", (0, 0))])
def test_torch_version_parses_release_local_and_dev_versions(text, expected):
    assert torch_version(text) == expected


def test_old_torch_refuses_with_a_message_that_says_how_to_upgrade(old_torch, state_file):
    with pytest.raises(OldTorchError) as exc:
        load_weights_only(state_file, f"--x {state_file}")
    msg = str(exc.value)
    assert str(state_file) in msg and "2.5.1+cu121" in msg and "torch>=2.10" in msg and "CVE-2025-32434" in msg


def test_safe_torch_loads_and_the_floor_matches_pyproject(state_file):
    assert torch_version() >= SAFE_TORCH  # the torch this suite runs on
    assert torch.equal(load_weights_only(state_file, "x")["w"], torch.ones(2))
    pyproject = (SRC.parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', pyproject)
    assert floor and (int(floor.group(1)), int(floor.group(2))) == SAFE_TORCH


def test_the_override_reads_with_a_warning(old_torch, state_file, monkeypatch, caplog):
    monkeypatch.setenv(torch_load.ALLOW_OLD_TORCH_ENV, "1")
    with caplog.at_level("WARNING", logger="adapt3d"):
        assert load_weights_only(state_file, "my own file")["w"].shape == (2,)
    assert "my own file" in caplog.text and "older than 2.10" in caplog.text


def test_every_reader_of_pt_files_is_guarded(old_torch, state_file, tmp_path):
    """Each place that reads a .pt refuses on old torch with OldTorchError (not wrapped in another error)."""
    from adapt3d.inversion.latent_file import load_latent
    from adapt3d.metrics.lpips import load_lpips_heads
    from adapt3d.pipelines.kcf import _load_state
    from adapt3d.training.run_folder import TRAINING_STATE, load_training_state

    snap = tmp_path / "snap"
    snap.mkdir()
    torch.save({"format": "x"}, snap / TRAINING_STATE)
    readers = [lambda: load_latent(state_file), lambda: load_lpips_heads(state_file, [3]),
               lambda: _load_state(state_file), lambda: load_training_state(snap)]
    for read in readers:
        with pytest.raises(OldTorchError, match="refusing to read"):
            read()


@pytest.mark.skipif(not FIXTURE.is_file(), reason="EG3D fixture not available")
def test_official_pickles_are_refused_on_old_torch(old_torch):
    from adapt3d.models.eg3d_pickle import load_eg3d_pickle

    with pytest.raises(OldTorchError, match="tensor storages of an EG3D pickle"):
        load_eg3d_pickle(FIXTURE)


def test_no_other_torch_load_in_the_package():
    """A new torch.load call would bypass the guard: every reader must use load_weights_only."""
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "torch_load.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"\btorch\.load\(|\bfrom torch import load\b", line) and "``" not in line
                 and not line.lstrip().startswith("#")]
    assert offenders == []
