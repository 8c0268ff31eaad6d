"""Find pretrained diffusers / transformers weights (a local folder or a Hugging Face id) before loading them.

:func:`resolve_pretrained` is called by every ``from_pretrained`` convenience of adapt3d (Stable Diffusion,
ControlNet, CLIP) *before* any model is built, so that a missing model fails at once with a message that says which
weights are missing and how to get them, instead of a long traceback from deep inside huggingface_hub.

Names accepted:

- ``"tiny"``: the built-in tiny random-weight model of that kind (built on first use into
  :func:`adapt3d.diffusion.tiny_models.default_tiny_models_dir`; for demos and tests, no download);
- a local folder (``save_pretrained`` layout, e.g. a ``huggingface-cli download`` target);
- a Hugging Face model id (``stabilityai/stable-diffusion-2-1-base``): taken from the local Hugging Face cache, or
  downloaded by ``from_pretrained`` when the machine is online. Offline (``HF_HUB_OFFLINE=1``,
  ``TRANSFORMERS_OFFLINE=1`` or ``ADAPT3D_OFFLINE=1``) a model missing from the cache raises
  :class:`PretrainedNotFoundError`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch

from adapt3d.utils.env import is_offline

__all__ = ["PretrainedNotFoundError", "resolve_pretrained", "is_offline", "KINDS", "TINY_NAME", "DEFAULT_DIFFUSION"]

TINY_NAME = "tiny"
DEFAULT_DIFFUSION = "stabilityai/stable-diffusion-2-1-base"  # DATID-3D's and DreamPortrait's base model

# kind -> (what it is, a file whose presence marks a complete folder, the tiny model's name in ensure_tiny_models)
KINDS: dict[str, tuple[str, str, str]] = {
    "stable-diffusion": ("Stable Diffusion pipeline", "model_index.json", "stable-diffusion"),
    "stable-diffusion-depth": ("Stable Diffusion 2 depth pipeline", "model_index.json", "stable-diffusion-depth"),
    "controlnet": ("ControlNet", "config.json", "controlnet"),
    "clip": ("CLIP model", "config.json", "clip"),
}

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class PretrainedNotFoundError(FileNotFoundError):
    """Pretrained weights are neither a local folder nor available from the Hugging Face cache / hub."""


def how_to_get(name: str, kind: str, flag: str) -> str:
    what = KINDS[kind][0]
    return (f"on a machine with network run `huggingface-cli download {name} --local-dir <folder>` (or "
            f"`hf download {name} --local-dir <folder>`), copy the folder here and pass it as {flag} <folder>; "
            f"or pass {flag} {TINY_NAME} for the built-in tiny random-weight {what} (demos and tests only)")


def _in_hf_cache(repo_id: str, marker: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub always comes with diffusers/transformers
        return False
    try:
        found = try_to_load_from_cache(repo_id, marker)
    except Exception:  # noqa: BLE001 - a malformed id or cache: treat as missing
        return False
    return isinstance(found, str)


def resolve_pretrained(name_or_path: str | os.PathLike, kind: str, flag: str | None = None) -> str:
    """Return what to pass to ``from_pretrained`` for ``name_or_path``, or raise a clear error.

    ``kind`` is one of ``stable-diffusion``, ``controlnet``, ``clip``; ``flag`` names the option in messages
    (default ``--diffusion`` / ``--controlnet`` / ``--clip-model``). Never downloads anything itself.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: unknown model kind {kind!r}; expected one of {sorted(KINDS)}")
    what, marker, tiny_key = KINDS[kind]
    flag = flag or {"stable-diffusion": "--diffusion", "stable-diffusion-depth": "--diffusion", "controlnet": "--controlnet", "clip": "--clip-model"}[kind]
    name = str(name_or_path).strip()
    if not name:
        raise ValueError(f"{flag}: empty model name; expected a Hugging Face id, a local folder or '{TINY_NAME}'")
    if name == TINY_NAME:
        from adapt3d.diffusion.tiny_models import ensure_tiny_models
        return str(ensure_tiny_models(names=(tiny_key,))[tiny_key])
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag}: {path} is a file; expected a {what} folder holding {marker} "
                             "(save_pretrained layout)")
        if not (path / marker).is_file():
            raise PretrainedNotFoundError(f"{flag}: {path} is not a {what} folder: {marker} is missing "
                                          "(expected the save_pretrained / Hugging Face repository layout)")
        return str(path)
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if looks_local or not _REPO_ID.match(name):
        raise PretrainedNotFoundError(f"{flag}: {name!r} is neither an existing {what} folder nor a Hugging Face "
                                      "model id (owner/name)")
    if _in_hf_cache(name, marker):
        return name
    if is_offline():
        raise PretrainedNotFoundError(
            f"{flag}: the {what} weights {name!r} are not in the local Hugging Face cache and downloads are off "
            f"(offline mode: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / ADAPT3D_OFFLINE). To get them, "
            + how_to_get(name, kind, flag))
    return name


def download_error(name: str, kind: str, flag: str, error: BaseException) -> PretrainedNotFoundError:
    """Wrap a failed ``from_pretrained`` into an error that says how to get the weights (a Hugging Face id) or
    what is wrong with the local folder or file (never advising to download a local path)."""
    what = KINDS[kind][0]
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    path = Path(str(name)).expanduser()
    if path.exists() or str(name).startswith((".", "/", "~")) or str(name).count("/") > 1:
        check = ("the file is complete (its size matches the published one)" if path.is_file() else
                 f"the folder is complete: {KINDS[kind][1]} plus, for each component, its config and weights "
                 "(an interrupted copy or download leaves some out; --weights-variant fp16 for folders holding "
                 "only *.fp16.* weights)")
        return PretrainedNotFoundError(f"{flag}: could not load the {what} from the local path {name} ({reason}); "
                                       f"check that {check}")
    return PretrainedNotFoundError(f"{flag}: could not load the {what} {name!r} ({reason}). To get it, "
                                   + how_to_get(name, kind, flag))


def prompt_list(prompt: str | Sequence[str] | None, n: int, arg: str, allow_none: bool = False) -> list[str] | None:
    """One prompt per image: a string is repeated ``n`` times; a list must have ``n`` non-empty strings.

    ``arg`` names the flag in errors; ``allow_none`` lets ``None`` through (optional negative prompts)."""
    if prompt is None:
        if allow_none:
            return None
        raise ValueError(f"{arg}: a prompt is required (a non-empty string or a list of them)")
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    if len(prompts) != n:
        raise ValueError(f"{arg}: got {len(prompts)} prompts for {n} images; give one string or one per image")
    for p in prompts:
        if not isinstance(p, str):
            raise ValueError(f"{arg}: prompts must be strings, got {type(p).__name__}")
        if not allow_none and not p.strip():
            raise ValueError(f"{arg}: empty prompt {p!r}; describe the target domain, e.g. 'a zombie'")
    return prompts


class PipelineProperties:
    """Read-only facts of a wrapped diffusers pipeline ``self.pipe`` shared by our wrappers."""

    def __init__(self, pipe, device: torch.device | str | None = None, source=None) -> None:
        """Wrap ``pipe`` (moved to ``device`` when given; progress bars off); ``source`` records where it came from."""
        self.pipe = pipe
        if device is not None:
            pipe.to(torch.device(device))
        pipe.set_progress_bar_config(disable=True)
        self.source = source

    @property
    def device(self):
        """Where the pipeline computes (with CPU offload: the GPU, while the weights rest in CPU memory)."""
        return getattr(self.pipe, "_execution_device", None) or self.pipe.unet.device

    @property
    def dtype(self):
        return self.pipe.unet.dtype

    @property
    def resolution(self) -> int:
        """The model's native image size in pixels: UNet sample size x VAE factor (512 for SD 1.5/2.1-base, 1024
        for SDXL)."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def batch_seeds(self, seeds: Sequence[int] | None, n: int) -> list[int]:
        """One generator seed per image (default 0..n-1); the error names ``seeds``."""
        out = list(range(n)) if seeds is None else [int(v) for v in seeds]
        if len(out) != n:
            raise ValueError(f"seeds: got {len(out)} seeds for {n} images; give one per image")
        return out

    def generation_resolution(self, resolution: int | None) -> int:
        """``resolution`` (default :attr:`resolution`), checked to be a multiple of the VAE factor."""
        res = int(resolution or self.resolution)
        if res % int(self.pipe.vae_scale_factor):
            raise ValueError(f"resolution: {res} must be a multiple of the VAE factor {self.pipe.vae_scale_factor}")
        return res

    @staticmethod
    def resize_square(x, res: int):
        """(B, C, H, W) in [0, 1] -> (B, C, res, res), bilinear with antialiasing (unchanged if already that size)."""
        if tuple(x.shape[-2:]) == (res, res):
            return x
        return torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=False,
                                               antialias=True).clamp(0, 1)
