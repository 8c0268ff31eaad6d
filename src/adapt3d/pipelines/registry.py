"""The command registry: name -> (config dataclass, run function, one-line help) of every pipeline command.

Both front ends are generated from it: the ``adapt3d`` command line (:mod:`adapt3d.cli.main`, which adds the
``studio`` command on top) and the studio's job forms (:mod:`adapt3d.studio.server`). A new command is a module
``adapt3d.pipelines.<job>`` with a ``<Job>Config`` dataclass and a ``run`` function, plus one entry here.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

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
from adapt3d.pipelines.instance_candidates import InstanceCommand, run_instance_command
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
from adapt3d.pipelines.synth import SynthConfig, synth

__all__ = ["Command", "COMMANDS"]


class Command(NamedTuple):
    """One command: its config dataclass (the options), the function that runs it, and its one-line help."""

    config: Any
    """A dataclass, or a union of dataclasses for a command with nested subcommands (``instance``)."""
    run: Callable[[Any], Any]
    help: str


COMMANDS: dict[str, Command] = {
    "render": Command(RenderConfig, render,
                      "Render a generator: image grid, per-seed images, depth, orbit video, meshes."),
    "convert": Command(ConvertConfig, convert, "Convert an official EG3D .pkl into an adapt3d checkpoint folder."),
    "export": Command(ExportConfig, export_state_dict, "Write a generator as a plain state dict for EG3D/DATID-3D "
                      "scripts (gen_samples.py --model_is_state_dict True)."),
    "make-dataset": Command(MakeDatasetConfig, make_dataset, "Render, translate with SD img2img, filter: a "
                            "camera-labelled EG3D dataset (DATID-3D stage 1)."),
    "finetune": Command(FinetuneConfig, finetune, "Fine-tune a generator adversarially on a camera-labelled EG3D "
                        "dataset (DATID-3D stage 2)."),
    "adapt": Command(AdaptConfig, adapt,
                     "Text-guided 3D adaptation end to end: make-dataset -> finetune -> render + compare."),
    "instance": Command(InstanceCommand, run_instance_command, "Instance-selected adaptation: 'instance candidates' "
                        "shows diverse targets of ONE instance to pick from; 'instance adapt' (= adapt "
                        "--instance-seed --select K)."),
    "invert": Command(InvertConfig, invert,
                      "Invert a photo into a 3D generator: latent + camera (+ PTI), reconstruction grid, video."),
    "nada": Command(NadaConfig, nada, "3D StyleGAN-NADA: adapt a generator from --source-text to --prompt with CLIP "
                    "directional losses from several views (all options of adapt --method nada)."),
    "itportrait": Command(ITportraitConfig, itportrait, "ITportrait: adapt a portrait generator to a reference image "
                          "(--style-image) and a text (all options of adapt --method itportrait)."),
    "distill": Command(DistillConfig, distill, "DreamPortrait: distil a diffusion model into a text-conditioned 3D "
                       "generator (score distillation)."),
    "generate": Command(GenerateConfig, generate,
                        "Prompt + seeds -> images, orbit video, meshes (one forward pass per sample)."),
    "synth": Command(SynthConfig, synth, "3D-DST: CAD meshes -> ControlNet images with exact 3D annotations."),
    "kcf": Command(KcfConfig, kcf, "3D-DST K-fold consistency filter: mark images whose pose label disagrees."),
    "export-coco": Command(ExportCocoConfig, export_coco,
                           "Write a 3D-DST run as COCO JSON (boxes, keypoints, pose)."),
    "eval": Command(EvalConfig, evaluate,
                    "Evaluate an adapted generator vs its source and a prompt: metrics + report."),
}
