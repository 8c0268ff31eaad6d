"""``FinetuneConfig``: every option of adversarial fine-tuning (the CLI flags of ``adapt3d finetune``).

Defaults are DATID-3D's fine-tuning run (``eg3d/train.py`` as launched by ``datid3d_train.py --mode ft``, see
shared/docs/upstream-datid3d-itportrait-nada.md §1.c) except where noted: layer freezing works (DATID-3D's flag
froze nothing), and ADA uses three cheap operations by default (``--augment-ops bgc`` gives EG3D's twelve, with
camera labels kept consistent). The neural rendering resolution follows DATID-3D's schedule (64 rising towards 128
over 1000 kimg) for official 512 px weights, and stays at the generator's value for built-in presets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adapt3d.training.augment import expand_ops
from adapt3d.utils.io import to_jsonable
from adapt3d.utils.parsing import check_trunc, flag_name

__all__ = ["FinetuneConfig", "validate_finetune_config", "RESUME_NEUTRAL_FIELDS", "options_for_identity"]

AugmentOp = Literal["bgc", "color", "xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
                    "contrast", "lumaflip", "hue", "saturation"]
NeuralRenderingSchedule = Literal["auto", "datid3d", "fixed"]


@dataclass
class FinetuneConfig:
    """Fine-tune a tri-plane generator adversarially on a pose-labelled EG3D-format dataset (DATID-3D stage 2).

    Give the source generator with --preset or --generator."""

    dataset: Path
    """EG3D-format dataset: a folder or .zip with dataset.json = {"labels": [[path, [25 numbers]], ...]}."""
    out: Path = Path("runs/finetune")
    """Run folder: options.json, log.txt, stats.jsonl, samples/, snapshots/, final/. Rerunning the same command
    resumes from its last snapshot."""
    preset: str | None = None
    """Source generator: built-in architecture with seeded random weights (tiny, ffhq512, afhq512, shapenet128)."""
    generator: str | None = None
    """Source generator: adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq, ...). Its
    discriminator D initialises ours when the checkpoint has one."""
    resize: bool = False
    """Resize dataset images to the generator's resolution on load (antialiased bilinear) when they differ."""
    xflip: bool = False
    """Also train on left-right mirrored images with mirrored cameras (doubles the dataset)."""
    kimg: float = 200.0
    """Training length in thousands of real images shown to D (DATID-3D: 200)."""
    batch: int = 20
    """Global batch size, summed over all processes (DATID-3D: 20)."""
    batch_gpu: int | None = None
    """Micro-batch per process and forward pass (gradients are accumulated); default batch / processes."""
    g_lr: float = 0.0025
    """Generator Adam learning rate (before the lazy-regularisation scaling)."""
    d_lr: float = 0.002
    """Discriminator Adam learning rate (before the lazy-regularisation scaling)."""
    adam_betas: tuple[float, float] = (0.0, 0.99)
    """Adam betas of both networks."""
    r1_gamma: float = 5.0
    """R1 weight gamma on real images (image and raw image); 0 disables R1."""
    d_reg_interval: int = 16
    """Lazy R1: evaluated every this many steps, scaled by it."""
    density_reg: float = 0.25
    """Weight of EG3D's density smoothness regulariser (reg_type 'l1'); 0 disables it."""
    density_reg_interval: int = 4
    """Lazy density regularisation: evaluated every this many steps, scaled by it."""
    density_reg_p_dist: float = 0.004
    """Std of the point perturbation of the density regulariser (world units)."""
    density_reg_points: int = 1000
    """Points per generated scene in the density regulariser."""
    gpc_reg_prob: float | None = 0.8
    """Generator pose-conditioning swap probability (condition the mapping on another sample's camera); None
    conditions the mapping on zeros."""
    gpc_reg_fade_kimg: float = 0.0
    """kimg over which the swap probability fades from 1 to --gpc-reg-prob (0: from the start, as DATID-3D)."""
    ema_kimg: float | None = None
    """Half-life of the EMA generator in kimg; default batch * 10 / 32."""
    ema_rampup: float | None = None
    """EMA ramp-up ratio (None: off, as for fine-tuning)."""
    neural_rendering_schedule: NeuralRenderingSchedule = "auto"
    """Neural rendering resolution per step. datid3d: EG3D's train.py as DATID-3D launches it, 64 px rising linearly
    to 128 px over --neural-rendering-resolution-fade-kimg, rint(64 + 64 * kimg / 1000) (64-77 px in a 200-kimg
    run); fixed: the generator's resolution throughout; auto: datid3d for official 512 px FFHQ/AFHQ weights given
    with --generator, fixed for --preset (and other) generators."""
    neural_rendering_resolution: int | None = None
    """Initial neural rendering resolution in px (overrides the schedule's: 64 for datid3d, the generator's for
    fixed)."""
    neural_rendering_resolution_final: int | None = None
    """Final neural rendering resolution in px of the linear schedule (overrides the schedule's: 128 for datid3d,
    none for fixed)."""
    neural_rendering_resolution_fade_kimg: float = 1000.0
    """kimg over which the neural rendering resolution goes from initial to final (DATID-3D: 1000)."""
    blur_sigma: float = 0.0
    """Initial std (pixels) of the blur on D's inputs, fading to 0 over --blur-fade-kimg (off for fine-tuning)."""
    blur_fade_kimg: float = 0.0
    """kimg over which the discriminator blur fades out."""
    augment: Literal["ada", "fixed", "none"] = "ada"
    """Discriminator augmentation: adaptive probability (ADA), a fixed probability, or none."""
    augment_p: float = 0.0
    """Initial (ada) or constant (fixed) augmentation probability."""
    augment_ops: tuple[AugmentOp, ...] = ("xflip", "xint", "color")
    """Augmentations (each with probability p): bgc = EG3D's full ADA pipeline (xflip rotate90 xint scale rotate
    aniso xfrac brightness contrast lumaflip hue saturation), or any of those names; color = brightness contrast
    saturation. Geometric ops move the camera label with the image (see adapt3d.training.augment)."""
    ada_target: float = 0.6
    """ADA target for E[sign(D(real))]."""
    ada_kimg: float = 100.0
    """ADA speed: kimg for p to go from 0 to 1."""
    ada_interval: int = 4
    """Steps between ADA adjustments."""
    freeze: tuple[str, ...] = ()
    """Generator parts kept fixed: mapping, backbone, b4 ... b256 (tri-plane blocks), decoder, superresolution."""
    fresh_discriminator: bool = False
    """Start from a new random D even when the checkpoint has one."""
    tick_kimg: float = 1.0
    """kimg between status lines and stats.jsonl records."""
    snapshot_kimg: float = 50.0
    """kimg between snapshots and sample grids (one is always written at the end)."""
    sample_seeds: str = "0-7"
    """Latent seeds of the sample grids (fixed for the whole run)."""
    sample_trunc: float = 0.7
    """Truncation psi of the sample grids."""
    resume: str = "auto"
    """'auto': continue from the run folder's last snapshot when one exists; 'never': refuse a folder that holds a
    run; or a snapshot folder to start from (its weights, optimiser states and step)."""
    seed: int = 0
    """Random seed; every random draw is derived from (seed, step, micro-batch), so results do not depend on the
    number of processes."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'. Under torchrun each process uses cuda:LOCAL_RANK."""
    workers: int = 0
    """DataLoader worker processes (0: load in the main process)."""
    progress: bool = True
    """Show a progress bar."""


# Fields that may change between a run and its automatic resumption (they do not change what is trained).
RESUME_NEUTRAL_FIELDS = frozenset({"out", "kimg", "tick_kimg", "snapshot_kimg", "sample_seeds", "sample_trunc",
                                   "resume", "device", "workers", "progress"})


def options_for_identity(cfg: FinetuneConfig) -> dict:
    """The options that define a run (compared on automatic resume)."""
    d = {f.name: to_jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    d["dataset"] = str(Path(cfg.dataset).expanduser().resolve())
    return {k: v for k, v in d.items() if k not in RESUME_NEUTRAL_FIELDS}


def _positive(cfg: FinetuneConfig, names: tuple[str, ...], allow_zero: bool = False) -> None:
    for name in names:
        v = getattr(cfg, name)
        if v is None:
            continue
        ok = (v >= 0 if allow_zero else v > 0) and math.isfinite(v)
        if not ok:
            flag = flag_name(name)
            raise ValueError(f"{flag}: must be {'>= 0' if allow_zero else '> 0'}, got {v}")


def validate_finetune_config(cfg: FinetuneConfig, world_size: int = 1) -> int:
    """Check the options that need no model or dataset; returns the per-process micro-batch size."""
    _positive(cfg, ("kimg", "batch", "g_lr", "d_lr", "d_reg_interval", "density_reg_interval",
                    "density_reg_points", "tick_kimg", "snapshot_kimg", "ada_kimg", "ada_interval",
                    "neural_rendering_resolution_fade_kimg", "ema_kimg", "neural_rendering_resolution",
                    "neural_rendering_resolution_final", "batch_gpu"))
    _positive(cfg, ("r1_gamma", "density_reg", "density_reg_p_dist", "gpc_reg_fade_kimg", "blur_sigma",
                    "blur_fade_kimg", "workers", "ema_rampup", "seed"), allow_zero=True)
    if len(cfg.adam_betas) != 2 or not all(0 <= b < 1 for b in cfg.adam_betas):
        raise ValueError(f"--adam-betas: expected two numbers in [0, 1), got {cfg.adam_betas}")
    for name in ("gpc_reg_prob", "augment_p", "ada_target"):
        v = getattr(cfg, name)
        if v is not None and not 0 <= v <= 1:
            raise ValueError(f"{flag_name(name)}: must be in [0, 1], got {v}")
    if cfg.augment not in ("ada", "fixed", "none"):
        raise ValueError(f"--augment: expected 'ada', 'fixed' or 'none', got {cfg.augment!r}")
    try:
        expand_ops(cfg.augment_ops)
    except ValueError as e:
        raise ValueError(f"--augment-ops: {e}") from None
    if cfg.neural_rendering_schedule not in ("auto", "datid3d", "fixed"):
        raise ValueError(f"--neural-rendering-schedule: expected auto, datid3d or fixed, got "
                         f"{cfg.neural_rendering_schedule!r}")
    check_trunc(cfg.sample_trunc, "--sample-trunc")
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if cfg.batch % world_size != 0:
        raise ValueError(f"--batch: {cfg.batch} is not divisible by the number of processes ({world_size})")
    per_process = cfg.batch // world_size
    batch_gpu = cfg.batch_gpu or per_process
    if per_process % batch_gpu != 0:
        raise ValueError(f"--batch-gpu: {batch_gpu} must divide the per-process batch {per_process} (--batch "
                         f"{cfg.batch} over {world_size} process(es))")
    if not str(cfg.resume):
        raise ValueError("--resume: expected 'auto', 'never' or a snapshot folder, got ''")
    return batch_gpu
