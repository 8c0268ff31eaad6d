"""``adapt3d adapt``: text-guided 3D domain adaptation end to end (DATID-3D) in one run folder.

    OUT/target/     make-dataset working folder; the EG3D dataset is OUT/target/dataset  (stage 1)
    OUT/train/      finetune run folder; the adapted generator is OUT/train/final         (stage 2)
    OUT/render/     the adapted generator's grid, per-seed images, orbit video and meshes   (stage 3)
    OUT/compare.png source vs adapted at the same seeds and cameras (rows: seeds)
    OUT/adapt.json  summary: options, what each stage did, files, notes

Every stage is resumable: rerunning the same command skips finished stages (a stage whose options changed reruns;
make-dataset and finetune resume their own partial work). Python API::

    from adapt3d.pipelines.adapt import AdaptConfig, run
    result = run(AdaptConfig(preset="tiny", prompt=("a zombie",), out="runs/demo"))

``--preset tiny`` uses the built-in tiny diffusion and CLIP models and small defaults (32 images, 50 steps of 4),
so the whole chain runs in a few minutes on a CPU; its pictures are meaningless (random weights).
Under ``torchrun`` every rank generates a shard of the dataset and trains data-parallel; rank 0 renders.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from adapt3d.export.options import RenderStageOptions
from adapt3d.pipelines import finetune as finetune_pipeline
from adapt3d.pipelines import make_dataset as make_dataset_pipeline
from adapt3d.pipelines.finetune import finetune_done
from adapt3d.pipelines.render import RenderConfig, check_render_options
from adapt3d.pipelines.stages import (AdaptResult, compare_is_current, finetune_stage_config, pick, render_stage,
                                      render_stage_config, save_compare)
from adapt3d.training.config import AugmentOp, FinetuneConfig, validate_finetune_config
from adapt3d.training.distributed import barrier, init_distributed, world_info
from adapt3d.utils.io import atomic_write_json, check_output_folder, to_jsonable
from adapt3d.utils.parsing import check_prompts, flag_name, parse_seeds, resolve_device

__all__ = ["AdaptConfig", "AdaptResult", "run", "run_clip_method", "stage_configs", "validate"]


@dataclass
class AdaptConfig(RenderStageOptions):
    """Adapt a 3D generator to a text prompt: make-dataset -> finetune -> render, with a source vs adapted grid
    (--method datid3d), or with CLIP losses (--method nada: text only; --method itportrait: a reference image and a
    text). Give --preset or --generator, and --prompt. Numbers left at None take the method's published values (or
    small demo values with --preset tiny)."""

    prompt: tuple[str, ...] = ()
    """Target-domain prompt(s), e.g. 'a 3D render of a face in Pixar style' (nada / itportrait: exactly one)."""
    method: Literal["datid3d", "nada", "itportrait"] = "datid3d"
    """datid3d: diffusion-made target dataset + adversarial fine-tuning; nada: CLIP directional loss from
    --source-text to --prompt; itportrait: --style-image + --prompt. Every nada / itportrait option:
    adapt3d nada --help, adapt3d itportrait --help."""
    source_text: str = "photo"
    """nada / itportrait: what the source generator makes (the start of the CLIP text direction)."""
    style_image: Path | None = None
    """itportrait: the reference portrait (inverted to a latent and a camera)."""
    steps: int | None = None
    """nada / itportrait: optimiser steps (NADA: 301, ITportrait: 401; tiny: 6)."""
    out: Path = Path("runs/adapt")
    """Run folder holding every stage (target/, train/, render/, compare.png, adapt.json)."""
    preset: str | None = None
    """Built-in generator with random weights (tiny: built-in tiny diffusion and CLIP, the offline demo)."""
    generator: str | None = None
    """Source generator: adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq)."""
    negative_prompt: str | None = None
    """Negative prompt for the diffusion model."""
    num_images: int | None = None
    """Target images to generate (DATID-3D: 1000; tiny: 32)."""
    strength: float = 0.7
    """img2img strength (DATID-3D: 0.7)."""
    guidance_scale: float = 8.0
    """Classifier-free guidance scale (DATID-3D: 8)."""
    num_inference_steps: int | None = None
    """Diffusion steps (DATID-3D: 50; tiny: 10)."""
    diffusion: str = "auto"
    """img2img model: Hugging Face id, local folder, or 'tiny' (auto: tiny with --preset tiny, else SD 2.1-base)."""
    clip_model: str = "auto"
    """CLIP model for scores and filters, or 'none'."""
    clip_threshold: float | None = None
    """Drop targets whose CLIP score with the prompt is below this."""
    pose_filter: bool = True
    """Drop targets whose pose drifted from their camera label (see make-dataset)."""
    kimg: float | None = None
    """Fine-tuning length in thousands of images (DATID-3D: 200; tiny: 0.2)."""
    batch: int | None = None
    """Fine-tuning batch size (DATID-3D: 20; tiny: 4)."""
    freeze: tuple[str, ...] = ()
    """Generator parts kept fixed while fine-tuning (mapping, backbone, b4 ... b256, decoder, superresolution)."""
    neural_rendering_schedule: Literal["auto", "datid3d", "fixed"] = "auto"
    """Fine-tuning render resolution: datid3d = 64 px rising towards 128 over 1000 kimg (DATID-3D), fixed = the
    generator's; auto = datid3d for official 512 px weights, fixed for --preset."""
    augment_ops: tuple[AugmentOp, ...] = ("xflip", "xint", "color")
    """Discriminator augmentations while fine-tuning; bgc = EG3D's full ADA pipeline (see adapt3d finetune --help)."""
    snapshot_kimg: float | None = None
    """kimg between fine-tuning snapshots (default: 50; tiny: half the run)."""
    instance_seed: int | None = None
    """One-shot instance-selected adaptation toward this seed's instance (see adapt3d.pipelines.instance)."""
    instance_latent: Path | None = None
    """One-shot instance-selected adaptation toward an inverted photo (latent.pt from adapt3d invert)."""
    samples_per_view: int | None = None
    """Instance mode: diffusion translations of each rendered view (default 4; tiny: 2); --num-images in all."""
    select: int | None = None
    """Instance mode: adapt toward candidate K of `adapt3d instance candidates` (same instance, --prompt, --seed):
    every view is translated with that candidate's diffusion noise and prompt."""
    num_candidates: int = 8
    """Instance mode: how many candidates `adapt3d instance candidates` made (--select takes 0 .. this - 1)."""
    seed: int = 0
    """Seed of the dataset job and of fine-tuning."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    progress: bool = True


def stage_configs(cfg: AdaptConfig) -> tuple[make_dataset_pipeline.MakeDatasetConfig, FinetuneConfig, RenderConfig]:
    """The configs of the three stages (what ``adapt`` runs; each is also a command of its own)."""
    tiny = cfg.preset == "tiny"
    out = Path(cfg.out)
    dataset = make_dataset_pipeline.MakeDatasetConfig(
        out=out / "target", preset=cfg.preset, generator=cfg.generator, prompt=tuple(cfg.prompt),
        negative_prompt=cfg.negative_prompt, num_images=pick(cfg.num_images, 1000, 32, tiny),
        strength=cfg.strength, guidance_scale=cfg.guidance_scale,
        num_inference_steps=pick(cfg.num_inference_steps, 50, 10, tiny), diffusion=cfg.diffusion,
        clip_model=cfg.clip_model, clip_threshold=cfg.clip_threshold, pose_filter=cfg.pose_filter, seed=cfg.seed,
        device=cfg.device, progress=cfg.progress)
    kimg = pick(cfg.kimg, 200.0, 0.2, tiny)
    train = finetune_stage_config(cfg, out, kimg=kimg, snapshot_kimg=50.0, tiny=tiny)
    shows = render_stage_config(cfg, out / "render", out / "train" / "final",
                                video_frames=pick(cfg.video_frames, 48, 24, tiny),
                                mesh_resolution=pick(cfg.mesh_resolution, 128, 64, tiny), device=cfg.device,
                                progress=cfg.progress)
    return dataset, train, shows


def _validate(cfg: AdaptConfig, stages) -> make_dataset_pipeline._Job:
    mcfg, fcfg, rcfg = stages
    if not cfg.prompt:
        raise ValueError("--prompt: give the target domain, e.g. --prompt 'a 3D render of a face in Pixar style'")
    check_prompts(cfg.prompt)
    check_render_options(rcfg)  # seeds, truncation, video and mesh bounds
    check_output_folder(Path(cfg.out))
    validate_finetune_config(fcfg, world_info().world_size)
    return make_dataset_pipeline.validate(mcfg)  # prompts, diffusion/CLIP names, generator source, folder


def validate(cfg: AdaptConfig) -> None:
    """Check every option of the DATID-3D path without running anything (the studio's form check uses this)."""
    if cfg.instance_seed is None and cfg.instance_latent is None and cfg.method == "datid3d":
        _validate(cfg, stage_configs(cfg))


def _dataset_done(mcfg, job) -> bool:
    folder = Path(mcfg.out)
    summary, job_file = folder / "make_dataset.json", folder / "job.json"
    if not (summary.is_file() and job_file.is_file() and (folder / "dataset" / "dataset.json").is_file()):
        return False
    old = json.loads(summary.read_text()).get("config")
    now = to_jsonable(asdict(mcfg))
    same_job = json.loads(job_file.read_text()).get("fingerprint") == make_dataset_pipeline.job_json(job)["fingerprint"]
    return same_job and json.loads(json.dumps(now)) == old


def _render_stage(cfg: AdaptConfig, rcfg: RenderConfig, final: Path, result: AdaptResult) -> None:
    from adapt3d.models.checkpoint import load_checkpoint
    from adapt3d.models.loading import load_generator
    compare = Path(cfg.out) / "compare.png"
    rendered = render_stage(rcfg, final, result)
    if not compare_is_current(compare, final, rendered):
        source = load_generator(preset=cfg.preset, checkpoint=cfg.generator).generator
        save_compare(compare, source, load_checkpoint(final, load_discriminator=False).generator,
                     parse_seeds(cfg.seeds), cfg.trunc, resolve_device(cfg.device))
    result.files["compare"] = str(compare)


# Options of `adapt3d adapt` that only DATID-3D uses, with their defaults (a changed one is an error for the others).
_DATID_ONLY = {"negative_prompt": None, "num_images": None, "strength": 0.7, "guidance_scale": 8.0,
               "num_inference_steps": None, "diffusion": "auto", "clip_threshold": None, "pose_filter": True,
               "kimg": None, "batch": None, "snapshot_kimg": None, "freeze": ()}
_SHARED = ("out", "preset", "generator", "seed", "device", "progress", "source_text", "steps",
           *(f.name for f in fields(RenderStageOptions)))


def run_clip_method(adapt_cfg: AdaptConfig) -> AdaptResult:
    """``adapt3d adapt --method nada|itportrait``: map the shared AdaptConfig fields onto NadaConfig /
    ITportraitConfig and run. Method-specific options are available on ``adapt3d nada`` / ``adapt3d itportrait``."""
    from adapt3d.pipelines import itportrait, nada

    method = getattr(adapt_cfg, "method", "nada")
    if method not in ("nada", "itportrait"):
        raise ValueError(f"--method: expected datid3d, nada or itportrait, got {method!r}")
    changed = [k for k, v in _DATID_ONLY.items() if hasattr(adapt_cfg, k) and getattr(adapt_cfg, k) != v]
    if changed:
        flags = ", ".join(flag_name(k) for k in changed)
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
        return nada.run(nada.NadaConfig(**kw))
    kw["style_image"] = getattr(adapt_cfg, "style_image", None)
    if getattr(adapt_cfg, "latent", None) is not None:
        kw["latent"] = adapt_cfg.latent
    return itportrait.run(itportrait.ITportraitConfig(**kw))


def run(cfg: AdaptConfig) -> AdaptResult:
    """Run (or resume) every stage; see the module docstring. All options are checked before any stage starts."""
    if cfg.instance_seed is not None or cfg.instance_latent is not None:
        from adapt3d.pipelines import instance  # one-shot: one instance at many cameras -> translate -> finetune
        return instance.run(instance.config_from(cfg))
    if cfg.select is not None:
        raise ValueError(f"--select: {cfg.select} picks a candidate of ONE instance; give --instance-seed or "
                         "--instance-latent too (see adapt3d instance candidates)")
    if cfg.method != "datid3d":
        return run_clip_method(cfg)  # OUT/train, OUT/render, OUT/compare.png, OUT/eval, OUT/<method>.json
    t0 = time.time()
    stages = stage_configs(cfg)
    mcfg, fcfg, rcfg = stages
    job = _validate(cfg, stages)
    info, _ = init_distributed(resolve_device(cfg.device))
    result = AdaptResult(out=Path(cfg.out), dataset=Path(mcfg.out) / "dataset", final=Path(fcfg.out) / "final")

    t = time.time()
    if _dataset_done(mcfg, job):
        result.stages["dataset"] = {"skipped": "up to date"}
    else:
        made = make_dataset_pipeline.run(mcfg)
        result.notes += [n for n in made.notes if n not in result.notes]
        result.stages["dataset"] = {"num_images": made.num_images, "num_kept": made.num_kept,
                                    "generated_now": made.generated_now, "seconds": round(time.time() - t, 2)}
    barrier()

    t = time.time()
    if finetune_done(fcfg):
        result.stages["finetune"] = {"skipped": "up to date"}
    else:
        trained = finetune_pipeline.run(fcfg)
        result.notes += [n for n in trained.notes if n not in result.notes]
        result.stages["finetune"] = {"steps": trained.step, "kimg": trained.cur_nimg / 1000,
                                     "resumed_from": str(trained.resumed_from) if trained.resumed_from else None,
                                     "seconds": round(time.time() - t, 2)}
    result.files.update({"dataset": str(result.dataset), "final": str(result.final), "train": str(fcfg.out)})

    if info.is_main:
        _render_stage(cfg, rcfg, result.final, result)
        result.seconds = time.time() - t0
        kept = result.stages["dataset"].get("num_kept")
        result.notes.append(f"dataset {result.dataset}" + (f" ({kept} images kept)" if kept is not None else "")
                            + f"; adapted generator {result.final}; source vs adapted {result.files['compare']}")
        summary = {"config": to_jsonable(asdict(cfg)),
                   "stages": result.stages, "files": result.files, "notes": result.notes,
                   "seconds": round(result.seconds, 2)}
        atomic_write_json(Path(cfg.out) / "adapt.json", summary)
    barrier()
    result.seconds = time.time() - t0
    return result
