"""Options of CLIP-guided adaptation: ``NadaConfig`` (3D StyleGAN-NADA) and the fields it shares with ITportrait.

Defaults follow StyleGAN-NADA's README command (``--lr 0.002 --batch 2 --iter 301 --auto_layer_iters 1``, CLIP
ViT-B/32 + ViT-B/16 with weights 1 and 1, direction loss only) lifted to 3D the way ITportrait does (several random
views per latent, same views for the trainable and the frozen generator), except where noted. ``--preset tiny``
swaps in small demo values (tiny CLIP, 6 steps, 1 latent x 2 views, few eval samples) so a run takes seconds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from adapt3d.export.options import RenderStageOptions
from adapt3d.utils.io import to_jsonable
from adapt3d.utils.parsing import check_trunc

__all__ = ["ClipAdaptConfig", "NadaConfig", "DEFAULT_CLIP_MODELS", "resolved", "identity_of", "validate_common",
           "EVAL_METRICS"]

DEFAULT_CLIP_MODELS = ("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch16")
EVAL_METRICS = ("clip", "diversity", "view", "fid")
TRAIN_PARTS = ("mapping", "backbone", "decoder", "superresolution")


@dataclass
class ClipAdaptConfig(RenderStageOptions):
    """Fields shared by ``--method nada`` and ``--method itportrait``."""

    prompt: str = ""
    """Target text, e.g. 'Pixar character' (NADA's --target_class)."""
    source_text: str = "photo"
    """Source text: what the source generator makes (NADA's --source_class)."""
    out: Path = Path("runs/nada")
    """Run folder: train/ (options.json, log.txt, stats.jsonl, samples/, snapshots/, final/), render/, eval/,
    compare.png and a summary JSON. Rerunning the same command resumes."""
    preset: str | None = None
    """Source generator: built-in architecture with random weights (tiny: the offline demo with a tiny CLIP)."""
    generator: str | None = None
    """Source generator: adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq)."""
    clip_models: tuple[str, ...] = ()
    """CLIP models of the losses (Hugging Face ids or local folders of any transformers CLIP checkpoint, or 'tiny');
    default openai/clip-vit-base-patch32 + openai/clip-vit-base-patch16 (tiny with --preset tiny)."""
    clip_model_weights: tuple[float, ...] = ()
    """Weight of each CLIP model's loss (default 1 each)."""
    templates: str = "default"
    """Prompt templates averaged into the text direction: 'default' (adapt3d's 24), 'none' (texts as given) or a
    text file with one template per line containing {}."""
    direction_floor: float = 0.1
    """Norm floor of the image direction: the loss is 1 - <dI, dT> / max(|dI|, floor), i.e. NADA's 1 - cos above
    the floor and a bounded linear pull below it (keeps the first steps, where dI ~ 0, from swamping Adam's second
    moment; NADA avoids them by rendering with different noise). 0: NADA's formula everywhere."""
    steps: int | None = None
    """Optimiser steps (NADA README: 301; ITportrait: 401; tiny: 6)."""
    batch: int | None = None
    """Latents per step (NADA README: 2; tiny: 1); each is rendered from --num-views cameras."""
    num_views: int | None = None
    """Random cameras per latent and step, shared by the trainable and the frozen generator (ITportrait: 2;
    default 4; tiny: 2)."""
    yaw_range_deg: tuple[float, float] = (-25.0, 25.0)
    """Uniform range of the training cameras' yaw, degrees from frontal."""
    pitch_range_deg: tuple[float, float] = (-12.0, 12.0)
    """Uniform range of the training cameras' pitch, degrees from frontal."""
    lr: float = 0.002
    """Adam learning rate, applied as NADA does: lr * 4/5 with betas (0, 0.99 ** (4/5))."""
    train_parts: tuple[str, ...] = ("backbone", "superresolution")
    """Generator parts that may change: mapping, backbone, b4 ... b256 (tri-plane blocks), decoder,
    superresolution. Everything else stays bit-identical."""
    train_trunc: float = 1.0
    """Truncation psi of the training latents (NADA: 1)."""
    neural_rendering_resolution: int | None = None
    """Neural rendering resolution of the training renders (default: the generator's)."""
    ema_kimg: float | None = None
    """Half-life (thousands of latents) of an EMA copy saved instead of the trained weights; None: no EMA (NADA)."""
    snapshot_steps: int | None = None
    """Steps between snapshots and sample grids (default 100; tiny: --steps); one is always written at the end."""
    tick_steps: int | None = None
    """Steps between status lines and stats.jsonl records (default 10; tiny: 1)."""
    eval_metrics: tuple[str, ...] = ("clip", "diversity", "view")
    """Metric groups of the final evaluation (clip, diversity, view, fid); empty: no evaluation."""
    eval_samples: int | None = None
    """Latents of the evaluation (64; tiny: 4)."""
    seed: int = 0
    """Seed of every random draw (latents, cameras, selection); draws are derived from (seed, step)."""
    resume: str = "auto"
    """'auto': continue from the last snapshot in OUT/train; 'never': refuse a folder that holds a run; or a
    snapshot folder."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class NadaConfig(ClipAdaptConfig):
    """3D StyleGAN-NADA: adapt a tri-plane generator to a text with CLIP's directional loss, from several views.
    Give --preset or --generator, --source-text and --prompt."""

    lambda_direction: float = 1.0
    """Weight of the directional CLIP loss."""
    lambda_global: float = 0.0
    """Weight of the global CLIP loss 1 - cos(E_I(image), E_T(target)) (NADA: 0, 'unused in the paper')."""
    auto_layer_k: int | None = None
    """Adaptive layer selection: train only the layers (within --train-parts) reading the k w rows that a few
    steps of global-CLIP optimisation of W+ move most. None: train all of --train-parts (NADA's README uses k =
    all layers, which is the same)."""
    auto_layer_iters: int = 1
    """SGD steps on W+ per selection (NADA: 1)."""
    auto_layer_batch: int | None = None
    """Latents of each selection (NADA: 8; tiny: 2)."""
    auto_layer_interval: int = 1
    """Steps between selections (NADA: every step)."""
    auto_layer_lr: float = 0.01
    """SGD learning rate of the selection (NADA: 0.01)."""


def _tiny(cfg: ClipAdaptConfig) -> bool:
    return cfg.preset == "tiny"


def resolved(cfg: ClipAdaptConfig, name: str):
    """The value of an option whose None default depends on --preset tiny."""
    value = getattr(cfg, name)
    if value is not None and value != ():
        return value
    tiny = _tiny(cfg)
    steps = resolved(cfg, "steps") if name == "snapshot_steps" else None
    table = {
        "clip_models": ("tiny",) if tiny else DEFAULT_CLIP_MODELS,
        "steps": 6 if tiny else getattr(type(cfg), "DEFAULT_STEPS", 301),
        "batch": 1 if tiny else 2,
        "num_views": 2 if tiny else 4,
        "snapshot_steps": steps if tiny else 100,
        "tick_steps": 1 if tiny else 10,
        "video_frames": 8 if tiny else 48,
        "mesh_resolution": 32 if tiny else 128,
        "eval_samples": 4 if tiny else 64,
        "auto_layer_batch": 2 if tiny else 8,
        "invert_steps": 10 if tiny else 300,
        "apt_batch": 1 if tiny else 2,
    }
    if name == "clip_model_weights":
        return tuple(1.0 for _ in resolved(cfg, "clip_models"))
    if name not in table:
        return value
    return table[name]


# Options that may change between a run and its resumption (they do not change what is trained).
RESUME_NEUTRAL = frozenset({"out", "steps", "snapshot_steps", "tick_steps", "seeds", "trunc", "video",
                            "video_frames", "mesh", "mesh_resolution", "eval_metrics", "eval_samples", "resume",
                            "device", "progress"})


def identity_of(cfg: ClipAdaptConfig) -> dict:
    """The options (resolved) that define what is trained; compared when a run folder is resumed."""
    d = {f.name: to_jsonable(resolved(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in RESUME_NEUTRAL}
    for name in ("style_image", "latent", "style_camera"):
        if d.get(name):
            d[name] = str(Path(d[name]).expanduser().resolve())
    return d


def _check(ok: bool, flag: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"--{flag}: {expected}, got {value!r}")


def validate_common(cfg: ClipAdaptConfig) -> None:
    """Checks that need no model; ValueError naming the flag, the value and what is expected."""
    from adapt3d.clip.directional import load_templates
    from adapt3d.models.loading import check_generator_source
    from adapt3d.utils.parsing import check_text, check_view_outputs

    check_generator_source(cfg.preset, cfg.generator, flag="--generator")
    _check(bool(cfg.prompt and cfg.prompt.strip()), "prompt", cfg.prompt, "give the target text, e.g. 'Pixar "
           "character'")
    check_text(cfg.prompt, "--prompt", "prompt")
    check_text(cfg.source_text, "--source-text")
    _check(bool(cfg.source_text.strip()), "source-text", cfg.source_text, "a non-empty text, e.g. 'photo'")
    _check(cfg.prompt.strip() != cfg.source_text.strip(), "prompt", cfg.prompt, "a text different from "
           "--source-text")
    models, weights = resolved(cfg, "clip_models"), resolved(cfg, "clip_model_weights")
    _check(len(weights) == len(models), "clip-model-weights", list(weights), f"one weight per CLIP model "
           f"({len(models)}: {list(models)})")
    _check(all(w >= 0 and math.isfinite(w) for w in weights) and any(w > 0 for w in weights),
           "clip-model-weights", list(weights), "weights >= 0, at least one > 0")
    load_templates(cfg.templates)
    _check(math.isfinite(cfg.direction_floor) and cfg.direction_floor >= 0, "direction-floor", cfg.direction_floor,
           "a CLIP distance >= 0")
    for name in ("steps", "batch", "num_views", "snapshot_steps", "tick_steps", "video_frames", "eval_samples"):
        v = resolved(cfg, name)
        _check(isinstance(v, int) and v >= 1, name.replace("_", "-"), v, "an integer >= 1")
    _check(resolved(cfg, "mesh_resolution") >= 8, "mesh-resolution", cfg.mesh_resolution, "an integer >= 8")
    check_view_outputs(video_frames=resolved(cfg, "video_frames"), mesh_resolution=resolved(cfg, "mesh_resolution"))
    for name in ("yaw_range_deg", "pitch_range_deg"):
        lo, hi = getattr(cfg, name)
        _check(-89 <= lo <= hi <= 89, name.replace("_", "-"), getattr(cfg, name), "(min, max) degrees with "
               "-89 <= min <= max <= 89")
    _check(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", cfg.lr, "a learning rate > 0")
    _check(bool(cfg.train_parts) and all(p in TRAIN_PARTS or re.fullmatch(r"(backbone\.)?b\d+", p)
                                         for p in cfg.train_parts), "train-parts", cfg.train_parts,
           "parts among mapping, backbone, b4 ... b256, decoder, superresolution")
    check_trunc(cfg.train_trunc, "--train-trunc")
    _check(cfg.neural_rendering_resolution is None or cfg.neural_rendering_resolution >= 8,
           "neural-rendering-resolution", cfg.neural_rendering_resolution, "None or an integer >= 8")
    _check(cfg.ema_kimg is None or cfg.ema_kimg > 0, "ema-kimg", cfg.ema_kimg, "None or > 0")
    unknown = sorted(set(cfg.eval_metrics) - set(EVAL_METRICS))
    _check(not unknown, "eval-metrics", list(cfg.eval_metrics), f"a subset of {', '.join(EVAL_METRICS)}")
    _check(bool(str(cfg.resume)), "resume", cfg.resume, "'auto', 'never' or a snapshot folder")
    cfg.check_seeds()  # --seeds (also of the sample grids) and --trunc
    if isinstance(cfg, NadaConfig):
        _check(cfg.lambda_direction >= 0 and cfg.lambda_global >= 0 and cfg.lambda_direction + cfg.lambda_global
               > 0, "lambda-direction", (cfg.lambda_direction, cfg.lambda_global), "--lambda-direction and "
               "--lambda-global >= 0, not both 0")
        _check(cfg.auto_layer_k is None or cfg.auto_layer_k >= 1, "auto-layer-k", cfg.auto_layer_k,
               "None or an integer >= 1")
        for name in ("auto_layer_iters", "auto_layer_interval"):
            _check(getattr(cfg, name) >= 1, name.replace("_", "-"), getattr(cfg, name), "an integer >= 1")
        _check(resolved(cfg, "auto_layer_batch") >= 1, "auto-layer-batch", cfg.auto_layer_batch, "an integer >= 1")
        _check(cfg.auto_layer_lr > 0, "auto-layer-lr", cfg.auto_layer_lr, "a learning rate > 0")
