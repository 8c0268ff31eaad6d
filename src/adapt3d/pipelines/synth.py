"""3D-DST data synthesis: CAD meshes -> rendered views with exact 3D annotations -> ControlNet images.

Python API mirroring ``adapt3d synth``::

    from adapt3d.pipelines.synth import SynthConfig, synth
    synth(SynthConfig(meshes="cad/", classes="car,chair", per_mesh=20, out="runs/dst"))   # SD1.5 + canny ControlNet
    synth(SynthConfig(preset="tiny", out="runs/dst-demo"))    # procedural meshes + tiny random models, offline

The layout written is documented in :mod:`adapt3d.dst.dataset`. Reruns skip finished views and images (resume);
``--shard i/n`` runs every n-th (mesh, view) item, so n processes (or GPUs) can share one output folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from adapt3d.data.cad import CadModel, find_models, load_cad_mesh, select_classes
from adapt3d.dst.prompts import DST_NEGATIVE, DST_SUFFIX, LLMPromptRewriter, PromptBuilder, PromptConfig
from adapt3d.dst.render import CONTROL_KINDS, canny_edges, control_image, render_view, view_annotation
from adapt3d.dst.viewpoints import (ViewpointConfig, check_viewpoint_config, parse_strategy, sample_viewpoint,
                                   stable_key)
from adapt3d.export.images import save_image
from adapt3d.utils.io import atomic_path, atomic_write_json, check_output_folder, to_jsonable
from adapt3d.utils.parsing import check_at_least, flag_name, resolve_device

DEPTH_CONTROLNET = "lllyasviel/control_v11f1p_sd15_depth"


@dataclass
class SynthConfig:
    """Render CAD meshes at sampled viewpoints, turn the renders into visual prompts, generate images with
    ControlNet, and store the exact 3D annotation of every image. Give --meshes or --preset tiny."""

    out: Path = Path("runs/dst")
    """Output folder (created; reruns resume)."""
    meshes: str | None = None
    """Mesh list (.csv/.json) or a folder (with mesh_list.csv/json, or <class>/<mesh files>)."""
    preset: Literal["tiny"] | None = None
    """'tiny': procedural meshes (box car, box chair) and tiny random models; runs offline anywhere."""
    classes: str | None = None
    """Comma-separated classes to keep (default: all in the mesh list)."""
    per_mesh: int | None = None
    """Views rendered per mesh (default 20; 8 with --preset tiny)."""
    samples_per_view: int = 1
    """Images generated per view (3D-DST's --num_samples)."""
    resolution: int | None = None
    """Render, control and output size in pixels (default 512; 64 with --preset tiny)."""
    pose_sampling: str | None = None
    """3D-DST viewpoint strategy 1-5 / all, front, above, front-above, uniform (default: the mesh list's, else 1)."""
    distance: float = 1.5
    """Camera distance for meshes without one in the list (object size 1)."""
    distance_jitter: bool = True
    """Truncated N(d, 0.5) on [d - 0.5, d + 1.5] (3D-DST's default); --no-distance-jitter keeps d."""
    roll_max_deg: float = 0.0
    """In-plane rotation from U[-x, x] degrees (0 as 3D-DST)."""
    control: Literal["canny", "depth"] = "canny"
    """Visual prompt: Canny edges of the render (3D-DST) or its exact depth (disparity)."""
    canny_low: int = 100
    """Lower Canny hysteresis threshold (cv2.Canny; 3D-DST: 100)."""
    canny_high: int = 200
    """Upper Canny hysteresis threshold (3D-DST: 200)."""
    canny_aperture: int = 3
    """Sobel aperture of cv2.Canny: 3, 5 or 7."""
    diffusion: str | None = None
    """Base model: HF id, folder or 'tiny' (default SD 1.5; 'tiny' with --preset tiny)."""
    controlnet: str | None = None
    """ControlNet: HF id, folder or 'tiny' (default control_v11p_sd15_canny, or ..._depth for --control depth)."""
    variant: Literal["auto", "sd", "sdxl"] = "auto"
    """Pipeline: SD 1.x/2.x or SDXL ControlNet ('auto' reads the base checkpoint)."""
    guidance_scale: float = 9.0
    """Classifier-free guidance scale (3D-DST: 9)."""
    num_inference_steps: int = 20
    """DDIM steps (3D-DST: 20)."""
    eta: float = 1.0
    """DDIM eta (1.0 as 3D-DST)."""
    control_scale: float = 1.0
    """ControlNet conditioning scale."""
    prompt_suffix: str = DST_SUFFIX
    """Appended to every prompt after a comma (3D-DST's a_prompt); '' for none."""
    negative_prompt: str = DST_NEGATIVE
    """Negative prompt (3D-DST's n_prompt)."""
    templates: tuple[str, ...] | None = None
    """Prompt templates with {name} and {tags} (default: adapt3d.dst.prompts.DEFAULT_TEMPLATES)."""
    llm: str | None = None
    """Rewrite prompts with a local causal LM (HF id or folder); cached per class in prompts.json."""
    llm_variants: int = 8
    """Prompts written by the LLM per class."""
    seed: int = 0
    """Base seed of viewpoints, prompts and diffusion noise (per item, independent of sharding)."""
    batch_size: int = 4
    """Images per ControlNet batch (every image keeps its own seed)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'; rendering and generation run there."""
    shard: str = "0/1"
    """'i/n': run every n-th (mesh, view) item starting at i."""
    render_only: bool = False
    """Only render and annotate (the render is the image); no diffusion model is loaded."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class SynthResult:
    out: Path
    views: int = 0
    images: int = 0
    skipped: int = 0
    files: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard: {text!r} must look like 'i/n', e.g. '0/4'") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard: {text!r} needs 0 <= i < n")
    return i, n


def _resolved(cfg: SynthConfig) -> dict:
    """Defaults that depend on --preset/--control."""
    tiny = cfg.preset == "tiny"
    default_cn = "tiny" if tiny else (DEPTH_CONTROLNET if cfg.control == "depth" else
                                      "lllyasviel/control_v11p_sd15_canny")
    return {"per_mesh": cfg.per_mesh or (8 if tiny else 20), "resolution": cfg.resolution or (64 if tiny else 512),
            "diffusion": cfg.diffusion or ("tiny" if tiny else "stable-diffusion-v1-5/stable-diffusion-v1-5"),
            "controlnet": cfg.controlnet or default_cn}


def validate(cfg: SynthConfig) -> tuple[list[CadModel], dict]:
    """Check every option and read the mesh list, before anything heavy. Returns (models, resolved defaults)."""
    from adapt3d.diffusion.controlnet import check_controlnet_args

    if cfg.meshes is None and cfg.preset is None:
        raise ValueError("--meshes: give a mesh list or folder, or --preset tiny for the built-in demo")
    res = _resolved(cfg)
    for name in ("per_mesh", "resolution"):
        if res[name] < 1:
            raise ValueError(f"{flag_name(name)}: must be >= 1, got {res[name]}")
    if res["resolution"] % 8:
        raise ValueError(f"--resolution: {res['resolution']} must be a multiple of 8 (diffusion latents)")
    check_at_least(cfg, ("samples_per_view", "batch_size", "llm_variants"))
    if cfg.control not in CONTROL_KINDS:
        raise ValueError(f"--control: {cfg.control!r} is not one of {CONTROL_KINDS}")
    canny_edges(np.zeros((8, 8, 3), np.uint8), cfg.canny_low, cfg.canny_high, cfg.canny_aperture)
    check_controlnet_args(cfg.guidance_scale, cfg.num_inference_steps, cfg.eta, cfg.control_scale, cfg.variant)
    if cfg.pose_sampling is not None:
        parse_strategy(cfg.pose_sampling)
    check_viewpoint_config(_viewpoint_config(cfg))
    _parse_shard(cfg.shard)
    resolve_device(cfg.device)
    out = check_output_folder(cfg.out)
    if cfg.meshes is not None:
        models = find_models(cfg.meshes)
    else:
        from adapt3d.data.cad_procedural import write_demo_meshes
        models = find_models(write_demo_meshes(out / "meshes"))
    classes = [c.strip() for c in cfg.classes.split(",") if c.strip()] if cfg.classes else None
    models = select_classes(models, classes)
    PromptBuilder(PromptConfig(**_prompt_kwargs(cfg)))  # template check
    if not cfg.render_only:  # missing weights fail here, before any rendering (nothing is loaded yet)
        from adapt3d.diffusion.loading import resolve_pretrained
        resolve_pretrained(res["controlnet"], "controlnet", "--controlnet")
        resolve_pretrained(res["diffusion"], "stable-diffusion", "--diffusion")
    return models, res


def _prompt_kwargs(cfg: SynthConfig) -> dict:
    kw = {"suffix": cfg.prompt_suffix, "negative_prompt": cfg.negative_prompt, "llm": cfg.llm,
          "llm_variants": cfg.llm_variants, "llm_seed": cfg.seed}
    if cfg.templates:
        kw["templates"] = tuple(cfg.templates)
    return kw


def _viewpoint_config(cfg: SynthConfig) -> ViewpointConfig:
    return ViewpointConfig(distance=cfg.distance, distance_jitter=cfg.distance_jitter, roll_max_deg=cfg.roll_max_deg)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def _render_item(cfg: SynthConfig, res: dict, out: Path, model: CadModel, mesh, view_idx: int, device) -> dict:
    vp = sample_viewpoint(
        _viewpoint_config(cfg), cfg.seed, stable_key(model.class_name, model.model_id), view_idx,
        azimuth_offset_deg=model.azimuth_deg, elevation_offset_deg=model.elevation_deg, distance=model.distance,
        strategy=parse_strategy(cfg.pose_sampling) if cfg.pose_sampling is not None else model.sampling)
    view = render_view(mesh, vp, res["resolution"], device)
    folder = Path(model.class_name) / model.model_id
    name = f"{view_idx:03d}"
    files = {"render": f"{folder}/render/{name}.png", "mask": f"{folder}/mask/{name}.png",
             "depth": f"{folder}/depth/{name}.npy", "normal": f"{folder}/normal/{name}.png",
             "control": f"{folder}/control/{name}.png"}
    save_image(out / files["render"], view.rgb)
    save_image(out / files["mask"], (view.mask * 255).astype(np.uint8))
    _save_npy(out / files["depth"], view.depth)
    normal_u8 = np.where(view.mask[..., None], np.round((view.normals + 1) * 127.5), 0).astype(np.uint8)
    save_image(out / files["normal"], normal_u8)
    save_image(out / files["control"],
               control_image(view, cfg.control, cfg.canny_low, cfg.canny_high, cfg.canny_aperture))
    record = view_annotation(model, mesh, view, files)
    record.update({"view": view_idx, "viewpoint_seed": [cfg.seed, stable_key(model.class_name, model.model_id),
                                                        view_idx], "control": cfg.control})
    if cfg.control == "canny":
        record["canny"] = {"low": cfg.canny_low, "high": cfg.canny_high, "aperture": cfg.canny_aperture}
    atomic_write_json(out / folder / "view" / f"{name}.json", record)
    return record


def synth(cfg: SynthConfig) -> SynthResult:
    """Run the synthesis job (see the module docstring). All options are checked before any model is loaded."""
    import json

    t0 = time.time()
    models, res = validate(cfg)
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    shard_i, shard_n = _parse_shard(cfg.shard)
    result = SynthResult(out=out)
    items = [(m, v) for m in sorted(models, key=lambda m: (m.class_name, m.model_id)) for v in range(res["per_mesh"])]
    items = items[shard_i::shard_n]
    bar = lambda it, **kw: tqdm(it, disable=not cfg.progress, **kw)  # noqa: E731

    # Phase 1: render every view of this shard that has no view/VVV.json yet.
    views: list[tuple[CadModel, dict]] = []
    mesh_cache: dict[tuple[str, str], object] = {}
    for model, v in bar(items, desc="render", unit="view"):
        view_json = out / model.class_name / model.model_id / "view" / f"{v:03d}.json"
        if view_json.is_file():
            record = json.loads(view_json.read_text())
            made_with = (record.get("width"), record.get("control"), record.get("viewpoint_seed", [None])[0])
            if made_with != (res["resolution"], cfg.control, cfg.seed):
                raise ValueError(f"--out: {view_json} was made with resolution/control/seed {made_with}, not "
                                 f"{(res['resolution'], cfg.control, cfg.seed)}; resume with the same options or "
                                 "use a new --out")
            views.append((model, record))
            result.skipped += 1
            continue
        key = (model.class_name, model.model_id)
        if key not in mesh_cache:
            mesh_cache.clear()  # one mesh in memory at a time (items are grouped by mesh)
            mesh_cache[key] = load_cad_mesh(model.path, model.up_axis, model.keypoints)
        record = _render_item(cfg, res, out, model, mesh_cache[key], v, device)
        if record["bbox"] is None:
            result.notes.append(f"{model.class_name}/{model.model_id} view {v}: the object is outside the image")
        views.append((model, record))
        result.views += 1

    # Phase 2: one annotation per generated image (the render itself with --render-only).
    samples = 1 if cfg.render_only else cfg.samples_per_view
    prompts = PromptBuilder(PromptConfig(**_prompt_kwargs(cfg)), cache_path=out / "prompts.json")
    pending = []
    for model, record in views:
        for s in range(samples):
            name = f"{record['view']:03d}_{s:02d}"
            ann_path = out / model.class_name / model.model_id / "annotation" / f"{name}.json"
            if ann_path.is_file():
                result.skipped += 1
                continue
            seed = stable_key(str(cfg.seed), model.class_name, model.model_id, str(record["view"]), str(s))
            pending.append((model, record, s, seed, ann_path))
    if pending and cfg.llm:
        missing = [m.class_name for m, *_ in pending if not prompts.has_llm_prompts(m.class_name)]
        if missing:
            prompts.rewriter = LLMPromptRewriter.from_pretrained(cfg.llm, device=str(device))
    generator = None
    if pending and not cfg.render_only:
        from adapt3d.diffusion.controlnet import ControlNetGenerator
        generator = ControlNetGenerator.from_pretrained(res["diffusion"], res["controlnet"], variant=cfg.variant,
                                                        device=device)
    for start in bar(range(0, len(pending), cfg.batch_size), desc="generate", unit="batch"):
        batch = pending[start:start + cfg.batch_size]
        texts = [prompts.prompt_for(m.class_name, tuple(m.tags), seed) for m, _, _, seed, _ in batch]
        images = None
        if generator is not None:
            control = np.stack([np.asarray(_read_png(out / r["files"]["control"])) for _, r, *_ in batch])
            control_t = torch.from_numpy(control).float().div(255)[:, None]  # (B, 1, H, W) in [0, 1]
            gen = generator(control_t, texts, negative_prompt=cfg.negative_prompt, guidance_scale=cfg.guidance_scale,
                            num_inference_steps=cfg.num_inference_steps, eta=cfg.eta,
                            seeds=[b[3] for b in batch], controlnet_conditioning_scale=cfg.control_scale)
            images = np.round(gen.images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        for k, (model, record, s, seed, ann_path) in enumerate(batch):
            ann = {key: val for key, val in record.items()}
            ann["files"] = dict(record["files"])
            if images is not None:
                image_rel = f"{model.class_name}/{model.model_id}/image/{record['view']:03d}_{s:02d}.png"
                save_image(out / image_rel, images[k])
                ann["image"] = image_rel
                ann["generation"] = {"generated": True, **(generator.source if generator else {}),
                                     "guidance_scale": cfg.guidance_scale, "num_inference_steps":
                                     cfg.num_inference_steps, "eta": cfg.eta, "scheduler": "ddim",
                                     "control_scale": cfg.control_scale}
            else:
                ann["image"] = record["files"]["render"]
                ann["generation"] = {"generated": False}
            ann.update({"sample": s, "seed": seed, "prompt": texts[k], "negative_prompt": cfg.negative_prompt})
            atomic_write_json(ann_path, ann)
            result.images += 1

    result.seconds = time.time() - t0
    result.files = {"views": len(views), "annotations": len(views) * samples}
    summary = {"config": to_jsonable(asdict(cfg)),
               "resolved": res, "models": [{"class": m.class_name, "id": m.model_id, "path": str(m.path)}
                                           for m in models],
               "rendered_views": result.views, "generated_images": result.images, "skipped": result.skipped,
               "notes": result.notes, "seconds": round(result.seconds, 3)}
    name = "synth.json" if shard_n == 1 else f"synth-shard{shard_i}of{shard_n}.json"
    atomic_write_json(out / name, summary)
    return result


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def run(cfg: SynthConfig) -> SynthResult:
    return synth(cfg)
