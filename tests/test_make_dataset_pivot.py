"""make-dataset points the source cameras where DATID-3D's datid3d_data_gen.py does: [0, 0, 0.05] for cat (AFHQ)
generators (--cat_pivot), not their avg_camera_pivot [0, 0, -0.06]; --camera-pivot overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapt3d.data.target_dataset import read_records
from adapt3d.models.checkpoint import save_checkpoint
from adapt3d.models.triplane import build_generator, preset_config
from adapt3d.pipelines.make_dataset import MakeDatasetConfig, run, validate
from adapt3d.testing.fixtures import tiny_models  # noqa: F401

FAST = dict(prompt=("a cat",), num_images=3, batch_size=3, num_inference_steps=2, strength=0.5, pose_filter=False,
            clip_model="none", diffusion="tiny", progress=False, device="cpu")


@pytest.fixture
def cat_like(tiny_models, tmp_path, monkeypatch) -> Path:  # noqa: F811
    # the built-in 'tiny' diffusion model resolves under $ADAPT3D_CACHE/tiny-models
    monkeypatch.setenv("ADAPT3D_CACHE", str(Path(tiny_models["stable-diffusion"]).parents[1]))
    cfg = preset_config("tiny")
    cfg.rendering.avg_camera_pivot = [0.0, 0.0, -0.06]  # AFHQ / DATID-3D --cfg=cat cameras
    return save_checkpoint(tmp_path / "cat", build_generator(cfg, seed=0))


def look_at_miss(label: list[float], pivot: list[float]) -> float:
    """Distance from ``pivot`` to the camera's optical axis."""
    m = torch.tensor(label[:16]).view(4, 4)
    origin, forward = m[:3, 3], m[:3, 2]
    return float(torch.linalg.cross(torch.tensor(pivot) - origin, forward).norm())


@pytest.mark.parametrize("pivot, expected", [(None, [0.0, 0.0, 0.05]), ((0.0, 0.0, 0.0), [0.0, 0.0, 0.0])])
def test_cat_source_cameras_look_at_datid3d_pivot(cat_like, tmp_path, pivot, expected):
    out = tmp_path / "ds"
    result = run(MakeDatasetConfig(out=out, generator=str(cat_like), camera_pivot=pivot, **FAST))
    assert any(f"cameras look at {expected}" in n for n in result.notes)
    records = read_records(out)
    assert len(records) == 3
    for r in records.values():
        assert look_at_miss(r.label, expected) < 1e-5
        assert look_at_miss(r.label, [0.0, 0.0, -0.06]) > 1e-3  # not the generator's own pivot


def test_camera_pivot_is_part_of_the_job_and_checked(cat_like, tmp_path):
    a = validate(MakeDatasetConfig(out=tmp_path / "a", generator=str(cat_like), **FAST))
    b = validate(MakeDatasetConfig(out=tmp_path / "b", generator=str(cat_like), camera_pivot=(0, 0, 0.1), **FAST))
    assert "camera_pivot" not in a.fingerprint and b.fingerprint["camera_pivot"] == [0.0, 0.0, 0.1]
    with pytest.raises(ValueError, match="--camera-pivot"):
        validate(MakeDatasetConfig(out=tmp_path / "c", generator=str(cat_like), camera_pivot=(0, float("nan"), 0),
                                   **FAST))
