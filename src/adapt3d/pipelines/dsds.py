"""``adapt3d adapt --method dsds`` (also ``adapt3d dsds``): GCA-3D-style dataset-free adaptation in one run folder.

    OUT/train/      run folder: options.json, log.txt, stats.jsonl (loss/dsds, loss/hsc, sds/*),
                    samples/fakes-<step>.png, snapshots/snapshot-<step>/, final/ (the adapted generator)
    OUT/render/     the adapted generator's grid, per-seed images and depth, orbit video, meshes
    OUT/compare.png source vs adapted at the same seeds and cameras
    OUT/eval/       metrics.json + report.html (CLIP score, diversity, view consistency)
    OUT/dsds.json   summary

Image-guided mode: ``--image-prompt ref.png --ip-adapter FOLDER`` (an IP-Adapter on the teacher UNet). Same
conventions as ``nada``: rerunning resumes from the last snapshot; a NaN loss, gradient or weight stops the run
naming the last good snapshot. Python API::

    from adapt3d.pipelines.dsds import DSDSConfig, run
    result = run(DSDSConfig(preset="tiny", prompt="a zombie", out="runs/dsds-demo"))
"""

from __future__ import annotations

import time
from pathlib import Path

from adapt3d.pipelines.clip_adaptation import output_stages, preflight, train_stage, write_summary
from adapt3d.pipelines.stages import AdaptResult
from adapt3d.training.dsds_config import DSDSConfig, ip_adapter_folder, teacher_names, validate_dsds
from adapt3d.training.nada_config import validate_common

__all__ = ["DSDSConfig", "run"]


def run(cfg: DSDSConfig) -> AdaptResult:
    """Run (or resume) dsds; every option and the teacher's weights are checked before a model loads."""
    from adapt3d.diffusion.ip_adapter import load_ip_adapter
    from adapt3d.training.dsds import DSDSTrainer, load_depth_teacher

    t0 = time.time()
    validate_common(cfg)
    validate_dsds(cfg)
    device = preflight(cfg)
    result = AdaptResult(out=Path(cfg.out))
    diffusion, controlnet = teacher_names(cfg)

    def make(G, clip_loss, run_folder, resume_from):
        sds = load_depth_teacher(diffusion, controlnet, device, conditioning_scale=cfg.control_scale)
        run_folder.log(f"dsds teacher: {sds.source} ({sds.unet.kind})")
        folder = ip_adapter_folder(cfg, sds.unet.unet)
        if folder is not None:
            sds.unet.image_prompt = load_ip_adapter(sds.unet.unet, folder, scale=cfg.ip_scale)
            run_folder.log(f"image prompt {cfg.image_prompt} through the IP-Adapter {folder}")
        return DSDSTrainer(cfg, G, clip_loss, sds, device=device, run_folder=run_folder, resume_from=resume_from)

    result.final = train_stage(cfg, device, make, result,
                               extra_options={"teacher": {"diffusion": diffusion, "controlnet": controlnet}})
    output_stages(cfg, result.final, device, result)
    result.files["final"] = str(result.final)
    result.notes.append(f"adapted generator {result.final}; source vs adapted {result.files['compare']}")
    write_summary(cfg, result, "dsds", t0)
    return result
