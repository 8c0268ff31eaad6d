"""Options of ``adapt --method dsds`` (GCA-3D-style depth-aware score distillation, :mod:`adapt3d.training.dsds`).

Shares the CLIP-adaptation fields (generator, cameras, steps, lr, train parts, run folder, resume, evaluation) with
NADA / ITportrait (:class:`adapt3d.training.nada_config.ClipAdaptConfig`); the CLIP models are used only for the
final evaluation and logging. Defaults that GCA-3D does not state are adapt3d's choices and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adapt3d.training.nada_config import ClipAdaptConfig

__all__ = ["DSDSConfig", "DEFAULT_DSDS_TEACHER", "teacher_names", "ip_adapter_folder", "validate_dsds"]

DEFAULT_DSDS_TEACHER = "stabilityai/stable-diffusion-2-depth"


@dataclass
class DSDSConfig(ClipAdaptConfig):
    """Dataset-free adaptation (GCA-3D style): depth-aware SDS through a depth-conditioned teacher fed the source
    generator's own depth and mask, plus a hierarchical spatial-consistency loss between source and adapted renders
    at the same latent and camera. Give --preset or --generator and --prompt."""

    DEFAULT_STEPS = 300  # adapt3d's choice

    out: Path = Path("runs/dsds")
    """Run folder: train/ (options.json, log.txt, stats.jsonl, samples/, snapshots/, final/), render/, eval/,
    compare.png and dsds.json. Rerunning the same command resumes."""
    diffusion: str = "auto"
    """Teacher: an SD 2 depth model (Hugging Face id, folder, 'tiny'), or with --controlnet an SD 1.x/2.x base;
    auto = tiny with --preset tiny, else stabilityai/stable-diffusion-2-depth (or SD 1.5 with --controlnet)."""
    controlnet: str = "none"
    """Depth ControlNet teacher (id, folder or 'tiny') on the --diffusion base; 'none' = the SD 2 depth UNet."""
    control_scale: float = 1.0
    """ControlNet conditioning scale (>= 0)."""
    negative_prompt: str = ""
    """Text of the unconditional branch of classifier-free guidance."""
    guidance_scale: float = 100.0
    """CFG scale of the SDS teacher (adapt3d's choice: DreamFusion's 100)."""
    t_range: tuple[float, float] = (0.02, 0.98)
    """SDS timestep range as fractions of the teacher's train timesteps."""
    weighting: Literal["sds", "uniform", "fantasia3d"] = "sds"
    """w(t): sds = 1 - a_t, uniform = 1, fantasia3d = sqrt(a_t) (1 - a_t)."""
    lambda_dsds: float = 1.0
    """Weight of the depth-aware SDS loss."""
    lambda_hsc: float = 1.0
    """Weight of the hierarchical spatial-consistency loss (adapt3d's choice; GCA-3D's lambda)."""
    hsc_grids: tuple[int, ...] = (4, 8, 16)
    """Cells a side of the coarse-to-fine PatchNCE grids (capped at the neural rendering resolution)."""
    hsc_temperature: float = 0.07
    """PatchNCE temperature (> 0)."""
    image_prompt: Path | None = None
    """Image-guided mode (GCA-3D's one-shot adaptation): a reference image given to the teacher through an
    IP-Adapter (next to --prompt)."""
    ip_adapter: str = "auto"
    """IP-Adapter folder for --image-prompt (the layout of h94/IP-Adapter's models/: ip-adapter_sd15.safetensors +
    image_encoder/; SD 1.5 teachers); auto = a tiny random one with --preset tiny, else required."""
    ip_scale: float = 1.0
    """Weight of the image prompt in the teacher's cross-attention (IP-Adapter scale, >= 0)."""


def teacher_names(cfg: DSDSConfig) -> tuple[str, str | None]:
    """(teacher diffusion name, ControlNet name or None) after 'auto' / 'none'."""
    from adapt3d.diffusion.controlnet import DEFAULT_BASE
    tiny = cfg.preset == "tiny"
    controlnet = None if cfg.controlnet in ("none", "", None) else cfg.controlnet
    if cfg.diffusion != "auto":
        return cfg.diffusion, controlnet
    return ("tiny" if tiny else DEFAULT_BASE if controlnet else DEFAULT_DSDS_TEACHER), controlnet


def ip_adapter_folder(cfg: DSDSConfig, unet) -> Path | None:
    """The IP-Adapter folder of the run (None without --image-prompt); 'auto' with --preset tiny builds tiny random
    weights for ``unet`` under the tiny-model cache."""
    if cfg.image_prompt is None:
        return None
    if cfg.ip_adapter != "auto":
        return Path(cfg.ip_adapter).expanduser()
    from adapt3d.diffusion.ip_adapter import save_tiny_ip_adapter
    from adapt3d.diffusion.tiny_models import default_tiny_models_dir
    folder = default_tiny_models_dir() / f"ip-adapter-{int(unet.config.in_channels)}ch"
    if not (folder / "image_encoder" / "config.json").is_file():
        save_tiny_ip_adapter(folder, unet)
    return folder


def validate_dsds(cfg: DSDSConfig) -> None:
    """The dsds-only checks (ValueError naming the flag); then the teacher's weights are resolved (offline: a
    missing model fails here, before anything loads)."""
    from adapt3d.diffusion.loading import PretrainedNotFoundError, resolve_pretrained
    from adapt3d.diffusion.sds import check_sds_args

    if cfg.image_prompt is not None:
        from adapt3d.diffusion.ip_adapter import find_ip_adapter_weights
        from adapt3d.utils.image_files import open_image
        with open_image(cfg.image_prompt, "--image-prompt"):
            pass
        if not (math.isfinite(cfg.ip_scale) and cfg.ip_scale >= 0):
            raise ValueError(f"--ip-scale: {cfg.ip_scale!r} must be a finite number >= 0")
        if cfg.ip_adapter == "auto" and cfg.preset != "tiny":
            raise ValueError("--image-prompt: give --ip-adapter FOLDER (get it with `huggingface-cli download "
                             "h94/IP-Adapter --include 'models/*' --local-dir X` and pass X/models, with an SD 1.5 "
                             "--diffusion and a depth --controlnet)")
        if cfg.ip_adapter != "auto":
            find_ip_adapter_weights(cfg.ip_adapter)
    elif cfg.ip_adapter != "auto":
        raise ValueError(f"--ip-adapter {cfg.ip_adapter}: used only with --image-prompt")
    check_sds_args(cfg.guidance_scale, cfg.t_range, cfg.weighting)
    for name in ("lambda_dsds", "lambda_hsc", "control_scale"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"--{name.replace('_', '-')}: {v!r} must be a finite number >= 0")
    if cfg.lambda_dsds == 0 and cfg.lambda_hsc == 0:
        raise ValueError("--lambda-dsds and --lambda-hsc: not both 0 (nothing would be trained)")
    if not cfg.hsc_grids or any(int(g) < 1 for g in cfg.hsc_grids):
        raise ValueError(f"--hsc-grids: {cfg.hsc_grids!r} must be integers >= 1 (cells a side)")
    if not (math.isfinite(cfg.hsc_temperature) and cfg.hsc_temperature > 0):
        raise ValueError(f"--hsc-temperature: {cfg.hsc_temperature!r} must be > 0")
    diffusion, controlnet = teacher_names(cfg)
    kind = "stable-diffusion" if controlnet else "stable-diffusion-depth"
    try:
        resolve_pretrained(diffusion, kind, "--diffusion")
        if controlnet:
            resolve_pretrained(controlnet, "controlnet", "--controlnet")
    except PretrainedNotFoundError as e:
        raise PretrainedNotFoundError(f"--method dsds needs a depth-conditioned teacher: {e}") from e
