"""Stages shared by the two CLIP-driven adaptation commands, ``nada`` and ``itportrait``.

Each run is: :func:`preflight` (every check before a model loads), :func:`train_stage` (load the source generator
and the CLIP directional loss, then train, resume or skip in OUT/train), :func:`output_stages` (render, compare.png,
evaluation) and :func:`write_summary` (OUT/<method>.json). The commands differ only in their trainer.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from adapt3d.pipelines.stages import (AdaptResult, compare_is_current, newer, render_stage, render_stage_config,
                                      save_compare)
from adapt3d.training.nada_config import ClipAdaptConfig, identity_of, resolved
from adapt3d.training.run_folder import RunFolder
from adapt3d.utils.io import atomic_write_json, check_output_folder, to_jsonable
from adapt3d.utils.parsing import parse_seeds, resolve_device

__all__ = ["build_clip_loss", "eval_config", "preflight", "train_stage", "output_stages", "write_summary"]


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
    check_output_folder(Path(cfg.out))
    return device


def _training_done(run: RunFolder, identity: dict, steps: int) -> bool:
    ck, opts = run.final / "checkpoint.json", run.read_options()
    if not ck.is_file() or opts is None or opts.get("identity") != identity:
        return False
    return json.loads(ck.read_text()).get("metadata", {}).get("step") == steps


def train_stage(cfg: ClipAdaptConfig, device: torch.device, make_trainer: Callable, result: AdaptResult,
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
    run_folder.write_options({"identity": identity, "options": to_jsonable(asdict(cfg)),
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


def output_stages(cfg: ClipAdaptConfig, final: Path, device: torch.device, result: AdaptResult) -> None:
    """Render (grid, video, meshes), the source vs adapted grid and the evaluation; each skipped when newer than
    the final checkpoint."""
    from adapt3d.models.checkpoint import load_checkpoint
    from adapt3d.models.loading import load_generator

    out = Path(cfg.out)
    rcfg = render_stage_config(cfg, out / "render", final, video_frames=resolved(cfg, "video_frames"),
                               mesh_resolution=resolved(cfg, "mesh_resolution"), device=cfg.device,
                               progress=cfg.progress)
    rendered = render_stage(rcfg, final, result)
    compare = out / "compare.png"
    if not compare_is_current(compare, final, rendered):
        source = load_generator(preset=cfg.preset, checkpoint=cfg.generator, progress=cfg.progress).generator
        save_compare(compare, source, load_checkpoint(final, load_discriminator=False).generator,
                     parse_seeds(cfg.seeds), cfg.trunc, device)
    result.files["compare"] = str(compare)
    if cfg.eval_metrics:
        from adapt3d.pipelines import evaluate
        metrics = out / "eval" / "metrics.json"
        if newer(metrics, final / "checkpoint.json"):
            result.stages["eval"] = {"skipped": "up to date"}
        else:
            t0 = time.time()
            ev = evaluate.run(eval_config(cfg, str(final)))
            result.stages["eval"] = {"seconds": round(time.time() - t0, 2)}
            result.notes += [f"eval: {n}" for n in ev.notes if "MEANINGLESS" not in n]
        result.files.update({"metrics": str(metrics), "report": str(out / "eval" / "report.html")})


def write_summary(cfg: ClipAdaptConfig, result: AdaptResult, name: str, t0: float) -> None:
    result.seconds = time.time() - t0
    doc = {"method": name, "config": to_jsonable(asdict(cfg)), "stages": result.stages,
           "files": result.files, "notes": result.notes, "seconds": round(result.seconds, 2)}
    atomic_write_json(Path(cfg.out) / f"{name}.json", doc)
