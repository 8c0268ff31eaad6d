"""EG3D's super-resolution heads: the raw neural rendering (features + RGB) -> the final image.

Each head takes the 32-channel feature image and its first 3 channels (RGB), resizes them to the head's input
resolution if needed, and runs two StyleGAN2 synthesis blocks conditioned on the last w (repeated 3x). The noise
mode comes from ``rendering_kwargs['superresolution_noise_mode']``, not from the caller (as in EG3D).

| head | input -> output | block0 | block1 | resize input when |
| --- | --- | --- | --- | --- |
| ``SuperresolutionHybrid2X`` | R/2 -> R (EG3D: 64 -> 128) | no-up, C -> 128 | up, 128 -> 64 | size differs |
| ``SuperresolutionHybrid4X`` | R/2 -> R (EG3D: 128 -> 256) | no-up, C -> 128 | up, 128 -> 64 | smaller |
| ``SuperresolutionHybrid8X`` | R/4 -> R (EG3D: 128 -> 512) | up, C -> 128 | up, 128 -> 64 | size differs |
| ``SuperresolutionHybrid8XDC`` | R/4 -> R (EG3D: 128 -> 512) | up, C -> 256 | up, 256 -> 128 | size differs |
| ``SuperresolutionHybrid8XDC_afhq`` | R/4 -> R (128 -> 512) | up, C -> 128 | up, 128 -> 64 | size differs |

``SuperresolutionHybrid8XDC_afhq`` is DATID-3D's (``eg3d/training/superresolution.py``, selected by its
``train.py --cfg=cat``): the channels and forward pass of ``8X`` (so it takes the weights of EG3D's released AFHQ
model), but without ``8X``'s unused ``resample_filter`` buffer, and not a persistent class, so DATID-3D's cat models
(``datid3d-cat_in_Zootopia``, ...) store it by reference, with no constructor arguments in the pickle.

Conv clamping is 256 whenever ``sr_num_fp16_res > 0`` (also in fp32 on CPU), as in EG3D.

EG3D quirk, reproduced: in the heads whose first block does not upsample (2X, 4X), EG3D adds block0's toRGB output
to the raw RGB image *in place*, so the ``image_raw`` it returns (and shows its discriminator) is
``rgb + toRGB_0`` whenever the input was not resized. ``forward`` returns that image as its second output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adapt3d.models import ops
from adapt3d.models.stylegan2 import SynthesisBlock, _module_inference

# name -> (input divisor, block0 upsamples, block0 channels, block1 channels, resize only if smaller, filter buffer)
SR_HEADS = {
    "SuperresolutionHybrid2X": (2, False, 128, 64, False, True),
    "SuperresolutionHybrid4X": (2, False, 128, 64, True, True),
    "SuperresolutionHybrid8X": (4, True, 128, 64, False, True),
    "SuperresolutionHybrid8XDC": (4, True, 256, 128, False, False),
    "SuperresolutionHybrid8XDC_afhq": (4, True, 128, 64, False, False),
}


class SuperResolution(nn.Module):
    """One of EG3D's hybrid super-resolution heads (see the module table); ``kind`` is the official class name."""

    def __init__(self, kind: str, channels: int, img_resolution: int, sr_num_fp16_res: int, sr_antialias: bool,
                 w_dim: int = 512, fused_modconv_default: bool | str = True, **unused_block_kwargs):
        super().__init__()
        if kind not in SR_HEADS:
            raise ValueError(f"superresolution_module must be one of {sorted(SR_HEADS)}, got {kind!r}")
        div, up0, ch0, ch1, only_smaller, has_filter = SR_HEADS[kind]
        if img_resolution % div or img_resolution // div < 4:
            raise ValueError(f"{kind} cannot produce img_resolution={img_resolution} (needs a multiple of {div})")
        self.kind, self.img_resolution = kind, img_resolution
        self.input_resolution = img_resolution // div
        self.sr_antialias, self.resize_only_smaller = sr_antialias, only_smaller
        use_fp16 = sr_num_fp16_res > 0
        common = dict(w_dim=w_dim, img_channels=3, use_fp16=use_fp16, conv_clamp=256 if use_fp16 else None,
                      fused_modconv_default=fused_modconv_default)
        self.block0 = SynthesisBlock(channels, ch0, resolution=img_resolution // 2 if up0 else self.input_resolution,
                                     is_last=False, upsample=up0, **common)
        self.block1 = SynthesisBlock(ch0, ch1, resolution=img_resolution, is_last=True, **common)
        if has_filter:
            self.register_buffer("resample_filter", ops.setup_filter([1, 3, 3, 1]))

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor,
                **block_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb (N, 3, r, r), x (N, C, r, r), ws (N, num_ws, w_dim) -> image (N, 3, R, R) and EG3D's image_raw."""
        if (ws.shape[0] > 1 and block_kwargs.get("noise_mode", "random") != "random"
                and block_kwargs.get("fused_modconv") in (None, True, "inference_only")
                and _module_inference(self, ws)):
            # CPU inference: one sample at a time (faster than grouped convolutions, a quarter of the memory)
            outs = [self.forward(rgb[i:i + 1], x[i:i + 1], ws[i:i + 1], **block_kwargs) for i in range(ws.shape[0])]
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        size = x.shape[-1]
        raw = rgb
        resized = (size < self.input_resolution) if self.resize_only_smaller else (size != self.input_resolution)
        if resized:
            target = (self.input_resolution, self.input_resolution)
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
            rgb = F.interpolate(rgb, size=target, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
        x, rgb = self.block0(x, rgb, ws, **block_kwargs)
        if not resized and not self.block0.upsample:
            raw = rgb  # EG3D's in-place add (see module docstring)
        x, rgb = self.block1(x, rgb, ws, **block_kwargs)
        return _nchw(rgb), _nchw(raw)


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """Back to the default layout after the channels-last CPU path (other tensors, e.g. views, are returned as is)."""
    if t.is_contiguous() or not t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()
