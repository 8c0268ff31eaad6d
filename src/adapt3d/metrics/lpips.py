"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", version 0.1, with an AlexNet or a VGG16 backbone), implemented here without torchvision or the ``lpips``
package.

For images x, y in [-1, 1] (B, 3, H, W)::

    x' = (x - shift) / scale                        # shift = (-.030, -.088, -.188), scale = (.458, .448, .450)
    f_l = backbone ReLU activations at 5 taps        (l = 0..4)
          VGG16:   after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3   (torchvision ``features`` 3, 8, 15, 22, 29)
          AlexNet: after conv1 ... conv5                              (torchvision ``features`` 1, 4, 7, 9, 11)
    n_l = f_l / (sqrt(sum_c f_l^2) + 1e-10)          # unit length over channels, at every pixel
    d(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (n_l(x) - n_l(y))^2

``w_l`` (non-negative, shape (1, C_l, 1, 1)) are the LPIPS v0.1 "linear heads" of that backbone. This is the
``lpips`` package's ``LPIPS(net=..., version='0.1')`` with its defaults (``spatial=False``, inputs in [-1, 1]).
The package's default net is ``'alex'`` (its authors recommend AlexNet as a forward metric); EG3D's projector,
DATID-3D and StyleGAN-NADA use ``'vgg'`` as a loss. ``adapt3d eval`` defaults to AlexNet, the inversion to VGG16.

The backbones keep torchvision's module indices, so torchvision's public state dicts load as they are. Weight
files (none can be downloaded in the offline CI; see :func:`load_lpips`):

* ``vgg16-397923af.pth``: torchvision's ImageNet VGG16, https://download.pytorch.org/models/vgg16-397923af.pth;
* ``alexnet-owt-7be5be79.pth``: torchvision's ImageNet AlexNet,
  https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (BSD-3 code; weights trained on ImageNet). The hex
  digits in both names are the start of their sha256 and are checked on load;
* LPIPS v0.1 heads ``vgg.pth`` / ``alex.pth`` (cached as ``lpips_v0.1_vgg.pth`` / ``lpips_v0.1_alex.pth``):
  https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/ (BSD-2-Clause), keys
  ``lin0.model.1.weight`` ... ``lin4.model.1.weight``; their sha256 (of the files in that repository, unchanged
  since 2020) are checked.

All are read only with ``torch.load(weights_only=True)``. :meth:`LPIPS.random` builds random weights for tests and
the tiny demo; its distances are meaningless and ``LPIPS.random_weights`` says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
    "LPIPS_NETS",
    "VGG16_LAYERS",
    "VGG16_TAPS",
    "ALEXNET_WIDTHS",
    "ALEXNET_TAPS",
    "LPIPS_SHIFT",
    "LPIPS_SCALE",
    "VGG16_WEIGHTS",
    "LPIPS_HEADS_WEIGHTS",
    "ALEXNET_WEIGHTS",
    "LPIPS_ALEX_HEADS_WEIGHTS",
    "LPIPSWeightsNotFoundError",
    "VGGFeatures",
    "AlexNetFeatures",
    "LPIPS",
    "load_backbone_state_dict",
    "load_vgg16_state_dict",
    "load_lpips_heads",
    "resolve_weights",
    "resolve_lpips_weights",
    "known_weight_path",
    "load_lpips",
]

LPIPSNet = Literal["alex", "vgg"]
LPIPS_NETS: tuple[str, ...] = ("alex", "vgg")

# torchvision's VGG16 "features": conv widths, "M" = 2x2 max-pool; every conv is followed by a ReLU.
VGG16_LAYERS: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                       512, 512, 512, "M")
# Indices (in ``features``) of the ReLUs after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3.
VGG16_TAPS: tuple[int, ...] = (3, 8, 15, 22, 29)
# torchvision's AlexNet "features": conv1..conv5 widths; the taps are the ReLUs after each conv.
ALEXNET_WIDTHS: tuple[int, ...] = (64, 192, 384, 256, 256)
ALEXNET_TAPS: tuple[int, ...] = (1, 4, 7, 9, 11)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

VGG16_WEIGHTS = "vgg16-imagenet"
LPIPS_HEADS_WEIGHTS = "lpips-vgg-v0.1"
ALEXNET_WEIGHTS = "alexnet-imagenet"
LPIPS_ALEX_HEADS_WEIGHTS = "lpips-alex-v0.1"
_TORCHVISION = "torchvision (BSD-3-Clause code); weights trained on ImageNet - check ImageNet's terms"
_HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{}.pth"
_HEADS_LICENCE = "BSD-2-Clause (richzhang/PerceptualSimilarity)"
_KNOWN = {
    VGG16_WEIGHTS: WeightFile(VGG16_WEIGHTS, "https://download.pytorch.org/models/vgg16-397923af.pth",
                              "vgg16-397923af.pth", None, _TORCHVISION,
                              "VGG16 ImageNet weights (torchvision), the LPIPS-vgg backbone"),
    LPIPS_HEADS_WEIGHTS: WeightFile(LPIPS_HEADS_WEIGHTS, _HEADS_URL.format("vgg"), "lpips_v0.1_vgg.pth",
                                    "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
                                    _HEADS_LICENCE, "LPIPS v0.1 linear heads for VGG16 (lin0..lin4)"),
    ALEXNET_WEIGHTS: WeightFile(ALEXNET_WEIGHTS, "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                                "alexnet-owt-7be5be79.pth", None, _TORCHVISION,
                                "AlexNet ImageNet weights (torchvision), the LPIPS-alex backbone"),
    LPIPS_ALEX_HEADS_WEIGHTS: WeightFile(LPIPS_ALEX_HEADS_WEIGHTS, _HEADS_URL.format("alex"), "lpips_v0.1_alex.pth",
                                         "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
                                         _HEADS_LICENCE, "LPIPS v0.1 linear heads for AlexNet (lin0..lin4)"),
}
# net -> (backbone weights, heads weights, name of the backbone in reports and CLI flags)
_FILES = {"vgg": (VGG16_WEIGHTS, LPIPS_HEADS_WEIGHTS, "vgg16"), "alex": (ALEXNET_WEIGHTS, LPIPS_ALEX_HEADS_WEIGHTS,
                                                                        "alexnet")}
_FLAGS = {"vgg": "--lpips-vgg-weights", "alex": "--lpips-alex-weights"}


def known_weight_path(name: str) -> Path:
    """Where the known weight file ``name`` (VGG16_WEIGHTS, LPIPS_HEADS_WEIGHTS, ...) lives in the cache."""
    return _KNOWN[name].cache_path


class LPIPSWeightsNotFoundError(WeightsNotFoundError):
    """A backbone or LPIPS-head weight file is missing; the message names both files of the net and where to put
    them."""


def _check_net(net: str) -> None:
    if net not in _FILES:
        raise ValueError(f"`net` (--lpips-net) must be one of {', '.join(LPIPS_NETS)}, got {net!r}")


def _missing_message(detail: str, net: str) -> str:
    backbone, heads = (_KNOWN[n] for n in _FILES[net][:2])
    return (f"{detail}. LPIPS-{net} needs two weight files: (1) {backbone.description.split(' (')[0]} "
            f"`{backbone.filename}` from {backbone.url} and (2) the LPIPS v0.1 linear heads `{net}.pth` from "
            f"{heads.url}. Put them at {backbone.cache_path} and {heads.cache_path} (cache folder: $ADAPT3D_CACHE "
            f"or ~/.cache/adapt3d), or pass their paths with {_FLAGS[net]} and --lpips-heads-weights (eval); they "
            "are downloaded automatically when online and ADAPT3D_OFFLINE / HF_HUB_OFFLINE are unset")


class _TappedFeatures(nn.Module):
    """A conv stack ``features`` (torchvision's module indices) returning the outputs at ``taps``."""

    features: nn.Sequential
    taps: tuple[int, ...]
    channels: tuple[int, ...]
    min_size: int  # smallest input side (px) that reaches the last tap

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.taps:
                out.append(x)  # (B, C_l, H_l, W_l)
        return out


class VGGFeatures(_TappedFeatures):
    """A VGG-style conv stack with torchvision's module indices; returns the activations at ``taps``.

    ``layers``: conv output widths and "M" (max-pool 2x2); each conv (3x3, padding 1, bias) is followed by an
    in-place-free ReLU, so conv k of VGG16 lands at torchvision's index. ``taps``: indices in ``features`` whose
    outputs are returned (VGG16 / LPIPS: the ReLUs 3, 8, 15, 22, 29). Modules after the last tap are not built.
    """

    def __init__(self, layers: Sequence[int | str] = VGG16_LAYERS, taps: Sequence[int] = VGG16_TAPS,
                 in_channels: int = 3):
        super().__init__()
        modules: list[nn.Module] = []
        channels = in_channels
        for item in layers:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            elif isinstance(item, int) and item > 0:
                modules += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
            else:
                raise ValueError(f"layers: items must be positive ints or 'M', got {item!r}")
        taps = tuple(int(t) for t in taps)
        if not taps or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= len(modules):
            raise ValueError(f"taps must be increasing indices in [0, {len(modules) - 1}], got {taps}")
        self.features = nn.Sequential(*modules[:taps[-1] + 1])
        self.taps = taps
        self.channels = tuple(self._width_at(t) for t in taps)
        self.min_size = 2 ** sum(isinstance(m, nn.MaxPool2d) for m in self.features)

    def _width_at(self, index: int) -> int:
        width = None
        for m in list(self.features)[:index + 1]:
            if isinstance(m, nn.Conv2d):
                width = m.out_channels
        if width is None:
            raise ValueError(f"tap {index} comes before the first conv")
        return width


class AlexNetFeatures(_TappedFeatures):
    """torchvision's AlexNet ``features`` up to the last ReLU (indices 0-11): conv1 11x11/4 pad 2, ReLU,
    max-pool 3/2, conv2 5x5 pad 2, ReLU, max-pool 3/2, conv3-conv5 3x3 pad 1 each followed by a ReLU. Returns the
    five ReLU outputs (taps 1, 4, 7, 9, 11). ``widths``: the five conv widths (ALEXNET_WIDTHS for the real net;
    smaller ones only for tests). Inputs need at least 31 px per side."""

    def __init__(self, widths: Sequence[int] = ALEXNET_WIDTHS, in_channels: int = 3):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"widths: expected 5 positive conv widths, got {widths}")
        c1, c2, c3, c4, c5 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU())
        self.taps = ALEXNET_TAPS
        self.channels = widths
        self.min_size = 31  # conv1 -> 7, pool -> 3, pool -> 1


def _normalize_channels(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS distance (see the module docstring). ``forward(x, y)`` takes images in [-1, 1] (B, 3, H, W) and
    returns (B,) distances; identical inputs give exactly 0. Differentiable; the weights are frozen.

    Args:
        backbone: a :class:`VGGFeatures` (ImageNet VGG16) or :class:`AlexNetFeatures` (ImageNet AlexNet).
        heads: one non-negative weight tensor per tap, shape (1, C_l, 1, 1) or (C_l,).
        resolution: if set, both images are resized (bilinear, antialiased) to this square size first.
        random_weights: True for the meaningless random model of :meth:`random`.
        source: where the weights came from (recorded in reports).
    """

    def __init__(self, backbone: VGGFeatures | AlexNetFeatures, heads: Sequence[torch.Tensor], *,
                 resolution: int | None = None, random_weights: bool = False, source: dict | None = None):
        super().__init__()
        if len(heads) != len(backbone.taps):
            raise ValueError(f"heads: expected {len(backbone.taps)} head weights (one per tap), got {len(heads)}")
        self.backbone = backbone.eval().requires_grad_(False)
        for k, (w, c) in enumerate(zip(heads, backbone.channels)):
            w = torch.as_tensor(w, dtype=torch.float32).reshape(-1)
            if w.numel() != c:
                raise ValueError(f"heads[{k}]: expected {c} weights for tap {backbone.taps[k]}, got {w.numel()}")
            self.register_buffer(f"head{k}", w.reshape(1, c, 1, 1).clone())
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).reshape(1, 3, 1, 1))
        if resolution is not None and resolution < max(16, backbone.min_size):
            raise ValueError(f"resolution: must be >= {max(16, backbone.min_size)} for this backbone or None, got "
                             f"{resolution}")
        self.resolution = resolution
        self.random_weights = random_weights
        self.source = dict(source or {})

    @property
    def net(self) -> str:
        return "alex" if isinstance(self.backbone, AlexNetFeatures) else "vgg"

    @property
    def heads(self) -> list[torch.Tensor]:
        return [getattr(self, f"head{k}") for k in range(len(self.backbone.taps))]

    @classmethod
    def random(cls, seed: int = 0, layers: Sequence[int | str] = VGG16_LAYERS, taps: Sequence[int] = VGG16_TAPS,
               resolution: int | None = None, net: LPIPSNet = "vgg") -> "LPIPS":
        """Random backbone weights (PyTorch default init) and random positive heads, seeded. Meaningless
        distances. ``net='alex'`` builds the full-width AlexNet (``layers``/``taps`` then do not apply)."""
        _check_net(net)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = AlexNetFeatures() if net == "alex" else VGGFeatures(layers, taps)
            heads = [torch.rand(c) for c in backbone.channels]
        return cls(backbone, heads, resolution=resolution, random_weights=True,
                   source={"weights": "random", "net": net, "seed": seed})

    def _prepare(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"`{name}` must be images (B, 3, H, W) in [-1, 1], got {shape}")
        x = x.to(self.shift.device, torch.float32)
        if self.resolution is not None and x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=True)
        if min(x.shape[-2:]) < self.backbone.min_size:
            raise ValueError(f"`{name}`: LPIPS-{self.net} needs images of at least {self.backbone.min_size} px per "
                             f"side, got {tuple(x.shape[-2:])}; upsample them or set the LPIPS resolution")
        return (x - self.shift) / self.scale

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised features of images x (B, 3, H, W) in [-1, 1]: one (B, C_l, H_l, W_l) per tap."""
        return [_normalize_channels(f) for f in self.backbone(self._prepare(x, "x"))]

    def distance_from_features(self, fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor]) -> torch.Tensor:
        """LPIPS between two feature lists from :meth:`features` (batch sizes broadcast).  # (B,)"""
        total = 0.0
        for f_a, f_b, w in zip(fx, fy, self.heads):
            total = total + ((f_a - f_b) ** 2 * w).sum(dim=1).mean(dim=(1, 2))  # (B,)
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape != y.shape:
            raise ValueError(f"`x` and `y` must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        return self.distance_from_features(self.features(x), self.features(y))


# ----------------------------------------------------------------------------------------------------------------
# Weight files


def load_backbone_state_dict(path: str | os.PathLike, backbone: VGGFeatures | AlexNetFeatures,
                             what: str = "VGG16 weights") -> None:
    """Load torchvision-layout weights (``features.N.weight/bias``; ``classifier.*`` ignored) into ``backbone``
    in place."""
    path = Path(path)
    state = load_state_dict_file(path, what)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    wanted = backbone.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"{what}: {path} lacks {missing[:4]}{'...' if len(missing) > 4 else ''}; expected "
                         "torchvision's state dict (keys features.N.weight / features.N.bias)")
    for k, v in wanted.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"{what}: {path} key {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    backbone.load_state_dict({k: state[k] for k in wanted})


def load_vgg16_state_dict(path: str | os.PathLike, backbone: VGGFeatures) -> None:
    """Load torchvision-layout VGG16 weights in place (checks the sha256 prefix a torchvision name promises)."""
    check_weight_file(path, what="VGG16 weights")
    load_backbone_state_dict(path, backbone, "VGG16 weights")


def load_lpips_heads(path: str | os.PathLike, channels: Sequence[int]) -> list[torch.Tensor]:
    """Read LPIPS v0.1 heads ``lin{k}.model.1.weight`` (1, C_k, 1, 1) from ``path``."""
    path = Path(path)
    state = load_state_dict_file(path, "LPIPS heads")
    heads = []
    for k, c in enumerate(channels):
        key = next((name for name in (f"lin{k}.model.1.weight", f"module.lin{k}.model.1.weight", f"lin{k}.weight")
                    if name in state), None)
        if key is None:
            raise ValueError(f"LPIPS heads: {path} has no key lin{k}.model.1.weight (keys: {sorted(state)[:6]})")
        w = state[key]
        if w.numel() != c:
            raise ValueError(f"LPIPS heads: {path} key {key} has shape {tuple(w.shape)}, expected (1, {c}, 1, 1) "
                             "- heads of another backbone (--lpips-net)?")
        heads.append(w.float().reshape(-1))
    return heads


def _net_of(default: str) -> str:
    return next(net for net, files in _FILES.items() if default in files[:2])


def resolve_weights(spec: str | os.PathLike | None, default: str, sha256: str | None = None) -> Path:
    """A local file for a weights spec: None (the known ``default``), a path, a known name, or an http(s) URL.

    URLs are downloaded once into the cache (checked against ``sha256`` when given, else recorded on first use).
    Raises :class:`LPIPSWeightsNotFoundError` naming both files of the net when the file is not available.
    """
    net = _net_of(default)
    return resolve_weight_file(spec, _KNOWN[default], _KNOWN, sha256=sha256, error=LPIPSWeightsNotFoundError,
                               explain=lambda detail: _missing_message(f"LPIPS {detail}", net))


def _expected_sha256(spec: str | os.PathLike | None, default: str, sha256: str | None) -> str | None:
    """The sha256 a file must have: the explicit one, else the published one of a known file asked for by name."""
    if sha256 is not None:
        return sha256
    name = default if spec is None else os.fspath(spec)
    return _KNOWN[name].sha256 if name in _KNOWN else None


def resolve_lpips_weights(backbone: str | os.PathLike | None = None, heads: str | os.PathLike | None = None, *,
                          net: LPIPSNet = "vgg", backbone_sha256: str | None = None,
                          heads_sha256: str | None = None) -> tuple[Path, Path]:
    """Local files (backbone, heads) of ``net``'s LPIPS (see :func:`resolve_weights`); nothing is loaded."""
    _check_net(net)
    backbone_name, heads_name, _ = _FILES[net]
    return (resolve_weights(backbone, backbone_name, backbone_sha256),
            resolve_weights(heads, heads_name, heads_sha256))


def load_lpips(backbone: str | os.PathLike | None = None, heads: str | os.PathLike | None = None, *,
               net: LPIPSNet = "vgg", backbone_sha256: str | None = None, heads_sha256: str | None = None,
               resolution: int | None = None) -> LPIPS:
    """The real LPIPS model of ``net`` ('vgg' or 'alex') from its two public weight files (paths, known names, or
    URLs; None = the known file in the cache; see :func:`resolve_weights`). Never falls back to random weights.
    Checksums: see :mod:`adapt3d.metrics.weights`."""
    backbone_path, heads_path = resolve_lpips_weights(backbone, heads, net=net, backbone_sha256=backbone_sha256,
                                                      heads_sha256=heads_sha256)
    backbone_name, heads_name, label = _FILES[net]
    what = f"{'VGG16' if net == 'vgg' else 'AlexNet'} weights"
    backbone_digest = check_weight_file(backbone_path, _expected_sha256(backbone, backbone_name, backbone_sha256),
                                        what=what)
    heads_digest = check_weight_file(heads_path, _expected_sha256(heads, heads_name, heads_sha256),
                                     what="LPIPS heads")
    model = AlexNetFeatures() if net == "alex" else VGGFeatures()
    load_backbone_state_dict(backbone_path, model, what)
    head_weights = load_lpips_heads(heads_path, model.channels)
    return LPIPS(model, head_weights, resolution=resolution,
                 source={"weights": "pretrained", "net": net, label: str(backbone_path), "heads": str(heads_path),
                         f"{label}_sha256": backbone_digest, "heads_sha256": heads_digest})
