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

Its stages are shared with :mod:`adapt3d.pipelines.itportrait` (:mod:`adapt3d.pipelines.clip_adaptation`).
"""

from __future__ import annotations

import time
from pathlib import Path

from adapt3d.pipelines.clip_adaptation import output_stages, preflight, train_stage, write_summary
from adapt3d.pipelines.stages import AdaptResult
from adapt3d.training.nada_config import NadaConfig, validate_common

__all__ = ["NadaConfig", "run"]


def run(cfg: NadaConfig) -> AdaptResult:
    """Run (or resume) 3D StyleGAN-NADA; see the module docstring. Every option is checked before a model loads."""
    from adapt3d.training.nada import NadaTrainer

    t0 = time.time()
    validate_common(cfg)
    device = preflight(cfg)
    result = AdaptResult(out=Path(cfg.out))

    def make(G, clip_loss, run_folder, resume_from):
        return NadaTrainer(cfg, G, clip_loss, device=device, run_folder=run_folder, resume_from=resume_from)

    result.final = train_stage(cfg, device, make, result)
    output_stages(cfg, result.final, device, result)
    result.files["final"] = str(result.final)
    result.notes.append(f"adapted generator {result.final}; source vs adapted {result.files['compare']}")
    write_summary(cfg, result, "nada", t0)
    return result
