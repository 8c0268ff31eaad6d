"""EG3D's dual discriminator, written from the facts in ``shared/docs/eg3d-facts.md`` (§1.7, §4, Appendix B).

The discriminator sees the final image (N, 3, R, R) and the raw neural rendering (N, 3, r, r) resized to R, stacked
into 6 channels. A StyleGAN2 "resnet" discriminator reduces it from R x R to 4 x 4, and the epilogue's output is
projected onto an embedding of the camera label (a label-only mapping network):
``logit = <out, cmap> / sqrt(cmap_dim)``.

Module, parameter and buffer names equal the official ones, so an official ``D`` state dict loads with
``load_state_dict(sd, strict=True)`` and no renaming. On CPU (float32) the outputs match the official CPU outputs.

Public API:
- :class:`MinibatchStdLayer`, :class:`DiscriminatorBlock`, :class:`DiscriminatorEpilogue`,
  :class:`DualDiscriminator` (the modules);
- :func:`filtered_resizing` (how ``image_raw`` is brought to the image resolution);
- :class:`DualDiscriminatorConfig` (JSON-serialisable constructor arguments), :func:`build_discriminator`,
  :func:`discriminator_config_from_official` (official pickle ``init_kwargs`` -> config).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adapt3d.models import ops
from adapt3d.models.stylegan2 import Conv2dLayer, FullyConnectedLayer, MappingNetwork
from adapt3d.utils.io import to_jsonable

__all__ = [
    "MinibatchStdLayer",
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "DualDiscriminator",
    "filtered_resizing",
    "RESIZE_MODES",
    "DualDiscriminatorConfig",
    "build_discriminator",
    "discriminator_config_from_official",
]

RESIZE_MODES = ("antialiased", "none")

# Keys each nested kwargs dict may hold (what the official sub-module constructors accept and D does not set itself).
_BLOCK_KEYS = frozenset({"activation", "resample_filter", "fp16_channels_last", "freeze_layers"})
_MAPPING_KEYS = frozenset({"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier"})
_EPILOGUE_KEYS = frozenset({"mbstd_group_size", "mbstd_num_channels", "activation"})


def _check_architecture(architecture: str) -> None:
    if architecture != "resnet":
        raise ValueError(f"architecture must be 'resnet' (the only one EG3D's discriminator uses), got "
                         f"{architecture!r}")


def _use_fp16(flag: bool, ref: torch.Tensor, force_fp32: bool) -> bool:
    """fp16 only on CUDA, as in the official code (CPU runs stay float32)."""
    return flag and not force_fp32 and ref.device.type == "cuda"


class MinibatchStdLayer(nn.Module):
    """Appends the minibatch standard deviation as ``num_channels`` extra feature maps.

    The batch is split into groups of ``G = min(group_size, N)`` samples; sample ``i`` belongs to group ``i % (N/G)``
    (the batch is read as (G, N/G, ...)). For every group the std over the group members is averaged over the
    channels of each of the ``num_channels`` channel slices and over space, and broadcast back to each member.
    """

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        if group_size is not None and group_size < 1:
            raise ValueError(f"group_size must be >= 1 or None, got {group_size}")
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C + num_channels, H, W)
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        f = self.num_channels
        if n % g != 0:
            raise ValueError(f"minibatch-std: batch size {n} is not divisible by the group size {g} "
                             f"(= min(group_size={self.group_size}, N)); use a batch size that is a multiple of it")
        if c % f != 0:
            raise ValueError(f"minibatch-std: {c} channels are not divisible by num_channels={f}")
        y = x.reshape(g, -1, f, c // f, h, w)  # (G, n, F, c, H, W)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)  # variance over the group, (n, F, c, H, W)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])  # (n, F)
        y = y.reshape(-1, f, 1, 1)
        y = y.repeat(g, 1, h, w)  # (N, F, H, W)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorBlock(nn.Module):
    """One resolution of the resnet discriminator: [fromrgb], conv0 3x3, conv1 3x3 down 2, plus a 1x1 skip.

    ``out = skip(x) * sqrt(0.5) + conv1(conv0(x)) * sqrt(0.5)`` (both gains applied inside the layers, so conv1's
    clamp is scaled too). ``fromrgb`` (1x1) exists only in the first block (``in_channels == 0``).
    Layers are numbered from ``first_layer_idx`` in the order fromrgb, conv0, conv1, skip; layers whose index is
    below ``freeze_layers`` store their weights as buffers (not trainable). ``use_fp16`` takes effect on CUDA only.
    """

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 first_layer_idx: int, architecture: str = "resnet", activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 use_fp16: bool = False, fp16_channels_last: bool = False, freeze_layers: int = 0):
        super().__init__()
        _check_architecture(architecture)
        if in_channels < 0 or tmp_channels < 1 or out_channels < 1 or img_channels < 1:
            raise ValueError(f"bad channel counts: in={in_channels}, tmp={tmp_channels}, out={out_channels}, "
                             f"img={img_channels}")
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.first_layer_idx, self.architecture = first_layer_idx, architecture
        self.use_fp16, self.channels_last = use_fp16, (use_fp16 and fp16_channels_last)
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.num_layers = 0

        def trainable() -> bool:
            layer_idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return layer_idx >= freeze_layers

        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       conv_clamp=conv_clamp, resample_filter=resample_filter,
                                       trainable=trainable())
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 conv_clamp=conv_clamp, resample_filter=resample_filter, trainable=trainable())
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 conv_clamp=conv_clamp, resample_filter=resample_filter, trainable=trainable())
        self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                resample_filter=resample_filter, trainable=trainable())

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None,
                force_fp32: bool = False) -> tuple[torch.Tensor, None]:
        """x: (N, in_channels, R, R) features (None for the first block); img: (N, img_channels, R, R) (first block).

        Returns (features (N, out_channels, R/2, R/2), None) — the image is consumed by the first block.
        """
        ref = x if x is not None else img
        if ref is None:
            raise ValueError("DiscriminatorBlock needs x or img")
        fp16 = _use_fp16(self.use_fp16, ref, force_fp32)
        dtype = ops.low_precision_dtype() if fp16 else torch.float32
        fmt = torch.channels_last if fp16 and self.channels_last else torch.contiguous_format
        if x is not None:
            expected = (self.in_channels, self.resolution, self.resolution)
            if x.ndim != 4 or tuple(x.shape[1:]) != expected:
                raise ValueError(f"b{self.resolution}: expected features (N, {expected[0]}, {expected[1]}, "
                                 f"{expected[2]}), got {tuple(x.shape)}")
            x = x.to(dtype=dtype, memory_format=fmt)
        if self.in_channels == 0:
            if img is None:
                raise ValueError(f"b{self.resolution}: the first block needs the image")
            expected = (self.img_channels, self.resolution, self.resolution)
            if img.ndim != 4 or tuple(img.shape[1:]) != expected:
                raise ValueError(f"b{self.resolution}: expected image (N, {expected[0]}, {expected[1]}, "
                                 f"{expected[2]}), got {tuple(img.shape)}")
            img = img.to(dtype=dtype, memory_format=fmt)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
        gain = math.sqrt(0.5)
        y = self.skip(x, gain=gain)
        x = self.conv0(x)
        x = self.conv1(x, gain=gain)
        return y + x, None

    def extra_repr(self) -> str:
        return (f"resolution={self.resolution}, in_channels={self.in_channels}, first_layer_idx="
                f"{self.first_layer_idx}, num_layers={self.num_layers}, use_fp16={self.use_fp16}")


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: minibatch-std, conv 3x3, fc (flattened), out; projected onto ``cmap`` when ``cmap_dim > 0``."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", mbstd_group_size: int | None = 4, mbstd_num_channels: int = 1,
                 activation: str = "lrelu", conv_clamp: float | None = None):
        super().__init__()
        _check_architecture(architecture)
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.img_channels, self.architecture = img_channels, architecture
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None = None, cmap: torch.Tensor | None = None,
                force_fp32: bool = False) -> torch.Tensor:
        """x: (N, in_channels, 4, 4); cmap: (N, cmap_dim) or None -> (N, 1) (or (N, 1) raw output if cmap_dim 0)."""
        expected = (self.in_channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"b{self.resolution}: expected features (N, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}), got {tuple(x.shape)}")
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)  # (N, cmap_dim) or (N, 1)
        if self.cmap_dim > 0:
            if cmap is None or tuple(cmap.shape) != (x.shape[0], self.cmap_dim):
                raise ValueError(f"expected cmap of shape ({x.shape[0]}, {self.cmap_dim}), got "
                                 f"{None if cmap is None else tuple(cmap.shape)}")
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, in_channels={self.in_channels}, cmap_dim={self.cmap_dim}"


def filtered_resizing(image: torch.Tensor, size: int, mode: str = "antialiased") -> torch.Tensor:
    """Resize (N, C, h, w) to (N, C, size, size) bilinearly (align_corners=False), as EG3D's D does for image_raw.

    ``'antialiased'`` (EG3D's default) low-pass filters when downsampling (``antialias=True``); ``'none'`` is plain
    bilinear. The official code's other mode ('classic') is not implemented.
    """
    if mode == "antialiased":
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if mode == "none":
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r} ('classic' is not supported)")


class DualDiscriminator(nn.Module):
    """EG3D's discriminator: a label-conditioned resnet discriminator on [image, resized image_raw] (6 channels).

    ``img_channels`` is the colour channel count of one image (3), as in the official ``init_kwargs``; the network
    sees twice as many. ``cmap_dim=None`` means the 4x4 channel count. ``disc_c_noise > 0`` adds
    ``randn * c.std(0) * disc_c_noise`` to the label in training mode only (the official code adds it whenever the
    argument is set; EG3D's released configs use 0). ``resize_mode`` is an adapt3d extension (see
    :func:`filtered_resizing`); the official behaviour is the default.
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = "resnet",
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 4,
                 conv_clamp: float | None = 256, cmap_dim: int | None = None, disc_c_noise: float = 0,
                 block_kwargs: Mapping[str, Any] | None = None, mapping_kwargs: Mapping[str, Any] | None = None,
                 epilogue_kwargs: Mapping[str, Any] | None = None, resize_mode: str = "antialiased"):
        super().__init__()
        _check_architecture(architecture)
        log2 = int(round(math.log2(img_resolution))) if img_resolution > 0 else 0
        if img_resolution < 8 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        if c_dim < 0 or img_channels < 1:
            raise ValueError(f"bad c_dim={c_dim} or img_channels={img_channels}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        block_kwargs = dict(block_kwargs or {})
        mapping_kwargs = dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {})
        for name, kw, allowed in (("block_kwargs", block_kwargs, _BLOCK_KEYS),
                                  ("mapping_kwargs", mapping_kwargs, _MAPPING_KEYS),
                                  ("epilogue_kwargs", epilogue_kwargs, _EPILOGUE_KEYS)):
            unknown = sorted(set(kw) - allowed)
            if unknown:
                raise ValueError(f"unknown {name} keys {unknown}; allowed: {sorted(allowed)}")

        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = log2
        self.img_channels = img_channels * 2  # image + resized raw image
        self.disc_c_noise = disc_c_noise
        self.resize_mode = resize_mode
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        if min(channels.values()) < 1:
            raise ValueError(f"channel_base={channel_base} is too small for img_resolution={img_resolution}")
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim

        self.register_buffer("resample_filter", ops.setup_filter((1, 3, 3, 1)))  # unused by the supported resize modes
        layer_idx = 0
        for res in self.block_resolutions:
            in_ch = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_ch, channels[res], channels[res // 2], resolution=res,
                                       img_channels=self.img_channels, first_layer_idx=layer_idx,
                                       architecture=architecture, conv_clamp=conv_clamp,
                                       use_fp16=res >= fp16_resolution, **block_kwargs)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, img_channels=self.img_channels,
                                        architecture=architecture, conv_clamp=conv_clamp, **epilogue_kwargs)

    def _check_inputs(self, img: Any, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(img, Mapping):
            raise TypeError(f"img must be a dict with 'image' and 'image_raw', got {type(img).__name__}")
        missing = [k for k in ("image", "image_raw") if k not in img]
        if missing:
            raise KeyError(f"img is missing {missing}; expected keys 'image' (N, {self.img_channels // 2}, "
                           f"{self.img_resolution}, {self.img_resolution}) and 'image_raw' (N, "
                           f"{self.img_channels // 2}, r, r)")
        image, raw = img["image"], img["image_raw"]
        ch = self.img_channels // 2
        if not torch.is_tensor(image) or tuple(image.shape[1:]) != (ch, self.img_resolution, self.img_resolution) \
                or image.ndim != 4:
            raise ValueError(f"img['image'] must have shape (N, {ch}, {self.img_resolution}, {self.img_resolution}),"
                             f" got {tuple(image.shape) if torch.is_tensor(image) else type(image).__name__}")
        n = image.shape[0]
        if not torch.is_tensor(raw) or raw.ndim != 4 or raw.shape[0] != n or raw.shape[1] != ch \
                or min(raw.shape[2:]) < 1:
            raise ValueError(f"img['image_raw'] must have shape ({n}, {ch}, r, r), "
                             f"got {tuple(raw.shape) if torch.is_tensor(raw) else type(raw).__name__}")
        if self.c_dim > 0:
            if not torch.is_tensor(c) or tuple(c.shape) != (n, self.c_dim):
                raise ValueError(f"c must have shape ({n}, {self.c_dim}), "
                                 f"got {tuple(c.shape) if torch.is_tensor(c) else c!r}")
        return image, raw

    def forward(self, img: Mapping[str, torch.Tensor], c: torch.Tensor | None, update_emas: bool = False,
                force_fp32: bool = False) -> torch.Tensor:
        """img: {'image': (N, 3, R, R), 'image_raw': (N, 3, r, r)}, c: (N, c_dim) camera labels -> logits (N, 1).

        ``update_emas`` is accepted for API compatibility with the official ``D`` and does nothing.
        """
        del update_emas
        image, raw = self._check_inputs(img, c)
        raw = filtered_resizing(raw, size=image.shape[-1], mode=self.resize_mode)
        x = None
        y = torch.cat([image, raw], dim=1)  # (N, 6, R, R)
        for res in self.block_resolutions:
            x, y = getattr(self, f"b{res}")(x, y, force_fp32=force_fp32)
        cmap = None
        if self.c_dim > 0:
            if self.disc_c_noise > 0 and self.training:
                if c.shape[0] < 2:
                    raise ValueError("disc_c_noise needs a batch of at least 2 labels (it scales by c.std(0))")
                c = c + torch.randn_like(c) * c.std(0) * self.disc_c_noise
            cmap = self.mapping(None, c)  # (N, cmap_dim)
        return self.b4(x, None, cmap)

    def extra_repr(self) -> str:
        return (f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}, "
                f"cmap_dim={self.cmap_dim}, disc_c_noise={self.disc_c_noise}, resize_mode={self.resize_mode!r}")


@dataclasses.dataclass
class DualDiscriminatorConfig:
    """Constructor arguments of :class:`DualDiscriminator` (``img_channels`` un-doubled, as in the official kwargs).

    ``conversion_warnings`` lists what :func:`discriminator_config_from_official` ignored; it is not part of the
    configuration (left out of ``to_dict`` and comparisons).
    """

    c_dim: int = 25
    img_resolution: int = 512
    img_channels: int = 3
    architecture: str = "resnet"
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256
    cmap_dim: int | None = None
    disc_c_noise: float = 0
    block_kwargs: dict = dataclasses.field(default_factory=dict)
    mapping_kwargs: dict = dataclasses.field(default_factory=dict)
    epilogue_kwargs: dict = dataclasses.field(default_factory=dict)
    resize_mode: str = "antialiased"
    conversion_warnings: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict:
        d = {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d.pop("conversion_warnings")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DualDiscriminatorConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"conversion_warnings"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DualDiscriminatorConfig keys {unknown}; allowed: {sorted(names)}")
        return cls(**{k: copy.deepcopy(to_jsonable(v)) for k, v in d.items()})

    def build(self) -> DualDiscriminator:
        return build_discriminator(self)


def build_discriminator(config: DualDiscriminatorConfig | Mapping[str, Any]) -> DualDiscriminator:
    """A :class:`DualDiscriminator` from a config (or its dict form)."""
    if not isinstance(config, DualDiscriminatorConfig):
        config = DualDiscriminatorConfig.from_dict(config)
    D = DualDiscriminator(**config.to_dict())
    D.config = config  # kept so checkpoints can record how to rebuild it
    return D


def discriminator_config_from_official(init_kwargs: Mapping[str, Any],
                                       init_args: Sequence[Any] = ()) -> DualDiscriminatorConfig:
    """Map an official ``DualDiscriminator``'s pickled ``init_kwargs`` (and positional ``init_args``) to a config.

    Unknown keys (top level and inside the nested kwargs dicts) are ignored; each one is recorded in the returned
    config's ``conversion_warnings`` and reported with :func:`warnings.warn`. ``img_channels`` is taken as given
    (the official value is the un-doubled 3).
    """
    positional = ("c_dim", "img_resolution", "img_channels")
    if len(init_args) > len(positional):
        raise ValueError(f"expected at most {len(positional)} positional init_args, got {len(init_args)}")
    kwargs = dict(zip(positional, init_args))
    for k, v in init_kwargs.items():
        if k in kwargs:
            raise ValueError(f"{k!r} given both positionally and as a keyword")
        kwargs[k] = v
    missing = [k for k in positional if k not in kwargs]
    if missing:
        raise ValueError(f"official init_kwargs lack required keys {missing}")
    names = {f.name for f in dataclasses.fields(DualDiscriminatorConfig)} - {"conversion_warnings", "resize_mode"}
    notes: list[str] = []
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k not in names:
            notes.append(f"ignored unknown DualDiscriminator init kwarg {k!r}={v!r}")
            continue
        out[k] = to_jsonable(v)
    for name, allowed in (("block_kwargs", _BLOCK_KEYS), ("mapping_kwargs", _MAPPING_KEYS),
                          ("epilogue_kwargs", _EPILOGUE_KEYS)):
        sub = dict(out.get(name) or {})
        for k in sorted(set(sub) - allowed):
            notes.append(f"ignored unknown {name} key {k!r}={sub.pop(k)!r}")
        out[name] = sub
    config = DualDiscriminatorConfig.from_dict(out)
    config.conversion_warnings = notes
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return config
