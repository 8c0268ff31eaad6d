"""``adapt3d make-dataset``: a pose-labelled target-domain dataset from a 3D generator and a text prompt.

DATID-3D's pose-aware target generation plus the filtering its code left as ``# TODO``:

1. render: latents ``z = RandomState(seed + j)`` mapped with the frontal camera (truncation 0.7), rendered at a
   camera drawn by the pose sampler (DATID-3D's sinusoidal sampler by default), batched;
2. translate: Stable Diffusion img2img of each render (SD 2.1-base, strength 0.7, guidance 8, 50 PNDM steps),
   ``samples_per_source`` outputs per render, one seed per output;
3. score each target as it is written: CLIP cosine with its prompt, pose consistency (edge-map NCC against renders
   of its source at cameras around its label, see :mod:`adapt3d.data.target_filters`);
4. filter over the whole set (threshold / top fraction / pose margin / near-duplicates) and write the EG3D dataset
   (``dataset/``: kept images + ``dataset.json``; optional ``dataset.zip``), the final manifest and a contact
   sheet. The layout and the seeds are described in :mod:`adapt3d.data.target_dataset`.

Resumable (rerun the same command; finished images are kept), shardable (``--shard-index/--num-shards`` or
torchrun; then ``--merge``), and rerunnable with other filter settings (thresholds are not part of the job
fingerprint: a rerun only re-decides which images are kept).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from adapt3d.data.manifest import Manifest
from adapt3d.data.target_dataset import JOB_JSON, MANIFEST, TargetPlan, completed_indices
from adapt3d.data.target_finalize import (SelectionConfig, finalize_folder, mark_shard_complete,
                                          merge_shard_folders, wait_for_shards)
from adapt3d.diffusion.img2img import check_img2img_args
from adapt3d.diffusion.loading import PretrainedNotFoundError, resolve_pretrained
from adapt3d.models.latents import default_cameras, map_seeds
from adapt3d.pipelines.targets import model_names, source_poses, translate_and_score, write_targets
from adapt3d.utils.io import check_output_folder, to_jsonable
from adapt3d.utils.parsing import (MAX_NUM_IMAGES, check_int, check_prompts, check_trunc, flag_name,
                                   read_prompt_file, resolve_device)

__all__ = ["MakeDatasetConfig", "MakeDatasetResult", "run", "merge_shards", "validate"]



@dataclass
class MakeDatasetConfig:
    """Render a 3D generator, translate the renders with Stable Diffusion img2img, filter, and write an
    EG3D-format dataset labelled with the render cameras. Give --preset or --generator, and --prompt."""

    out: Path = Path("runs/dataset")
    """Working folder; the EG3D dataset goes to OUT/dataset (and OUT/dataset.zip with --zip)."""
    preset: str | None = None
    """Built-in generator with random weights (tiny uses the built-in tiny diffusion and CLIP models)."""
    generator: str | None = None
    """Source generator: adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq)."""
    prompt: tuple[str, ...] = ()
    """Target-domain prompt(s); several prompts are used in turn (image i gets prompt i mod count)."""
    prompt_file: Path | None = None
    """Text file with one prompt per line (blank lines and lines starting with # are skipped)."""
    templates: tuple[str, ...] = ()
    """Prompt templates with one '{}' each, e.g. 'a FHD photo of {}'; every prompt goes through every template."""
    negative_prompt: str | None = None
    """Negative prompt for classifier-free guidance (DATID-3D: none)."""
    num_images: int = 1000
    """Number of target images to generate (DATID-3D: 1000)."""
    samples_per_source: int = 1
    """Diffusion samples (targets) per rendered source image."""
    trunc: float = 0.7
    """Truncation psi of the source latents."""
    trunc_cutoff: int | None = None
    """Number of w layers truncated (None = all; DATID-3D's 14 = all for 512 px FFHQ)."""
    pose_sampler: Literal["sinusoidal", "gaussian", "uniform", "fixed"] = "sinusoidal"
    """Render-camera sampler (sinusoidal = DATID-3D's, yaw +-0.3 rad, pitch pi/2-0.05 +-0.3 rad)."""
    camera_pivot: tuple[float, float, float] | None = None
    """Point (x y z, world units) the render and mapping cameras look at. None: DATID-3D's choice for the source:
    0 0 0.05 for cat (AFHQ) generators, 0 0 0.2 for FFHQ ones, otherwise the generator's avg_camera_pivot."""
    diffusion: str = "auto"
    """SD 1.x/2.x img2img model: Hugging Face id, local folder, or 'tiny'; auto = tiny with --preset tiny, else
    stabilityai/stable-diffusion-2-1-base."""
    strength: float = 0.7
    """img2img strength in (0, 1]: fraction of the noise schedule re-run (higher = more change, less pose)."""
    guidance_scale: float = 8.0
    num_inference_steps: int = 50
    scheduler: Literal["pndm", "ddim", "keep"] = "pndm"
    """Diffusion scheduler (pndm = DATID-3D's; keep = the checkpoint's own)."""
    diffusion_resolution: int | None = None
    """Pixel size the renders are resized to for diffusion (None = the model's native size, 512 for SD 2.1-base)."""
    clip_model: str = "auto"
    """CLIP for scores and filters: Hugging Face id, local folder, 'tiny', or 'none' (no CLIP scores, no CLIP or
    diversity filter); auto = tiny with --preset tiny, else openai/clip-vit-base-patch32."""
    clip_threshold: float | None = None
    """Drop targets whose CLIP cosine with their prompt is below this."""
    clip_top_fraction: float | None = None
    """Keep only this fraction (0, 1] of targets with the best CLIP scores."""
    pose_filter: bool = True
    """Score pose consistency (renders of the source at cameras around the label vs the target's edges)."""
    pose_step: float = 0.1
    """Angle between candidate cameras, radians."""
    pose_rings: int = 2
    """Candidate cameras at 1..rings steps along +-yaw and +-pitch."""
    pose_margin: float = 0.05
    """Reject a target when another candidate camera beats its label by more than this edge NCC."""
    diversity_min_distance: float = 0.0
    """Drop near-duplicates: CLIP-embedding cosine distance below this to a better-scored kept image (0 = off)."""
    batch_size: int = 4
    """Sources per batch (each gives samples_per_source targets in one diffusion batch)."""
    shard_index: int | None = None
    """This process's shard in [0, num_shards); writes OUT/shard-XXofYY (torchrun: RANK by default)."""
    num_shards: int | None = None
    """Number of shards (torchrun: WORLD_SIZE by default); merge them with --merge."""
    merge: bool = False
    """Merge OUT/shard-* folders into OUT and finish the dataset (filters, dataset.json, contact sheet)."""
    zip: bool = False
    """Also write OUT/dataset.zip (EG3D training input)."""
    seed: int = 0
    """Job seed: source j uses latent seed seed + j; camera and diffusion seeds derive from it."""
    contact_sheet_max: int = 64
    """Number of source | target pairs shown in contact_sheet.png."""
    device: str = "auto"
    """'auto' (CUDA when available; LOCAL_RANK under torchrun), 'cpu' or 'cuda[:i]'."""
    progress: bool = True


@dataclass
class MakeDatasetResult:
    out: Path
    num_images: int = 0
    num_kept: int = 0
    generated_now: int = 0
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Job:
    prompts: list[str]
    plan: TargetPlan
    diffusion: str
    clip: str | None
    fingerprint: dict
    shard: tuple[int, int] | None


def resolve_prompts(cfg: MakeDatasetConfig) -> list[str]:
    prompts = [p.strip() for p in check_prompts(cfg.prompt)]
    if cfg.prompt_file is not None:
        prompts += read_prompt_file(cfg.prompt_file)
    if not prompts:
        raise ValueError("--prompt: give at least one prompt (--prompt 'a zombie' or --prompt-file prompts.txt)")
    if any(not p for p in prompts):
        raise ValueError(f"--prompt: empty prompt in {list(cfg.prompt)!r}; describe the target domain")
    for t in cfg.templates:
        if t.count("{}") != 1:
            raise ValueError(f"--templates: {t!r} must contain exactly one '{{}}' where the prompt goes")
    return [t.format(p) for p in prompts for t in cfg.templates] if cfg.templates else prompts


def _shard(cfg: MakeDatasetConfig) -> tuple[int, int] | None:
    index, count = cfg.shard_index, cfg.num_shards
    if index is None and count is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        index, count = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if index is None and count is None:
        return None
    if index is None or count is None:
        raise ValueError("--shard-index and --num-shards go together (or neither; torchrun sets both)")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard-index {index} must be in [0, --num-shards {count})")
    return (index, count) if count > 1 else None


def _under_torchrun(cfg: MakeDatasetConfig) -> bool:
    return cfg.shard_index is None and cfg.num_shards is None and int(os.environ.get("WORLD_SIZE", "1")) > 1


def shard_dir(out: Path, index: int, count: int) -> Path:
    return Path(out) / f"shard-{index:02d}of{count:02d}"


def validate(cfg: MakeDatasetConfig) -> _Job:
    """Check every option, the output folder and the model names, before any model is loaded."""
    from adapt3d.clip.filters import CLIPFilterConfig
    from adapt3d.data.target_filters import PoseConsistencyConfig
    from adapt3d.models.loading import check_generator_source

    check_generator_source(cfg.preset, cfg.generator, flag="--generator")
    prompts = resolve_prompts(cfg)
    check_img2img_args(prompts, cfg.strength, cfg.guidance_scale, cfg.num_inference_steps, cfg.scheduler,
                       cfg.negative_prompt)
    for name in ("num_images", "samples_per_source", "batch_size"):
        check_int(getattr(cfg, name), flag_name(name), 1, MAX_NUM_IMAGES)
    if cfg.contact_sheet_max < 0:
        raise ValueError(f"--contact-sheet-max: must be >= 0, got {cfg.contact_sheet_max}")
    check_trunc(cfg.trunc)
    if cfg.diffusion_resolution is not None and (cfg.diffusion_resolution < 8 or cfg.diffusion_resolution % 8):
        raise ValueError(f"--diffusion-resolution: {cfg.diffusion_resolution} must be a multiple of 8")
    CLIPFilterConfig(cfg.clip_threshold, cfg.clip_top_fraction)
    try:
        PoseConsistencyConfig(step=cfg.pose_step, rings=cfg.pose_rings, margin=cfg.pose_margin)
    except ValueError as e:
        raise ValueError(f"--pose-step/--pose-rings/--pose-margin: {e}") from e
    if not 0 <= cfg.diversity_min_distance <= 2:
        raise ValueError(f"--diversity-min-distance: {cfg.diversity_min_distance} is not a cosine distance in "
                         "[0, 2]")
    diffusion, clip_name = model_names(cfg.preset, cfg.diffusion, cfg.clip_model)
    if clip_name is None and (cfg.clip_threshold is not None or cfg.clip_top_fraction is not None
                              or cfg.diversity_min_distance > 0):
        raise ValueError("--clip-model none: the CLIP and diversity filters need a CLIP model")
    shard = _shard(cfg)
    if shard is not None and cfg.merge:
        raise ValueError("--merge runs once, after all shards finished: leave out --shard-index/--num-shards")
    resolve_device(cfg.device)
    plan = TargetPlan(cfg.num_images, cfg.samples_per_source, prompts, cfg.seed, cfg.batch_size)
    fingerprint = {
        "generator": {"preset": cfg.preset, "checkpoint": cfg.generator}, "prompts": prompts,
        "negative_prompt": cfg.negative_prompt, "num_images": cfg.num_images,
        "samples_per_source": cfg.samples_per_source, "trunc": cfg.trunc, "trunc_cutoff": cfg.trunc_cutoff,
        "pose_sampler": cfg.pose_sampler, "diffusion": diffusion, "strength": cfg.strength,
        "guidance_scale": cfg.guidance_scale, "num_inference_steps": cfg.num_inference_steps,
        "scheduler": cfg.scheduler, "diffusion_resolution": cfg.diffusion_resolution, "clip_model": clip_name,
        "pose_filter": cfg.pose_filter, "pose_step": cfg.pose_step, "pose_rings": cfg.pose_rings, "seed": cfg.seed,
        "batch_size": cfg.batch_size}
    if cfg.camera_pivot is not None:  # only when given, so that older job folders keep their fingerprint
        if len(cfg.camera_pivot) != 3 or not all(math.isfinite(float(v)) for v in cfg.camera_pivot):
            raise ValueError(f"--camera-pivot: expected three finite numbers x y z, got {cfg.camera_pivot!r}")
        fingerprint["camera_pivot"] = [float(v) for v in cfg.camera_pivot]
    job = _Job(prompts, plan, diffusion, clip_name, fingerprint, shard)
    check_output_folder(cfg.out)
    check_job_folder(shard_dir(cfg.out, *shard) if shard else cfg.out, job)
    # Model names last: a missing model offline fails here, still before anything is loaded.
    resolve_pretrained(diffusion, "stable-diffusion", "--diffusion")
    if clip_name is not None:
        try:
            resolve_pretrained(clip_name, "clip", "--clip-model")
        except PretrainedNotFoundError as e:
            raise PretrainedNotFoundError(f"{e}; or pass --clip-model none to skip CLIP scores") from e
    return job


def job_json(job: _Job, shard: tuple[int, int] | None = None) -> dict:
    text = json.dumps(job.fingerprint, sort_keys=True)
    out = {"format": 1, "kind": "adapt3d make-dataset",
           "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16], "job": job.fingerprint}
    if shard is not None:
        out["shard"] = {"index": shard[0], "count": shard[1]}
    return out


def check_job_folder(folder: Path, job: _Job) -> None:
    """Raise if ``folder`` holds a different job's data (or a dataset this command did not make)."""
    folder = Path(folder)
    path = folder / JOB_JSON
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"--out: {path} is not valid JSON; is this a make-dataset folder?") from e
        if old.get("fingerprint") != job_json(job)["fingerprint"]:
            diff = sorted(k for k in set(job.fingerprint) | set(old.get("job", {}))
                          if job.fingerprint.get(k) != old.get("job", {}).get(k))
            raise ValueError(f"--out: {folder} holds a different make-dataset job (options that differ: "
                             f"{', '.join(diff)}); use another --out, or rerun with the same options to resume")
    elif (folder / MANIFEST).exists() or (folder / "dataset.json").exists() or (folder / "dataset").exists():
        raise ValueError(f"--out: {folder} holds a dataset or manifest that make-dataset did not start (no "
                         f"{JOB_JSON}); use an empty or new folder")


def _write_job(folder: Path, job: _Job, shard=None) -> None:
    from adapt3d.utils.io import atomic_write_json
    if not (folder / JOB_JSON).is_file():
        atomic_write_json(folder / JOB_JSON, job_json(job, shard))


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Refuse a second concurrent writer of the same folder (advisory flock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".make_dataset.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise ValueError(f"--out: another make-dataset process is writing to {folder}; wait for it or use "
                             "another folder") from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _clean_temp_files(folder: Path) -> None:
    """Remove temporary files a killed run left behind (atomic writes use '.<name>.<random><suffix>')."""
    for sub in ("images", "sources"):
        for p in (folder / sub).glob(".*"):
            if p.is_file():
                p.unlink(missing_ok=True)


def _pose_sampler(cfg: MakeDatasetConfig):
    from adapt3d.cameras import make_pose_sampler
    return make_pose_sampler(cfg.pose_sampler)


@torch.no_grad()
def generate(cfg: MakeDatasetConfig, job: _Job, folder: Path, models: dict, shard: tuple[int, int] = (0, 1)) -> int:
    """Generate and score every missing target of this shard into ``folder``; returns how many were made."""
    G, translator, scorer, device = models["G"], models["translator"], models["scorer"], models["device"]
    plan, sampler, manifest = job.plan, _pose_sampler(cfg), Manifest(folder / MANIFEST)
    pose_filter = None
    if cfg.pose_filter:
        from adapt3d.data.target_filters import PoseConsistencyConfig, PoseConsistencyFilter
        pose_filter = PoseConsistencyFilter(PoseConsistencyConfig(step=cfg.pose_step, rings=cfg.pose_rings,
                                                                  margin=cfg.pose_margin))
    _clean_temp_files(folder)
    done = completed_indices(folder)
    mine = plan.shard_indices(*shard)
    made = 0
    bar = tqdm(total=len(mine), initial=sum(i in done for i in mine), desc="generate", unit="img",
               disable=not cfg.progress)
    for b in plan.shard_batches(*shard):
        items = plan.batch_items(b)
        if all(it.index in done for it in items):
            continue
        sources = list(plan.batch_sources(b))
        ws = map_seeds(G, [plan.seed + j for j in sources], cfg.trunc, cfg.trunc_cutoff, device)
        yaw, pitch = source_poses(plan, sampler, sources)  # (S,)
        labels = default_cameras(G, yaw, pitch)  # (S, 25)
        batch = translate_and_score(G, ws, labels, yaw, pitch, items, sources[0], translator, scorer, pose_filter,
                                    negative_prompt=cfg.negative_prompt, strength=cfg.strength,
                                    guidance_scale=cfg.guidance_scale, num_inference_steps=cfg.num_inference_steps,
                                    resolution=cfg.diffusion_resolution)
        n = write_targets(folder, manifest, batch, items, done, labels, yaw, pitch, cfg.negative_prompt)
        made += n
        bar.update(n)
    bar.close()
    return made


def load_models(cfg: MakeDatasetConfig, job: _Job, need_generation: bool) -> dict:
    from adapt3d.clip.model import CLIPScorer
    from adapt3d.diffusion.img2img import Img2ImgTranslator
    from adapt3d.models.loading import load_generator

    device = resolve_device(cfg.device)
    if cfg.device == "auto" and device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    models: dict = {"device": device, "G": None, "translator": None, "notes": []}
    if need_generation:
        loaded = load_generator(preset=cfg.preset, checkpoint=cfg.generator, progress=cfg.progress)
        models["G"] = loaded.generator.to(device).eval().requires_grad_(False)
        models["notes"] += loaded.notes + [_set_camera_pivot(models["G"], cfg.camera_pivot)]
        models["translator"] = Img2ImgTranslator.from_pretrained(job.diffusion, device=device,
                                                                 scheduler=cfg.scheduler)
    models["scorer"] = CLIPScorer.from_pretrained(job.clip, device=device) if job.clip else None
    return models


def _set_camera_pivot(G, pivot) -> str:
    """Point the source generator's default cameras (renders and mapping) at ``pivot`` or DATID-3D's choice."""
    from adapt3d.models.known_models import datid3d_data_pivot
    chosen = [float(v) for v in pivot] if pivot is not None else datid3d_data_pivot(G.rendering)
    G.rendering = replace(G.rendering, avg_camera_pivot=chosen)
    how = "--camera-pivot" if pivot is not None else "DATID-3D's choice for this generator"
    return f"cameras look at {chosen} ({how})"


def finalize(cfg: MakeDatasetConfig, job: _Job, models: dict, result: MakeDatasetResult) -> MakeDatasetResult:
    """Filters over the whole set, final manifest, EG3D dataset, contact sheet, summary (OUT/make_dataset.json)."""
    from adapt3d.utils.io import atomic_write_json
    sel = SelectionConfig(clip_threshold=cfg.clip_threshold, clip_top_fraction=cfg.clip_top_fraction,
                          pose_filter=cfg.pose_filter, pose_margin=cfg.pose_margin,
                          diversity_min_distance=cfg.diversity_min_distance, zip=cfg.zip,
                          contact_sheet_max=cfg.contact_sheet_max)
    fin = finalize_folder(Path(cfg.out), job.plan.num_images, sel, models["scorer"], progress=cfg.progress)
    result.num_images, result.num_kept = fin.num_images, fin.num_kept
    result.files.update(fin.files)
    result.notes += fin.notes
    summary = {"config": to_jsonable(asdict(cfg)),
               "diffusion": job.diffusion, "clip_model": job.clip, "num_images": fin.num_images,
               "num_kept": fin.num_kept, "rejected": fin.rejected, "generated_now": result.generated_now,
               "files": result.files, "notes": result.notes}
    atomic_write_json(Path(cfg.out) / "make_dataset.json", summary)
    return result


def merge_shards(cfg: MakeDatasetConfig, job: _Job | None = None, models: dict | None = None) -> MakeDatasetResult:
    """Merge OUT/shard-XXofYY folders into OUT (images, sources, manifest) and finish the dataset there."""
    job = job or validate(cfg)
    merge_shard_folders(Path(cfg.out), job_json(job))
    models = models or load_models(cfg, job, need_generation=False)
    return finalize(cfg, job, models, MakeDatasetResult(out=Path(cfg.out), notes=list(models.get("notes", []))))


def run(cfg: MakeDatasetConfig) -> MakeDatasetResult:
    """Run (or resume) the job; see the module docstring. Options are validated before any model loads."""
    t0 = time.time()
    job = validate(cfg)
    out = Path(cfg.out)
    if cfg.merge:
        with _folder_lock(out):
            result = merge_shards(cfg, job)
        result.seconds = time.time() - t0
        return result
    folder = shard_dir(out, *job.shard) if job.shard else out
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        result = _run_locked(cfg, job, out, folder)
    result.seconds = time.time() - t0
    return result


def _run_locked(cfg: MakeDatasetConfig, job: _Job, out: Path, folder: Path) -> MakeDatasetResult:
    _write_job(folder, job, job.shard)
    mine = job.plan.shard_indices(*(job.shard or (0, 1)))
    need = not set(mine) <= completed_indices(folder)
    models = load_models(cfg, job, need_generation=need)
    result = MakeDatasetResult(out=out, notes=list(models["notes"]))
    if need:
        result.generated_now = generate(cfg, job, folder, models, job.shard or (0, 1))
    if job.shard is None:
        finalize(cfg, job, models, result)
    else:
        mark_shard_complete(folder, len(mine))
        result.num_images = len(mine)
        result.notes.append(f"shard {job.shard[0]} of {job.shard[1]} done in {folder}")
        if _under_torchrun(cfg) and job.shard[0] == 0:  # rank 0 merges once every rank is done
            wait_for_shards(out, job.shard[1])
            merged = merge_shards(cfg, job, models)
            merged.generated_now = result.generated_now
            merged.notes = result.notes + [n for n in merged.notes if n not in result.notes]
            result = merged
        elif _under_torchrun(cfg):
            result.notes.append("rank 0 merges the shards when every rank is done")
        else:
            result.notes.append("when every shard is done, merge with the same command plus --merge")
    return result


if __name__ == "__main__":  # python -m adapt3d.pipelines.make_dataset ... (e.g. under torchrun)
    import sys

    import tyro

    try:
        res = run(tyro.cli(MakeDatasetConfig))
    except (ValueError, FileNotFoundError) as err:
        print(f"make-dataset: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(to_jsonable(asdict(res))))
