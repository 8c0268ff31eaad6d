"""DreamPortrait view prompts: the default training cameras give the teacher side views at the documented rate
(half of them), the suffix shares are logged per tick and per run in stats.jsonl, and bad view options are refused."""

import json
import math
from pathlib import Path

import pytest
import torch

from adapt3d.cameras import make_pose_sampler
from adapt3d.diffusion.sds import view_index
from adapt3d.pipelines.distill import DistillConfig, run
from adapt3d.diffusion.tiny_models import make_tiny_stable_diffusion
from adapt3d.training.distill import make_training_pose_sampler


def _azimuth_deg(yaw: torch.Tensor) -> torch.Tensor:
    return (yaw.double() - math.pi / 2).abs() * 180 / math.pi


def test_default_cameras_teach_side_views_half_of_the_time():
    cfg = DistillConfig(prompts="x")
    sampler = make_training_pose_sampler(cfg.pose_sampler, cfg.yaw_spread, cfg.pitch_spread, cfg)
    poses = sampler.sample(20000, torch.Generator().manual_seed(0))
    az = _azimuth_deg(poses.yaw)
    # independent of view_index: count bands directly from the azimuth (threestudio's 45 deg front threshold)
    side = float(((az >= 45) & (az < 135)).double().mean())
    assert side == pytest.approx(0.5, abs=0.015)           # documented: view_shares (0.5, 0.5, 0)
    assert float(az.max()) <= 70.0 + 1e-4                  # --side-max-deg
    assert float((az > 135).double().mean()) == 0.0        # no back views by default
    left = float((poses.yaw > math.pi / 2).double().mean())
    assert left == pytest.approx(0.5, abs=0.015)           # both sides
    ids = view_index(poses.yaw, cfg.view_front_deg, cfg.view_back_deg)
    assert float((ids == 1).double().mean()) == pytest.approx(side, abs=1e-9)
    # the previous default (gaussian yaw, std 0.3 rad) almost never reaches a side view
    old = make_training_pose_sampler("gaussian", 0.3, 0.15).sample(20000, torch.Generator().manual_seed(0))
    assert float((_azimuth_deg(old.yaw) >= 45).double().mean()) < 0.01


def test_yaw_bins_sampler_follows_its_shares_and_bands():
    s = make_pose_sampler("yaw_bins", bins_deg=((0.0, 10.0), (20.0, 30.0), (150.0, 180.0)), shares=(1.0, 2.0, 1.0),
                          pitch_std=0.0)
    az = _azimuth_deg(s.sample(8000, torch.Generator().manual_seed(1)).yaw)
    bands = [((az >= lo) & (az <= hi)).double().mean().item() for lo, hi in ((0, 10), (20, 30), (150, 180))]
    assert bands == pytest.approx([0.25, 0.5, 0.25], abs=0.02) and sum(bands) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one share per band"):
        make_pose_sampler("yaw_bins", bins_deg=((0.0, 10.0),), shares=(1.0, 1.0))
    with pytest.raises(ValueError, match="low <= high"):
        make_pose_sampler("yaw_bins", bins_deg=((30.0, 10.0),), shares=(1.0,))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return str(make_tiny_stable_diffusion(tmp_path_factory.getbasetemp() / "tiny-models" / "stable-diffusion"))


def _cfg(sd, out: Path, **kw) -> DistillConfig:
    base = dict(prompts="a zombie", preset="tiny", diffusion=sd, clip_model="none", diversity_features="pixels",
                out=out, steps=4, batch=4, tick_steps=2, diversity_steps=4, snapshot_steps=4, diversity_seeds="0-1",
                sample_seeds="0", evaluate=False, attn_resolution=8, attn_dim=16, lambda_gan=0.0, progress=False)
    base.update(kw)
    return DistillConfig(**base)


def test_stats_log_the_share_of_each_view_suffix(tiny_sd, tmp_path):
    seen = []
    from adapt3d.diffusion.sds import ScoreDistillation
    real_call = ScoreDistillation.__call__

    def spy(self, *a, **kw):  # the embeddings the teacher actually receives
        seen.append(kw["prompt_embeds"].detach().clone())
        return real_call(self, *a, **kw)

    ScoreDistillation.__call__ = spy
    try:
        result = run(_cfg(tiny_sd, tmp_path / "run", steps=8, tick_steps=4, diversity_steps=8, snapshot_steps=8))
    finally:
        ScoreDistillation.__call__ = real_call
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    ticks = [s for s in stats if "views/front" in s]
    assert [s["step"] for s in ticks] == [4, 8]
    for s in ticks:
        assert s["views/front"] + s["views/side"] + s["views/back"] == pytest.approx(1.0)
        assert s["views_run/front"] + s["views_run/side"] + s["views_run/back"] == pytest.approx(1.0)
    assert ticks[-1]["views_run/side"] == pytest.approx((ticks[0]["views/side"] + ticks[1]["views/side"]) / 2)
    assert ticks[-1]["views_run/side"] > 0.2  # 32 cameras at a 0.5 share: P(<= 6 side views) < 1e-4
    # the teacher received side-view prompts: some step's embeddings equal the ', side view' encoding
    sds = ScoreDistillation.from_pretrained(tiny_sd)
    side = sds.encode_prompt(["a zombie, side view"])[0]
    assert any(torch.allclose(e[i], side) for e in seen for i in range(e.shape[0]))
    assert "view suffixes front" in (tmp_path / "run" / "log.txt").read_text()
    options = json.loads((tmp_path / "run" / "options.json").read_text())
    assert options["identity"]["pose_sampler"] == "views" and options["identity"]["view_shares"] == [0.5, 0.5, 0.0]
    assert result.step == 8


@pytest.mark.parametrize("change, match", [
    ({"view_shares": (0.0, 0.0, 0.0)}, "--view-shares"),
    ({"view_shares": (1.0, -1.0, 0.0)}, "--view-shares"),
    ({"side_max_deg": 30.0}, "--side-max-deg"),
    ({"view_front_deg": 150.0}, "--view-front-deg"),
])
def test_bad_view_options_fail_with_the_flag(tiny_sd, tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        run(_cfg(tiny_sd, tmp_path / "bad", **change))
    assert not (tmp_path / "bad").exists()
