"""Write diffusers models as single files in the original LDM / A1111 layout (for tests of single-file loading).

Fine-tuned Stable Diffusion models are mostly shared as one ``.safetensors`` (or ``.ckpt``) file whose keys follow
the original CompVis / Stability code: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE),
``cond_stage_model.transformer.text_model.*`` (SD 1.x CLIP text encoder), ``conditioner.embedders.{0,1}.*`` (SDXL's
two text encoders, the second in OpenCLIP layout), and ``control_model.*`` for ControlNets. The tests write tiny
random models in that layout with these functions and load them back with diffusers' ``from_single_file``: the
conversion back is diffusers' own code, so a test that recovers every weight exactly checks both directions.

The key rules (written here from the layouts of the original repositories; the names are facts of those formats):

- UNet (``openaimodel.py``): ``input_blocks.0.0`` = conv_in; down block ``b`` layer ``j`` is
  ``input_blocks.{1 + b (L + 1) + j}`` with ``.0`` its ResNet and ``.1`` its transformer; the downsampler of block
  ``b`` is ``input_blocks.{1 + b (L + 1) + L}.0.op``; ``middle_block.{0,1,2}`` = ResNet, transformer, ResNet; up block
  ``b`` layer ``j`` is ``output_blocks.{b (L + 1) + j}`` (``.0`` ResNet, ``.1`` transformer) and its upsampler is the
  next index (``.1.conv`` without, ``.2.conv`` with a transformer) of the last layer; ``time_embed.{0,2}``,
  ``label_emb.0.{0,2}`` (SDXL's added embedding), ``out.{0,2}`` = norm and conv_out. ResNets rename norm1/conv1/
  time_emb_proj/norm2/conv2/conv_shortcut to in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/
  skip_connection; transformer sub-keys are unchanged.
- VAE (``autoencoder.py``): ``{encoder,decoder}.mid.block_{1,2}`` and ``mid.attn_1`` (1x1 convolutions q/k/v/
  proj_out, norm); encoder ``down.{i}.block.{j}`` / ``down.{i}.downsample.conv``; decoder up blocks in reverse order
  ``up.{n-1-i}.block.{j}`` / ``up.{n-1-i}.upsample.conv``; ``nin_shortcut`` for conv_shortcut; ``norm_out``.
- OpenCLIP text tower: ``token_embedding``, ``positional_embedding``, ``transformer.resblocks.{i}`` with
  ``ln_1``, ``attn.in_proj_{weight,bias}`` (q, k, v stacked), ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``,
  ``mlp.c_proj``; ``ln_final``; ``text_projection`` (hidden, proj), the transpose of the Linear weight.
- ControlNet (``cldm.py``): the UNet encoder half plus ``zero_convs.{i}.0``, ``middle_block_out.0`` and
  ``input_hint_block.{0, 2, ..., 14}`` (the conditioning embedding's convolutions, SiLU between them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

__all__ = ["unet_to_ldm", "vae_to_ldm", "clip_to_ldm", "open_clip_to_ldm", "controlnet_to_ldm",
           "write_stable_diffusion_single_file", "write_controlnet_single_file"]

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    raise KeyError(rest)


def _unet_key(key: str, layers: int, up_has_attention: list[bool]) -> str | None:
    """One diffusers UNet / ControlNet encoder key -> its LDM name (None: not part of the UNet layout)."""
    head, _, last = key.rpartition(".")
    if head in _TOP:
        return f"{_TOP[head]}.{last}"
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", key)
    if m:
        b, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if part == "downsamplers":
            return f"input_blocks.{1 + b * (layers + 1) + layers}.0.op.{rest.removeprefix('conv.')}"
        index = 1 + b * (layers + 1) + j
        return f"input_blocks.{index}.0.{_resnet(rest)}" if part == "resnets" else f"input_blocks.{index}.1.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        part, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{_resnet(rest)}" if part == "resnets" else f"middle_block.1.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        b, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        first = b * (layers + 1)
        if part == "upsamplers":
            return f"output_blocks.{first + layers}.{2 if up_has_attention[b] else 1}.{rest}"
        index = first + j
        return f"output_blocks.{index}.0.{_resnet(rest)}" if part == "resnets" else f"output_blocks.{index}.1.{rest}"
    return None


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict, prefix: str = "model.diffusion_model."
                ) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict -> LDM keys under ``prefix``."""
    layers = int(config["layers_per_block"])
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for k, v in state_dict.items():
        name = _unet_key(k, layers, up_attn)
        if name is None:
            raise KeyError(f"unet: no LDM name for {k}")
        out[prefix + name] = v
    return out


def controlnet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict, prefix: str = "control_model."
                      ) -> dict[str, torch.Tensor]:
    """A diffusers ``ControlNetModel`` state dict -> the original ControlNet layout under ``prefix``.

    The original layout has exactly 6 hint blocks (conditioning_embedding_out_channels of length 4)."""
    layers = int(config["layers_per_block"])
    n_hint = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    if n_hint != 6:
        raise ValueError("controlnet: the original layout needs 4 conditioning embedding channels "
                         f"(6 hint blocks), got {config['conditioning_embedding_out_channels']}")
    out = {}
    for k, v in state_dict.items():
        head, _, last = k.rpartition(".")
        m = re.match(r"controlnet_down_blocks\.(\d+)$", head)
        m2 = re.match(r"controlnet_cond_embedding\.blocks\.(\d+)$", head)
        if m:
            name = f"zero_convs.{m[1]}.0.{last}"
        elif head == "controlnet_mid_block":
            name = f"middle_block_out.0.{last}"
        elif head == "controlnet_cond_embedding.conv_in":
            name = f"input_hint_block.0.{last}"
        elif head == "controlnet_cond_embedding.conv_out":
            name = f"input_hint_block.{2 * (n_hint + 1)}.{last}"
        elif m2:
            name = f"input_hint_block.{2 * (int(m2[1]) + 1)}.{last}"
        else:
            name = _unet_key(k, layers, [])
        if name is None:
            raise KeyError(f"controlnet: no LDM name for {k}")
        out[prefix + name] = v
    return out


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: dict, prefix: str = "first_stage_model."
               ) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict -> LDM keys under ``prefix`` (attention as 1x1 convolutions)."""
    n = len(config["up_block_types"])
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k, v in state_dict.items():
        name = k.replace("conv_norm_out", "norm_out")
        m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k)
        if m:
            side, part, j, rest = m[1], m[2], int(m[3]), m[4]
            if part == "resnets":
                name = f"{side}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                sub, _, last = rest.rpartition(".")
                name = f"{side}.mid.attn_1.{attn[sub]}.{last}"
                if last == "weight" and sub != "group_norm":
                    v = v[:, :, None, None]  # Linear (C, C) -> Conv2d 1x1 (C, C, 1, 1)
        m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)", k)
        if m:
            i, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            name = (f"encoder.down.{i}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
                    if part == "resnets" else f"encoder.down.{i}.downsample.{rest}")
        m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", k)
        if m:
            i, part, j, rest = n - 1 - int(m[1]), m[2], int(m[3]), m[4]
            name = (f"decoder.up.{i}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
                    if part == "resnets" else f"decoder.up.{i}.upsample.{rest}")
        out[prefix + name] = v
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str = "cond_stage_model.transformer.text_model."
                ) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` state dict -> the HF-CLIP layout LDM keeps (SD 1.x; SDXL's first encoder
    under ``conditioner.embedders.0.transformer.text_model.``)."""
    return {prefix + k.removeprefix("text_model."): v for k, v in state_dict.items()
            if not k.endswith("position_ids")}


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str = "conditioner.embedders.1.model."
                     ) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModelWithProjection`` state dict -> the OpenCLIP text-tower layout (SDXL's second
    encoder; SD 2.x's under ``cond_stage_model.model.``)."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    out = {prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
           prefix + "ln_final.bias": sd.pop("final_layer_norm.bias")}
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd.pop("text_projection.weight").T.contiguous()  # (hidden, proj)
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    rename = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
              "self_attn.out_proj": "attn.out_proj"}
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd.pop(src + f"self_attn.{p}_proj.{kind}")
                                                           for p in ("q", "k", "v")])
            for old, new in rename.items():
                out[dst + f"{new}.{kind}"] = sd.pop(src + f"{old}.{kind}")
    if sd:
        raise KeyError(f"open_clip: keys left unmapped: {sorted(sd)[:5]}")
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path, wrap_state_dict: bool) -> Path:
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(tensors, str(path))
    else:  # .ckpt as the original training code saved it: a dict with "state_dict" (plain tensors only)
        torch.save({"state_dict": tensors} if wrap_state_dict else tensors, path)
    return path


def write_stable_diffusion_single_file(folder: str | os.PathLike, path: str | os.PathLike,
                                       wrap_state_dict: bool = True) -> Path:
    """Write the SD 1.x or SDXL pipeline saved in ``folder`` (diffusers layout) as one LDM-layout file ``path``
    (``.safetensors``, or ``.ckpt`` / ``.pt`` via ``torch.save``). Returns ``path``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    tensors = unet_to_ldm(unet.state_dict(), dict(unet.config))
    tensors.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    if (folder / "text_encoder_2").is_dir():  # SDXL: HF CLIP-L + OpenCLIP bigG
        te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        te2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
        tensors.update(clip_to_ldm(te.state_dict(), "conditioner.embedders.0.transformer.text_model."))
        tensors.update(open_clip_to_ldm(te2.state_dict(), "conditioner.embedders.1.model."))
    else:
        te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        tensors.update(clip_to_ldm(te.state_dict()))
    return _save(tensors, Path(path), wrap_state_dict)


def write_controlnet_single_file(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the ControlNet saved in ``folder`` as one original-layout file (``control_model.*`` keys)."""
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_pretrained(folder)
    return _save(controlnet_to_ldm(cn.state_dict(), dict(cn.config)), Path(path), wrap_state_dict=False)
