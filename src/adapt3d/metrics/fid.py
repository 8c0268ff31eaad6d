"""FID and KID with a pluggable feature extractor (torchmetrics), CLIP image features by default (FD-CLIP).

For feature sets with means mu_r, mu_g and covariances S_r, S_g (torchmetrics' ``FrechetInceptionDistance``)::

    FD = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

KID (``KernelInceptionDistance``) is the unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / D + 1)^3,
averaged over ``subsets`` random subsets of ``subset_size`` samples per set (seeded here, so reruns agree).

Features: ``"clip"`` = L2-normalised CLIP image embeddings (``CLIPImageFeatures``; FD-CLIP as in Kynkaanniemi et
al. 2023, here on unit vectors); ``"inception"`` = torchmetrics' InceptionV3 pool features, only where
torch-fidelity is installed (it needs torchvision and downloads weights; it is not installed in this project's
environment). Values from different feature extractors are not comparable, and FD-CLIP is not the FID of papers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
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
    "extract_features",
    "list_reference_images",
    "load_reference_images",
    "inception_available",
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


def inception_available() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


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


def _metrics(feature: str | nn.Module, kid_subsets: int, kid_subset_size: int):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if isinstance(feature, nn.Module):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            return (FrechetInceptionDistance(feature=feature, normalize=False),
                    KernelInceptionDistance(feature=feature, subsets=kid_subsets, subset_size=kid_subset_size))
    if feature == "inception":
        if not inception_available():
            raise ImportError("`feature`='inception' (--fid-feature inception) needs torch-fidelity, which is not "
                              "installed (it requires torchvision, which breaks transformers/diffusers in this "
                              "environment, and downloads the Inception weights). Use --fid-feature clip (FD-CLIP).")
        return (FrechetInceptionDistance(feature=2048, normalize=True),
                KernelInceptionDistance(feature=2048, subsets=kid_subsets, subset_size=kid_subset_size,
                                        normalize=True))
    raise ValueError(f"`feature` must be a feature-extractor module or 'inception', got {feature!r}")


def _check_kid(kid_subsets: int, kid_subset_size: int) -> None:
    if kid_subsets < 1 or kid_subset_size < 2:
        raise ValueError(f"`kid_subsets` must be >= 1 and `kid_subset_size` >= 2, got {kid_subsets}, "
                         f"{kid_subset_size}")


def _finish(fid_metric, kid_metric, seed: int, n_real: int, n_fake: int, subset: int, kid_subsets: int,
            name: str) -> FIDResult:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # KID draws its subsets with the global RNG
        fid = float(fid_metric.compute())
        kid_mean, kid_std = (float(v) for v in kid_metric.compute())
    return FIDResult(max(fid, 0.0), kid_mean, kid_std, n_real, n_fake, subset, kid_subsets, name)


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
    table = nn.Identity()  # the features are the "images": torchmetrics only accumulates them
    table.num_features = int(real_features.shape[1])
    fid_metric, kid_metric = _metrics(table, kid_subsets, subset)
    for real, f in ((True, real_features), (False, fake_features)):
        fid_metric.update(f.detach().double().cpu(), real=real)
        kid_metric.update(f.detach().double().cpu(), real=real)
    return _finish(fid_metric, kid_metric, seed, n_real, n_fake, subset, kid_subsets, feature_name)


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
    """FID and KID between ``real`` and ``fake`` images ((N, 3, H, W) tensors in [-1, 1] or uint8, or iterables
    of such batches). ``feature``: a module with ``num_features`` (e.g. :class:`CLIPImageFeatures`) or
    ``"inception"`` (needs torch-fidelity)."""
    _check_kid(kid_subsets, kid_subset_size)
    if isinstance(feature, nn.Module):
        return fid_kid_from_features(extract_features(feature, real, batch_size),
                                     extract_features(feature, fake, batch_size), kid_subsets=kid_subsets,
                                     kid_subset_size=kid_subset_size, seed=seed,
                                     feature_name=feature_name or type(feature).__name__)
    fid_metric, kid_metric = _metrics(feature, kid_subsets, kid_subset_size)
    for is_real, images in ((True, real), (False, fake)):
        for batch in _batches(images, batch_size):
            x = batch.float() / 255 if batch.dtype == torch.uint8 else ((batch.float() + 1) / 2).clamp(0, 1)
            fid_metric.update(x, real=is_real)
            kid_metric.update(x, real=is_real)
    n_real, n_fake = int(fid_metric.real_features_num_samples), int(fid_metric.fake_features_num_samples)
    if n_real < 2 or n_fake < 2:
        raise ValueError(f"FID/KID need at least 2 images per set, got {n_real} reference and {n_fake} generated")
    subset = min(kid_subset_size, n_real, n_fake)
    kid_metric.subset_size = subset
    return _finish(fid_metric, kid_metric, seed, n_real, n_fake, subset, kid_subsets, feature_name or "inception")


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
