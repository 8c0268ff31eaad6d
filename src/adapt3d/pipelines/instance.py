"""Instance-selected (one-shot) adaptation: ``adapt3d adapt --instance-seed N`` / ``--instance-latent latent.pt``.

DATID-3D names this application; its code does not include it. Built from make-dataset's and finetune's parts:

1. instance: a seed (``z = RandomState(seed)``, mapped with the frontal camera, truncation ``--trunc``) or an
   inverted latent (``latent.pt`` from ``adapt3d invert``; its architecture is checked against the generator);
2. views: ``ceil(num_images / samples_per_view)`` cameras from the pose sampler (view j uses the pose seed of
   make-dataset's plan; with a latent, view 0 is the photo's own camera); the instance is rendered at each;
3. translate: each view ``samples_per_view`` times with SD img2img (one seed per output, as make-dataset), each
   target scored as it is written (CLIP cosine with its prompt; pose consistency against renders of the instance
   around the label camera), filtered over the whole set with make-dataset's decisions, written as an EG3D dataset;
4. fine-tune the source generator on that dataset (``adapt3d finetune``): its samples become variations of the
   instance in the target domain;
5. render the adapted generator (``adapt3d render``) and the instance through it (``render --latent``).

Instance-*selected* (``--select K``, after ``adapt3d instance candidates``,
:mod:`adapt3d.pipelines.instance_candidates`): the user has picked candidate K among translations of the instance at
its reference camera that differ only in their diffusion seed. Without ``--select`` every view gets its own
diffusion seed, so the views are unrelated stylisations. With it, every view is translated once with candidate K's
diffusion seed and prompt: img2img's only random inputs (the VAE posterior sample and the initial noise) are then
those that made candidate K, so each view's target is what that choice turns this view into; view 0 is the reference
camera, so the selected candidate itself is a training target. ``bench/instance_select.py`` measures the cross-view
consistency of the two.

Run folder, the same as ``adapt``'s plus ``instance/`` (rerunning the same command skips finished stages; the
dataset and fine-tuning stages resume their partial work)::

    OUT/instance/     latent.pt + latent.json of the instance, its source renders (source.png, source_views.png)
    OUT/target/       make-dataset layout: job.json, manifest.jsonl, sources/, images/, dataset/, contact_sheet.png
    OUT/train/        finetune run folder; the adapted generator is OUT/train/final
    OUT/render/       adapted generator at --seeds (grid, video, meshes); render/instance/: the instance through it
    OUT/compare.png   instance then seeds: source vs adapted at yaw -0.4, 0, +0.4
    OUT/adapt.json    options, what each stage did, files, notes
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import torch

from adapt3d.data.target_dataset import completed_indices
from adapt3d.export.options import RenderStageOptions
from adapt3d.models.latents import default_cameras, map_seeds
from adapt3d.pipelines.finetune import finetune_done
from adapt3d.pipelines.render import check_render_options
from adapt3d.pipelines.stages import (COMPARE_YAWS, AdaptResult, compare_is_current, finetune_stage_config, pick,
                                      render_stage, render_stage_config, save_compare)
from adapt3d.pipelines.targets import model_names, source_poses, translate_and_score, write_targets
from adapt3d.utils.io import check_output_folder, to_jsonable
from adapt3d.utils.parsing import flag_name, parse_seeds, resolve_device
from adapt3d.utils.seeds import stream_seed

__all__ = ["InstanceConfig", "run", "validate", "config_from", "stage_configs", "candidate_seed", "candidate_prompt",
           "CANDIDATE_STREAM", "DEFAULT_NUM_CANDIDATES"]

CANDIDATE_STREAM = 3  # the seed stream of candidates (pose: 1, diffusion: 2; see adapt3d.data.target_dataset)
DEFAULT_NUM_CANDIDATES = 8


def candidate_seed(seed: int, index: int) -> int:
    """Diffusion seed of candidate ``index`` of job ``seed`` (the same in ``instance candidates`` and ``--select``):
    ``stream_seed(seed, index, 3)``."""
    return stream_seed(seed, index, CANDIDATE_STREAM)


def candidate_prompt(prompts: list[str] | tuple[str, ...], index: int) -> str:
    """Prompt of candidate ``index``: the prompts take turns."""
    return prompts[index % len(prompts)]


@dataclass
class InstanceConfig(RenderStageOptions):
    """Adapt a 3D generator toward ONE instance (a seed or an inverted latent) in a text-described domain: render
    it at many cameras, translate each view several times, filter, fine-tune, render. Give --preset or
    --generator, --instance-seed or --instance-latent, and --prompt. Numbers left at None take the defaults below
    (small demo values with --preset tiny)."""

    prompt: tuple[str, ...] = ()
    """Target-domain prompt(s); image i gets prompt i mod count."""
    out: Path = Path("runs/instance")
    """Run folder (instance/, target/, train/, render/, compare.png, adapt.json)."""
    preset: str | None = None
    """Built-in generator with random weights (tiny: built-in tiny diffusion and CLIP, the offline demo)."""
    generator: str | None = None
    """Source generator: adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq)."""
    instance_seed: int | None = None
    """The instance: latent seed, z = RandomState(seed) (as adapt3d render --seeds)."""
    instance_latent: Path | None = None
    """The instance: latent.pt (or its folder) from adapt3d invert."""
    negative_prompt: str | None = None
    """Negative prompt for the diffusion model."""
    num_images: int | None = None
    """Translated images in all (default 128; tiny: 16)."""
    samples_per_view: int | None = None
    """Translations of each rendered view, each with its own diffusion seed (default 4; tiny: 2; 1 with --select)."""
    select: int | None = None
    """Adapt toward candidate K of `adapt3d instance candidates` (same instance, --prompt, --seed and diffusion
    options): every view is translated once with candidate K's diffusion seed and prompt, view 0 at the
    candidate's camera."""
    num_candidates: int = DEFAULT_NUM_CANDIDATES
    """How many candidates `adapt3d instance candidates` made (--select takes 0 .. this - 1)."""
    pose_sampler: Literal["sinusoidal", "gaussian", "uniform", "fixed"] = "sinusoidal"
    """Cameras of the views (sinusoidal: DATID-3D's, yaw +-0.3 rad, pitch pi/2-0.05 +-0.3 rad)."""
    strength: float = 0.7
    """img2img strength in (0, 1] (DATID-3D: 0.7)."""
    guidance_scale: float = 8.0
    """Classifier-free guidance scale (DATID-3D: 8)."""
    num_inference_steps: int | None = None
    """Diffusion steps (default 50; tiny: 10)."""
    diffusion: str = "auto"
    """img2img model: Hugging Face id, local folder, or 'tiny' (auto: tiny with --preset tiny, else SD 2.1-base)."""
    clip_model: str = "auto"
    """CLIP model for scores and filters, or 'none' (auto: tiny with --preset tiny, else ViT-B/32)."""
    clip_threshold: float | None = None
    """Drop targets whose CLIP score with the prompt is below this."""
    pose_filter: bool = True
    """Drop targets whose pose drifted from their camera label."""
    batch_size: int = 4
    """Views per diffusion batch."""
    kimg: float | None = None
    """Fine-tuning length in thousands of images (default 50; tiny: 0.2)."""
    batch: int | None = None
    """Fine-tuning batch size (default 20; tiny: 4)."""
    freeze: tuple[str, ...] = ()
    """Generator parts kept fixed while fine-tuning (mapping, backbone, b4 ... b256, decoder, superresolution)."""
    neural_rendering_schedule: Literal["auto", "datid3d", "fixed"] = "auto"
    """Fine-tuning render resolution (see adapt3d finetune --help): auto = DATID-3D's 64 -> 128 schedule for
    official 512 px weights, the generator's resolution for --preset."""
    augment_ops: tuple[str, ...] = ("xflip", "xint", "color")
    """Discriminator augmentations while fine-tuning; bgc = EG3D's full ADA pipeline."""
    snapshot_kimg: float | None = None
    """kimg between fine-tuning snapshots (default 10; tiny: half the run)."""
    trunc: float = 0.7
    """Truncation psi in [0, 2] of --instance-seed and of the renders (1 = none)."""
    seed: int = 0
    """Job seed: the views' camera and diffusion seeds derive from it (make-dataset's plan), and fine-tuning's."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    progress: bool = True
    """Show progress bars."""


def config_from(options, **overrides) -> InstanceConfig:
    """An InstanceConfig from any config with same-named fields (``adapt``'s AdaptConfig), plus ``overrides``."""
    if getattr(options, "method", "datid3d") != "datid3d":
        raise ValueError(f"--instance-seed/--instance-latent: instance-selected adaptation translates views with "
                         f"diffusion (--method datid3d), not --method {options.method}")
    kw = {f.name: getattr(options, f.name) for f in fields(InstanceConfig) if hasattr(options, f.name)}
    kw.update(overrides)
    return InstanceConfig(**kw)


def stage_configs(cfg: InstanceConfig):
    """(numbers, FinetuneConfig, RenderConfig) of the run; numbers: num_images, samples_per_view, num_views,
    num_inference_steps."""
    tiny = cfg.preset == "tiny"
    out = Path(cfg.out)
    spv = 1 if cfg.select is not None else pick(cfg.samples_per_view, 4, 2, tiny)
    n = pick(cfg.num_images, 128, 16, tiny)
    numbers = {"num_images": n, "samples_per_view": spv, "num_views": math.ceil(n / max(spv, 1)),
               "num_inference_steps": pick(cfg.num_inference_steps, 50, 10, tiny)}
    kimg = pick(cfg.kimg, 50.0, 0.2, tiny)
    train = finetune_stage_config(cfg, out, kimg=kimg, snapshot_kimg=10.0, tiny=tiny)
    shows = render_stage_config(cfg, out / "render", out / "train" / "final",
                                video_frames=pick(cfg.video_frames, 48, 24, tiny),
                                mesh_resolution=pick(cfg.mesh_resolution, 128, 64, tiny), device=cfg.device,
                                progress=cfg.progress)
    return numbers, train, shows


def validate(cfg: InstanceConfig) -> dict:
    """Check every option before any model loads; returns prompts, model names, stage configs, the job and its
    fingerprint, and the loaded latent file (or None)."""
    import os

    from adapt3d.diffusion.img2img import check_img2img_args
    from adapt3d.diffusion.loading import resolve_pretrained
    from adapt3d.inversion.latent_file import load_latent
    from adapt3d.models.loading import check_generator_source
    from adapt3d.training.config import validate_finetune_config
    from adapt3d.utils.parsing import MAX_NUM_IMAGES, check_int, check_prompts

    check_generator_source(cfg.preset, cfg.generator, flag="--generator")
    if (cfg.instance_seed is None) == (cfg.instance_latent is None):
        raise ValueError("give exactly one of --instance-seed (a latent seed) and --instance-latent (latent.pt from "
                         "adapt3d invert)")
    if cfg.instance_seed is not None and cfg.instance_seed < 0:
        raise ValueError(f"--instance-seed: must be >= 0, got {cfg.instance_seed}")
    if cfg.select is not None:
        check_int(cfg.num_candidates, "--num-candidates", 1, 64, "candidates")
        if isinstance(cfg.select, bool) or not isinstance(cfg.select, int) \
                or not 0 <= cfg.select < cfg.num_candidates:
            raise ValueError(f"--select: {cfg.select!r} is not a candidate index; adapt3d instance candidates "
                             f"--num-candidates {cfg.num_candidates} made candidates 0-{cfg.num_candidates - 1}")
        if cfg.samples_per_view not in (None, 1):
            raise ValueError(f"--samples-per-view: {cfg.samples_per_view} with --select; every view is translated "
                             "once, with the selected candidate's noise (leave it unset)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--instance-seed/--instance-latent: instance-selected adaptation runs in one process; "
                         "start it without torchrun")
    latent = load_latent(cfg.instance_latent, "--instance-latent") if cfg.instance_latent is not None else None
    prompts = [p.strip() for p in check_prompts(cfg.prompt)]
    if not prompts:
        raise ValueError("--prompt: give the target domain, e.g. --prompt 'a 3D render of a face in Pixar style'")
    numbers, train, shows = stage_configs(cfg)
    check_img2img_args(prompts, cfg.strength, cfg.guidance_scale, numbers["num_inference_steps"], "pndm",
                       cfg.negative_prompt)
    for name in ("num_images", "samples_per_view"):
        check_int(numbers[name], flag_name(name), 1, MAX_NUM_IMAGES)
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {cfg.batch_size}")
    if cfg.clip_threshold is not None and not -1 <= cfg.clip_threshold <= 1:
        raise ValueError(f"--clip-threshold: {cfg.clip_threshold} is not a cosine similarity in [-1, 1]")
    check_render_options(shows)  # seeds, truncation, video and mesh bounds
    validate_finetune_config(train)
    diffusion, clip = model_names(cfg.preset, cfg.diffusion, cfg.clip_model)
    if clip is None and cfg.clip_threshold is not None:
        raise ValueError("--clip-model none: --clip-threshold needs a CLIP model")
    resolve_device(cfg.device)
    check_output_folder(cfg.out)
    resolve_pretrained(diffusion, "stable-diffusion", "--diffusion")
    if clip is not None:
        resolve_pretrained(clip, "clip", "--clip-model")
    instance = {"seed": cfg.instance_seed, "trunc": cfg.trunc} if latent is None else {
        "latent": str(latent.path), "ws_sha256": hashlib.sha256(latent.ws.numpy().tobytes()).hexdigest()[:16]}
    job = {"kind": "adapt3d instance", "generator": {"preset": cfg.preset, "checkpoint": cfg.generator},
           "instance": instance, "prompts": prompts, "negative_prompt": cfg.negative_prompt, **numbers,
           "pose_sampler": cfg.pose_sampler, "diffusion": diffusion, "strength": cfg.strength,
           "guidance_scale": cfg.guidance_scale, "clip_model": clip, "pose_filter": cfg.pose_filter,
           "seed": cfg.seed, "batch_size": cfg.batch_size}
    if cfg.select is not None:  # (absent otherwise, so that earlier jobs keep their fingerprint)
        job["select"] = {"index": cfg.select, "diffusion_seed": candidate_seed(cfg.seed, cfg.select),
                         "prompt": candidate_prompt(prompts, cfg.select)}
    fingerprint = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]
    old = Path(cfg.out) / "target" / "job.json"
    if old.is_file():
        try:
            previous = json.loads(old.read_text())
        except ValueError as e:
            raise ValueError(f"--out: {old} is not valid JSON; use another --out") from e
        if previous.get("fingerprint") != fingerprint:
            diff = sorted(k for k in set(job) | set(previous.get("job", {}))
                          if job.get(k) != previous.get("job", {}).get(k))
            raise ValueError(f"--out: {cfg.out} holds another job (options that differ: {', '.join(diff)}); use "
                             "another --out, or the same options to resume")
    return {"prompts": prompts, "diffusion": diffusion, "clip": clip, "job": job, "fingerprint": fingerprint,
            "latent": latent, "numbers": numbers, "train": train, "render": shows}


def _instance_code(cfg: InstanceConfig, G, latent, device):
    """The instance as a LatentCode (ws, camera, noise) for the generator G."""
    from adapt3d.inversion.camera_io import label_angles
    from adapt3d.inversion.latent_file import LatentCode, architecture_of, check_architecture

    if latent is not None:
        check_architecture(G, latent, "--instance-latent")
        return latent
    ws = map_seeds(G, [cfg.instance_seed], cfg.trunc, None, device).cpu()
    camera = default_cameras(G, torch.tensor([math.pi / 2]), torch.tensor([math.pi / 2]))
    yaw, pitch, _ = label_angles(camera)
    return LatentCode(ws=ws, camera=camera, space="w", architecture=architecture_of(G),
                      generator=json.loads(json.dumps(G.config.to_dict())),
                      source={"seed": cfg.instance_seed, "trunc": cfg.trunc}, yaw=yaw, pitch=pitch)


def _write_instance(cfg: InstanceConfig, G, code) -> tuple[object, dict[str, str]]:
    """OUT/instance: the instance's own latent file (renderable with adapt3d render --latent) and source renders."""
    from adapt3d.inversion.latent_file import LATENT_PT, LatentCode, save_latent
    from adapt3d.inversion.render_latent import RenderLatentConfig, render_latent

    folder = Path(cfg.out) / "instance"
    folder.mkdir(parents=True, exist_ok=True)
    own = LatentCode(**{f.name: getattr(code, f.name) for f in fields(LatentCode) if f.name != "path"})
    own.pti_generator, own.reconstruction, own.input_image = "", "source.png", "source.png"
    if code.path is not None and code.input_image and (code.folder() / code.input_image).is_file():
        shutil.copyfile(code.folder() / code.input_image, folder / "input.png")
        own.input_image = "input.png"
    render_latent(G, own, folder, RenderLatentConfig(name="source", comparison=False))
    save_latent(folder, own, extra_json={"made_by": "adapt3d adapt (instance)", "instance": {
        "seed": cfg.instance_seed, "latent": str(cfg.instance_latent) if cfg.instance_latent else None}})
    return own, {"instance_latent": str(folder / LATENT_PT), "instance_source": str(folder / "source.png")}


@torch.no_grad()
def generate(cfg: InstanceConfig, parts: dict, folder: Path, G, code, translator, scorer, device) -> int:
    """Render, translate and score every missing image of the plan into ``folder``; returns how many were made."""
    from tqdm.auto import tqdm

    from adapt3d.cameras import make_pose_sampler
    from adapt3d.data.manifest import Manifest
    from adapt3d.data.target_dataset import MANIFEST, TargetPlan
    from adapt3d.data.target_filters import PoseConsistencyFilter
    from adapt3d.inversion.projector import use_noise

    nums = parts["numbers"]
    plan = TargetPlan(nums["num_images"], nums["samples_per_view"], parts["prompts"], cfg.seed, cfg.batch_size)
    sampler, manifest = make_pose_sampler(cfg.pose_sampler), Manifest(folder / MANIFEST)
    pose_filter = PoseConsistencyFilter() if cfg.pose_filter else None
    done, made = completed_indices(folder), 0
    ws_one = code.ws.to(device)
    latent_seed = cfg.instance_seed if cfg.instance_seed is not None else -1
    selected = parts["job"].get("select")
    bar = tqdm(total=plan.num_images, initial=len(done), desc="views", unit="img", disable=not cfg.progress)
    with use_noise(G, code.noise):
        for b in range(plan.num_batches):
            items = plan.batch_items(b)
            if all(it.index in done for it in items):
                continue
            if selected is not None:  # instance-selected: every view with candidate K's noise and prompt
                items = [dataclasses.replace(it, diffusion_seed=selected["diffusion_seed"], prompt=selected["prompt"])
                         for it in items]
            views = list(plan.batch_sources(b))
            yaw, pitch = source_poses(plan, sampler, views)  # (S,)
            own_view = (cfg.instance_latent is not None or selected is not None) and views[0] == 0
            if own_view:  # view 0: the photo's own camera / the candidates' reference camera
                yaw[0], pitch[0] = code.yaw, code.pitch
            labels = default_cameras(G, yaw, pitch)  # (S, 25)
            if own_view:
                labels[0] = code.camera[0]  # exactly the photo's camera (its radius and field of view)
            batch = translate_and_score(G, ws_one.expand(len(views), -1, -1), labels, yaw, pitch, items, views[0],
                                        translator, scorer, pose_filter, negative_prompt=cfg.negative_prompt,
                                        strength=cfg.strength, guidance_scale=cfg.guidance_scale,
                                        num_inference_steps=nums["num_inference_steps"])
            n = write_targets(folder, manifest, batch, items, done, labels, yaw, pitch, cfg.negative_prompt,
                              latent_seed=latent_seed)
            made += n
            bar.update(n)
    bar.close()
    return made


def _dataset_stage(cfg: InstanceConfig, parts: dict, G, code, device, result: AdaptResult) -> None:
    from adapt3d.clip.model import CLIPScorer
    from adapt3d.data.target_dataset import JOB_JSON
    from adapt3d.data.target_finalize import SelectionConfig, finalize_folder
    from adapt3d.utils.io import atomic_write_json

    t0, folder = time.time(), Path(cfg.out) / "target"
    folder.mkdir(parents=True, exist_ok=True)
    selection = {"clip_threshold": cfg.clip_threshold, "pose_filter": cfg.pose_filter}
    summary_path = folder / "instance_dataset.json"
    num_images = parts["numbers"]["num_images"]
    complete = set(range(num_images)) <= completed_indices(folder)
    if complete and summary_path.is_file() and (folder / "dataset" / "dataset.json").is_file():
        previous = json.loads(summary_path.read_text())
        if previous.get("fingerprint") == parts["fingerprint"] and previous.get("selection") == selection:
            result.stages["dataset"] = {"skipped": "up to date"}
            result.stages["dataset"].update({k: previous[k] for k in ("num_images", "num_kept") if k in previous})
            return
    if not (folder / JOB_JSON).is_file():
        atomic_write_json(folder / JOB_JSON, {"format": 1, "kind": "adapt3d instance",
                                              "fingerprint": parts["fingerprint"], "job": parts["job"]})
    scorer = CLIPScorer.from_pretrained(parts["clip"], device=device) if parts["clip"] else None
    made = 0
    if not complete:
        from adapt3d.diffusion.img2img import Img2ImgTranslator
        for p in list((folder / "images").glob(".*")) + list((folder / "sources").glob(".*")):
            p.unlink(missing_ok=True)  # temporary files of a killed run
        translator = Img2ImgTranslator.from_pretrained(parts["diffusion"], device=device)
        made = generate(cfg, parts, folder, G, code, translator, scorer, device)
        del translator
    sel = SelectionConfig(clip_threshold=cfg.clip_threshold, pose_filter=cfg.pose_filter)
    fin = finalize_folder(folder, num_images, sel, scorer, progress=cfg.progress)
    result.notes += fin.notes
    if fin.num_kept == 0:
        raise ValueError(f"every one of the {num_images} translated views was rejected by the filters "
                         f"({fin.rejected}); loosen --clip-threshold or pass --no-pose-filter and rerun (generated "
                         "images are kept)")
    stage = {"num_images": fin.num_images, "num_kept": fin.num_kept, "num_views": parts["numbers"]["num_views"],
             "rejected": fin.rejected, "generated_now": made, "seconds": round(time.time() - t0, 2)}
    atomic_write_json(summary_path, {"fingerprint": parts["fingerprint"], "selection": selection, **stage,
                                     "files": fin.files})
    result.stages["dataset"] = stage
    result.files.update({"dataset": fin.files.get("dataset"), "contact_sheet": fin.files.get("contact_sheet")})


def _render_stage(cfg: InstanceConfig, parts: dict, G_src, code, device, result: AdaptResult) -> None:
    """Render the adapted generator at --seeds and the instance through it; compare.png: the instance, then the
    seeds, source vs adapted."""
    from adapt3d.export.images import make_grid, to_uint8
    from adapt3d.inversion.projector import use_noise
    from adapt3d.inversion.render_latent import RenderLatentConfig, render_latent
    from adapt3d.models.checkpoint import load_checkpoint

    out, shows, final = Path(cfg.out), parts["render"], Path(parts["train"].out) / "final"
    compare = out / "compare.png"
    rendered = render_stage(shows, final, result)
    result.files["compare"] = str(compare)
    if compare_is_current(compare, final, rendered):
        return
    adapted = load_checkpoint(final, load_discriminator=False).generator.to(device).eval()
    inst = render_latent(adapted, code, Path(shows.out) / "instance",
                         RenderLatentConfig.from_options(shows, name="instance"), flag="--instance-latent")
    result.files.update({f"instance_{k}": v for k, v in inst.files.items()})
    yaw = torch.tensor([math.pi / 2 + y for y in COMPARE_YAWS])
    strips = []
    for G in (G_src, adapted):
        cams = default_cameras(G, yaw, torch.full_like(yaw, float(code.pitch))).to(device)
        with torch.no_grad(), use_noise(G, code.noise):
            img = G.synthesis(code.ws.to(device).expand(len(yaw), -1, -1), cams, noise_mode="const",
                              sampling="deterministic").image
        strips.append(make_grid(to_uint8(img.cpu()), nrow=len(yaw)))
    save_compare(compare, G_src, adapted, parse_seeds(cfg.seeds), cfg.trunc, device, first_rows=[strips],
                 first_captions=[["instance, source", "instance, adapted"]])


def run(cfg: InstanceConfig) -> AdaptResult:
    """Run (or resume) every stage; see the module docstring. All options are checked before any model loads."""
    from adapt3d.models.loading import load_generator
    from adapt3d.pipelines.finetune import run as finetune
    from adapt3d.utils.io import atomic_write_json

    t0 = time.time()
    parts = validate(cfg)
    out, device = Path(cfg.out), resolve_device(cfg.device)
    train = parts["train"]
    result = AdaptResult(out=out, dataset=out / "target" / "dataset", final=Path(train.out) / "final")
    loaded = load_generator(preset=cfg.preset, checkpoint=cfg.generator, progress=cfg.progress)
    G = loaded.generator.to(device).eval().requires_grad_(False)
    code = _instance_code(cfg, G, parts["latent"], device)
    latent = parts["latent"]
    if latent is not None and latent.pti_generator and (latent.folder() / latent.pti_generator).is_dir():
        tuned = latent.folder() / latent.pti_generator
        if cfg.generator is None or Path(cfg.generator).resolve() != tuned.resolve():
            result.notes.append(f"the latent was inverted with pivotal tuning: --generator {tuned} adapts the tuned "
                                "generator, which reproduces the photo more faithfully")
    code, files = _write_instance(cfg, G, code)
    result.files.update(files)
    result.stages["instance"] = {"seed": cfg.instance_seed,
                                 "latent": str(cfg.instance_latent) if cfg.instance_latent else None,
                                 "yaw_deg": math.degrees(code.yaw - math.pi / 2),
                                 "pitch_deg": math.degrees(code.pitch - math.pi / 2)}
    _dataset_stage(cfg, parts, G, code, device, result)
    t = time.time()
    if finetune_done(train):
        result.stages["finetune"] = {"skipped": "up to date"}
    else:
        trained = finetune(train)
        result.notes += [n for n in trained.notes if n not in result.notes]
        result.stages["finetune"] = {"steps": trained.step, "kimg": trained.cur_nimg / 1000,
                                     "resumed_from": str(trained.resumed_from) if trained.resumed_from else None,
                                     "seconds": round(time.time() - t, 2)}
    result.files.update({"final": str(result.final), "train": str(train.out)})
    _render_stage(cfg, parts, G, code, device, result)
    result.seconds = time.time() - t0
    result.notes.append(f"instance {result.files['instance_latent']}; dataset {result.dataset}; adapted generator "
                        f"{result.final}; instance and seeds, source vs adapted: {result.files['compare']}")
    atomic_write_json(out / "adapt.json", {
        "config": to_jsonable(asdict(cfg)),
        "generator": loaded.source, "diffusion": parts["diffusion"], "clip_model": parts["clip"],
        "stages": result.stages, "files": result.files, "notes": result.notes,
        "seconds": round(result.seconds, 2)})
    return result
