"""Filters on constructed cases with known answers; manifest and EG3D writer building blocks."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch

from adapt3d.cameras import camera_label, matrices_from_label, project_points
from adapt3d.clip.filters import CLIPFilter, CLIPFilterConfig, select_by_score
from adapt3d.data.dataset_writer import export_dataset_folder, write_dataset_json, write_dataset_zip
from adapt3d.data.manifest import Manifest, ManifestError
from adapt3d.data.target_dataset import TargetPlan
from adapt3d.utils.seeds import stream_seed
from adapt3d.data.target_filters import (PoseConsistencyConfig, PoseConsistencyFilter, edge_similarity,
                                         greedy_diverse_subset, nearest_neighbour_distance)
from adapt3d.export.images import save_image
from adapt3d.testing.fixtures import tiny_models  # noqa: F401

# -- pose consistency: an analytic scene of 3D blobs seen by EG3D orbit cameras --------------------------------

POINTS = (torch.rand(40, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.5  # (N, 3) around the origin


def render_blobs(yaw: torch.Tensor, pitch: torch.Tensor, size: int = 64, sigma: float = 0.025) -> torch.Tensor:
    """Gaussian splats of POINTS projected through the label cameras -> (B, 3, size, size) in [-1, 1]."""
    cam2world, K = matrices_from_label(camera_label(yaw, pitch, radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837))
    uv, _ = project_points(POINTS[None].expand(len(yaw), -1, -1), cam2world, K)  # (B, N, 2)
    g = (torch.arange(size) + 0.5) / size
    vv, uu = torch.meshgrid(g, g, indexing="ij")
    d2 = (uu - uv[..., 0, None, None]) ** 2 + (vv - uv[..., 1, None, None]) ** 2  # (B, N, H, W)
    img = torch.exp(-d2 / (2 * sigma ** 2)).sum(1).clamp(max=1)
    return (img[:, None].expand(-1, 3, -1, -1) * 2 - 1).contiguous()


YAW = math.pi / 2 + torch.tensor([0.0, 0.1, -0.2, 0.05])
PITCH = torch.full((4,), math.pi / 2 - 0.05)


def test_pose_filter_keeps_restyled_target_at_its_label():
    f = PoseConsistencyFilter(PoseConsistencyConfig(step=0.1, rings=2, margin=0.05))
    g = torch.Generator().manual_seed(1)
    src = render_blobs(YAW, PITCH)
    restyled = (-0.7 * src + 0.15 * torch.randn(src.shape, generator=g)).clamp(-1, 1)  # new colours + noise
    s = f.score(restyled, YAW, PITCH, render_blobs)
    assert s.passed(0.05).all() and (s.margin > 0).all()
    assert s.best == [(0.0, 0.0)] * 4 and s.candidate_ncc.shape == (4, 9)
    # Giving the label renders directly is the same as rendering them.
    s2 = f.score(restyled, YAW, PITCH, render_blobs, label_renders=src)
    torch.testing.assert_close(s2.margin, s.margin)


@pytest.mark.parametrize("dyaw, dpitch", [(0.1, 0.0), (-0.1, 0.0), (0.2, 0.0), (0.0, -0.1)])
def test_pose_filter_rejects_target_rendered_at_another_camera(dyaw, dpitch):
    f = PoseConsistencyFilter(PoseConsistencyConfig(step=0.1, rings=2, margin=0.05))
    drifted = render_blobs(YAW + dyaw, PITCH + dpitch)
    s = f.score(drifted, YAW, PITCH, render_blobs)
    assert not s.passed(0.05).any()
    assert s.best == [(pytest.approx(dyaw), pytest.approx(dpitch))] * 4


def test_edge_similarity_bounds():
    a = render_blobs(YAW[:1], PITCH[:1])
    from adapt3d.data.target_filters import edge_map
    e = edge_map(a)
    assert float(edge_similarity(e, e)) == pytest.approx(1.0, abs=1e-6)
    assert float(edge_similarity(e, torch.zeros_like(e))) == 0.0
    assert float(edge_similarity(e, -e)) == pytest.approx(-1.0, abs=1e-6)


# -- diversity --------------------------------------------------------------------------------------------------

def test_greedy_diversity_drops_exact_and_near_duplicates():
    e = torch.eye(4)  # 4 orthogonal (distance 1) embeddings
    emb = torch.cat([e, e[1:2], e[2:3] + 0.01 * e[3:4]])  # 4 = copy of 1, 5 = near-copy of 2
    nn = nearest_neighbour_distance(emb)
    assert nn[4] == pytest.approx(0, abs=1e-6) and nn[0] == pytest.approx(1)
    kept = greedy_diverse_subset(emb, min_distance=0.01)
    assert kept.tolist() == [True, True, True, True, False, False]
    # Priority decides which copy survives; non-candidates never block others.
    kept = greedy_diverse_subset(emb, 0.01, priority=[0, 0, 0, 0, 1, 0])
    assert kept.tolist() == [True, False, True, True, True, False]
    kept = greedy_diverse_subset(emb, 0.01, candidates=[True, False, True, True, True, True])
    assert kept.tolist() == [True, False, True, True, True, False]
    assert greedy_diverse_subset(emb, 0.0).all()


# -- CLIP -------------------------------------------------------------------------------------------------------

def test_select_by_score_threshold_and_top_fraction():
    scores = [0.30, 0.10, 0.25, 0.25, 0.05]
    above, top = select_by_score(scores, threshold=0.2, top_fraction=0.5)
    assert above.tolist() == [True, False, True, True, False]
    assert top.tolist() == [True, False, True, True, False]  # ceil(2.5) = 3 best; tie 2/3 both in
    _, top = select_by_score(scores, top_fraction=0.4)
    assert top.tolist() == [True, False, True, False, False]  # tie broken by index
    with pytest.raises(ValueError, match="--clip-top-fraction"):
        CLIPFilterConfig(top_fraction=0)
    with pytest.raises(ValueError, match="--clip-threshold"):
        CLIPFilterConfig(threshold=2)


def test_clip_filter_scores_with_tiny_clip(tiny_models):  # noqa: F811
    from adapt3d.clip import CLIPScorer
    scorer = CLIPScorer.from_pretrained(str(tiny_models["clip"]))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    imgs = torch.cat([x, x[:1]])  # image 3 duplicates image 0
    f = CLIPFilter(scorer, CLIPFilterConfig(top_fraction=0.5))
    s = f.scores(imgs, "a zombie", batch_size=2)
    assert s.shape == (4,) and s[3] == pytest.approx(float(s[0]), abs=1e-6)
    expected = scorer.score(imgs, "a zombie")
    torch.testing.assert_close(s, expected)
    order = sorted(range(4), key=lambda i: (-float(s[i]), i))
    assert f.select(s).nonzero().flatten().tolist() == sorted(order[:2])
    emb = scorer.encode_images(imgs)
    assert greedy_diverse_subset(emb, 1e-4).tolist() == [True, True, True, False]


# -- plan, manifest, writer -------------------------------------------------------------------------------------

def test_plan_seeds_and_shards():
    plan = TargetPlan(num_images=7, samples_per_source=2, prompts=["a", "b", "c"], seed=5, batch_size=2)
    assert plan.num_sources == 4 and plan.num_batches == 2
    it = plan.item(5)
    assert (it.source, it.sample, it.latent_seed, it.prompt) == (2, 1, 7, "c")
    assert it.diffusion_seed == stream_seed(5, 5, 2) and it.pose_seed == stream_seed(5, 2, 1)
    assert len({plan.item(i).diffusion_seed for i in range(7)}) == 7
    assert [i.index for i in plan.batch_items(1)] == [4, 5, 6]
    assert plan.shard_indices(0, 2) + plan.shard_indices(1, 2) == list(range(7))


def test_manifest_ignores_a_torn_last_line(tmp_path):
    m = Manifest(tmp_path / "m.jsonl")
    m.append({"index": 0})
    m.append({"index": 1, "x": [1.5]})
    with open(m.path, "ab") as f:
        f.write(b'{"index": 2, "x"')  # killed mid-write
    assert m.read() == [{"index": 0}, {"index": 1, "x": [1.5]}]
    m.append({"index": 2})
    assert [r["index"] for r in m.read()] == [0, 1, 2]
    m.path.write_text('{"index": 0}\nnot json\n{"index": 1}\n')
    with pytest.raises(ManifestError, match="line 2"):
        m.read()


def test_dataset_writer_json_zip_and_folder(tmp_path):
    from adapt3d.data.eg3d_dataset import EG3DDataset
    rng = np.random.default_rng(0)
    labels = camera_label(torch.tensor([1.5, 1.6, 1.7]), torch.tensor([1.5, 1.5, 1.6]), radius=2.7,
                          pivot=[0, 0, 0.2], fov_deg=18.837)
    work = tmp_path / "work"
    for i in range(3):
        save_image(work / f"images/img{i:08d}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    entries = [(f"images/img{i:08d}.png", labels[i].tolist()) for i in (0, 2)]
    doc = json.loads(write_dataset_json(work, entries).read_text())
    assert doc == {"labels": [[p, lab] for p, lab in entries]}
    z1 = write_dataset_zip(work, tmp_path / "a.zip", entries).read_bytes()
    z2 = write_dataset_zip(work, tmp_path / "b.zip", entries).read_bytes()
    assert z1 == z2  # deterministic bytes
    assert sorted(zipfile.ZipFile(tmp_path / "a.zip").namelist()) == ["dataset.json"] + [p for p, _ in entries]
    folder = tmp_path / "ds"
    export_dataset_folder(work, folder, [(f"images/img{i:08d}.png", labels[i].tolist()) for i in range(3)])
    export_dataset_folder(work, folder, entries)  # re-export with fewer images removes the stale one
    assert sorted(p.name for p in folder.rglob("*.png")) == ["img00000000.png", "img00000002.png"]
    for path in (folder, tmp_path / "a.zip"):
        ds = EG3DDataset(path)
        assert len(ds) == 2
        torch.testing.assert_close(ds[1][1], labels[2])
    with pytest.raises(ValueError, match="25 finite"):
        write_dataset_json(work, [("images/img00000000.png", [0.0] * 24)])
    with pytest.raises(ValueError, match="relative"):
        write_dataset_json(work, [("../x.png", [0.0] * 25)])
    with pytest.raises(FileNotFoundError, match="missing"):
        write_dataset_json(work, [("images/nope.png", [0.0] * 25)])
