"""CLIP alignment, diversity and FID/KID (adapt3d.metrics) on constructed inputs and the tiny CLIP model."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.metrics import clip_metrics, diversity, fid
from adapt3d.metrics.lpips import LPIPS
from adapt3d.testing.fixtures import tiny_models  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def scorer(tiny_models):  # noqa: F811
    from adapt3d.clip import CLIPScorer

    return CLIPScorer.from_pretrained(str(tiny_models["clip"]))


@pytest.fixture(scope="module")
def lpips_random():
    return LPIPS.random(0)


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- text alignment -------------------------------------------------------------------------------------------


def test_clip_score_matches_the_backend(scorer):
    x = _images(4, 0)
    res = clip_metrics.clip_score(scorer, x, "a zombie face")
    torch.testing.assert_close(res.per_image, scorer.score(x, "a zombie face"), atol=1e-5, rtol=0)
    assert res.mean == pytest.approx(float(res.per_image.double().mean()))
    assert res.clipscore_100 == pytest.approx(float((100 * res.per_image.clamp(min=0)).double().mean()), rel=1e-5)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)  # uint8 input is mapped from [0, 255]
    emb8 = clip_metrics.encode_images(scorer, u8)
    torch.testing.assert_close(emb8, clip_metrics.encode_images(scorer, u8.float() / 127.5 - 1))
    with pytest.raises(ValueError, match="`prompt`"):
        clip_metrics.clip_score(scorer, x, "  ")


def test_directional_of_a_generator_with_itself_is_zero(scorer):
    x = _images(5, 1)
    res = clip_metrics.directional_similarity(scorer, x, x.clone(), "a photo of a face", "a zombie face")
    assert res.num_undefined == 5 and torch.equal(res.per_sample, torch.zeros(5)) and res.mean == 0.0
    other = clip_metrics.directional_similarity(scorer, x, _images(5, 2), "a photo of a face", "a zombie face")
    assert other.num_undefined == 0 and (other.per_sample.abs() <= 1 + 1e-6).all()
    assert other.per_sample.abs().sum() > 0
    with pytest.raises(ValueError, match="source-prompt"):
        clip_metrics.directional_similarity(scorer, x, x, "a zombie face", "a zombie face")


def test_directional_from_constructed_embeddings():
    src_t, tgt_t = torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0])
    src = torch.nn.functional.normalize(torch.tensor([[0.3, 0.1, 0.9], [0.5, 0.5, 0.2], [0.0, 0.0, 1.0]]), dim=-1)
    along = src + 0.2 * (tgt_t - src_t)  # moves exactly along the text direction
    against = src - 0.2 * (tgt_t - src_t)
    sideways = src + torch.tensor([0.0, 0.0, 0.3])
    f = clip_metrics.directional_similarity_from_embeddings
    assert torch.allclose(f(src, along, src_t, tgt_t).per_sample, torch.ones(3))
    assert torch.allclose(f(src, against, src_t, tgt_t).per_sample, -torch.ones(3))
    assert torch.allclose(f(src, sideways, src_t, tgt_t).per_sample, torch.zeros(3), atol=1e-7)


def test_view_agreement(scorer):
    x = _images(2, 3)
    same = clip_metrics.view_agreement(scorer, torch.stack([x, x, x], 1))
    assert same.num_views == 3 and same.mean == pytest.approx(1.0, abs=1e-5)
    emb = torch.nn.functional.normalize(torch.tensor([[[1.0, 0], [0, 1], [1, 1]]]), dim=-1)  # (1, 3, 2)
    res = clip_metrics.view_agreement_from_embeddings(emb)
    assert res.mean == pytest.approx((0 + 2 ** -0.5 + 2 ** -0.5) / 3)


# --- diversity ----------------------------------------------------------------------------------------------


def test_kmeans_recovers_blobs_deterministically():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(20)
    x = centres[labels] + 0.3 * torch.randn(60, 2, generator=g)
    a, b = diversity.kmeans(x, 3, seed=5), diversity.kmeans(x, 3, seed=5)
    assert torch.equal(a.assignments, b.assignments)
    for c in range(3):  # each true blob maps onto exactly one cluster
        assert a.assignments[labels == c].unique().numel() == 1
    assert a.assignments.unique().numel() == 3
    with pytest.raises(ValueError, match="`k`"):
        diversity.kmeans(x, 61)


def test_more_varied_sets_score_higher(lpips_random):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    tight = (base + 0.03 * torch.randn(8, 3, 32, 32, generator=g)).clamp(-1, 1)
    varied = (base + 0.6 * torch.randn(8, 3, 32, 32, generator=g)).clamp(-1, 1)
    assign = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    d_tight = diversity.intra_cluster_lpips(tight, assign, lpips_random)
    d_varied = diversity.intra_cluster_lpips(varied, assign, lpips_random)
    assert d_varied.mean > 2 * d_tight.mean > 0
    assert d_tight.num_pairs == 12 and d_tight.cluster_sizes == [4, 4]
    same = diversity.intra_cluster_lpips(base.expand(4, -1, -1, -1), torch.zeros(4, dtype=torch.long), lpips_random)
    assert same.mean < 1e-9  # identical images (features of one batch: exactly equal up to conv batching)
    f_tight, f_varied = tight.flatten(1), varied.flatten(1)
    assert diversity.mean_pairwise_distance(f_varied) > diversity.mean_pairwise_distance(f_tight)
    sub = diversity.intra_cluster_lpips(varied, assign, lpips_random, max_pairs_per_cluster=2, seed=1)
    assert sub.num_pairs == 4 and sub.per_cluster[0] is not None
    emb = diversity.lpips_embedding(varied, lpips_random)
    assert emb.shape == (8, sum(lpips_random.backbone.channels))


def test_mean_pairwise_distance_value():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = (2 ** 0.5 + 2 + 2 ** 0.5) / 3
    assert diversity.mean_pairwise_distance(f) == pytest.approx(expected)


# --- FID / KID ----------------------------------------------------------------------------------------------


def test_fid_from_features_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.5, -0.2, 0.0, 0.1, 0.3, 0.0], dtype=torch.float64)
    self_ = fid.fid_kid_from_features(x, x, kid_subset_size=50, kid_subsets=20)
    assert self_.fid < 1e-6
    shifted = fid.fid_kid_from_features(x, x + shift, kid_subset_size=50, kid_subsets=20)
    assert shifted.fid == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)  # equal covariances: |mu1 - mu2|^2
    y = torch.randn(200, 6, generator=g, dtype=torch.float64)  # a fresh sample of the same distribution
    fresh = fid.fid_kid_from_features(x, y, kid_subset_size=50, kid_subsets=20)
    assert abs(fresh.kid_mean) < shifted.kid_mean / 5 and shifted.kid_mean > 0
    again = fid.fid_kid_from_features(x, x + shift, kid_subset_size=50, kid_subsets=20)
    assert again.kid_mean == shifted.kid_mean  # seeded subsets
    assert fid.fid_kid_from_features(x[:10], y, kid_subset_size=50).kid_subset_size == 10


def test_fid_kid_with_clip_features(scorer):
    x = _images(12, 4)
    feat = fid.CLIPImageFeatures(scorer)
    assert feat.num_features == scorer.embed_dim
    self_ = fid.compute_fid_kid(feat, x, x, kid_subset_size=6, kid_subsets=5)
    shifted = fid.compute_fid_kid(feat, x, (x * 0.3 + 0.6).clamp(-1, 1), kid_subset_size=6, kid_subsets=5)
    assert self_.fid < 1e-6 < shifted.fid
    assert self_.num_real == self_.num_fake == 12


def test_inception_needs_its_weight_file(tmp_path, monkeypatch):
    from adapt3d.metrics.inception import InceptionWeightsNotFoundError

    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path))
    with pytest.raises(InceptionWeightsNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        fid.compute_fid_kid("inception", _images(2, 0), _images(2, 1))
    with pytest.raises(ValueError, match="'inception'"):
        fid.compute_fid_kid("inceptionv3", _images(2, 0), _images(2, 1))


def test_reference_images_from_folder_and_zip(tmp_path):
    folder = tmp_path / "ref"
    (folder / "sub").mkdir(parents=True)
    arrays = [np.full((20, 30, 3), 40 * i, dtype=np.uint8) for i in range(3)]
    names = ["a.png", "b.jpg", "sub/c.png"]
    for name, arr in zip(names, arrays):
        Image.fromarray(arr).save(folder / name, quality=100)
    assert fid.list_reference_images(folder) == names
    batches = list(fid.load_reference_images(folder, resolution=16, batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 16, 16), (1, 3, 16, 16)] and batches[0].dtype == torch.uint8
    assert int(batches[1][0, 0, 8, 8]) == 80
    zpath = tmp_path / "ref.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in names:
            zf.write(folder / name, name)
        zf.writestr("dataset.json", "{}")
    zbatches = list(fid.load_reference_images(zpath, resolution=16, batch_size=2))
    assert all(torch.equal(a, b) for a, b in zip(batches, zbatches))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--reference"):
        fid.list_reference_images(tmp_path / "empty")


def test_feature_cache_gives_the_same_numbers(lpips_random):
    x = _images(6, 7)
    assign = torch.tensor([0, 1, 0, 1, 0, 0])
    cached = diversity.intra_cluster_lpips(x, assign, lpips_random, batch_size=4)
    direct = diversity.intra_cluster_lpips(x, assign, lpips_random, batch_size=4, feature_cache_bytes=0)
    assert cached.num_pairs == direct.num_pairs == 7
    assert cached.mean == pytest.approx(direct.mean, rel=1e-5)
    for a, b in zip(cached.per_cluster, direct.per_cluster):
        assert a == pytest.approx(b, rel=1e-5)
