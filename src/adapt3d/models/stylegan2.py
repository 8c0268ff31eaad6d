"""StyleGAN2 building blocks in the layout EG3D uses (module and parameter names match its state dicts).

EG3D's tri-plane backbone is a StyleGAN2 "skip" generator whose 96-channel output image is read as three
32-channel feature planes; its super-resolution heads are StyleGAN2 synthesis blocks; its discriminator is built
from the same fully-connected and convolution layers. Weight scaling follows the "equalised learning rate"
convention: parameters are stored unscaled (randn init) and multiplied by a constant gain in ``forward``.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import nn

from adapt3d.models import ops


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return device_type == "cpu" and torch.is_autocast_cpu_enabled()


def _cpu_inference(x: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Float32 on CPU, no autocast, and nothing here needs a gradient: the fast inference paths may be used
    (channels-last activations, in-place epilogues, one sample at a time). They compute the same maths; results
    agree with the reference path to float32 rounding."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or _autocast_on("cpu"):
        return False
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (x, *tensors))


def _module_inference(module: nn.Module, x: torch.Tensor) -> bool:
    """``_cpu_inference`` for a whole module in eval mode (its parameters included)."""
    if module.training or not _cpu_inference(x):
        return False
    return not torch.is_grad_enabled() or not any(p.requires_grad for p in module.parameters())


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate: y = act(x @ (W * lr / sqrt(in)).T + b * lr)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in) -> (N, out)
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return ops.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(nn.Module):
    """z (and camera label c) -> w, broadcast to ``num_ws`` copies, with truncation toward ``w_avg``.

    With ``z_dim = 0`` it maps the label alone (the discriminator's conditioning mapping).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None, activation: str = "lrelu",
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = w_dim if embed_features is None else embed_features
        embed_features = 0 if c_dim == 0 else embed_features
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            x = ops.normalize_2nd_moment(z.to(torch.float32))  # (N, z_dim)
        if self.c_dim > 0:
            y = ops.normalize_2nd_moment(self.embed(c.to(torch.float32)))  # (N, embed)
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)  # (N, w_dim)
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # (N, num_ws, w_dim)
        if truncation_psi != 1:
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class Conv2dLayer(nn.Module):
    """Plain (unmodulated) convolution with equalised lr, optional FIR up/down-sampling, bias, activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 trainable: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.up, self.down, self.conv_clamp = up, down, conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = ops.ACTIVATION_GAINS[activation]
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        b = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:  # (N, I, H, W) -> (N, O, H', W')
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = ops.conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                                padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution + noise + bias + lrelu (optionally upsampling 2x first)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.padding = kernel_size // 2
        self.act_gain = ops.ACTIVATION_GAINS[activation]

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0) -> torch.Tensor:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)  # (N, I)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        act = dict(act=self.activation, gain=self.act_gain * gain, clamp=clamp)
        # Inference: the output is a fresh tensor, finished in place (block by block in the Winograd path).
        in_place = _cpu_inference(x, self.bias, self.weight, styles, noise)
        x = ops.modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                                 resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                                 fused_modconv=fused_modconv,
                                 epilogue=(lambda y: ops._bias_act_(y, self.bias, **act)) if in_place else None)
        return x if in_place else ops.bias_act(x, self.bias.to(x.dtype), **act)


class ToRGBLayer(nn.Module):
    """1x1 modulated convolution without demodulation: features -> image channels."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # (N, I)
        x = ops.modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        if _cpu_inference(x, self.bias):
            return ops._bias_act_(x, self.bias, clamp=self.conv_clamp)
        return ops.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of a StyleGAN2 'skip' generator: [conv0 (up 2x)], conv1, toRGB added to the upsampled image.

    ``upsample=False`` gives EG3D's ``SynthesisBlockNoUp`` (conv0 keeps the resolution, the image is not upsampled).
    ``use_fp16`` only takes effect on CUDA, as in the official code.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = 256, use_fp16: bool = False, fp16_channels_last: bool = False,
                 fused_modconv_default: bool | str = True, upsample: bool = True, **layer_kwargs):
        super().__init__()
        if architecture != "skip":
            raise ValueError(f"architecture must be 'skip' (EG3D uses no other), got {architecture!r}")
        self.in_channels, self.w_dim, self.resolution = in_channels, w_dim, resolution
        self.img_channels, self.is_last, self.use_fp16 = img_channels, is_last, use_fp16
        self.fused_modconv_default, self.upsample = fused_modconv_default, upsample
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                        up=2 if upsample else 1, resample_filter=resample_filter,
                                        conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, force_fp32: bool = False,
                fused_modconv: bool | str | None = None, update_emas: bool = False,
                **layer_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, I, R', R') features, img: (N, C, R', R') running image, ws: (N, num_conv + num_torgb, w_dim)."""
        w_iter: Iterator[torch.Tensor] = iter(ws.unbind(dim=1))
        if ws.device.type != "cuda":
            force_fp32 = True
        dtype = ops.low_precision_dtype() if self.use_fp16 and not force_fp32 else torch.float32
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == "inference_only":
            fused_modconv = not self.training
        # CPU inference: channels-last activations (oneDNN's transposed and depthwise convolutions are much faster
        # in NHWC; for one sample the modulated convolution keeps the layout).
        fast = ws.shape[0] == 1 and fused_modconv is True and _cpu_inference(ws, x, img) and dtype == torch.float32
        if fast:
            x = x.contiguous(memory_format=torch.channels_last) if x is not None else None
            img = img.contiguous(memory_format=torch.channels_last) if img is not None else None
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # (N, O, R, R)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        else:
            x = x.to(dtype)
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        if img is not None and self.upsample:
            img = ops.upsample2d(img, self.resample_filter)  # (N, C, R, R)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
        if img is None:
            img = y
        elif fast and self.upsample:
            img = img.add_(y)  # img is the fresh upsampled image
        else:
            img = img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """Blocks from 4x4 up to ``img_resolution``; returns the summed skip image.  ws (N, num_ws, w_dim) -> image."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 4, **block_kwargs):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if 2 ** log2 != img_resolution or img_resolution < 4:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(in_channels, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=res >= fp16_resolution,
                                   **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        ws = ws.to(torch.float32)
        if (ws.shape[0] > 1 and block_kwargs.get("noise_mode", "random") != "random"
                and block_kwargs.get("fused_modconv") in (None, True, "inference_only")
                and _module_inference(self, ws)):
            # CPU inference: one sample at a time is faster than a grouped convolution over the batch (and its
            # activations are a quarter of the memory at batch 4). Same outputs: every op is per sample.
            return torch.cat([self.forward(ws[i:i + 1], **block_kwargs) for i in range(ws.shape[0])])
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)  # toRGB shares the next block's w
            w_idx += block.num_conv
            x, img = block(x, img, cur_ws, **block_kwargs)
        return img.contiguous()  # NCHW, also after the channels-last CPU path


class StyleGAN2Backbone(nn.Module):
    """EG3D's ``backbone``: a mapping network plus a synthesis network (image = 3 stacked feature planes)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, **synthesis_kwargs):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))
