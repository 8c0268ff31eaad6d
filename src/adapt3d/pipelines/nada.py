"""``adapt3d adapt --method nada`` (also ``adapt3d nada``): 3D StyleGAN-NADA end to end in one run folder.

    OUT/train/      run folder: options.json, log.txt, stats.jsonl, samples/fakes-<step>.png,
                    snapshots/snapshot-<step>/, final/ (the adapted generator, an adapt3d checkpoint)
    OUT/render/     the adapted generator's grid, per-seed images and depth, orbit video, meshes (adapt3d render)
    OUT/compare.png source vs adapted at the same seeds and cameras (rows: seeds)
    OUT/eval/       metrics.json + report.html (adapt3d eval: CLIP score, diversity, view consistency)
    OUT/nada.json   summary: options, stages, files, notes

Rerunning the same command resumes training from the last snapshot (a longer --steps continues it) and skips
finished stages. Python API::

    from adapt3d.pipelines.nada import NadaConfig, run
    result = run(NadaConfig(preset="tiny", source_text="photo", prompt="zombie", out="runs/nada-demo"))
    result.final    # the adapted generator (render it with adapt3d render --checkpoint)

The shared helpers here also drive :mod:`adapt3d.pipelines.itportrait`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from adapt3d.diffusion.options import DiffusionOptions
from adapt3d.pipelines.render import RenderConfig, render, resolve_device
from adapt3d.training.nada_config import ClipAdaptConfig, NadaConfig, identity_of, resolved, validate_common
from adapt3d.training.run_folder import RunFolder, check_writable_folder
from adapt3d.utils.io import atomic_write_json
from adapt3d.utils.parsing import parse_seeds

__all__ = ["NadaConfig", "ClipAdaptResult", "run", "run_from_adapt", "build_clip_loss", "eval_config"]


@dataclass
class ClipAdaptResult:
    """What a run did: ``final`` is the adapted generator's checkpoint folder; ``files`` name every output."""

    out: Path
    final: Path | None = None
    files: dict[str, object] = field(default_factory=dict)
    stages: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def build_clip_loss(cfg: ClipAdaptConfig, device: torch.device):
    """The CLIP models of --clip-models (loaded frozen) and the directional loss between the two texts."""
    from adapt3d.clip import CLIPScorer
    from adapt3d.clip.directional import CLIPDirectionalLoss, load_templates

    names, weights = resolved(cfg, "clip_models"), resolved(cfg, "clip_model_weights")
    scorers = [CLIPScorer.from_pretrained(n, device=device, flag="--clip-models") if w > 0 else None
               for n, w in zip(names, weights)]
    live = [(s, w, n) for s, w, n in zip(scorers, weights, names) if s is not None]
    return CLIPDirectionalLoss([s for s, _, _ in live], [w for _, w, _ in live], cfg.source_text, cfg.prompt,
                               load_templates(cfg.templates), names=[n for _, _, n in live],
                               floor=cfg.direction_floor)


def eval_config(cfg: ClipAdaptConfig, generator: str | None):
    """The evaluation of the adapted generator (``generator``: its checkpoint; None for the pre-flight check)."""
    from adapt3d.pipelines.evaluate import EvalConfig

    n = resolved(cfg, "eval_samples")
    return EvalConfig(out=Path(cfg.out) / "eval", generator=generator if generator else cfg.generator,
                      source=cfg.generator, preset=cfg.preset, prompt=cfg.prompt, source_prompt=cfg.source_text,
                      clip_model=resolved(cfg, "clip_models")[0], num_samples=max(n, 2),
                      metrics=tuple(cfg.eval_metrics), view_num_samples=min(8, max(n, 2)),
                      num_clusters=min(10, max(n // 2, 1)), grid_samples=min(6, max(n, 2)),
                      batch_size=min(8, max(n, 2)), seed=cfg.seed, device=cfg.device, progress=cfg.progress)


def preflight(cfg: ClipAdaptConfig) -> torch.device:
    """Everything checkable before a model loads: options, CLIP names, the evaluation's weights, the folder."""
    from adapt3d.diffusion.loading import resolve_pretrained

    device = resolve_device(cfg.device)
    for name in resolved(cfg, "clip_models"):
        resolve_pretrained(name, "clip", "--clip-models")
    if cfg.eval_metrics:
        from adapt3d.pipelines import evaluate
        try:
            evaluate.validate(eval_config(cfg, None))
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"--eval-metrics: the final evaluation could not run ({e}); provide what it needs, or "
                             "pass --eval-metrics clip view (no LPIPS), or --eval-metrics with nothing to skip it") \
                from e
    check_writable_folder(Path(cfg.out))
    return device


def _training_done(run: RunFolder, identity: dict, steps: int) -> bool:
    ck, opts = run.final / "checkpoint.json", run.read_options()
    if not ck.is_file() or opts is None or opts.get("identity") != identity:
        return False
    return json.loads(ck.read_text()).get("metadata", {}).get("step") == steps


def _newer(path: Path, than: Path) -> bool:
    return path.is_file() and path.stat().st_mtime > than.stat().st_mtime


def train_stage(cfg: ClipAdaptConfig, device: torch.device, make_trainer: Callable, result: ClipAdaptResult,
                extra_options: dict | None = None) -> Path:
    """Load the source generator and the CLIP loss, then train (or resume, or skip when finished)."""
    from adapt3d.models.loading import load_generator

    run_folder = RunFolder(Path(cfg.out) / "train", echo=cfg.progress)
    identity = identity_of(cfg)
    steps = resolved(cfg, "steps")
    if _training_done(run_folder, identity, steps):
        result.stages["train"] = {"skipped": "up to date"}
        return run_folder.final
    resume_from = run_folder.resume_point(cfg.resume, identity)
    if resume_from is not None and (resume_from / "checkpoint.json").is_file():
        done = json.loads((resume_from / "checkpoint.json").read_text()).get("metadata", {}).get("step", 0)
        if done > steps:
            raise ValueError(f"--steps: {steps} is fewer than the {done} steps of {resume_from}; give --steps >= "
                             f"{done} to continue that run, or use a new --out")
    t0 = time.time()
    loaded = load_generator(preset=cfg.preset, checkpoint=cfg.generator, progress=cfg.progress)
    result.notes += [n for n in loaded.notes if n not in result.notes]
    clip_loss = build_clip_loss(cfg, device)
    if resume_from is not None and resume_from.parent == run_folder.snapshots_dir:
        run_folder.truncate_stats(int(resume_from.name.split("-", 1)[1]))
    run_folder.write_options({"identity": identity, "options": json.loads(json.dumps(asdict(cfg), default=str)),
                              "resolved": {"steps": steps, "device": str(device), "generator": loaded.source,
                                           "clip_models": list(resolved(cfg, "clip_models")),
                                           "resume_from": str(resume_from) if resume_from else None,
                                           **(extra_options or {})},
                              "notes": result.notes})
    run_folder.log(f"{type(cfg).__name__}: '{cfg.source_text}' -> '{cfg.prompt}', {steps} steps, device {device}, "
                   + (f"resuming from {resume_from}" if resume_from else "starting from the source generator"))
    trainer = make_trainer(loaded.generator, clip_loss, run_folder, resume_from)
    out = trainer.run_training()
    result.stages["train"] = {"steps": out.step, "resumed_from": str(resume_from) if resume_from else None,
                              "seconds": round(time.time() - t0, 2), "last_stats": out.stats[-1] if out.stats else {}}
    return out.final


def output_stages(cfg: ClipAdaptConfig, final: Path, device: torch.device, result: ClipAdaptResult) -> None:
    """Render (grid, video, meshes), the source vs adapted grid and the evaluation; each skipped when newer than
    the final checkpoint."""
    from adapt3d.export.images import contact_sheet, save_image
    from adapt3d.models.checkpoint import load_checkpoint
    from adapt3d.models.loading import load_generator
    from adapt3d.pipelines.adapt import compare_grid

    out, stamp = Path(cfg.out), final / "checkpoint.json"
    rcfg = RenderConfig(out=out / "render", checkpoint=str(final), seeds=cfg.seeds, trunc=cfg.trunc, video=cfg.video,
                        video_frames=resolved(cfg, "video_frames"), mesh=cfg.mesh,
                        mesh_resolution=resolved(cfg, "mesh_resolution"), device=cfg.device, progress=cfg.progress)
    summary = out / "render" / "render.json"
    if _newer(summary, stamp) and json.loads(summary.read_text()).get("config", {}).get("seeds") == cfg.seeds:
        result.stages["render"] = {"skipped": "up to date"}
        result.files.update(json.loads(summary.read_text()).get("files", {}))
    else:
        t0 = time.time()
        rendered = render(rcfg)
        result.files.update(rendered.files)
        result.notes += [n for n in rendered.notes if "random weights" not in n]
        result.stages["render"] = {"seconds": round(time.time() - t0, 2)}
    compare = out / "compare.png"
    if not _newer(compare, stamp) or result.stages["render"].get("seconds") is not None:
        seeds = parse_seeds(cfg.seeds)
        source = load_generator(preset=cfg.preset, checkpoint=cfg.generator, progress=cfg.progress).generator
        rows = compare_grid(source, load_checkpoint(final, load_discriminator=False).generator, seeds, cfg.trunc,
                            device)
        save_image(compare, contact_sheet(rows, [[f"source, seed {s}", f"adapted, seed {s}"] for s in seeds]))
    result.files["compare"] = str(compare)
    if cfg.eval_metrics:
        from adapt3d.pipelines import evaluate
        metrics = out / "eval" / "metrics.json"
        if _newer(metrics, stamp):
            result.stages["eval"] = {"skipped": "up to date"}
        else:
            t0 = time.time()
            ev = evaluate.run(eval_config(cfg, str(final)))
            result.stages["eval"] = {"seconds": round(time.time() - t0, 2)}
            result.notes += [f"eval: {n}" for n in ev.notes if "MEANINGLESS" not in n]
        result.files.update({"metrics": str(metrics), "report": str(out / "eval" / "report.html")})


def write_summary(cfg: ClipAdaptConfig, result: ClipAdaptResult, name: str, t0: float) -> None:
    result.seconds = time.time() - t0
    doc = {"method": name, "config": json.loads(json.dumps(asdict(cfg), default=str)), "stages": result.stages,
           "files": result.files, "notes": result.notes, "seconds": round(result.seconds, 2)}
    atomic_write_json(Path(cfg.out) / f"{name}.json", doc)


def run(cfg: NadaConfig) -> ClipAdaptResult:
    """Run (or resume) 3D StyleGAN-NADA; see the module docstring. Every option is checked before a model loads."""
    from adapt3d.training.nada import NadaTrainer

    t0 = time.time()
    validate_common(cfg)
    device = preflight(cfg)
    result = ClipAdaptResult(out=Path(cfg.out))

    def make(G, clip_loss, run_folder, resume_from):
        return NadaTrainer(cfg, G, clip_loss, device=device, run_folder=run_folder, resume_from=resume_from)

    result.final = train_stage(cfg, device, make, result)
    output_stages(cfg, result.final, device, result)
    result.files["final"] = str(result.final)
    result.notes.append(f"adapted generator {result.final}; source vs adapted {result.files['compare']}")
    write_summary(cfg, result, "nada", t0)
    return result


# Options of `adapt3d adapt` that only DATID-3D uses, with their defaults (a changed one is an error for the others).
_DATID_ONLY = {"negative_prompt": None, "num_images": None, "strength": 0.7, "guidance_scale": 8.0,
               "num_inference_steps": None, "diffusion": "auto", "clip_threshold": None, "pose_filter": True,
               "kimg": None, "batch": None, "snapshot_kimg": None, "freeze": (),
               "diffusion_options": DiffusionOptions()}
_SHARED = ("out", "preset", "generator", "seeds", "trunc", "video", "video_frames", "mesh", "mesh_resolution", "seed",
           "device", "progress", "source_text", "steps")


def run_from_adapt(adapt_cfg) -> ClipAdaptResult:
    """``adapt3d adapt --method nada|itportrait``: map the shared AdaptConfig fields onto NadaConfig /
    ITportraitConfig and run. Method-specific options are available on ``adapt3d nada`` / ``adapt3d itportrait``."""
    method = getattr(adapt_cfg, "method", "nada")
    if method not in ("nada", "itportrait"):
        raise ValueError(f"--method: expected datid3d, nada or itportrait, got {method!r}")
    changed = [k for k, v in _DATID_ONLY.items() if hasattr(adapt_cfg, k) and getattr(adapt_cfg, k) != v]
    if "diffusion_options" in changed:  # name its changed flags (--dtype, --cpu-offload, ...)
        now, default = asdict(adapt_cfg.diffusion_options), asdict(DiffusionOptions())
        changed = [k for k in changed if k != "diffusion_options"] + [k for k in default if now[k] != default[k]]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ValueError(f"{flags}: only used by --method datid3d; --method {method} trains with CLIP losses "
                         f"(see adapt3d {method} --help for its options)")
    prompts = tuple(getattr(adapt_cfg, "prompt", ()) or ())
    if len(prompts) != 1:
        raise ValueError(f"--prompt: --method {method} takes exactly one target text, got {len(prompts)}")
    kw = {k: getattr(adapt_cfg, k) for k in _SHARED if hasattr(adapt_cfg, k)}
    kw["prompt"] = prompts[0]
    clip_model = getattr(adapt_cfg, "clip_model", "auto")
    if clip_model == "none":
        raise ValueError(f"--clip-model none: --method {method} is driven by CLIP; give a CLIP model or 'auto'")
    if clip_model not in ("auto", None):
        kw["clip_models"] = (clip_model,)
    if method == "nada":
        return run(NadaConfig(**kw))
    from adapt3d.pipelines.itportrait import ITportraitConfig, run as run_itportrait
    kw["style_image"] = getattr(adapt_cfg, "style_image", None)
    if getattr(adapt_cfg, "latent", None) is not None:
        kw["latent"] = adapt_cfg.latent
    return run_itportrait(ITportraitConfig(**kw))
