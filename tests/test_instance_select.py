"""Instance-selected adaptation as DATID-3D describes it: `adapt3d instance candidates` shows diverse targets of one
instance with their indices, and `--select K` translates every view with candidate K's diffusion noise and prompt,
with the candidate itself as view 0's target; the consistency measure (CLIP/pixel agreement, warp error through the
source depth) behaves as documented; a K out of range is refused naming --select."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.metrics.target_consistency import target_consistency
from adapt3d.models.triplane import build_generator
from adapt3d.pipelines.instance import InstanceConfig
from adapt3d.pipelines.instance import run as adapt_instance
from adapt3d.pipelines.instance import candidate_seed
from adapt3d.pipelines.instance_candidates import InstanceCandidatesConfig
from adapt3d.pipelines.instance_candidates import run as candidates
from adapt3d.models.latents import default_cameras, map_seeds
from adapt3d.testing.fixtures import tiny_models  # noqa: F401  (session fixture)

PROMPTS = ("a zombie", "an elf")


def _common(models, out, **kw):
    return dict(preset="tiny", instance_seed=3, prompt=PROMPTS, out=out, num_inference_steps=2, seed=5,
                diffusion=str(models["stable-diffusion"]), progress=False, **kw)


def test_candidates_then_select_translates_every_view_with_the_chosen_noise(tmp_path, tiny_models):  # noqa: F811
    res = candidates(InstanceCandidatesConfig(**_common(tiny_models, tmp_path / "cands", num_candidates=4)))
    doc = json.loads((tmp_path / "cands" / "candidates.json").read_text())
    assert [c["index"] for c in doc["candidates"]] == [0, 1, 2, 3] == [c["index"] for c in res.candidates]
    assert [c["diffusion_seed"] for c in doc["candidates"]] == [candidate_seed(5, k) for k in range(4)]
    assert len({c["diffusion_seed"] for c in doc["candidates"]}) == 4
    assert [c["prompt"] for c in doc["candidates"]] == ["a zombie", "an elf", "a zombie", "an elf"]
    sheet = np.asarray(Image.open(tmp_path / "cands" / "candidates.png"))
    assert sheet.shape[0] > 2 * 64 and sheet.shape[1] >= 4 * 64  # source row + a row of 4 candidates
    cand = [np.asarray(Image.open(tmp_path / "cands" / c["image"])).astype(int) for c in doc["candidates"]]
    assert np.abs(cand[0] - cand[2]).mean() > 1  # the candidates differ (same prompt, other noise)

    out = tmp_path / "adapt"
    adapt_instance(InstanceConfig(**_common(tiny_models, out, select=3, num_candidates=4, num_images=4,
                                            clip_model="none", kimg=0.008, batch=4, snapshot_kimg=0.008, seeds="0",
                                            video_frames=2, mesh="none")))
    records = [json.loads(line) for line in (out / "target" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in records) == [0, 1, 2, 3]  # one translation per view
    assert {r["diffusion_seed"] for r in records} == {candidate_seed(5, 3)} and {r["prompt"] for r in records} == {
        "an elf"}
    view0 = next(r for r in records if r["source"] == 0)
    assert view0["label"] == pytest.approx(doc["camera"])  # the candidates' reference camera
    target0 = np.asarray(Image.open(out / "target" / view0["image"])).astype(int)
    assert np.abs(target0 - cand[3]).max() <= 1  # the selected candidate is view 0's target (batching: <= 1 level)
    assert np.abs(target0 - cand[1]).mean() > 1
    job = json.loads((out / "target" / "job.json").read_text())["job"]
    assert job["select"] == {"index": 3, "diffusion_seed": candidate_seed(5, 3), "prompt": "an elf"}


def test_select_out_of_range_and_without_an_instance_are_refused(tmp_path, tiny_models):  # noqa: F811
    with pytest.raises(ValueError, match=r"--select: 8 is not a candidate index; .*--num-candidates 8 made "
                                         r"candidates 0-7"):
        adapt_instance(InstanceConfig(**_common(tiny_models, tmp_path / "a", select=8)))
    with pytest.raises(ValueError, match="--select: -1"):
        adapt_instance(InstanceConfig(**_common(tiny_models, tmp_path / "a", select=-1)))
    with pytest.raises(ValueError, match="--samples-per-view: 2 with --select"):
        adapt_instance(InstanceConfig(**_common(tiny_models, tmp_path / "a", select=0, samples_per_view=2)))
    from adapt3d.pipelines.adapt import AdaptConfig, run
    with pytest.raises(ValueError, match="--select: 2 picks a candidate of ONE instance"):
        run(AdaptConfig(preset="tiny", prompt=("x",), out=tmp_path / "b", select=2))
    with pytest.raises(ValueError, match="--num-candidates"):
        candidates(InstanceCandidatesConfig(**_common(tiny_models, tmp_path / "c", num_candidates=0)))
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c"))


def test_consistency_measure_prefers_one_look_attached_to_the_surface():
    """Targets that are the source renders themselves are perfectly consistent with the geometry (warp error = the
    source floor, agreement high); the same images with the views' pixels shuffled between views are not."""
    G = build_generator("tiny").eval()
    ws = map_seeds(G, [3], 0.7, None, torch.device("cpu"))
    yaw = torch.tensor([1.45, 1.57, 1.69, 1.75])
    labels = default_cameras(G, yaw, torch.full_like(yaw, 1.57))
    with torch.no_grad():
        src = G.synthesis(ws.expand(4, -1, -1), labels, noise_mode="const", sampling="deterministic").image
    same = target_consistency(G, ws, labels, src, [0, 1, 2, 3], sources=src)
    assert same["pairs"] == 6 and same["warp_mean_abs"] == pytest.approx(same["source_warp_mean_abs"])
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(src.shape, generator=g) * 2 - 1  # unrelated 'stylisations' per view
    unrelated = target_consistency(G, ws, labels, noise, [0, 1, 2, 3])
    assert unrelated["warp_mean_abs"] > 3 * same["warp_mean_abs"]
    assert unrelated["clip_agreement"] < same["clip_agreement"]
    with pytest.raises(ValueError, match="two different views"):
        target_consistency(G, ws, labels[:2], src[:2], [0, 0])


def test_instance_candidates_on_the_command_line(tmp_path, tiny_models, capsys):  # noqa: F811
    from adapt3d.cli.main import main
    rc = main(["instance", "candidates", "--preset", "tiny", "--instance-seed", "3", "--prompt", "a zombie",
               "--num-candidates", "2", "--num-inference-steps", "2", "--diffusion",
               str(tiny_models["stable-diffusion"]), "--out", str(tmp_path / "c"), "--no-progress"])
    assert rc == 0 and (tmp_path / "c" / "candidates" / "cand01.png").is_file()
    assert "--select K" in capsys.readouterr().out
    rc = main(["instance", "adapt", "--preset", "tiny", "--instance-seed", "3", "--prompt", "a zombie", "--select",
               "5", "--num-candidates", "2", "--out", str(tmp_path / "a")])
    assert rc == 2 and "--select: 5 is not a candidate index" in capsys.readouterr().err
