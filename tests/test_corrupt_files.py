"""Corrupt checkpoint folders, full disks, failed commands and file modes (issue #16, minor items): one clear
error naming the file, nothing allocated for absurd sizes, nothing half-written or left empty behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from adapt3d.cli.errors import user_error_message
from adapt3d.cli.main import main
from adapt3d.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from adapt3d.models.triplane import build_generator
from adapt3d.utils.io import NoSpaceError, atomic_path, atomic_write_bytes, no_space_error

SHARED = Path(os.environ.get("ADAPT3D_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
FIXTURE = SHARED / "fixtures" / "eg3d" / "shapenet128_tiny.pkl"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ck") / "good"
    save_checkpoint(folder, build_generator("tiny", seed=1))
    return folder


def _copy(saved: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ck"
    shutil.copytree(saved, folder)
    return folder


def _edit_json(folder: Path, fn) -> None:
    path = folder / "checkpoint.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(fn(doc)))


def _drop_sha(doc):
    doc["generator"].pop("sha256")
    return doc


@pytest.mark.parametrize("case,needle", [
    ("zero-byte weights", "generator.safetensors is not a safetensors file (0 bytes"),
    ("random weights", "is a corrupt safetensors file"),
    ("header length 2**60", "header length 1152921504606846976"),
    ("json is a list", "holds a JSON list"),
    ("json not UTF-8", "is not valid JSON"),
    ("no generator entry", "entry 'generator' is missing"),
    ("no config", "has no 'config' object"),
    ("weights outside the folder", "'weights' must be a file name in the folder"),
    ("terabyte architecture", "triplane_resolution = 65536 is not a number <= 2048"),
    ("bigger architecture than the file", "weights do not match the architecture"),
    ("NaN weights", "hold NaN or infinite values"),
])
def test_corrupt_checkpoint_folders_give_one_error_naming_the_file(saved, tmp_path, case, needle):
    folder = _copy(saved, tmp_path)
    weights = folder / "generator.safetensors"
    if case == "zero-byte weights":
        weights.write_bytes(b"")
        _edit_json(folder, _drop_sha)
    elif case == "random weights":
        weights.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00" + os.urandom(4000))
        _edit_json(folder, _drop_sha)
    elif case == "header length 2**60":
        weights.write_bytes((1 << 60).to_bytes(8, "little") + b"{}")
        _edit_json(folder, _drop_sha)
    elif case == "json is a list":
        (folder / "checkpoint.json").write_text("[1, 2, 3]")
    elif case == "json not UTF-8":
        (folder / "checkpoint.json").write_bytes(b"\xff\xfe{\x00")
    elif case == "no generator entry":
        _edit_json(folder, lambda d: {k: v for k, v in d.items() if k != "generator"})
    elif case == "no config":
        _edit_json(folder, lambda d: {**d, "generator": {"weights": "generator.safetensors"}})
    elif case == "weights outside the folder":
        _edit_json(folder, lambda d: {**d, "generator": {**d["generator"], "weights": "../../etc/passwd"}})
    elif case == "terabyte architecture":
        _edit_json(folder, lambda d: {**d, "generator": {**d["generator"], "config": {
            **d["generator"]["config"], "triplane_channels": 1 << 20, "triplane_resolution": 1 << 16}}})
    elif case == "bigger architecture than the file":  # 512 x 512 x 1024-channel planes: 1 GB if allocated
        _edit_json(folder, lambda d: {**d, "generator": {**d["generator"], "config": {
            **d["generator"]["config"], "triplane_channels": 1024, "triplane_resolution": 512}}})
    elif case == "NaN weights":
        from safetensors.torch import load_file, save_file
        tensors = load_file(str(weights))
        first = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[first] = torch.full_like(tensors[first], float("nan"))
        save_file(tensors, str(weights))
        _edit_json(folder, _drop_sha)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(folder)
    assert time.perf_counter() - start < 20
    msg = str(exc.value)
    assert needle in msg and str(folder) in msg and "\n" not in msg, msg


def test_an_intact_checkpoint_still_loads(saved):
    G = load_checkpoint(saved).generator
    assert all(torch.isfinite(t).all() for t in G.state_dict().values() if t.is_floating_point())


# ---------------------------------------------------------------------------------------- CLI error mapping
@pytest.mark.parametrize("exc,needle", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.png"), "no space left on device (writing /data/x.png)"),
    (NoSpaceError(errno.ENOSPC, "no space left on /mnt (while writing /mnt/a)", "/mnt/a"), "no space left on /mnt"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), "Is a directory: /tmp"),
    (MemoryError(), "out of memory"),
    (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB"),
     "out of memory"),
    (ValueError("--trunc: 5 is outside [0, 2]"), "--trunc: 5 is outside [0, 2]"),
])
def test_user_errors_become_one_line(exc, needle):
    assert needle in user_error_message(exc)


def test_download_and_cache_errors_are_user_errors():
    from adapt3d.models.hub import ChecksumMismatchError
    msg = user_error_message(ChecksumMismatchError("cached checkpoint /c/x.pkl ... delete it (rm /c/x.pkl)"))
    assert msg.endswith("(rm /c/x.pkl)")


def test_bugs_keep_their_traceback():
    assert user_error_message(KeyError("x")) is None and user_error_message(RuntimeError("shape mismatch")) is None


def test_safetensors_errors_are_user_errors():
    from safetensors import SafetensorError
    assert "corrupt or unreadable .safetensors" in user_error_message(SafetensorError("HeaderTooLarge"))


def _failing_command(monkeypatch, exc: BaseException) -> None:
    from adapt3d.cli import main as cli_main

    def boom(cfg):
        Path(cfg.out, "sub").mkdir(parents=True)  # a command that made folders, then failed
        raise exc

    monkeypatch.setitem(cli_main.COMMANDS, "convert", (cli_main.COMMANDS["convert"][0], boom, "x"))


def test_cli_maps_a_full_disk_and_removes_the_new_empty_output(monkeypatch, tmp_path, capsys):
    _failing_command(monkeypatch, OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "a")))
    assert main(["convert", "x.pkl", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adapt3d convert: error: no space left on device") and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(monkeypatch, tmp_path, capsys):
    _failing_command(monkeypatch, MemoryError())
    with pytest.raises(MemoryError):
        main(["convert", "x.pkl", str(tmp_path / "o"), "--debug"])
    monkeypatch.setenv("ADAPT3D_DEBUG", "1")
    with pytest.raises(MemoryError):
        main(["convert", "x.pkl", str(tmp_path / "o2")])


@pytest.mark.skipif(not FIXTURE.is_file(), reason="EG3D fixture not available")
def test_a_failed_convert_leaves_no_output_folder(tmp_path, capsys):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(FIXTURE.read_bytes()[:5000])  # truncated
    out = tmp_path / "converted"
    assert main(["convert", str(bad), str(out)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- disk full
def test_disk_full_errors_are_recognised():
    assert no_space_error(OSError(errno.ENOSPC, "x"), "/tmp/a") is not None
    assert no_space_error(RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"),
                          "/tmp/a") is None  # plenty of space on /tmp: a different failure, left alone
    full = no_space_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "/tmp/a/b.png")
    assert isinstance(full, NoSpaceError) and "no space left on" in str(full) and "/tmp/a/b.png" in str(full)


def test_atomic_write_on_a_full_device_names_it_and_leaves_nothing(tmp_path, monkeypatch):
    real_open = open

    def full_open(path, mode="r", *a, **k):  # a device with no space left for our writes
        f = real_open(path, mode, *a, **k)
        if "w" in mode and str(path).startswith(str(tmp_path)):
            def write(_data):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(NoSpaceError, match="no space left on .*while writing .*out.bin"):
        atomic_write_bytes(tmp_path / "out.bin", b"x" * 100)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


_SNAPSHOT_ON_SMALL_DISK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from adapt3d.models.triplane import build_generator
    from adapt3d.models.discriminator import DualDiscriminatorConfig, build_discriminator
    from adapt3d.training.run_folder import RunFolder
    from adapt3d.utils.io import NoSpaceError
    run = RunFolder(sys.argv[1])
    G = build_generator("tiny", seed=0)
    D = build_discriminator(DualDiscriminatorConfig(img_resolution=64, channel_base=1024, channel_max=32))
    results = []
    for step in (1, 2, 3):
        try:
            run.save_snapshot(step, G, D, {"step": step, "blob": torch.zeros(50_000)}, {})
            results.append("ok")
        except NoSpaceError as e:
            results.append(str(e))
    names = sorted(p.name for p in run.snapshots_dir.iterdir())
    print(json.dumps({"results": results, "names": names}))
""")


def _small_disk_available() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && echo ok"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "ok"


def test_a_full_disk_during_a_snapshot_keeps_the_complete_ones(tmp_path):
    """A real small file system (tmpfs in a private mount namespace): the first snapshot fits, the next fail with
    'no space left on <mount>' and leave no partial snapshot folder."""
    if not _small_disk_available():
        pytest.fail("needs `unshare -rm` + tmpfs (user and mount namespaces), as on the CI machines")
    probe = tmp_path / "probe"
    subprocess.run([sys.executable, "-c", _SNAPSHOT_ON_SMALL_DISK, str(probe)], check=True, capture_output=True,
                   timeout=300)
    one = sum(f.stat().st_size for f in (probe / "snapshots" / "snapshot-000001").rglob("*") if f.is_file())
    disk = tmp_path / "disk"
    disk.mkdir()
    size_kb = int(one * 1.5) // 1024
    script = tmp_path / "snap.py"
    script.write_text(_SNAPSHOT_ON_SMALL_DISK)
    cmd = (f"mount -t tmpfs -o size={size_kb}k tmpfs {disk} && "
           f"{sys.executable} {script} {disk / 'run'}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=300,
                          env=os.environ)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["results"][0] == "ok"
    assert all(r.startswith(f"no space left on {disk}") for r in out["results"][1:]), out
    assert out["names"] == ["snapshot-000001"], out  # no .tmp-snapshot-* left behind


# ------------------------------------------------------------------------------------------------- umask
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        with atomic_path(tmp_path / "b.png") as t:
            t.write_bytes(b"y")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"z")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
    assert expected == 0o666 & ~mask
    for name in ("a.bin", "b.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected
