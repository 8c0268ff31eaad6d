"""IP-Adapter image prompts for a Stable Diffusion UNet (GCA-3D's one-shot image-guided mode), through diffusers.

An IP-Adapter folder has the layout of the ``models/`` folder of ``h94/IP-Adapter``::

    FOLDER/ip-adapter_sd15.safetensors   (or .bin): image_proj.* (ImageProjection: proj, norm) and
                                         ip_adapter.<k>.to_k_ip / to_v_ip (k = 1, 3, 5, ...: the cross-attention
                                         processors of the UNet, in order)
    FOLDER/image_encoder/                a transformers CLIPVisionModelWithProjection

:func:`load_ip_adapter` installs the weights into a UNet with diffusers' own loader
(``UNet2DConditionModel._load_ip_adapter_weights``, what ``pipeline.load_ip_adapter`` calls) and returns an
:class:`ImagePrompt` that embeds an image. The UNet then takes ``added_cond_kwargs={"image_embeds": [e]}`` with
``e`` (B, 1, D) (zeros for the unconditional branch, as diffusers' pipelines do).

Get the real weights with ``huggingface-cli download h94/IP-Adapter --include 'models/*' --local-dir X`` and pass
``X/models`` (SD 1.5 teachers: cross-attention width 768; the SD 2 depth UNet (1024) has no official IP-Adapter).
Tested here only with tiny random weights in this layout (:func:`save_tiny_ip_adapter`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["ImagePrompt", "load_ip_adapter", "save_tiny_ip_adapter", "find_ip_adapter_weights"]

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def find_ip_adapter_weights(folder: str | Path, flag: str = "--ip-adapter") -> Path:
    """The single ``ip-adapter*.safetensors`` / ``.bin`` file of ``folder`` (which must also hold image_encoder/)."""
    folder = Path(folder).expanduser()
    how = ("get it with `huggingface-cli download h94/IP-Adapter --include 'models/*' --local-dir X` and pass "
           "X/models")
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag}: {folder} is not a folder; {how}")
    files = sorted(p for p in folder.iterdir() if p.name.startswith("ip-adapter") and p.suffix in (".safetensors",
                                                                                                   ".bin"))
    files = [p for p in files if p.suffix == ".safetensors"] or files
    if len(files) != 1 or not (folder / "image_encoder" / "config.json").is_file():
        found = ", ".join(p.name for p in files) or "no ip-adapter*.safetensors/.bin"
        raise FileNotFoundError(f"{flag}: {folder} must hold exactly one ip-adapter*.safetensors (or .bin) and an "
                                f"image_encoder/ folder (found: {found}); {how}")
    return files[0]


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        flat = load_file(str(path))
        out: dict = {"image_proj": {}, "ip_adapter": {}}
        for k, v in flat.items():
            head, _, rest = k.partition(".")
            if head not in out:
                raise ValueError(f"--ip-adapter: {path} has an unexpected key {k!r} (expected image_proj.* and "
                                 "ip_adapter.*)")
            out[head][rest] = v
        return out
    from adapt3d.utils.torch_load import load_weights_only
    state = load_weights_only(path, "--ip-adapter")
    if not isinstance(state, dict) or set(state) != {"image_proj", "ip_adapter"}:
        raise ValueError(f"--ip-adapter: {path} is not an IP-Adapter state dict (image_proj, ip_adapter)")
    return state


class ImagePrompt:
    """A CLIP vision encoder that turns images (B, 3, H, W) in [-1, 1] into IP-Adapter image embeddings."""

    def __init__(self, image_encoder) -> None:
        self.image_encoder = image_encoder.eval().requires_grad_(False)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 1, D) image embeddings (resized bilinearly to the encoder's size, CLIP
        mean/std)."""
        enc = self.image_encoder
        size = int(enc.config.image_size)
        x = (images.float().clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_CLIP_STD).view(1, 3, 1, 1)
        p = next(enc.parameters())
        x = ((x - mean) / std).to(p.device, p.dtype)
        return enc(pixel_values=x).image_embeds.float().unsqueeze(1)  # (B, 1, D)


def load_ip_adapter(unet, folder: str | Path, scale: float = 1.0, flag: str = "--ip-adapter") -> ImagePrompt:
    """Install the IP-Adapter of ``folder`` into ``unet`` (in place; every cross-attention processor gets
    ``scale``) and return its image encoder. Raises a clear error when the widths do not fit the UNet."""
    from transformers import CLIPVisionModelWithProjection

    path = find_ip_adapter_weights(folder, flag)
    state = _read_state_dict(path)
    width = state["image_proj"]["proj.weight"].shape[0] // 4 if "proj.weight" in state["image_proj"] else None
    if width is not None and width != int(unet.config.cross_attention_dim):
        raise ValueError(f"{flag}: {path.name} is made for a cross-attention width of {width}; the teacher UNet has "
                         f"{unet.config.cross_attention_dim} (h94's ip-adapter_sd15 fits SD 1.5 bases: use "
                         "--diffusion stable-diffusion-v1-5/stable-diffusion-v1-5 with a depth --controlnet)")
    p = next(unet.parameters())
    try:
        unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"{flag}: {path} does not fit the teacher UNet ({type(e).__name__}: {e})") from e
    for proc in unet.attn_processors.values():
        if hasattr(proc, "scale") and isinstance(proc.scale, list):
            proc.scale = [float(scale)] * len(proc.scale)
    encoder = CLIPVisionModelWithProjection.from_pretrained(Path(folder).expanduser() / "image_encoder",
                                                            torch_dtype=p.dtype).to(p.device)
    return ImagePrompt(encoder)


def save_tiny_ip_adapter(folder: str | Path, unet, embed_dim: int = 16, seed: int = 0) -> Path:
    """Write random IP-Adapter weights in the real layout for ``unet`` (tests and demos): ip-adapter_tiny.safetensors
    + image_encoder/ (a tiny CLIPVisionModelWithProjection, 32 px, projection ``embed_dim``)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)
    flat = {"image_proj.proj.weight": torch.randn(cross * 4, embed_dim, generator=g) * 0.1,
            "image_proj.proj.bias": torch.zeros(cross * 4),
            "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden = attn.to_k.out_features
        for which in ("to_k_ip", "to_v_ip"):
            flat[f"ip_adapter.{key_id}.{which}.weight"] = torch.randn(hidden, cross, generator=g) * 0.1
        key_id += 2
    save_file(flat, str(folder / "ip-adapter_tiny.safetensors"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, projection_dim=embed_dim))
    enc.save_pretrained(folder / "image_encoder")
    return folder
