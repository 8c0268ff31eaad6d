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
           "resolved_steps", "resolved_gan_options"]


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
    view_front_deg: float = 45.0
    """|azimuth| (degrees from the frontal view) below which the teacher prompt says 'front view' (threestudio:
    45); from there to 180 - --view-back-deg it says 'side view'."""
    view_back_deg: float = 45.0
    """|azimuth| above 180 minus this says 'back view' (threestudio: 45)."""
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
    """Weight of the non-saturating GAN regulariser against mode collapse (D's reals: --gan-real; 0: no GAN, no D)."""
    gan_real: Literal["auto", "teacher", "source", "dataset"] = "auto"
    """What the GAN regulariser's discriminator calls real. teacher: the teacher's img2img translations of source
    samples (diverse, in the text's domain: the GAN fights mode collapse without pulling toward the source);
    source: source-generator samples (D learns 'styled vs source' and pulls renders back to the source); dataset:
    --dataset. auto: dataset with --dataset, else teacher. Recorded in options.json."""
    gan_real_images: int | None = None
    """--gan-real teacher: size of the translated pool, made once per run (prompts take turns); default 256 (8 with
    --preset tiny)."""
    gan_real_strength: float = 0.7
    """--gan-real teacher: img2img strength, the fraction of the schedule re-noised (DATID-3D: 0.7)."""
    gan_real_guidance: float = 8.0
    """--gan-real teacher: img2img classifier-free guidance scale (DATID-3D: 8)."""
    gan_real_steps: int | None = None
    """--gan-real teacher: img2img inference steps (PNDM); default 50 (DATID-3D), 4 with --preset tiny."""
    dataset: Path | None = None
    """Real images for the discriminator with --gan-real dataset (or auto): an EG3D-format dataset (folder or
    zip) of the target domain."""
    d_lr: float = 0.002
    """Discriminator Adam learning rate (before lazy-R1 scaling)."""
    r1_gamma: float = 1.0
    """R1 weight on the discriminator's real inputs (EG3D FFHQ: 1); 0 disables it."""
    d_reg_interval: int = 16
    """Lazy R1: every this many steps, scaled by it."""
    pose_sampler: Literal["views", "gaussian", "uniform", "sinusoidal"] = "views"
    """Training cameras around the generator's average camera. views: --view-shares of the cameras in the front,
    side and back yaw bands (so side views are taught); gaussian / uniform / sinusoidal: --yaw-spread around the
    front (a gaussian of std 0.3 rad leaves 99 % of the prompts at 'front view')."""
    view_shares: tuple[float, float, float] = (0.5, 0.5, 0.0)
    """--pose-sampler views: shares of the front, side and back cameras (>= 0, normalised). Back is 0 by default: a
    face generator trained on FFHQ has never seen the back of a head."""
    side_max_deg: float = 70.0
    """--pose-sampler views: largest |azimuth| of side cameras, degrees (side band: --view-front-deg to this).
    Renders of an FFHQ generator degrade beyond about 60-70 deg."""
    yaw_spread: float = 0.3
    """Yaw spread in radians: gaussian std, uniform half-width, sinusoidal amplitude (not used by views)."""
    pitch_spread: float = 0.15
    """Pitch spread in radians (same meaning; views: the pitch std)."""
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


def resolved_gan_options(cfg: DistillConfig) -> dict:
    """--gan-real and its pool options with defaults filled in (what options.json records)."""
    from adapt3d.training.distill_reals import resolved_gan_real
    tiny = cfg.preset == "tiny"
    kind = resolved_gan_real(cfg.gan_real, cfg.dataset) if cfg.lambda_gan > 0 else "none"
    out = {"gan_real": kind}
    if kind == "teacher":
        out.update({"gan_real_images": cfg.gan_real_images or (8 if tiny else 256),
                    "gan_real_strength": cfg.gan_real_strength, "gan_real_guidance": cfg.gan_real_guidance,
                    "gan_real_steps": cfg.gan_real_steps or (4 if tiny else 50)})
    return out


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
    d.update(resolved_gan_options(cfg))  # the discriminator's real images, explicit
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
    if not (0 < cfg.view_front_deg < 180 - cfg.view_back_deg <= 180 and cfg.view_back_deg >= 0):
        raise ValueError(f"--view-front-deg {cfg.view_front_deg} / --view-back-deg {cfg.view_back_deg}: need "
                         "0 < front < 180 - back (degrees of |azimuth| from the frontal view)")
    shares = tuple(cfg.view_shares)
    if len(shares) != 3 or not all(math.isfinite(v) and v >= 0 for v in shares) or sum(shares) <= 0:
        raise ValueError(f"--view-shares: expected three shares (front side back) >= 0, not all 0, got {shares}")
    if cfg.pose_sampler == "views":
        if not (math.isfinite(cfg.side_max_deg) and cfg.view_front_deg < cfg.side_max_deg <= 180):
            raise ValueError(f"--side-max-deg: must be in ({cfg.view_front_deg}, 180] (above --view-front-deg), "
                             f"got {cfg.side_max_deg}")
        if shares[2] > 0 and cfg.view_back_deg == 0:
            raise ValueError("--view-shares: a back share needs --view-back-deg > 0")
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
    if cfg.gan_real not in ("auto", "teacher", "source", "dataset"):
        raise ValueError(f"--gan-real: {cfg.gan_real!r} is not one of auto, teacher, source, dataset")
    if cfg.gan_real == "dataset" and cfg.dataset is None:
        raise ValueError("--gan-real dataset: needs --dataset (an EG3D dataset of real target-domain images)")
    if cfg.gan_real in ("teacher", "source") and cfg.dataset is not None:
        raise ValueError(f"--dataset: only used with --gan-real dataset (or auto), not with --gan-real "
                         f"{cfg.gan_real}")
    if cfg.gan_real_images is not None and (isinstance(cfg.gan_real_images, bool) or cfg.gan_real_images < 1
                                            or cfg.gan_real_images > 100_000):
        raise ValueError(f"--gan-real-images: must be an integer in [1, 100000], got {cfg.gan_real_images!r}")
    if cfg.gan_real_steps is not None and (isinstance(cfg.gan_real_steps, bool) or cfg.gan_real_steps < 1):
        raise ValueError(f"--gan-real-steps: must be an integer >= 1, got {cfg.gan_real_steps!r}")
    from adapt3d.diffusion.img2img import check_img2img_args
    gan = resolved_gan_options(cfg)
    if gan["gan_real"] == "teacher":
        check_img2img_args("x", cfg.gan_real_strength, cfg.gan_real_guidance, gan["gan_real_steps"],
                           prefix="--gan-real-")
    from adapt3d.utils.parsing import parse_seeds
    for name in ("diversity_seeds", "sample_seeds", "eval_seeds"):
        parse_seeds(getattr(cfg, name), flag_name(name))
    if len(parse_seeds(cfg.diversity_seeds)) < 2:
        raise ValueError("--diversity-seeds: the diversity set needs at least 2 seeds")
    return prompts
