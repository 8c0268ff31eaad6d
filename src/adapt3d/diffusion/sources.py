"""What a diffusion model name points to, and which architecture it is, found before any weight is loaded.

:func:`resolve_model` turns the value of ``--diffusion`` / ``--controlnet`` into a :class:`ModelSource`:

- ``layout``: ``folder`` (a diffusers ``save_pretrained`` folder, also what ``'tiny'`` resolves to), ``hub`` (a
  Hugging Face id, taken from the local cache or downloaded by diffusers when online) or ``single-file`` (one
  ``.safetensors`` / ``.ckpt`` in the original LDM / A1111 layout, loaded with diffusers' ``from_single_file``
  using the configs of ``config``: a diffusers folder or Hugging Face id of the same architecture);
- ``family``: ``sd`` (Stable Diffusion 1.x/2.x), ``sdxl``, ``sdxl-refiner``, ``sd-inpainting``, ``sd-upscale``,
  ``sd3``, ``flux``, ... or None when it cannot be read (a hub id not in the cache while offline detection failed).
  Read from ``model_index.json`` (``_class_name``, ``text_encoder_2``; ``transformer`` with ``text_encoder_3``:
  SD3), ``unet/config.json``
  (``addition_embed_type``, ``in_channels``) or a ControlNet's ``config.json``; for single files from the tensor
  names (and two shapes) in the file's header;
- ``cross_attention_dim``: the text-embedding width the UNet / ControlNet attends to (768 SD 1.x, 1024 SD 2.x,
  2048 SDXL), so that a base and a ControlNet that do not fit are refused by :func:`check_controlnet_pair`;
- ``variant``: diffusers' weight-file variant (``fp16`` loads ``*.fp16.safetensors``), checked against the folder.

Each consumer then calls :func:`require_family` with what it supports. The user-facing description of layouts,
families, defaults and errors is docs/diffusion-models.md. Every problem is a one-line ``ValueError`` /
:class:`~adapt3d.diffusion.loading.PretrainedNotFoundError` naming the option. ``.ckpt`` files are only ever read
with ``torch.load(weights_only=True)`` (tensors and plain containers; no code runs).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adapt3d.diffusion.loading import (KINDS, TINY_NAME, PretrainedNotFoundError, download_error, is_offline,
                                       resolve_pretrained)
from adapt3d.utils.torch_load import OldTorchError, load_weights_only

__all__ = ["ModelSource", "resolve_model", "require_family", "check_controlnet_pair", "load_pipeline",
           "load_controlnet", "FAMILY_NAMES", "SINGLE_FILE_SUFFIXES", "DEFAULT_SINGLE_FILE_CONFIGS"]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
FAMILY_NAMES = {
    "sd": "Stable Diffusion 1.x/2.x", "sdxl": "Stable Diffusion XL", "sdxl-refiner": "the SDXL refiner",
    "sd-inpainting": "a Stable Diffusion inpainting model (9-channel UNet)",
    "sdxl-inpainting": "an SDXL inpainting model (9-channel UNet)", "sd-upscale": "the Stable Diffusion x4 upscaler",
    "sd3": "Stable Diffusion 3", "flux": "FLUX"}
DEFAULT_SINGLE_FILE_CONFIGS = {
    ("stable-diffusion", "sd1"): "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ("stable-diffusion", "sd2"): "stabilityai/stable-diffusion-2-1",
    ("stable-diffusion", "sdxl"): "stabilityai/stable-diffusion-xl-base-1.0",
    ("stable-diffusion", "sdxl-refiner"): "stabilityai/stable-diffusion-xl-refiner-1.0",
    ("controlnet", "sd"): "lllyasviel/control_v11p_sd15_canny",
    ("controlnet", "sdxl"): "diffusers/controlnet-canny-sdxl-1.0",
}
"""Configs used for a single file when none is given: the architectures' reference repositories (diffusers makes
the same choice). SD 2.x defaults to the 768-px v-prediction 2.1; 2.x-base files need --diffusion-config
stabilityai/stable-diffusion-2-1-base."""

_WEIGHTS = re.compile(r"^(diffusion_pytorch_model|model|pytorch_model)(-\d{5}-of-\d{5})?(\.(?P<variant>[^.]+))?"
                      r"\.(safetensors|bin)$")
_INDEX = re.compile(r"^(diffusion_pytorch_model|model|pytorch_model)\.(safetensors|bin)\.index(\.(?P<variant>[^.]+))?"
                    r"\.json$")


def _describe(family: str | None) -> str:
    return FAMILY_NAMES.get(family or "", family or "an unknown architecture")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model name (see the module docstring). ``name`` is what the user gave, ``location`` what is
    loaded."""

    name: str
    location: str
    kind: str
    layout: str
    family: str | None = None
    cross_attention_dim: int | None = None
    config: str | None = None
    variant: str | None = None
    flag: str = "--diffusion"

    @property
    def what(self) -> str:
        return KINDS[self.kind][0]

    def record(self) -> dict:
        """JSON-able facts for job files."""
        return {k: v for k, v in asdict(self).items() if k != "flag"}


# -- reading configs ------------------------------------------------------------------------------------------------
def _read_json(root: Path | str, rel: str, hub: bool) -> dict | None:
    """``rel`` inside a local folder, or inside a Hugging Face repo (cache, or a small download when online)."""
    if not hub:
        p = Path(root) / rel
        try:
            return json.loads(p.read_text()) if p.is_file() else None
        except (OSError, ValueError):
            return None
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        found = try_to_load_from_cache(str(root), rel)
        if not isinstance(found, str) and not is_offline():
            found = hf_hub_download(str(root), rel)
        return json.loads(Path(found).read_text()) if isinstance(found, str) else None
    except Exception:  # noqa: BLE001 - missing file, no network, malformed id: unknown
        return None


def _int_or_none(v) -> int | None:
    if isinstance(v, (list, tuple)) and v:
        v = v[0]
    return int(v) if isinstance(v, int) else None


def _pipeline_family(root, hub: bool) -> tuple[str | None, int | None]:
    """(family, cross_attention_dim) of a diffusers pipeline folder / repo."""
    index = _read_json(root, "model_index.json", hub)
    if index is None:
        return None, None
    cls = str(index.get("_class_name", ""))
    if "transformer" in index and "unet" not in index:
        sd3 = "StableDiffusion3" in cls or (index.get("text_encoder_3") or [None])[0] is not None
        return ("sd3" if sd3 else "flux" if "Flux" in cls else cls or None), None
    unet = _read_json(root, "unet/config.json", hub) or {}
    dim = _int_or_none(unet.get("cross_attention_dim"))
    xl = "XL" in cls or (index.get("text_encoder_2") or [None])[0] is not None \
        or unet.get("addition_embed_type") == "text_time"
    if "Upscale" in cls or unet.get("in_channels") == 7:
        return "sd-upscale", dim
    if "Inpaint" in cls or unet.get("in_channels") == 9:
        return ("sdxl-inpainting" if xl else "sd-inpainting"), dim
    if xl:
        no_first_encoder = "text_encoder" in index and (index.get("text_encoder") or [None])[0] is None
        return ("sdxl-refiner" if no_first_encoder or index.get("requires_aesthetics_score") else "sdxl"), dim
    return "sd", dim


def _controlnet_family(config: dict | None) -> tuple[str | None, int | None]:
    if config is None:
        return None, None
    cls = str(config.get("_class_name", ""))
    if cls.startswith("SD3"):
        return "sd3", None
    if "Flux" in cls:
        return "flux", None
    family = "sdxl" if config.get("addition_embed_type") == "text_time" else "sd"
    return family, _int_or_none(config.get("cross_attention_dim"))


# -- single files ---------------------------------------------------------------------------------------------------
def _single_file_shapes(path: Path, flag: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a single-file checkpoint, without reading the weights (safetensors header; for
    pickled files a memory-mapped ``torch.load(weights_only=True)``)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{flag}: {path} is not a readable .safetensors file ({type(e).__name__}: {e})") from e
    what = f"the single file {path} ({flag})"
    try:
        try:
            sd = load_weights_only(path, what, mmap=True)
        except RuntimeError as e:  # the legacy (non-zip) format cannot be memory-mapped
            if isinstance(e, OldTorchError) or "mmap" not in str(e):
                raise
            sd = load_weights_only(path, what)
    except OldTorchError:
        raise
    except Exception as e:  # noqa: BLE001 - UnpicklingError for anything beyond tensors, or a corrupt file
        raise ValueError(f"{flag}: {path} could not be read as tensors only ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); adapt3d reads .ckpt files with "
                         "torch's weights-only loader and never runs code from them: convert it to .safetensors "
                         "on a machine you trust, or use the .safetensors release of the model") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{flag}: {path} holds a {type(sd).__name__}, not a dict of tensors")
    return {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _attn_width(shapes: dict, prefix: str) -> int | None:
    for k, s in shapes.items():
        if k.startswith(prefix) and k.endswith("attn2.to_k.weight") and len(s) == 2:
            return int(s[1])
    return None


def _single_file_family(shapes: dict, kind: str) -> tuple[str | None, str | None, int | None]:
    """(family, default-config key, cross_attention_dim) from tensor names; family None: not recognised."""
    if kind == "controlnet":
        if any(k.startswith("control_model.") for k in shapes):
            xl = "control_model.label_emb.0.0.weight" in shapes
            fam = "sdxl" if xl else "sd"
            return fam, fam, _attn_width(shapes, "control_model.")
        if "controlnet_cond_embedding.conv_in.weight" in shapes:  # a diffusers-layout ControlNet file
            fam = "sdxl" if "add_embedding.linear_1.weight" in shapes else "sd"
            return fam, fam, _attn_width(shapes, "")
        return None, None, None
    if any("joint_blocks." in k for k in shapes):
        return "sd3", None, None
    if any("double_blocks." in k for k in shapes):
        return "flux", None, None
    if not any(k.startswith("model.diffusion_model.") for k in shapes):
        return None, None, None
    dim = _attn_width(shapes, "model.diffusion_model.")
    in_ch = shapes.get("model.diffusion_model.input_blocks.0.0.weight", (0, 4))[1]
    xl = any(k.startswith("conditioner.embedders.1.") for k in shapes)
    refiner = not xl and any(k.startswith("conditioner.embedders.0.model.") for k in shapes)
    if in_ch == 9:
        return ("sdxl-inpainting" if xl else "sd-inpainting"), None, dim
    if in_ch == 7:
        return "sd-upscale", None, dim
    if xl:
        return "sdxl", "sdxl", dim
    if refiner:
        return "sdxl-refiner", "sdxl-refiner", dim
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        return "sd", "sd2", dim
    if any(k.startswith("cond_stage_model.transformer.") for k in shapes):
        return "sd", "sd1", dim
    return None, None, dim


def _resolve_single_file(path: Path, kind: str, flag: str, config: str | None, config_flag: str,
                         variant: str | None) -> ModelSource:
    what = KINDS[kind][0]
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ValueError(f"{flag}: {path} is a file but not a single-file checkpoint "
                         f"({', '.join(SINGLE_FILE_SUFFIXES)}); expected a {what} folder (save_pretrained layout), "
                         "a Hugging Face id or one such file")
    if variant is not None:
        raise ValueError(f"--weights-variant {variant}: weight variants are files of a diffusers folder "
                         f"(*.{variant}.safetensors); the single file {path} has none, leave the option out")
    shapes = _single_file_shapes(path, flag)
    family, default_key, dim = _single_file_family(shapes, kind)
    if family is None and config is None:
        raise ValueError(f"{flag}: {path} is not a {what} checkpoint adapt3d recognises (no "
                         f"{'control_model.*' if kind == 'controlnet' else 'model.diffusion_model.*'} tensors in the "
                         f"original LDM layout); if it is one, pass {config_flag} <diffusers folder or Hugging Face id "
                         "of its architecture>")
    if config is None:
        config = DEFAULT_SINGLE_FILE_CONFIGS.get((kind, default_key or ""))
        if config is None:
            raise ValueError(f"{flag}: {path} is {_describe(family)}; adapt3d has no default config for it, pass "
                             f"{config_flag} <diffusers folder or Hugging Face id of its architecture>")
        try:
            config_name = resolve_pretrained(config, kind, config_flag)
        except PretrainedNotFoundError as e:
            raise PretrainedNotFoundError(
                f"{flag}: the single file {path.name} needs the configs (model_index.json, unet/vae/text encoder "
                f"configs, tokenizer, scheduler) of its architecture, by default {config!r}, which is not available "
                f"({e}); pass {config_flag} <a diffusers folder of the same architecture>") from e
    else:
        config_name = resolve_pretrained(config, kind, config_flag)
    hub = not Path(config_name).is_dir()
    cfg_family, cfg_dim = (_pipeline_family(config_name, hub) if kind == "stable-diffusion"
                           else _controlnet_family(_read_json(config_name, "config.json", hub)))
    if family is not None and cfg_family is not None and cfg_family != family:
        raise ValueError(f"{config_flag}: {config!r} describes {_describe(cfg_family)}, but {flag} {path.name} is "
                         f"{_describe(family)}; pass a config of the file's own architecture")
    if dim is not None and cfg_dim is not None and dim != cfg_dim:
        raise ValueError(f"{config_flag}: {config!r} has text width {cfg_dim}, but {flag} {path.name} has {dim} "
                         "(e.g. SD 1.x 768, SD 2.x 1024); pass a config of the file's own architecture")
    return ModelSource(name=str(path), location=str(path), kind=kind, layout="single-file",
                       family=family or cfg_family, cross_attention_dim=dim or cfg_dim, config=config_name,
                       flag=flag)


# -- folders and variants -------------------------------------------------------------------------------------------
def _weight_variants(folder: Path) -> set[str | None]:
    """Variants of the weight files in one component folder (None: the standard files)."""
    found: set[str | None] = set()
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _WEIGHTS.match(p.name) or _INDEX.match(p.name)
        if m:
            found.add(m.group("variant"))
    return found


def _check_variant(folder: Path, kind: str, flag: str, variant: str | None) -> None:
    if kind == "stable-diffusion":
        index = _read_json(folder, "model_index.json", hub=False) or {}
        parts = [n for n, v in index.items() if isinstance(v, list) and v and v[0] is not None
                 and (folder / n).is_dir() and not n.startswith(("tokenizer", "scheduler", "feature_extractor"))]
    else:
        parts = ["."]
    for part in parts:
        sub = folder / part
        found = _weight_variants(sub)
        if not found:
            continue  # nothing to say here; the loader names what is missing
        label = "" if part == "." else f"{part}/"
        if variant not in found:
            have = ", ".join(sorted("standard" if v is None else repr(v) for v in found))
            if variant is None:
                only = sorted(v for v in found if v is not None)
                raise ValueError(f"{flag}: {folder} holds only {only[0]!r}-variant weights in {label} (e.g. "
                                 f"*.{only[0]}.safetensors); pass --weights-variant {only[0]}")
            raise ValueError(f"--weights-variant {variant}: {folder}/{label} has no {variant!r} weight files "
                             f"(*.{variant}.safetensors; found: {have}); leave the option out or download that "
                             "variant")


def resolve_model(name_or_path: str | os.PathLike, kind: str = "stable-diffusion", flag: str | None = None, *,
                  config: str | None = None, config_flag: str = "--diffusion-config",
                  variant: str | None = None) -> ModelSource:
    """Resolve ``name_or_path`` (folder, Hugging Face id, ``'tiny'`` or single file) into a :class:`ModelSource`.

    ``config``: for a single file, the diffusers folder / id with its configs (default: the architecture's
    reference repository, :data:`DEFAULT_SINGLE_FILE_CONFIGS`); refused for other layouts. ``variant``: diffusers'
    weight variant (``'fp16'``). Reads configs and file headers only (for a Hugging Face id that is not cached, its
    small JSON configs are fetched when online); never loads or downloads weights.
    """
    if kind not in ("stable-diffusion", "controlnet"):
        raise ValueError(f"kind: {kind!r} is not 'stable-diffusion' or 'controlnet'")
    flag = flag or ("--diffusion" if kind == "stable-diffusion" else "--controlnet")
    if variant is not None and (not isinstance(variant, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", variant)):
        raise ValueError(f"--weights-variant: {variant!r} is not a variant name such as 'fp16'")
    name = str(name_or_path).strip()
    path = Path(name).expanduser()
    if name and name != TINY_NAME and path.is_file():
        return _resolve_single_file(path, kind, flag, config, config_flag, variant)
    if config is not None:
        raise ValueError(f"{config_flag}: only used with a single-file {flag} (.safetensors/.ckpt); {name!r} "
                         "carries its own configs")
    location = resolve_pretrained(name, kind, flag)
    hub = not Path(location).is_dir()
    if not hub:
        _check_variant(Path(location), kind, flag, variant)
    if kind == "stable-diffusion":
        family, dim = _pipeline_family(location, hub)
    else:
        family, dim = _controlnet_family(_read_json(location, "config.json", hub))
    return ModelSource(name=name, location=location, kind=kind, layout="hub" if hub else "folder", family=family,
                       cross_attention_dim=dim, variant=variant, flag=flag)


def require_family(source: ModelSource, allowed: tuple[str, ...], purpose: str) -> None:
    """Refuse ``source`` unless its family is one of ``allowed`` (unknown families pass: the loader decides)."""
    if source.family is not None and source.family not in allowed:
        ok = " and ".join(dict.fromkeys(FAMILY_NAMES.get(f, f) for f in allowed))
        raise ValueError(f"{source.flag}: {source.name!r} is {_describe(source.family)}; {purpose} supports {ok}")


def check_controlnet_pair(base: ModelSource, controlnet: ModelSource) -> None:
    """Refuse a base model and a ControlNet made for different architectures (before loading either)."""
    if base.family and controlnet.family and base.family != controlnet.family:
        raise ValueError(f"{controlnet.flag}: {controlnet.name!r} is a ControlNet for {_describe(controlnet.family)}"
                         f", but {base.flag} {base.name!r} is {_describe(base.family)}; they do not fit together: "
                         f"use a ControlNet made for {_describe(base.family)} (or a base model of the ControlNet's)")
    if base.cross_attention_dim and controlnet.cross_attention_dim \
            and base.cross_attention_dim != controlnet.cross_attention_dim:
        raise ValueError(f"{controlnet.flag}: {controlnet.name!r} attends to {controlnet.cross_attention_dim}-wide "
                         f"text embeddings, {base.flag} {base.name!r} produces {base.cross_attention_dim} (SD 1.x "
                         "768, SD 2.x 1024, SDXL 2048); use a ControlNet trained for that base model")


# -- loading --------------------------------------------------------------------------------------------------------
def _load(cls, source: ModelSource, dtype: torch.dtype | None, **kwargs):
    """``cls.from_pretrained`` / ``cls.from_single_file`` for ``source`` with clear errors."""
    try:
        with warnings.catch_warnings():  # diffusers 0.42 renamed torch_dtype to dtype; older ones lack dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            if source.layout == "single-file":
                return cls.from_single_file(source.location, config=source.config, torch_dtype=dtype,
                                            local_files_only=is_offline() or Path(source.config).is_dir(), **kwargs)
            if source.variant is not None:
                kwargs["variant"] = source.variant
            return cls.from_pretrained(source.location, torch_dtype=dtype, **kwargs)
    except OSError as e:  # download / cache / missing-file failures
        raise download_error(source.name, source.kind, source.flag, e) from e
    except (RuntimeError, ValueError, KeyError) as e:
        if source.layout != "single-file":
            raise
        raise ValueError(f"{source.flag}: {source.name} could not be loaded with the configs of {source.config!r} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); pass "
                         "--diffusion-config / --controlnet-config of the file's own architecture") from e


def load_pipeline(pipeline_cls, source: ModelSource, dtype: torch.dtype | None = None, **kwargs):
    """Load a diffusers pipeline class from ``source`` (folder, hub id, or single file with its config)."""
    return _load(pipeline_cls, source, dtype, **kwargs)


def load_controlnet(source: ModelSource, dtype: torch.dtype | None = None, sd3: bool | None = None):
    """Load a ``ControlNetModel`` (an ``SD3ControlNetModel`` for the SD3 family, or with ``sd3=True``) from
    ``source`` (folder, hub id, or an original-layout single file)."""
    from diffusers import ControlNetModel, SD3ControlNetModel
    cls = SD3ControlNetModel if (source.family == "sd3" if sd3 is None else sd3) else ControlNetModel
    try:
        return _load(cls, source, dtype)
    except (TypeError, ValueError) as e:
        if source.layout == "single-file":
            raise
        raise ValueError(f"{source.flag}: {source.name!r} is not a {cls.__name__} ({e}); check --variant") from e
