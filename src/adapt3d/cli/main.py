"""The ``adapt3d`` command: one subcommand per job, generated from the jobs' config dataclasses (tyro)."""

from __future__ import annotations

import os
import sys
from typing import Sequence

import tyro

from adapt3d.cli.errors import split_debug_flag, user_error_message
from adapt3d.pipelines.adapt import AdaptConfig
from adapt3d.pipelines.adapt import run as adapt
from adapt3d.pipelines.convert import ConvertConfig, convert
from adapt3d.pipelines.distill import DistillConfig
from adapt3d.pipelines.distill import run as distill
from adapt3d.pipelines.evaluate import EvalConfig
from adapt3d.pipelines.evaluate import run as evaluate
from adapt3d.pipelines.export import ExportConfig
from adapt3d.pipelines.export import run as export_state_dict
from adapt3d.pipelines.export_coco import ExportCocoConfig, export_coco
from adapt3d.pipelines.finetune import FinetuneConfig
from adapt3d.pipelines.finetune import run as finetune
from adapt3d.pipelines.generate import GenerateConfig
from adapt3d.pipelines.generate import run as generate
from adapt3d.pipelines.invert import InvertConfig
from adapt3d.pipelines.invert import run as invert
from adapt3d.pipelines.itportrait import ITportraitConfig
from adapt3d.pipelines.itportrait import run as itportrait
from adapt3d.pipelines.kcf import KcfConfig, kcf
from adapt3d.pipelines.make_dataset import MakeDatasetConfig
from adapt3d.pipelines.make_dataset import run as make_dataset
from adapt3d.pipelines.nada import NadaConfig
from adapt3d.pipelines.nada import run as nada
from adapt3d.pipelines.render import RenderConfig, render
from adapt3d.pipelines.studio import StudioConfig
from adapt3d.pipelines.studio import run as studio
from adapt3d.pipelines.synth import SynthConfig, synth
from adapt3d.utils.io import new_folder_removed_if_empty

COMMANDS = {
    "render": (RenderConfig, render, "Render a generator: image grid, per-seed images, depth, orbit video, meshes."),
    "convert": (ConvertConfig, convert, "Convert an official EG3D .pkl into an adapt3d checkpoint folder."),
    "export": (ExportConfig, export_state_dict, "Write a generator as a plain state dict for EG3D/DATID-3D scripts "
               "(gen_samples.py --model_is_state_dict True)."),
    "make-dataset": (MakeDatasetConfig, make_dataset,
                     "Render, translate with SD img2img, filter: a camera-labelled EG3D dataset (DATID-3D stage 1)."),
    "finetune": (FinetuneConfig, finetune,
                 "Fine-tune a generator adversarially on a camera-labelled EG3D dataset (DATID-3D stage 2)."),
    "adapt": (AdaptConfig, adapt, "Text-guided 3D adaptation end to end: make-dataset -> finetune -> render + compare."),
    "invert": (InvertConfig, invert,
               "Invert a photo into a 3D generator: latent + camera (+ PTI), reconstruction grid, video."),
    "nada": (NadaConfig, nada, "3D StyleGAN-NADA: adapt a generator from --source-text to --prompt with CLIP "
             "directional losses from several views (all options of adapt --method nada)."),
    "itportrait": (ITportraitConfig, itportrait, "ITportrait: adapt a portrait generator to a reference image "
                   "(--style-image) and a text (all options of adapt --method itportrait)."),
    "distill": (DistillConfig, distill,
                "DreamPortrait: distil a diffusion model into a text-conditioned 3D generator (score distillation)."),
    "generate": (GenerateConfig, generate,
                 "Prompt + seeds -> images, orbit video, meshes (one forward pass per sample)."),
    "synth": (SynthConfig, synth, "3D-DST: CAD meshes -> ControlNet images with exact 3D annotations."),
    "kcf": (KcfConfig, kcf, "3D-DST K-fold consistency filter: mark images whose pose label disagrees."),
    "export-coco": (ExportCocoConfig, export_coco, "Write a 3D-DST run as COCO JSON (boxes, keypoints, pose)."),
    "studio": (StudioConfig, studio,
               "Web studio: explore generators side by side, start and watch jobs, browse run folders (127.0.0.1)."),
    "eval": (EvalConfig, evaluate, "Evaluate an adapted generator vs its source and a prompt: metrics + report."),
}

def main(argv: Sequence[str] | None = None) -> int:
    argv, debug = split_debug_flag(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS else None
    cfg = tyro.extras.subcommand_cli_from_dict(
        {k: v[0] for k, v in COMMANDS.items()},
        args=argv, prog="adapt3d", description="adapt3d: diffusion models as teachers for 3D-aware generators.")
    run = next(fn for cls, fn, _ in COMMANDS.values() if isinstance(cfg, cls))
    try:
        out = getattr(cfg, "out", None)
        with new_folder_removed_if_empty(out if isinstance(out, (str, os.PathLike)) else None):
            result = run(cfg)
    except Exception as e:  # errors a user can fix: one line (cli/errors.py); anything else: the traceback
        message = None if debug else user_error_message(e)
        if message is None:
            raise
        print(f"adapt3d {name or ''}: error: {message}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    if hasattr(result, "out"):
        print(f"adapt3d {name}: wrote {result.out}")
        for note in getattr(result, "notes", []):
            print(f"  note: {note}")
    else:
        print(f"adapt3d {name}: wrote {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
