"""The FID Inception-v3 network (TensorFlow's ``inception-2015-12-05`` graph, as used by TTUR's FID, StyleGAN2/3,
EG3D, DATID-3D) without torchvision: pool3 features (B, 2048) of uint8 images.

Architecture: Inception-v3 (Szegedy et al. 2016) in torchvision's module layout (``Conv2d_1a_3x3`` ... ``Mixed_7c``,
``fc``; every conv is conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU) with the three differences of the TensorFlow
graph: 1008 classes; the 3x3 average pools inside the blocks do not count the zero padding; the last block
(``Mixed_7c``) pools with a 3x3 max-pool. pool3 = the global average of ``Mixed_7c`` (B, 2048, 8, 8).

Weights: ``pt_inception-2015-12-05-6726825d.pth``, TensorFlow's weights converted by pytorch-fid (also published
by torch-fidelity as ``weights-inception-2015-12-05-6726825d.pth``, the same bytes):
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth,
95,628,359 bytes, sha256 6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2 (checked on every load
of the known file; Apache-2.0 like TensorFlow's original). Read with ``torch.load(weights_only=True)``.

Preprocessing (``preprocess``):

* ``"tensorflow"`` (default): uint8 [0, 255] -> float32 -> TensorFlow 1.x bilinear resize to 299 x 299
  (``tf.image.resize_bilinear``, ``align_corners=False``: output pixel i samples input i * in/out, no half-pixel
  offset, no antialiasing, edge clamped) -> (x - 128) / 128. This is what the TensorFlow graph does inside
  (TTUR), what torch-fidelity's ``inception-v3-compat`` reproduces, and what NVIDIA's TorchScript translation
  ``inception-2015-12-05.pkl`` (StyleGAN2-ADA/3, EG3D metrics) does with an affine grid_sample at the same
  sampling positions. Papers that report StyleGAN/EG3D-style FID/KID (EG3D, DATID-3D) are comparable with this.
* ``"pytorch-fid"``: x / 255 -> ``F.interpolate(bilinear, align_corners=False)`` (half-pixel centres) to 299 ->
  2x - 1, as pytorch-fid (and clean-fid's ``legacy_pytorch`` mode). Same network and weights; the different
  resize and the (x - 127.5) / 127.5 scaling change FID slightly, so only numbers of the same mode are comparable.

Images at 299 x 299 are not resampled in either mode. clean-fid's default ``clean`` mode (PIL bicubic with
antialiasing) is not offered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from adapt3d.metrics.weights import (
    WeightFile,
    WeightsNotFoundError,
    check_weight_file,
    load_state_dict_file,
    resolve_weight_file,
)

__all__ = [
    "INCEPTION_WEIGHTS",
    "INCEPTION_SIZE",
    "INCEPTION_PREPROCESS",
    "InceptionWeightsNotFoundError",
    "FIDInceptionV3",
    "InceptionFeatures",
    "resize_bilinear_tf1",
    "to_uint8_images",
    "resolve_inception_weights",
    "load_inception",
]

Preprocess = Literal["tensorflow", "pytorch-fid"]
INCEPTION_PREPROCESS: tuple[str, ...] = ("tensorflow", "pytorch-fid")
INCEPTION_SIZE = 299
INCEPTION_WEIGHTS = "inception-2015-12-05"
_KNOWN = {
    INCEPTION_WEIGHTS: WeightFile(
        INCEPTION_WEIGHTS,
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "pt_inception-2015-12-05-6726825d.pth", "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        "Apache-2.0 (TensorFlow models; converted by mseitzer/pytorch-fid)",
        "TensorFlow Inception-v3 2015-12-05 weights for FID (pytorch-fid layout)"),
}


class InceptionWeightsNotFoundError(WeightsNotFoundError):
    """The FID Inception weight file is missing; the message names it, its URL and where to put it."""


def _missing_message(detail: str) -> str:
    w = _KNOWN[INCEPTION_WEIGHTS]
    return (f"{detail}. FID/KID with Inception features need `{w.filename}` (95.6 MB, sha256 {w.sha256[:16]}...) "
            f"from {w.url}. Put it at {w.cache_path} (cache folder: $ADAPT3D_CACHE or ~/.cache/adapt3d) or pass its "
            "path or URL with --inception-weights; it is downloaded automatically when online and ADAPT3D_OFFLINE "
            "/ HF_HUB_OFFLINE are unset. Without it use --fid-feature clip (FD-CLIP, not comparable with papers)")


# ----------------------------------------------------------------------------------------------------------------
# Network (module names and shapes = the weight file's keys)


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm2d (eps 1e-3, running statistics) -> ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3/1 'SAME' average pool: border windows average only the pixels inside the image."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1; out 224 + ``pool_features``."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max-pool 3/2; out 480 + in_channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17 x 17 block with factorised 7x7 convs (1x7 and 7x1) of width ``c7``; out 768."""

    def __init__(self, in_channels: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            bd = conv(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max-pool 3/2; out 512 + in_channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8 x 8 block with split 1x3 / 3x1 convs; out 2048. ``pool``: 'avg' (Mixed_7b) or 'max' (Mixed_7c, as in the
    TensorFlow graph)."""

    def __init__(self, in_channels: int, pool: Literal["avg", "max"]):
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 network on normalised 299 x 299 inputs (B, 3, 299, 299) in [-1, 1]. ``forward``
    returns pool3 (B, 2048). ``fc`` (the 1008-class head) is loaded so the file's keys match, but not used (no
    Inception Score here)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7a(x)  # (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 2048) pool3


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)`` of float images (B, C, H, W) to ``size``: output
    pixel (i, j) samples the input at (i * H / H_out, j * W / W_out) (float32 coordinates, as TensorFlow), blends
    the two neighbours on each axis (the upper one clamped to the last pixel), first along x, then along y."""
    if not x.is_floating_point() or x.ndim != 4:
        raise ValueError(f"resize_bilinear_tf1: expected float images (B, C, H, W), got {x.dtype} {tuple(x.shape)}")

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / n_out, dtype=torch.float32)
        src = torch.arange(n_out, dtype=torch.float32) * scale  # (n_out,)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo.to(x.device), hi.to(x.device), (src - lo.float()).to(x.device, x.dtype)

    y_lo, y_hi, dy = axis(x.shape[2], size[0])
    x_lo, x_hi, dx = axis(x.shape[3], size[1])

    def along_x(rows: torch.Tensor) -> torch.Tensor:
        left, right = rows.index_select(3, x_lo), rows.index_select(3, x_hi)
        return left + (right - left) * dx  # (B, C, H_out, W_out)

    top, bottom = along_x(x.index_select(2, y_lo)), along_x(x.index_select(2, y_hi))
    return top + (bottom - top) * dy[:, None]


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as they are; float images in [-1, 1] quantised as StyleGAN/EG3D's metrics quantise generator
    output: (x * 127.5 + 128).clamp(0, 255) truncated to uint8.  # (B, 3, H, W)"""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 [0, 255] or float in [-1, 1], got {images.dtype}")
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class InceptionFeatures(nn.Module):
    """FID/KID feature extractor: images (B, 3, H, W), uint8 [0, 255] (or float in [-1, 1], quantised by
    :func:`to_uint8_images`), any size -> pool3 features (B, 2048) float32. ``num_features`` = 2048.

    Args:
        network: a :class:`FIDInceptionV3` with the real weights (see :func:`load_inception`).
        preprocess: 'tensorflow' (TF / torch-fidelity / StyleGAN3 / EG3D) or 'pytorch-fid' (module docstring).
        source: where the weights came from (recorded in reports).
    """

    num_features = 2048

    def __init__(self, network: FIDInceptionV3, preprocess: Preprocess = "tensorflow", source: dict | None = None):
        super().__init__()
        if preprocess not in INCEPTION_PREPROCESS:
            raise ValueError(f"`preprocess` (--fid-inception-preprocess) must be one of "
                             f"{', '.join(INCEPTION_PREPROCESS)}, got {preprocess!r}")
        self.network = network.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.source = dict(source or {})

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The network input (B, 3, 299, 299) in [-1, 1] for images as in :meth:`forward`."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"Inception features: images must be (B, 3, H, W) uint8, got {shape}")
        x = to_uint8_images(images).to(self.network.fc.weight.device).float()
        size = (INCEPTION_SIZE, INCEPTION_SIZE)
        if self.preprocess == "tensorflow":
            if x.shape[-2:] != size:
                x = resize_bilinear_tf1(x, size)
            return (x - 128) / 128
        x = x / 255
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return 2 * x - 1

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(images))  # (B, 2048)


def resolve_inception_weights(weights: str | os.PathLike | None = None,
                              sha256: str | None = None) -> tuple[Path, str]:
    """The local weight file for ``weights`` (see :func:`load_inception`), downloaded into the cache when allowed,
    and its sha256, checked (the published one for the known file, ``sha256`` when given). Raises
    :class:`InceptionWeightsNotFoundError` naming the file and where to get it. Nothing is loaded."""
    known = _KNOWN[INCEPTION_WEIGHTS]
    path = resolve_weight_file(weights, known, _KNOWN, sha256=sha256, error=InceptionWeightsNotFoundError,
                               explain=_missing_message)
    by_name = weights is None or os.fspath(weights) == INCEPTION_WEIGHTS
    return path, check_weight_file(path, sha256 or (known.sha256 if by_name else None), what="Inception weights")


def load_inception(weights: str | os.PathLike | None = None, *, sha256: str | None = None,
                   preprocess: Preprocess = "tensorflow") -> InceptionFeatures:
    """The FID Inception feature extractor from ``weights``: None (= the known file in the cache, downloaded when
    allowed), a path, the known name ``"inception-2015-12-05"`` or an http(s) URL (checked against ``sha256`` when
    given). The known file is checked against its published sha256; a file with another sha256 loads (if its keys
    and shapes are right) and is reported with ``published_weights: False``. Never falls back to random weights."""
    if preprocess not in INCEPTION_PREPROCESS:
        raise ValueError(f"`preprocess` (--fid-inception-preprocess) must be one of {', '.join(INCEPTION_PREPROCESS)}"
                         f", got {preprocess!r}")
    path, digest = resolve_inception_weights(weights, sha256)
    with torch.device("meta"):  # no random init of 24M parameters: the file's tensors are assigned
        network = FIDInceptionV3()
    load_inception_state_dict(path, network)
    return InceptionFeatures(network, preprocess, source={
        "weights": str(path), "sha256": digest, "published_weights": digest == _KNOWN[INCEPTION_WEIGHTS].sha256,
        "network": "inception-v3 (TensorFlow 2015-12-05 graph), pool3 2048", "preprocess": preprocess})


def load_inception_state_dict(path: str | os.PathLike, network: FIDInceptionV3) -> None:
    """Assign a pytorch-fid / torch-fidelity layout state dict to ``network`` (float32): the keys must be exactly
    the network's (BatchNorm ``num_batches_tracked`` may be absent), with equal shapes."""
    path = Path(path)
    state = load_state_dict_file(path, "Inception weights")
    wanted = network.state_dict()
    optional = {k for k in wanted if k.endswith("num_batches_tracked")}
    missing = sorted(set(wanted) - set(state) - optional)
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"Inception weights: {path} does not have the FID Inception layout (missing {missing[:3]}"
                         f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                         f"{'...' if len(unexpected) > 3 else ''}); expected pt_inception-2015-12-05-6726825d.pth")
    for k, v in state.items():
        if tuple(v.shape) != tuple(wanted[k].shape):
            raise ValueError(f"Inception weights: {path} key {k} has shape {tuple(v.shape)}, expected "
                             f"{tuple(wanted[k].shape)}")
    counters = {k: torch.zeros((), dtype=torch.long) for k in optional}
    network.load_state_dict({**counters, **{k: v.float() if v.is_floating_point() else v for k, v in state.items()}},
                            assign=True)
