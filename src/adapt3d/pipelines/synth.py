"""3D-DST data synthesis: CAD meshes -> rendered views with exact 3D annotations -> ControlNet images.

Python API mirroring ``adapt3d synth``::

    from adapt3d.pipelines.synth import SynthConfig, synth
    synth(SynthConfig(meshes="cad/", classes="car,chair", per_mesh=20, out="runs/dst"))   # SD1.5 + canny ControlNet
    synth(SynthConfig(meshes="3d-dst-models.csv", shapenet_root="ShapeNetCore.v2", objaverse_root="objaverse",
                      out="runs/dst"))                          # 3D-DST's released model list
    synth(SynthConfig(preset="tiny", out="runs/dst-demo"))    # procedural meshes + tiny random models, offline

The layout written is documented in :mod:`adapt3d.dst.dataset`, the batching and sharding in :mod:`adapt3d.dst.plan`.

Streaming: meshes are loaded one at a time, in (class, id) order, and each unit of views is rendered, turned into
visual prompts and generated before the next; memory holds one mesh and one batch. A mesh that cannot be used
(missing file, unreadable, empty, points only, NaN vertices, no faces, broken texture) gets one line on stderr and an
entry with the reason in ``synth.json``; the run goes on. Reruns skip finished views and images and regenerate a
partly finished batch whole, so a killed and resumed run writes the same bytes as an uninterrupted one.
``--shard i/n`` (or ``RANK``/``WORLD_SIZE`` under torchrun) runs every n-th unit; shards share one output folder and
write ``synth-shard<i>of<n>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from adapt3d.data.cad import CadModel, find_models, load_cad_mesh, select_classes
from adapt3d.data.cad_collections import CollectionRoots
from adapt3d.dst.dst3d_format import write_dst3d_npy
from adapt3d.dst.plan import WorkUnit, parse_shard, plan_units, unit_batches
from adapt3d.dst.prompts import (DST_NEGATIVE, DST_SUFFIX, LLMPromptRewriter, PromptBuilder, PromptConfig,
                                 check_captions_file)
from adapt3d.dst.render import CONTROL_KINDS, canny_edges, control_image, render_view, view_annotation
from adapt3d.dst.scene import SceneConfig, check_scene_config, sample_scene
from adapt3d.dst.viewpoints import (ViewpointConfig, check_viewpoint_config, parse_strategy, sample_viewpoint,
                                   stable_key)
from adapt3d.export.images import save_image
from adapt3d.utils.io import atomic_path, atomic_write_json, check_output_folder, to_jsonable
from adapt3d.utils.parsing import check_at_least, flag_name, resolve_device

__all__ = ["SynthConfig", "SynthResult", "synth", "run", "validate"]


@dataclass
class SynthConfig:
    """Render CAD meshes at sampled viewpoints, turn the renders into visual prompts, generate images with
    ControlNet, and store the exact 3D annotation of every image. Give --meshes or --preset tiny."""

    out: Path = Path("runs/dst")
    """Output folder (created; reruns resume)."""
    meshes: str | None = None
    """Mesh list (.csv/.json, also 3D-DST's 3d-dst-models.csv) or a folder (mesh_list.csv/json, <class>/<mesh>, or
    loose <mesh> files)."""
    preset: Literal["tiny"] | None = None
    """'tiny': procedural meshes (box car, box chair) and tiny random models; runs offline anywhere."""
    shapenet_root: Path | None = None
    """ShapeNetCore folder (<synset>/<model>/models/model_normalized.obj) for model ids of a 3D-DST list."""
    objaverse_root: Path | None = None
    """Objaverse folder (<uid>.glb, or the objaverse package's glbs/<bucket>/<uid>.glb)."""
    omniobject3d_root: Path | None = None
    """OmniObject3D folder (raw/raw_scans/<category>/<scan>/Scan/Scan.obj) for 'omniobject3d_<scan>' ids."""
    mesh_class: str | None = None
    """Class of mesh files lying directly in the --meshes folder (default: the file stem without a trailing
    number, chair_03.obj -> chair)."""
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
    textures: bool = True
    """Sample the meshes' UV textures (--no-textures: material base colours and vertex/face colours only)."""
    lighting: Literal["headlight", "random"] = "headlight"
    """'headlight' (light at the camera) or 'random' (directional light from above, random per view)."""
    light_elevation_deg: tuple[float, float] = (15.0, 75.0)
    """With --lighting random: light elevation range above the object's horizon, degrees in [-90, 90]."""
    ambient: tuple[float, float] = (0.2, 0.45)
    """With --lighting random: ambient term range in [0, 1]."""
    diffuse: tuple[float, float] = (0.5, 1.0)
    """With --lighting random: Lambertian intensity range in [0, 2]."""
    background: Literal["white", "solid", "gradient", "images"] = "white"
    """Render background: white (3D-DST's flat film), random solid colour, random gradient, or pictures."""
    background_dir: Path | None = None
    """Folder of background pictures (png/jpg/webp/bmp, searched recursively) for --background images."""
    control: Literal["canny", "depth"] = "canny"
    """Visual prompt: Canny edges of the render (3D-DST) or its exact depth (disparity)."""
    canny_low: int = 100
    """Lower Canny hysteresis threshold (cv2.Canny; 3D-DST: 100)."""
    canny_high: int = 200
    """Upper Canny hysteresis threshold (3D-DST: 200)."""
    canny_aperture: int = 3
    """Sobel aperture of cv2.Canny: 3, 5 or 7."""
    diffusion: str | None = None
    """Base model: HF id, folder or 'tiny' (default by --variant: SD 1.5, SDXL base 1.0, SD3 medium; 'tiny' with
    --preset tiny)."""
    controlnet: str | None = None
    """ControlNet: HF id, folder or 'tiny' (default by --variant and --control, e.g. control_v11p_sd15_canny,
    InstantX/SD3-Controlnet-Canny)."""
    variant: Literal["auto", "sd", "sdxl", "sd3"] = "auto"
    """Pipeline: SD 1.x/2.x, SDXL or SD3 ControlNet ('auto' reads the base checkpoint)."""
    guidance_scale: float = 9.0
    """Classifier-free guidance scale (3D-DST: 9)."""
    num_inference_steps: int = 20
    """Denoising steps (3D-DST: 20 DDIM steps)."""
    eta: float = 1.0
    """DDIM eta (1.0 as 3D-DST); unused by SD3's flow-matching scheduler."""
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
    captions: Path | None = None
    """Imported captions per class (3D-DST's released captions, .csv/.tsv/.json/.jsonl); instead of --llm."""
    caption_limit: int = 1000
    """Captions kept per class (the first ones in the file)."""
    seed: int = 0
    """Base seed of viewpoints, scenes, prompts and diffusion noise (per item, independent of sharding)."""
    batch_size: int = 4
    """Images per ControlNet batch, within one mesh (every image keeps its own seed)."""
    device: str = "auto"
    """'auto' (CUDA when available; LOCAL_RANK under torchrun), 'cpu' or 'cuda[:i]'."""
    shard: str | None = None
    """'i/n': run every n-th unit of views starting at i (default 0/1; RANK/WORLD_SIZE under torchrun)."""
    write_npy: bool = True
    """Also write 3D-DST's annotation/VVV.npy per view (its KCF and pose loaders read it)."""
    render_only: bool = False
    """Only render and annotate (the render is the image); no diffusion model is loaded."""
    progress: bool = True
    """Show the progress bar (images done, rate, ETA)."""


@dataclass
class SynthResult:
    out: Path
    views: int = 0
    images: int = 0
    skipped: int = 0
    meshes_done: int = 0
    meshes_skipped: list[dict] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _shard(cfg: SynthConfig) -> tuple[int, int]:
    if cfg.shard is not None:
        return parse_shard(cfg.shard)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)


def _device(cfg: SynthConfig) -> torch.device:
    device = resolve_device(cfg.device)
    if cfg.device == "auto" and device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def _resolved(cfg: SynthConfig) -> dict:
    """Defaults that depend on --preset/--control/--variant."""
    from adapt3d.diffusion.controlnet import default_models

    tiny = cfg.preset == "tiny"
    base, cn = default_models(cfg.variant, cfg.control)
    return {"per_mesh": cfg.per_mesh or (8 if tiny else 20), "resolution": cfg.resolution or (64 if tiny else 512),
            "diffusion": cfg.diffusion or ("tiny" if tiny else base),
            "controlnet": cfg.controlnet or ("tiny" if tiny else cn)}


def _scene_config(cfg: SynthConfig) -> SceneConfig:
    return SceneConfig(lighting=cfg.lighting, light_elevation_deg=tuple(cfg.light_elevation_deg),
                       ambient=tuple(cfg.ambient), diffuse=tuple(cfg.diffuse), background=cfg.background,
                       background_dir=cfg.background_dir)


def _viewpoint_config(cfg: SynthConfig) -> ViewpointConfig:
    return ViewpointConfig(distance=cfg.distance, distance_jitter=cfg.distance_jitter, roll_max_deg=cfg.roll_max_deg)


def _prompt_kwargs(cfg: SynthConfig) -> dict:
    kw = {"suffix": cfg.prompt_suffix, "negative_prompt": cfg.negative_prompt, "llm": cfg.llm,
          "llm_variants": cfg.llm_variants, "llm_seed": cfg.seed,
          "captions": None if cfg.captions is None else str(cfg.captions), "caption_limit": cfg.caption_limit}
    if cfg.templates:
        kw["templates"] = tuple(cfg.templates)
    return kw


def _render_options(cfg: SynthConfig, res: dict) -> dict:
    """What decides a rendered view: a resumed run must use the same (checked against view/VVV.json)."""
    return {"resolution": res["resolution"], "control": cfg.control, "seed": cfg.seed,
            "canny": [cfg.canny_low, cfg.canny_high, cfg.canny_aperture], "pose_sampling": cfg.pose_sampling,
            "distance": cfg.distance, "distance_jitter": cfg.distance_jitter, "roll_max_deg": cfg.roll_max_deg,
            "textures": cfg.textures, "lighting": cfg.lighting, "light_elevation_deg": list(cfg.light_elevation_deg),
            "ambient": list(cfg.ambient), "diffuse": list(cfg.diffuse), "background": cfg.background,
            "background_dir": None if cfg.background_dir is None else str(cfg.background_dir)}


def validate(cfg: SynthConfig) -> tuple[list[CadModel], dict]:
    """Check every option and read the mesh list, before anything heavy. Returns (models, resolved defaults);
    models whose file is missing are returned with their ``problem``."""
    from adapt3d.diffusion.controlnet import check_controlnet_args

    if cfg.meshes is None and cfg.preset is None:
        raise ValueError("--meshes: give a mesh list or folder, or --preset tiny for the built-in demo")
    res = _resolved(cfg)
    for name in ("per_mesh", "resolution"):
        if res[name] < 1:
            raise ValueError(f"{flag_name(name)}: must be >= 1, got {res[name]}")
    if res["resolution"] % 8:
        raise ValueError(f"--resolution: {res['resolution']} must be a multiple of 8 (diffusion latents)")
    check_at_least(cfg, ("samples_per_view", "batch_size", "llm_variants", "caption_limit"))
    if cfg.control not in CONTROL_KINDS:
        raise ValueError(f"--control: {cfg.control!r} is not one of {CONTROL_KINDS}")
    canny_edges(np.zeros((8, 8, 3), np.uint8), cfg.canny_low, cfg.canny_high, cfg.canny_aperture)
    check_controlnet_args(cfg.guidance_scale, cfg.num_inference_steps, cfg.eta, cfg.control_scale, cfg.variant)
    if cfg.pose_sampling is not None:
        parse_strategy(cfg.pose_sampling)
    check_viewpoint_config(_viewpoint_config(cfg))
    res["background_images"] = [str(p) for p in check_scene_config(_scene_config(cfg))]
    _shard(cfg)
    _device(cfg)
    if cfg.llm and cfg.captions:
        raise ValueError("--captions/--llm: give one prompt source, not both")
    if cfg.captions is not None:
        check_captions_file(cfg.captions)
    out = check_output_folder(cfg.out)
    roots = CollectionRoots(shapenet=cfg.shapenet_root, objaverse=cfg.objaverse_root,
                            omniobject3d=cfg.omniobject3d_root)
    if cfg.meshes is not None:
        models = find_models(cfg.meshes, roots, default_class=cfg.mesh_class)
    else:
        from adapt3d.data.cad_procedural import write_demo_meshes
        models = find_models(write_demo_meshes(out / "meshes"))
    classes = [c.strip() for c in cfg.classes.split(",") if c.strip()] if cfg.classes else None
    models = select_classes(models, classes)
    usable = [m for m in models if m.problem is None]
    if not usable:
        raise ValueError(f"--meshes: none of the {len(models)} models has a mesh file (first: "
                         f"{models[0].class_name}/{models[0].model_id}: {models[0].problem})")
    PromptBuilder(PromptConfig(**_prompt_kwargs(cfg)))  # template check
    if not cfg.render_only:  # missing weights fail here, before any rendering (nothing is loaded yet)
        from adapt3d.diffusion.loading import resolve_pretrained
        resolve_pretrained(res["controlnet"], "controlnet", "--controlnet")
        resolve_pretrained(res["diffusion"], "stable-diffusion", "--diffusion")
    return models, res


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


class _Job:
    """One run: options, lazily loaded models, the current mesh, and the per-mesh report."""

    def __init__(self, cfg: SynthConfig, res: dict, out: Path, device: torch.device, result: SynthResult):
        self.cfg, self.res, self.out, self.device, self.result = cfg, res, out, device, result
        self.render_options = _render_options(cfg, res)
        self.scene_cfg = _scene_config(cfg)
        self.images_list = [Path(p) for p in res["background_images"]]
        self.prompts = PromptBuilder(PromptConfig(**_prompt_kwargs(cfg)), cache_path=out / "prompts.json")
        self.generator = None
        self.mesh_key: tuple[str, str] | None = None
        self.mesh = None
        self.bad: dict[tuple[str, str], str] = {}
        self.status: dict[tuple[str, str], dict] = {}
        self.outside = 0

    # ---------------------------------------------------------------- meshes
    def report_skip(self, model: CadModel, reason: str) -> None:
        key = (model.class_name, model.model_id)
        if key in self.bad:
            return
        self.bad[key] = reason
        tqdm.write(f"synth: skipped mesh {model.class_name}/{model.model_id}: {reason}", file=sys.stderr)

    def load_mesh(self, model: CadModel):
        key = (model.class_name, model.model_id)
        if key == self.mesh_key:
            return self.mesh
        self.mesh, self.mesh_key = None, None  # one mesh in memory at a time
        mesh = load_cad_mesh(model.path, model.up_axis, model.keypoints)
        if not self.cfg.textures:  # keep colours and base colours, drop the texture images
            mesh.uv = None
            for material in mesh.materials:
                material.texture = None
        self.mesh, self.mesh_key = mesh, key
        return mesh

    # ---------------------------------------------------------------- views
    def check_view_options(self, view_json: Path, record: dict | None = None) -> dict:
        """Raise when a finished view was made with other render options; returns its record."""
        record = json.loads(view_json.read_text()) if record is None else record
        made = record.get("render_options")
        if made is None:  # older runs: the three options they recorded
            made = {"resolution": record.get("width"), "control": record.get("control"),
                    "seed": record.get("viewpoint_seed", [None])[0]}
        diff = [k for k in made if made.get(k) != self.render_options.get(k)]
        if diff:
            raise ValueError(f"--out: {view_json} was made with other options ("
                             + ", ".join(f"{k}: {made[k]!r} now {self.render_options.get(k)!r}" for k in diff)
                             + "); resume with the same options or use a new --out")
        return record

    def view_record(self, model: CadModel, v: int) -> dict:
        """The view's annotation: read back when done (options checked), else rendered now."""
        folder = self.out / model.class_name / model.model_id
        view_json = folder / "view" / f"{v:03d}.json"
        if view_json.is_file():
            record = self.check_view_options(view_json)
            if self.cfg.write_npy and not (folder / "annotation" / f"{v:03d}.npy").is_file():
                write_dst3d_npy(folder / "annotation" / f"{v:03d}.npy", record)
            return record
        return self.render(model, v)

    def render(self, model: CadModel, v: int) -> dict:
        cfg, res = self.cfg, self.res
        mesh = self.load_mesh(model)
        key = stable_key(model.class_name, model.model_id)
        vp = sample_viewpoint(
            _viewpoint_config(cfg), cfg.seed, key, v, azimuth_offset_deg=model.azimuth_deg,
            elevation_offset_deg=model.elevation_deg, distance=model.distance,
            strategy=parse_strategy(cfg.pose_sampling) if cfg.pose_sampling is not None else model.sampling)
        scene = sample_scene(self.scene_cfg, cfg.seed, key, v, self.images_list)
        view = render_view(mesh, vp, res["resolution"], self.device, scene=scene)
        rel = Path(model.class_name) / model.model_id
        name = f"{v:03d}"
        files = {"render": f"{rel}/render/{name}.png", "mask": f"{rel}/mask/{name}.png",
                 "depth": f"{rel}/depth/{name}.npy", "normal": f"{rel}/normal/{name}.png",
                 "control": f"{rel}/control/{name}.png"}
        out = self.out
        save_image(out / files["render"], view.rgb)
        save_image(out / files["mask"], (view.mask * 255).astype(np.uint8))
        _save_npy(out / files["depth"], view.depth)
        normal_u8 = np.where(view.mask[..., None], np.round((view.normals + 1) * 127.5), 0).astype(np.uint8)
        save_image(out / files["normal"], normal_u8)
        save_image(out / files["control"],
                   control_image(view, cfg.control, cfg.canny_low, cfg.canny_high, cfg.canny_aperture))
        record = view_annotation(model, mesh, view, files)
        record.update({"view": v, "viewpoint_seed": [cfg.seed, key, v], "control": cfg.control,
                       "render_options": self.render_options})
        if cfg.control == "canny":
            record["canny"] = {"low": cfg.canny_low, "high": cfg.canny_high, "aperture": cfg.canny_aperture}
        if cfg.write_npy:
            write_dst3d_npy(out / rel / "annotation" / f"{name}.npy", record)
        atomic_write_json(out / rel / "view" / f"{name}.json", record)  # written last: the view is done
        self.result.views += 1
        if record["bbox"] is None:
            self.outside += 1
            if len(self.result.notes) < 20:
                self.result.notes.append(f"{model.class_name}/{model.model_id} view {v}: the object is outside the "
                                         "image")
        return record

    # ---------------------------------------------------------------- images
    def prompt(self, model: CadModel, seed: int) -> str:
        cfg = self.cfg
        if cfg.llm and self.prompts.rewriter is None and not self.prompts.has_llm_prompts(model.class_name):
            self.prompts.rewriter = LLMPromptRewriter.from_pretrained(cfg.llm, device=str(self.device))
        return self.prompts.prompt_for(model.class_name, tuple(model.tags), seed)

    def load_generator(self):
        if self.generator is None:
            from adapt3d.diffusion.controlnet import ControlNetGenerator
            self.generator = ControlNetGenerator.from_pretrained(self.res["diffusion"], self.res["controlnet"],
                                                                 variant=self.cfg.variant, device=self.device)
        return self.generator

    def run_unit(self, unit: WorkUnit, bar) -> None:
        cfg, model = self.cfg, unit.model
        rel = Path(model.class_name) / model.model_id
        ann = {(v, s): self.out / rel / "annotation" / f"{v:03d}_{s:02d}.json" for v, s in unit.items()}
        status = self.status.setdefault((model.class_name, model.model_id),
                                        {"class": model.class_name, "id": model.model_id, "views": 0, "images": 0})
        first_view = self.out / rel / "view" / f"{unit.views[0]:03d}.json"
        if first_view.is_file():  # a finished unit is skipped, but never one made with other options
            self.check_view_options(first_view)
        for batch in unit_batches(unit, cfg.batch_size):
            todo = [it for it in batch if not ann[it].is_file()]
            status["images"] += len(batch)
            if not todo:
                self.result.skipped += len(batch)
                bar.update(len(batch))
                continue
            records = {v: self.view_record(model, v) for v in dict.fromkeys(v for v, _ in batch)}
            seeds = [stable_key(str(cfg.seed), model.class_name, model.model_id, str(v), str(s)) for v, s in batch]
            texts = [self.prompt(model, seed) for seed in seeds]
            images = None
            if not cfg.render_only:  # the whole batch, always: its make-up fixes the result bytes
                generator = self.load_generator()
                control = np.stack([_read_gray(self.out / records[v]["files"]["control"]) for v, _ in batch])
                control_t = torch.from_numpy(control).float().div(255)[:, None]  # (B, 1, H, W) in [0, 1]
                gen = generator(control_t, texts, negative_prompt=cfg.negative_prompt,
                                guidance_scale=cfg.guidance_scale, num_inference_steps=cfg.num_inference_steps,
                                eta=cfg.eta, seeds=seeds, controlnet_conditioning_scale=cfg.control_scale)
                images = np.round(gen.images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
            for k, (v, s) in enumerate(batch):
                if ann[(v, s)].is_file():
                    self.result.skipped += 1
                    continue
                self.write_image(model, records[v], v, s, seeds[k], texts[k], None if images is None else images[k],
                                 ann[(v, s)])
            bar.update(len(batch))
        status["views"] += len(unit.views)

    def write_image(self, model, record, v, s, seed, text, image, ann_path) -> None:
        cfg = self.cfg
        ann = dict(record)
        ann["files"] = dict(record["files"])
        if image is not None:
            image_rel = f"{model.class_name}/{model.model_id}/image/{v:03d}_{s:02d}.png"
            save_image(self.out / image_rel, image)
            ann["image"] = image_rel
            ann["generation"] = {"generated": True, **self.generator.source, "guidance_scale": cfg.guidance_scale,
                                 "num_inference_steps": cfg.num_inference_steps, "eta": cfg.eta,
                                 "control_scale": cfg.control_scale, "batch_size": cfg.batch_size}
        else:
            ann["image"] = record["files"]["render"]
            ann["generation"] = {"generated": False}
        ann.update({"sample": s, "seed": seed, "prompt": text, "prompt_source": self.prompts.source(model.class_name),
                    "negative_prompt": cfg.negative_prompt})
        atomic_write_json(ann_path, ann)  # written last: the image is done
        self.result.images += 1


def synth(cfg: SynthConfig) -> SynthResult:
    """Run the synthesis job (see the module docstring). All options are checked before any model is loaded."""
    t0 = time.time()
    models, res = validate(cfg)
    out = Path(cfg.out)
    shard_i, shard_n = _shard(cfg)
    result = SynthResult(out=out)
    job = _Job(cfg, res, out, _device(cfg), result)
    samples = 1 if cfg.render_only else cfg.samples_per_view
    units = plan_units(models, res["per_mesh"], samples, cfg.batch_size, (shard_i, shard_n))
    if cfg.captions is not None:
        counts = job.prompts.load_captions(sorted({m.class_name for m in models if m.problem is None}))
        missing = sorted(c for c, n in counts.items() if n == 0)
        if missing:
            result.notes.append(f"--captions: no caption for {len(missing)} class(es) ({', '.join(missing[:10])}"
                                f"{', ...' if len(missing) > 10 else ''}); they use the templates")
    total = sum(len(u.items()) for u in units)
    with tqdm(total=total, desc="synth", unit="img", disable=not cfg.progress, dynamic_ncols=True) as bar:
        for unit in units:
            model = unit.model
            key = (model.class_name, model.model_id)
            if model.problem is not None or key in job.bad:
                job.report_skip(model, model.problem or job.bad[key])
                bar.update(len(unit.items()))
                continue
            end = bar.n + len(unit.items())
            try:
                job.run_unit(unit, bar)
            except (ValueError, FileNotFoundError) as e:
                if not _is_mesh_error(e, model):
                    raise
                job.report_skip(model, str(e))
                job.status.pop(key, None)
                bar.update(end - bar.n)
    skipped = [{"class": c, "id": i, "reason": r} for (c, i), r in sorted(job.bad.items())]
    result.meshes_skipped = skipped
    result.meshes_done = len([k for k in job.status if k not in job.bad])
    result.seconds = time.time() - t0
    result.files = {"views_rendered_now": result.views, "images_written_now": result.images}
    if job.outside > 20:
        result.notes.append(f"{job.outside} views in all have the object outside the image")
    line = (f"synth: {result.meshes_done} mesh(es) done, {len(skipped)} skipped"
            f"{' (reasons in ' + _summary_name(shard_i, shard_n) + ')' if skipped else ''}; "
            f"{result.images} image(s) written now, {result.skipped} already there")
    tqdm.write(line, file=sys.stderr)
    models_info = []
    for m in sorted(models, key=lambda m: (m.class_name, m.model_id)):
        key = (m.class_name, m.model_id)
        info = {"class": m.class_name, "id": m.model_id, "path": None if m.path is None else str(m.path),
                "collection": m.collection}
        if key in job.bad:
            info.update(status="skipped", reason=job.bad[key])
        elif key in job.status:
            info.update(status="done", **{k: job.status[key][k] for k in ("views", "images")})
        else:
            info.update(status="other shard")
        models_info.append(info)
    summary = {"config": to_jsonable(asdict(cfg)),
               "resolved": {k: v for k, v in res.items() if k != "background_images"},
               "shard": [shard_i, shard_n], "summary": line, "meshes_done": result.meshes_done,
               "meshes_skipped": skipped, "models": models_info, "rendered_views": result.views,
               "generated_images": result.images, "skipped_images": result.skipped, "notes": result.notes,
               "seconds": round(result.seconds, 3)}
    atomic_write_json(out / _summary_name(shard_i, shard_n), summary)
    return result


def _summary_name(shard_i: int, shard_n: int) -> str:
    return "synth.json" if shard_n == 1 else f"synth-shard{shard_i}of{shard_n}.json"


def _is_mesh_error(error: Exception, model: CadModel) -> bool:
    """True for an error about this model's mesh file (it is skipped); option errors propagate."""
    text = str(error)
    return model.path is not None and (str(model.path) in text or model.path.name in text) \
        and not text.startswith("--")


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def run(cfg: SynthConfig) -> SynthResult:
    return synth(cfg)


if __name__ == "__main__":  # python -m adapt3d.pipelines.synth ... (e.g. under torchrun)
    import tyro

    try:
        res = synth(tyro.cli(SynthConfig))
    except (ValueError, FileNotFoundError) as err:
        print(f"synth: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(to_jsonable(asdict(res))))
