"""``DistillConfig``: every option of DreamPortrait-style distillation (the CLI flags of ``adapt3d distill``).

Where the paper is silent (it is: only its abstract is public), defaults follow threestudio's SDS (t in [0.02,
0.98], w(t) = 1 - a_t, guidance 100, SD 2.1-base) and EG3D's GAN settings (non-saturating loss, lazy R1).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adapt3d.diffusion.sds import SDSOptions
from adapt3d.utils.io import to_jsonable
from adapt3d.utils.parsing import check_prompts, check_trunc, check_view_outputs, flag_name, read_prompt_file

__all__ = ["DistillConfig", "validate_distill_config", "parse_prompts", "distill_identity", "RESUME_NEUTRAL",
           "resolved_steps"]


@dataclass(kw_only=True)
class DistillConfig(SDSOptions):
    """Distil a text-to-image diffusion model into a text-conditioned tri-plane generator (DreamPortrait): SDS
    over latents x cameras x prompts, condition adapters + gated tri-plane cross-attention, a GAN regulariser.
    Give the source generator with --preset or --generator."""

    prompts: str
    """Prompts: a text file with one prompt per line, or prompts separated by ';' (e.g. "a zombie;an elf")."""
    out: Path = Path("runs/distill")
    """Run folder: options.json, log.txt, stats.jsonl, samples/, snapshots/, final/, eval/. Rerunning the same
    command resumes from its last snapshot."""
    preset: str | None = None
    """Source generator: built-in architecture with seeded random weights (tiny, ffhq512, ...; demos/tests)."""
    generator: str | None = None
    """Source generator: adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq, ...)."""
    diffusion: str | None = None
    """Teacher: Stable Diffusion 1.x/2.x folder or Hugging Face id; default stabilityai/stable-diffusion-2-1-base
    ('tiny' with --preset tiny). Its frozen text encoder also conditions the generator."""
    steps: int | None = None
    """Optimiser steps; default 2000 (30 with --preset tiny, the built-in demo)."""
    batch: int = 4
    """Samples (latent, camera, prompt) per step."""
    lr: float = 1e-3
    """Adam learning rate of the conditioning modules (adapters, cross-attention, gates)."""
    train_base: tuple[str, ...] = ()
    """Base generator parts also trained (mapping, backbone, b4..b256, decoder, superresolution); () keeps it
    frozen, so the unconditional path stays the source generator exactly."""
    base_lr: float = 2.5e-4
    """Adam learning rate of the --train-base parts."""
    lambda_sds: float = 1.0
    """Weight of the SDS loss."""
    lambda_gan: float = 0.05
    """Weight of the non-saturating GAN loss that keeps renders on the source distribution (0: no GAN, no D)."""
    dataset: Path | None = None
    """Real images for the discriminator: an EG3D-format dataset (folder or zip). None: source-generator samples."""
    d_lr: float = 0.002
    """Discriminator Adam learning rate (before lazy-R1 scaling)."""
    r1_gamma: float = 1.0
    """R1 weight on the discriminator's real inputs (EG3D FFHQ: 1); 0 disables it."""
    d_reg_interval: int = 16
    """Lazy R1: every this many steps, scaled by it."""
    pose_sampler: Literal["gaussian", "uniform", "sinusoidal"] = "gaussian"
    """Training cameras around the generator's average camera."""
    yaw_spread: float = 0.3
    """Yaw spread in radians: gaussian std, uniform half-width, sinusoidal amplitude."""
    pitch_spread: float = 0.15
    """Pitch spread in radians (same meaning)."""
    trunc: float = 1.0
    """Truncation psi of the training latents (1: the full distribution)."""
    neural_rendering_resolution: int | None = None
    """Neural rendering resolution during training (lower is faster); default: the generator's."""
    num_groups: int = 3
    """Condition adapters: groups of w layers (coarse -> fine)."""
    adapter_hidden: int | None = None
    """Adapter MLP width; default min(w_dim, 256)."""
    attn_dim: int | None = None
    """Cross-attention width; default min(4 x tri-plane channels, 128)."""
    attn_heads: int = 4
    attn_resolution: int | None = None
    """Tri-plane cells per side that attend to the text; default min(tri-plane resolution / 2, 64)."""
    tick_steps: int = 50
    """Steps between status lines / stats.jsonl records."""
    diversity_steps: int = 250
    """Steps between diversity measurements on the fixed set (also at step 0 and at the end)."""
    diversity_seeds: str = "0-15"
    """Latent seeds of the fixed diversity set (frontal camera, per prompt)."""
    diversity_features: Literal["clip", "pixels"] = "clip"
    """Embedding of the mean pairwise distance: CLIP image embeddings (needs --clip-model) or 32x32 pixels."""
    clip_model: str | None = None
    """CLIP model for diversity and the final CLIP scores; default openai/clip-vit-base-patch32 ('tiny' with
    --preset tiny); 'none' disables CLIP (diversity on pixels, no CLIP score)."""
    snapshot_steps: int = 500
    """Steps between snapshots and per-prompt sample grids (always one at the end)."""
    sample_seeds: str = "0-3"
    """Latent seeds of the sample grids (rows; columns are three yaws)."""
    evaluate: bool = True
    """After training, write eval/: per-prompt grids, videos, meshes, metrics.json and report.html."""
    eval_seeds: str = "0-7"
    """Final evaluation and outputs per prompt: latent seeds (CLIP score, diversity, view consistency)."""
    video: Literal["orbit", "none"] = "orbit"
    """Final orbit video per prompt (a grid of the eval seeds)."""
    video_frames: int = 48
    mesh: Literal["ply", "obj", "glb", "none"] = "ply"
    """Final mesh per prompt (first eval seed)."""
    mesh_resolution: int = 128
    resume: str = "auto"
    """'auto': continue from the last snapshot in --out; 'never': refuse a folder holding a run; or a snapshot."""
    seed: int = 0
    """Every random draw of step s comes from (seed, s): runs and resumed runs are reproducible."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'. The teacher runs in float16 on CUDA."""
    progress: bool = True


RESUME_NEUTRAL = frozenset({"out", "steps", "tick_steps", "diversity_steps", "snapshot_steps", "sample_seeds",
                            "eval_seeds", "evaluate", "video", "video_frames", "mesh", "mesh_resolution", "resume",
                            "device", "progress", "clip_model", "diversity_seeds", "diversity_features"})
"""Options that may change when a run is resumed (they do not change what is trained). Annealing depends on
--steps, so resuming with another --steps and --t-anneal != none changes the schedule from then on."""


def resolved_steps(cfg: DistillConfig) -> int:
    """--steps, or its default: 2000, 30 for the tiny demo preset."""
    if cfg.steps is not None:
        return int(cfg.steps)
    return 30 if cfg.preset == "tiny" else 2000


def parse_prompts(spec: str, arg: str = "--prompts") -> list[str]:
    """A file (one prompt per line; blank lines and lines starting with # ignored) or 'p1;p2;...'."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{arg}: empty; give a text file with one prompt per line or 'prompt one;prompt two'")
    path = Path(spec).expanduser()
    if ";" not in spec and path.suffix in (".txt", ".prompts", ".lst") and not path.is_file():
        raise ValueError(f"{arg}: prompt file {path} does not exist")
    if path.exists() and ";" not in spec:
        prompts = read_prompt_file(path, arg)
    else:
        prompts = [p.strip() for p in check_prompts(spec.split(";"), arg)]
        if any(not p for p in prompts):
            raise ValueError(f"{arg}: empty prompt in {spec!r}; separate prompts with ';'")
    if len(set(prompts)) != len(prompts):
        raise ValueError(f"{arg}: duplicate prompts in {prompts}")
    return prompts


def distill_identity(cfg: DistillConfig, prompts: list[str]) -> dict:
    """Options that define a run (compared on automatic resume), with the parsed prompts."""
    d = {f.name: to_jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in RESUME_NEUTRAL}
    d["prompts"] = list(prompts)
    return d


def validate_distill_config(cfg: DistillConfig) -> list[str]:
    """Check every option that needs no model; returns the parsed prompts. ValueError names the flag."""
    prompts = parse_prompts(cfg.prompts)
    cfg.check_sds()
    if cfg.steps is not None and (isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or cfg.steps < 1):
        raise ValueError(f"--steps: must be an integer >= 1, got {cfg.steps!r}")
    for name in ("batch", "tick_steps", "diversity_steps", "snapshot_steps", "video_frames", "num_groups",
                 "attn_heads", "d_reg_interval"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{flag_name(name)}: must be an integer >= 1, got {v!r}")
    for name in ("adapter_hidden", "attn_dim", "attn_resolution", "neural_rendering_resolution"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{flag_name(name)}: must be an integer >= 1 or None, got {v!r}")
    for name in ("lr", "base_lr", "d_lr"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{flag_name(name)}: must be > 0, got {v}")
    for name in ("lambda_sds", "lambda_gan", "r1_gamma", "yaw_spread", "pitch_spread"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{flag_name(name)}: must be >= 0, got {v}")
    if cfg.lambda_sds == 0 and cfg.lambda_gan == 0:
        raise ValueError("--lambda-sds and --lambda-gan are both 0: nothing to train")
    check_trunc(cfg.trunc)
    if cfg.mesh != "none" and cfg.mesh_resolution < 8:
        raise ValueError(f"--mesh-resolution: must be >= 8, got {cfg.mesh_resolution}")
    check_view_outputs(video_frames=cfg.video_frames,
                       mesh_resolution=cfg.mesh_resolution if cfg.mesh != "none" else None)
    if cfg.seed < 0:
        raise ValueError(f"--seed: must be >= 0, got {cfg.seed}")
    if not str(cfg.resume):
        raise ValueError("--resume: expected 'auto', 'never' or a snapshot folder, got ''")
    if cfg.dataset is not None and not Path(cfg.dataset).exists():
        raise ValueError(f"--dataset: {cfg.dataset} does not exist (an EG3D dataset folder or zip)")
    from adapt3d.utils.parsing import parse_seeds
    for name in ("diversity_seeds", "sample_seeds", "eval_seeds"):
        parse_seeds(getattr(cfg, name), flag_name(name))
    if len(parse_seeds(cfg.diversity_seeds)) < 2:
        raise ValueError("--diversity-seeds: the diversity set needs at least 2 seeds")
    return prompts
