"""FID and KID with a pluggable feature extractor: Inception pool3 (paper-comparable) or CLIP image embeddings.

For feature sets with means mu_r, mu_g and unbiased (N - 1) covariances S_r, S_g (float64; the trace of the
matrix square root computed exactly without forming it, see :func:`frechet_distance`)::

    FD = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

KID (``KernelInceptionDistance``) is the unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / D + 1)^3,
averaged over ``kid_subsets`` random subsets of ``kid_subset_size`` samples per set, drawn without replacement
(seeded here, so reruns agree). The defaults, 100 subsets of 1000, are StyleGAN3/EG3D's ``kid50k_full`` and
torch-fidelity's; the subset size is clipped to the smaller set, as StyleGAN3 does (torch-fidelity refuses).
StyleGAN3 reports the mean only; we report mean and standard deviation over the subsets.

Features (``feature``):

* :class:`adapt3d.metrics.inception.InceptionFeatures` (or the string ``"inception"`` = the published weights
  from the cache): TensorFlow Inception-v3 pool3 (2048-d) of uint8 images, the features of the FID/KID that
  EG3D, DATID-3D and StyleGAN report (see that module for the preprocessing and how the modes compare);
* :class:`CLIPImageFeatures`: L2-normalised CLIP image embeddings (FD-CLIP as in Kynkaanniemi et al. 2023, here
  on unit vectors). Values from different feature extractors are not comparable, and FD-CLIP is not the FID of
  papers.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from adapt3d.utils.image_files import MAX_IMAGE_PIXELS, open_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "CLIPImageFeatures",
    "FIDResult",
    "compute_fid_kid",
    "fid_kid_from_features",
    "frechet_distance",
    "extract_features",
    "list_reference_images",
    "load_reference_images",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class CLIPImageFeatures(nn.Module):
    """Feature extractor for torchmetrics: images (B, 3, H, W) in [-1, 1] (or uint8 [0, 255]) -> (B, D)
    L2-normalised CLIP image embeddings. ``num_features`` = D."""

    def __init__(self, scorer, num_features: int | None = None):
        super().__init__()
        object.__setattr__(self, "scorer", scorer)  # not a child module: torchmetrics must not move/cast it
        if num_features is None:
            with torch.no_grad():
                num_features = int(scorer.encode_text(["a photo"]).shape[-1])
        self.num_features = int(num_features)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
        return nn.functional.normalize(self.scorer.encode_images(x).float(), dim=-1)  # (B, D)


@dataclass
class FIDResult:
    fid: float
    kid_mean: float
    kid_std: float
    num_real: int
    num_fake: int
    kid_subset_size: int
    kid_subsets: int
    feature: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        for i in range(0, images.shape[0], batch_size):
            yield images[i:i + batch_size]
    else:
        yield from images


def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor, *,
                     method: str = "auto") -> float:
    """The Frechet distance between Gaussians fitted to (N_r, D) and (N_g, D) features (float64; unbiased
    covariances S = A^T A with A = (X - mu) / sqrt(N - 1)).

    Tr((S_r S_g)^(1/2)) is computed exactly without a D x D matrix square root: the eigenvalues of
    A_r^T A_r A_g^T A_g are the squared singular values of A_r A_g^T, so the trace is the sum of the singular
    values of that (N_r, N_g) matrix (used when it is small), else of the square roots of the eigenvalues of the
    symmetric S_r^(1/2) S_g S_r^(1/2). Both equal scipy.linalg.sqrtm's result in TTUR / StyleGAN3 up to rounding.
    ``method``: 'auto' (samples when N_r N_g <= D^2), 'samples' or 'covariance'.
    """
    if method not in ("auto", "samples", "covariance"):
        raise ValueError(f"`method` must be 'auto', 'samples' or 'covariance', got {method!r}")
    x, y = real_features.detach().double().cpu(), fake_features.detach().double().cpu()
    n_r, n_g, dim = x.shape[0], y.shape[0], x.shape[1]
    a = (x - x.mean(0)) / math.sqrt(n_r - 1)  # (N_r, D)
    b = (y - y.mean(0)) / math.sqrt(n_g - 1)  # (N_g, D)
    if method == "samples" or (method == "auto" and n_r * n_g <= dim * dim):
        cross = torch.linalg.svdvals(a @ b.T).sum()
    else:
        evals, evecs = torch.linalg.eigh(a.T @ a)
        root = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T  # S_r^(1/2)
        cross = torch.linalg.eigvalsh(root @ (b.T @ b) @ root).clamp(min=0).sqrt().sum()
    mean_term = (x.mean(0) - y.mean(0)).pow(2).sum()
    return float(mean_term + a.pow(2).sum() + b.pow(2).sum() - 2 * cross)


def _kid(real_features: torch.Tensor, fake_features: torch.Tensor, kid_subsets: int, subset_size: int,
         seed: int) -> tuple[float, float]:
    from torchmetrics.image.kid import KernelInceptionDistance

    table = nn.Identity()  # the features are the "images": torchmetrics only accumulates them
    table.num_features = int(real_features.shape[1])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=table, subsets=kid_subsets, subset_size=subset_size)
    kid.update(real_features.detach().double().cpu(), real=True)
    kid.update(fake_features.detach().double().cpu(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # KID draws its subsets with the global RNG
        mean, std = (float(v) for v in kid.compute())
    return mean, std


def _check_kid(kid_subsets: int, kid_subset_size: int) -> None:
    if kid_subsets < 1 or kid_subset_size < 2:
        raise ValueError(f"`kid_subsets` must be >= 1 and `kid_subset_size` >= 2, got {kid_subsets}, "
                         f"{kid_subset_size}")


def fid_kid_from_features(real_features: torch.Tensor, fake_features: torch.Tensor, *, kid_subsets: int = 100,
                          kid_subset_size: int = 1000, seed: int = 0, feature_name: str = "features") -> FIDResult:
    """FID and KID from precomputed features (N_real, D) and (N_fake, D) (e.g. CLIP embeddings).

    The KID subset size is clipped to the smaller set; at least 2 samples per set are needed.
    """
    _check_kid(kid_subsets, kid_subset_size)
    if real_features.ndim != 2 or fake_features.ndim != 2 or real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(real_features.shape)} and "
                         f"{tuple(fake_features.shape)}")
    n_real, n_fake = real_features.shape[0], fake_features.shape[0]
    if n_real < 2 or n_fake < 2:
        raise ValueError(f"FID/KID need at least 2 images per set, got {n_real} reference and {n_fake} generated")
    subset = min(kid_subset_size, n_real, n_fake)
    fid = frechet_distance(real_features, fake_features)
    kid_mean, kid_std = _kid(real_features, fake_features, kid_subsets, subset, seed)
    return FIDResult(max(fid, 0.0), kid_mean, kid_std, n_real, n_fake, subset, kid_subsets, feature_name)


@torch.no_grad()
def extract_features(extractor: nn.Module, images: torch.Tensor | Iterable[torch.Tensor],
                     batch_size: int = 32) -> torch.Tensor:
    """Run ``extractor`` over images ((N, 3, H, W) or an iterable of batches); returns (N, D) float64 on CPU."""
    out = [extractor(b).double().cpu() for b in _batches(images, batch_size)]
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out)


@torch.no_grad()
def compute_fid_kid(feature: str | nn.Module, real: torch.Tensor | Iterable[torch.Tensor],
                    fake: torch.Tensor | Iterable[torch.Tensor], *, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, seed: int = 0, batch_size: int = 32,
                    feature_name: str | None = None) -> FIDResult:
    """FID and KID between ``real`` and ``fake`` images ((N, 3, H, W) tensors, uint8 or in [-1, 1], or iterables
    of such batches). ``feature``: a module with ``num_features`` (e.g. :class:`InceptionFeatures`,
    :class:`CLIPImageFeatures`) or ``"inception"`` (the published Inception weights from the cache; raises
    :class:`adapt3d.metrics.inception.InceptionWeightsNotFoundError` naming the file when it is missing)."""
    _check_kid(kid_subsets, kid_subset_size)
    if isinstance(feature, str):
        if feature != "inception":
            raise ValueError(f"`feature` must be a feature-extractor module or 'inception', got {feature!r}")
        from adapt3d.metrics.inception import load_inception
        feature, feature_name = load_inception(), feature_name or "inception"
    if not isinstance(feature, nn.Module):
        raise ValueError(f"`feature` must be a feature-extractor module or 'inception', got {type(feature).__name__}")
    return fid_kid_from_features(extract_features(feature, real, batch_size),
                                 extract_features(feature, fake, batch_size), kid_subsets=kid_subsets,
                                 kid_subset_size=kid_subset_size, seed=seed,
                                 feature_name=feature_name or type(feature).__name__)


def list_reference_images(path: str | os.PathLike, max_images: int | None = None) -> list[str]:
    """Sorted image names in a folder (recursive) or a zip (e.g. an EG3D dataset zip)."""
    path = Path(path)
    if path.is_dir():
        names = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith(IMAGE_EXTENSIONS))
    else:
        raise ValueError(f"--reference: {path} is neither a folder nor a zip of images")
    if not names:
        raise ValueError(f"--reference: no images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}")
    return names[:max_images] if max_images is not None else names


def _to_tensor(img: Image.Image, resolution: int | None) -> torch.Tensor:
    img = img.convert("RGB")
    if resolution is not None and img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W) uint8


def _reference_source(path: Path, zf: zipfile.ZipFile | None, name: str) -> Path | bytes:
    return zf.read(name) if zf is not None else path / name


def check_reference_images(path: str | os.PathLike, max_images: int | None = None,
                           max_pixels: int = MAX_IMAGE_PIXELS) -> list[str]:
    """The reference images, each checked from its header (an image, not empty, at most ``max_pixels``) before
    anything heavy runs. Raises ValueError naming --reference and the file."""
    path = Path(path)
    names = list_reference_images(path, max_images)
    with (zipfile.ZipFile(path) if not path.is_dir() else contextlib.nullcontext()) as zf:
        for name in names:
            with open_image(_reference_source(path, zf, name), "--reference", f"{path}/{name}",
                            max_pixels=max_pixels, decode=False):
                pass
    return names


def load_reference_images(path: str | os.PathLike, resolution: int | None = None, max_images: int | None = None,
                          batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Yield uint8 batches (B, 3, R, R) of the reference images (resized to ``resolution`` with Lanczos)."""
    path = Path(path)
    names = list_reference_images(path, max_images)
    zf = zipfile.ZipFile(path) if not path.is_dir() else None
    try:
        batch = []
        for name in names:  # a truncated file fails here with an error naming it
            with open_image(_reference_source(path, zf, name), "--reference", f"{path}/{name}") as img:
                batch.append(_to_tensor(img, resolution))
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)
    finally:
        if zf is not None:
            zf.close()
