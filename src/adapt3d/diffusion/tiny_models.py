"""Tiny random-weight diffusers / transformers models, saved to disk and loaded back through ``from_pretrained``.

They let the tests and the built-in demos (``--preset tiny``) run the real loading and inference code paths on a
fresh machine with no network: nothing is downloaded. Their outputs are meaningless (random weights).

- :func:`tiny_clip_tokenizer`: a byte-level CLIP BPE tokenizer with a hand-written vocabulary of 518 tokens
  (256 byte characters, their 256 ``</w>`` end-of-word variants, 4 merges, ``<|startoftext|>``,
  ``<|endoftext|>``), ``model_max_length`` 77 like CLIP's.
- :func:`make_tiny_stable_diffusion`: a ``StableDiffusionImg2ImgPipeline`` folder (UNet, VAE, CLIP text encoder,
  tokenizer, PNDM scheduler with DATID-3D's settings). Images are 64x64 px, latents 4x32x32 (VAE factor 2).
- :func:`make_tiny_stable_diffusion_depth`: a ``StableDiffusionDepth2ImgPipeline`` folder (the same components, a
  UNet with 5 input channels: latents + depth; no DPT depth estimator).
- :func:`make_tiny_controlnet`: a ``ControlNetModel`` folder matching that UNet (conditioning images 64x64 px).
- :func:`make_tiny_clip`: a ``CLIPModel`` + ``CLIPProcessor`` folder (``CLIPImageProcessorPil``, 32x32 px input,
  embedding dimension 16).

Every builder is seeded (same seed, same weights) and cached: when ``path`` already holds a complete model (a
``adapt3d-tiny.json`` marker written last) it returns at once. A model is built in a temporary sibling folder and
renamed into place, so concurrent builders (pytest-xdist, torchrun ranks) never see a half-written folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

__all__ = [
    "tiny_clip_tokenizer",
    "make_tiny_stable_diffusion",
    "make_tiny_stable_diffusion_depth",
    "make_tiny_controlnet",
    "make_tiny_clip",
    "default_tiny_models_dir",
    "ensure_tiny_models",
    "is_tiny_model",
    "TINY_IMAGE_SIZE",
    "TINY_CLIP_IMAGE_SIZE",
]

MARKER = "adapt3d-tiny.json"
FORMAT_VERSION = 2  # 2: tiny ControlNet without zero convolutions
TINY_IMAGE_SIZE = 64
"""Pixel size of the tiny Stable Diffusion's images (latents are 32x32)."""
TINY_CLIP_IMAGE_SIZE = 32
"""Input size of the tiny CLIP vision tower."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2 / CLIP byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


TINY_MERGES = (("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"))


def tiny_clip_tokenizer():
    """A CLIPTokenizer over a 518-token byte-level vocabulary (no download; any text encodes)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in TINY_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=list(TINY_MERGES), model_max_length=77)


def is_tiny_model(path: str | os.PathLike, kind: str | None = None, marker: str = MARKER,
                  version: int = FORMAT_VERSION) -> bool:
    """True if ``path`` holds a complete tiny model (of ``kind`` when given) built by this module (``marker`` /
    ``version``: another builder's marker file, e.g. :mod:`adapt3d.testing.full_size`'s)."""
    info = _marker_info(Path(path), marker)
    return info is not None and info.get("format") == version and (kind is None or info.get("kind") == kind)


def _marker_info(path: Path, marker: str) -> dict | None:
    try:
        return json.loads((path / marker).read_text())
    except (OSError, ValueError):
        return None


def _is_outdated_tiny_model(path: Path, kind: str, marker: str = MARKER, version: int = FORMAT_VERSION) -> bool:
    """True if ``path`` holds a tiny ``kind`` model built by an older version of this module (safe to replace)."""
    info = _marker_info(path, marker)
    return info is not None and info.get("kind") == kind and info.get("format") != version


def _cached_build(path: str | os.PathLike, kind: str, seed: int, build: Callable[[Path], dict | None],
                  marker: str = MARKER, version: int = FORMAT_VERSION) -> Path:
    """Build ``kind`` into ``path`` once: in a temporary sibling folder, seeded, marker written last (with what
    ``build`` returns, if a dict), then renamed into place. A complete folder is returned at once."""
    path = Path(path).expanduser()
    if is_tiny_model(path, kind, marker, version):
        return path
    if _is_outdated_tiny_model(path, kind, marker, version):  # our own older cache: move it aside, then rebuild
        stale = Path(tempfile.mkdtemp(prefix=f".{path.name}.stale.", dir=path.parent))
        with contextlib.suppress(OSError):
            os.rename(path, stale / path.name)
        shutil.rmtree(stale, ignore_errors=True)
    if path.exists() and any(path.iterdir()):
        what = f"tiny {kind}" if marker == MARKER else kind
        raise FileExistsError(f"{path} exists and is not a complete {what} model; remove it or pick another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            extra = build(tmp)
        info = {"format": version, "kind": kind, "seed": seed, **(extra or {})}
        (tmp / marker).write_text(json.dumps(info) + "\n")
        if path.exists():  # an empty folder: replace it
            with contextlib.suppress(OSError):
                path.rmdir()
        try:
            os.rename(tmp, path)
        except OSError:
            if not is_tiny_model(path, kind, marker, version):  # another builder won the race if theirs is complete
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32)


def _build_stable_diffusion(folder: Path) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tiny_clip_tokenizer()
    unet = _tiny_unet()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, sample_size=TINY_IMAGE_SIZE)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, projection_dim=32))
    # DATID-3D's scheduler settings (datid3d_data_gen.py).
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True)
    pipe = StableDiffusionImg2ImgPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tok,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(folder)


def _build_stable_diffusion_depth(folder: Path) -> None:
    from diffusers import StableDiffusionDepth2ImgPipeline, StableDiffusionImg2ImgPipeline, UNet2DConditionModel

    _build_stable_diffusion(folder)  # same VAE, text encoder, tokenizer and scheduler
    base = StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    unet = UNet2DConditionModel.from_config({**base.unet.config, "in_channels": 5})  # latents + depth channel
    pipe = StableDiffusionDepth2ImgPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                            unet=unet, scheduler=base.scheduler, depth_estimator=None,
                                            feature_extractor=None)
    for p in folder.iterdir():  # replace the img2img folder by the depth2img one
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    pipe.save_pretrained(folder)


def _build_controlnet(folder: Path) -> None:
    from diffusers import ControlNetModel

    import torch

    # Same seed as make_tiny_stable_diffusion -> the same UNet weights the ControlNet copies.
    cn = ControlNetModel.from_unet(_tiny_unet(), conditioning_embedding_out_channels=(16, 32))
    # A real ControlNet starts with zero convolutions (no effect until trained). A tiny random test model must let
    # the control image matter, so those layers get small random weights (drawn from the seeded global RNG).
    zero_convs = [cn.controlnet_cond_embedding.conv_out, cn.controlnet_mid_block, *cn.controlnet_down_blocks]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.normal_(0.0, 0.05)
            conv.bias.normal_(0.0, 0.05)
    cn.save_pretrained(folder)


def _build_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tok = tiny_clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=TINY_CLIP_IMAGE_SIZE, patch_size=8),
        projection_dim=16)
    model = CLIPModel(cfg)
    size = TINY_CLIP_IMAGE_SIZE
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)),
        tokenizer=tok)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def make_tiny_stable_diffusion(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build (or reuse) a tiny SD img2img pipeline folder at ``path``; returns ``path``."""
    return _cached_build(path, "stable-diffusion", seed, _build_stable_diffusion)


def make_tiny_stable_diffusion_depth(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build (or reuse) a tiny SD 2 depth pipeline folder (UNet with 5 input channels, no DPT estimator)."""
    return _cached_build(path, "stable-diffusion-depth", seed, _build_stable_diffusion_depth)


def make_tiny_controlnet(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build (or reuse) a tiny ControlNet folder matching ``make_tiny_stable_diffusion(seed=seed)``'s UNet."""
    return _cached_build(path, "controlnet", seed, _build_controlnet)


def make_tiny_clip(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build (or reuse) a tiny CLIPModel + CLIPProcessor folder at ``path``; returns ``path``."""
    return _cached_build(path, "clip", seed, _build_clip)


def default_tiny_models_dir() -> Path:
    """``$ADAPT3D_CACHE/tiny-models`` or ``~/.cache/adapt3d/tiny-models``."""
    root = os.environ.get("ADAPT3D_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "adapt3d") / "tiny-models"


TINY_MODEL_NAMES = {"stable-diffusion": make_tiny_stable_diffusion,
                    "stable-diffusion-depth": make_tiny_stable_diffusion_depth, "controlnet": make_tiny_controlnet,
                    "clip": make_tiny_clip}


def ensure_tiny_models(root: str | os.PathLike | None = None, names: tuple[str, ...] | None = None
                       ) -> dict[str, Path]:
    """Build the tiny models once under ``root`` (default :func:`default_tiny_models_dir`); name -> folder.

    Names: ``stable-diffusion``, ``stable-diffusion-depth``, ``controlnet``, ``clip`` (all by default). Takes about a second the first time.
    """
    root = Path(root).expanduser() if root is not None else default_tiny_models_dir()
    names = tuple(TINY_MODEL_NAMES) if names is None else names
    unknown = sorted(set(names) - set(TINY_MODEL_NAMES))
    if unknown:
        raise ValueError(f"names: unknown tiny model(s) {unknown}; choose from {sorted(TINY_MODEL_NAMES)}")
    return {n: TINY_MODEL_NAMES[n](root / n) for n in names}
