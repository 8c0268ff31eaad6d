"""FID / KID (adapt3d.metrics.fid) against independent computations: scipy's matrix square root for the Frechet
distance (as TTUR / StyleGAN3 compute it) and the unbiased MMD^2 written out for KID."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from adapt3d.metrics import fid


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # unbiased (N - 1), as StyleGAN3 / torchmetrics
    root = scipy.linalg.sqrtm(s_a @ s_b)
    return float(np.real(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root)))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """StyleGAN3's kid50k_full estimator for one subset: polynomial kernel (x.y / D + 1)^3."""
    m, d = x.shape
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * kxy.sum() / (m * m))


def test_fid_matches_scipy_on_gaussians_with_different_covariances():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(250, 5)) * np.array([0.5, 1.0, 2.0, 0.2, 1.5]) + np.array([1.0, 0, -0.5, 0, 2.0])
    got = fid.fid_kid_from_features(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=2, kid_subset_size=50)
    assert got.fid == pytest.approx(_scipy_fid(a, b), rel=1e-8)
    assert got.fid > 1.0  # far from 0: a different mean and covariance
    # Diagonal covariances by construction: FD = |mu|^2 + sum (sqrt(v_a) - sqrt(v_b))^2 in the population limit.
    z = rng.normal(size=(200_000, 2))
    pop = fid.fid_kid_from_features(torch.from_numpy(z * [1.0, 2.0]), torch.from_numpy(z[::-1] * [3.0, 2.0] + [1, 0]),
                                    kid_subsets=1, kid_subset_size=2)
    assert pop.fid == pytest.approx(1 + (1 - 3) ** 2 + 0, rel=2e-2)


@pytest.mark.parametrize("n_real, n_fake, dim", [(30, 20, 64), (400, 300, 8)])
def test_both_trace_methods_match_scipy(n_real, n_fake, dim):
    """Fewer samples than dimensions (singular covariances, as 2048-d Inception features of a small set) and
    more: the singular-value route and the covariance route agree with scipy's sqrtm."""
    rng = np.random.default_rng(n_real)
    a = rng.normal(size=(n_real, dim)) * rng.uniform(0.5, 2.0, dim)
    b = rng.normal(size=(n_fake, dim)) @ rng.normal(size=(dim, dim)) / np.sqrt(dim) + 0.3
    expected = _scipy_fid(a, b)
    for method in ("samples", "covariance", "auto"):
        got = fid.frechet_distance(torch.from_numpy(a), torch.from_numpy(b), method=method)
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), method
    with pytest.raises(ValueError, match="method"):
        fid.frechet_distance(torch.from_numpy(a), torch.from_numpy(b), method="sqrtm")


def test_kid_matches_the_unbiased_mmd_written_out():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) * 1.3 + 0.4
    # Subsets of the whole set: every subset is a permutation of it, so the mean is the full-set MMD^2, std 0.
    got = fid.fid_kid_from_features(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=3, kid_subset_size=40)
    assert got.kid_mean == pytest.approx(_mmd2_unbiased(y, x), rel=1e-9)
    assert got.kid_std == pytest.approx(0.0, abs=1e-12) and got.kid_subset_size == 40
    # Smaller subsets: the mean over subsets estimates the same quantity.
    sub = fid.fid_kid_from_features(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=200, kid_subset_size=20)
    assert sub.kid_mean == pytest.approx(got.kid_mean, rel=0.15) and sub.kid_std > 0
