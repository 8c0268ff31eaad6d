"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", version 0.1 with VGG16), implemented here without torchvision or the ``lpips`` package.

For images x, y in [-1, 1] (B, 3, H, W)::

    x' = (x - shift) / scale                        # shift = (-.030, -.088, -.188), scale = (.458, .448, .450)
    f_l = VGG16 ReLU activations after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3   (l = 0..4)
    n_l = f_l / (sqrt(sum_c f_l^2) + 1e-10)          # unit length over channels, at every pixel
    d(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (n_l(x) - n_l(y))^2

``w_l`` (non-negative, shape (1, C_l, 1, 1)) are the LPIPS v0.1 "linear heads". The backbone is ImageNet VGG16
with torchvision's layer indices (``features.0`` ... ``features.28``), so torchvision's public state dict loads as
is. Weight files (neither can be downloaded in the offline CI; see :func:`load_lpips`):

* ``vgg16-397923af.pth``: torchvision's ImageNet VGG16, https://download.pytorch.org/models/vgg16-397923af.pth
  (BSD-3 code; weights trained on ImageNet). The hex digits in the name are the start of its sha256 and are
  checked on load.
* LPIPS v0.1 ``vgg.pth`` (cached as ``lpips_v0.1_vgg.pth``): https://github.com/richzhang/PerceptualSimilarity/raw/
  master/lpips/weights/v0.1/vgg.pth (BSD-2-Clause), keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``.

Both are read only with ``torch.load(weights_only=True)``. :meth:`LPIPS.random` builds random weights for tests and
the tiny demo; its distances are meaningless and ``LPIPS.random_weights`` says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adapt3d.models import hub
from adapt3d.utils.torch_load import OldTorchError, load_weights_only

__all__ = [
    "VGG16_LAYERS",
    "VGG16_TAPS",
    "LPIPS_SHIFT",
    "LPIPS_SCALE",
    "VGG16_WEIGHTS",
    "LPIPS_HEADS_WEIGHTS",
    "LPIPSWeightsNotFoundError",
    "VGGFeatures",
    "LPIPS",
    "load_vgg16_state_dict",
    "load_lpips_heads",
    "resolve_weights",
    "known_weight_path",
    "load_lpips",
]

# torchvision's VGG16 "features": conv widths, "M" = 2x2 max-pool; every conv is followed by a ReLU.
VGG16_LAYERS: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                       512, 512, 512, "M")
# Indices (in ``features``) of the ReLUs after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3.
VGG16_TAPS: tuple[int, ...] = (3, 8, 15, 22, 29)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

VGG16_WEIGHTS = "vgg16-imagenet"
LPIPS_HEADS_WEIGHTS = "lpips-vgg-v0.1"
# Known files: (url, cache file name, licence, description). They are registered with adapt3d.models.hub only for
# the duration of a lookup, so the generator-checkpoint registry (and its error messages) stays unchanged.
_KNOWN = {
    VGG16_WEIGHTS: ("https://download.pytorch.org/models/vgg16-397923af.pth", "vgg16-397923af.pth",
                    "torchvision (BSD-3-Clause code); weights trained on ImageNet - check ImageNet's terms",
                    "VGG16 ImageNet weights (torchvision), the LPIPS backbone"),
    LPIPS_HEADS_WEIGHTS: ("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
                          "lpips_v0.1_vgg.pth", "BSD-2-Clause (richzhang/PerceptualSimilarity)",
                          "LPIPS v0.1 linear heads for VGG16 (lin0..lin4)"),
}


def known_weight_path(name: str) -> Path:
    """Where the known weight file ``name`` (VGG16_WEIGHTS or LPIPS_HEADS_WEIGHTS) lives in the cache."""
    return (hub.cache_dir() / "checkpoints" / _KNOWN[name][1]).absolute()


@contextlib.contextmanager
def _temporarily_registered(name: str, url: str, sha256: str | None, filename: str, licence: str = "",
                            description: str = ""):
    previous = hub.known_checkpoints().get(name)
    hub.register_checkpoint(name, url, sha256, filename, licence=licence, description=description)
    try:
        yield
    finally:
        if previous is None:
            hub.unregister_checkpoint(name)
        else:
            hub.register_checkpoint(previous.name, previous.url, previous.sha256, previous.filename,
                                    licence=previous.licence, description=previous.description)


class LPIPSWeightsNotFoundError(FileNotFoundError):
    """The VGG16 or LPIPS-head weight file is missing; the message names both files and where to put them."""


def _missing_message(detail: str) -> str:
    vgg, heads = _KNOWN[VGG16_WEIGHTS], _KNOWN[LPIPS_HEADS_WEIGHTS]
    return (f"{detail}. LPIPS needs two weight files: (1) VGG16 ImageNet weights `{vgg[1]}` from {vgg[0]} and "
            f"(2) the LPIPS v0.1 linear heads `vgg.pth` from {heads[0]}. Put them at "
            f"{known_weight_path(VGG16_WEIGHTS)} and {known_weight_path(LPIPS_HEADS_WEIGHTS)} "
            "(cache folder: $ADAPT3D_CACHE or ~/.cache/adapt3d), or pass their paths with --lpips-vgg-weights and "
            "--lpips-heads-weights (eval); they are downloaded automatically when online and ADAPT3D_OFFLINE / "
            "HF_HUB_OFFLINE are unset")


class VGGFeatures(nn.Module):
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

    def _width_at(self, index: int) -> int:
        width = None
        for m in list(self.features)[:index + 1]:
            if isinstance(m, nn.Conv2d):
                width = m.out_channels
        if width is None:
            raise ValueError(f"tap {index} comes before the first conv")
        return width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.taps:
                out.append(x)  # (B, C_l, H_l, W_l)
        return out


def _normalize_channels(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS distance (see the module docstring). ``forward(x, y)`` takes images in [-1, 1] (B, 3, H, W) and
    returns (B,) distances; identical inputs give exactly 0. Differentiable; the weights are frozen.

    Args:
        backbone: a :class:`VGGFeatures` (ImageNet VGG16 for real LPIPS).
        heads: one non-negative weight tensor per tap, shape (1, C_l, 1, 1) or (C_l,).
        resolution: if set, both images are resized (bilinear, antialiased) to this square size first.
        random_weights: True for the meaningless random model of :meth:`random`.
        source: where the weights came from (recorded in reports).
    """

    def __init__(self, backbone: VGGFeatures, heads: Sequence[torch.Tensor], *, resolution: int | None = None,
                 random_weights: bool = False, source: dict | None = None):
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
        if resolution is not None and resolution < 16:
            raise ValueError(f"resolution: must be >= 16 or None, got {resolution}")
        self.resolution = resolution
        self.random_weights = random_weights
        self.source = dict(source or {})

    @property
    def heads(self) -> list[torch.Tensor]:
        return [getattr(self, f"head{k}") for k in range(len(self.backbone.taps))]

    @classmethod
    def random(cls, seed: int = 0, layers: Sequence[int | str] = VGG16_LAYERS, taps: Sequence[int] = VGG16_TAPS,
               resolution: int | None = None) -> "LPIPS":
        """Random VGG weights (PyTorch default init) and random positive heads, seeded. Meaningless distances."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = VGGFeatures(layers, taps)
            heads = [torch.rand(c) for c in backbone.channels]
        return cls(backbone, heads, resolution=resolution, random_weights=True,
                   source={"weights": "random", "seed": seed})

    def _prepare(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"`{name}` must be images (B, 3, H, W) in [-1, 1], got {shape}")
        x = x.to(self.shift.device, torch.float32)
        if self.resolution is not None and x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=True)
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


def _torch_load(path: Path, what: str) -> dict:
    try:
        obj = load_weights_only(path, f"{what} {path}")
    except OldTorchError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for us
        raise ValueError(f"{what}: cannot read {path} as a weights-only torch file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: {path} holds a {type(obj).__name__}, expected a state dict")
    return obj


def _check_sha_prefix(path: Path) -> None:
    """torchvision names files ``<name>-<first hex digits of sha256>.pth``: verify those digits."""
    match = re.search(r"-([0-9a-f]{8,64})\.pth$", path.name)
    if match and not hub.sha256_file(path).startswith(match.group(1)):
        raise hub.ChecksumMismatchError(f"{path}: its sha256 does not start with {match.group(1)} as its name "
                                        "promises; the file is corrupt or not the published one - delete it")


def load_vgg16_state_dict(path: str | os.PathLike, backbone: VGGFeatures) -> None:
    """Load torchvision-layout VGG16 weights (``features.N.weight/bias``; ``classifier.*`` ignored) in place."""
    path = Path(path)
    _check_sha_prefix(path)
    state = _torch_load(path, "VGG16 weights")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    wanted = backbone.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"VGG16 weights: {path} lacks {missing[:4]}{'...' if len(missing) > 4 else ''}; expected "
                         "torchvision's vgg16 state dict (keys features.N.weight / features.N.bias)")
    for k, v in wanted.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"VGG16 weights: {path} key {k} has shape {tuple(state[k].shape)}, expected "
                             f"{tuple(v.shape)}")
    backbone.load_state_dict({k: state[k] for k in wanted})


def load_lpips_heads(path: str | os.PathLike, channels: Sequence[int]) -> list[torch.Tensor]:
    """Read LPIPS v0.1 heads ``lin{k}.model.1.weight`` (1, C_k, 1, 1) from ``path``."""
    path = Path(path)
    state = _torch_load(path, "LPIPS heads")
    heads = []
    for k, c in enumerate(channels):
        key = next((name for name in (f"lin{k}.model.1.weight", f"module.lin{k}.model.1.weight", f"lin{k}.weight")
                    if name in state), None)
        if key is None:
            raise ValueError(f"LPIPS heads: {path} has no key lin{k}.model.1.weight (keys: {sorted(state)[:6]})")
        w = state[key]
        if w.numel() != c:
            raise ValueError(f"LPIPS heads: {path} key {key} has shape {tuple(w.shape)}, expected (1, {c}, 1, 1)")
        heads.append(w.float().reshape(-1))
    return heads


def resolve_weights(spec: str | os.PathLike | None, default: str, sha256: str | None = None) -> Path:
    """A local file for a weights spec: None (the known default), a path, a known name, or an http(s) URL.

    URLs are downloaded once into the cache (checked against ``sha256`` when given, else recorded on first use).
    Raises :class:`LPIPSWeightsNotFoundError` naming both LPIPS files when the file is not available.
    """
    spec = default if spec is None else os.fspath(spec)
    if re.match(r"^https?://", spec):
        name = "url-" + hashlib.sha1(spec.encode()).hexdigest()[:12]
        filename = spec.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "weights.pth"
        registration = _temporarily_registered(name, spec, sha256, f"{name}-{filename}",
                                               description="LPIPS weights by URL")
    elif spec in _KNOWN:
        name = spec
        url, filename, licence, description = _KNOWN[spec]
        registration = _temporarily_registered(name, url, None, filename, licence, description)
    else:
        name, registration = spec, contextlib.nullcontext()
    try:
        with registration:
            return hub.resolve_checkpoint(name)
    except hub.CheckpointNotFoundError as e:
        raise LPIPSWeightsNotFoundError(_missing_message(f"LPIPS weights {spec!r} are not available ({e})")) from e
    except hub.CheckpointDownloadError as e:
        raise LPIPSWeightsNotFoundError(_missing_message(f"LPIPS weights {spec!r} could not be fetched ({e})")) from e


def load_lpips(vgg: str | os.PathLike | None = None, heads: str | os.PathLike | None = None, *,
               vgg_sha256: str | None = None, heads_sha256: str | None = None,
               resolution: int | None = None) -> LPIPS:
    """The real LPIPS-VGG model from the two public weight files (paths, known names, or URLs; see
    :func:`resolve_weights`). Never falls back to random weights."""
    vgg_path = resolve_weights(vgg, VGG16_WEIGHTS, vgg_sha256)
    heads_path = resolve_weights(heads, LPIPS_HEADS_WEIGHTS, heads_sha256)
    backbone = VGGFeatures()
    load_vgg16_state_dict(vgg_path, backbone)
    head_weights = load_lpips_heads(heads_path, backbone.channels)
    return LPIPS(backbone, head_weights, resolution=resolution,
                 source={"weights": "pretrained", "vgg16": str(vgg_path), "heads": str(heads_path)})
