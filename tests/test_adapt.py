"""adapt3d adapt on the tiny preset: make-dataset -> finetune -> render + source-vs-adapted grid, resumable."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("adapt3d.pipelines.make_dataset")

from adapt3d.pipelines.adapt import AdaptConfig, run  # noqa: E402


@pytest.fixture(autouse=True)
def _own_model_cache(tmp_path_factory, monkeypatch):
    # the built-in tiny diffusion and CLIP models are built once into a cache private to this test session
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path_factory.getbasetemp() / "adapt3d-cache"))


def _config(out, **kw):
    base = dict(preset="tiny", prompt=("a zombie",), out=out, num_images=8, num_inference_steps=4, kimg=0.008,
                batch=4, snapshot_kimg=0.008, seeds="0-1", video_frames=4, mesh_resolution=16, progress=False)
    base.update(kw)
    return AdaptConfig(**base)


def test_adapt_end_to_end_then_resume(tmp_path):
    from adapt3d.export.video import read_video_frame_count
    from adapt3d.models.checkpoint import load_checkpoint
    out = tmp_path / "demo"
    first = run(_config(out))
    labels = json.loads((out / "target" / "dataset" / "dataset.json").read_text())["labels"]
    assert first.stages["dataset"]["num_images"] == 8 and len(labels) == first.stages["dataset"]["num_kept"] > 0
    assert first.stages["finetune"]["steps"] == 2
    ck = load_checkpoint(out / "train" / "final")
    assert ck.metadata["step"] == 2 and ck.discriminator is not None
    assert (out / "render" / "grid.png").is_file() and read_video_frame_count(out / "render" / "orbit.mp4") == 4
    import trimesh
    assert len(trimesh.load(out / "render" / "seed0000.ply").vertices) > 0
    sheet = np.asarray(Image.open(out / "compare.png"))
    assert sheet.shape[0] > 2 * 64 and sheet.shape[1] > 2 * 3 * 64  # 2 seeds x (source, adapted) x 3 views
    summary = json.loads((out / "adapt.json").read_text())
    assert set(summary["stages"]) == {"dataset", "finetune", "render"} and summary["files"]["compare"]
    # the adapted generator differs from the source (the source preset has seed-0 weights)
    from adapt3d.models.triplane import build_generator
    src = build_generator("tiny").state_dict()
    assert any(not torch.equal(v, src[k]) for k, v in ck.generator.state_dict().items() if v.is_floating_point())

    longer = run(_config(out, kimg=0.016))  # same command, longer training: dataset kept, training resumed
    assert longer.stages["dataset"] == {"skipped": "up to date"}
    assert longer.stages["finetune"]["steps"] == 4
    assert longer.stages["finetune"]["resumed_from"].endswith("snapshot-000002")
    assert "seconds" in longer.stages["render"]  # the adapted generator changed: rendered again
    again = run(_config(out, kimg=0.016))
    assert all(s.get("skipped") == "up to date" for s in again.stages.values())


def test_adapt_checks_options_first(tmp_path):
    with pytest.raises(ValueError, match="--prompt"):
        run(_config(tmp_path / "a", prompt=()))
    with pytest.raises(ValueError, match="exactly one of --preset"):
        run(_config(tmp_path / "b", generator="ffhq"))
    with pytest.raises(ValueError, match="--batch"):
        run(_config(tmp_path / "c", batch=0))
    assert not (tmp_path / "a" / "target").exists() and not (tmp_path / "c" / "train").exists()
