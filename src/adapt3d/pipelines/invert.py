"""``adapt3d invert``: a photo -> latent + camera of a tri-plane generator (+ optional pivotal tuning).

Python API mirroring the command::

    from adapt3d.pipelines.invert import InvertConfig, run
    result = run(InvertConfig(image="photo.png", generator="ffhq", out="runs/me"))
    result.latent      # runs/me/latent.pt: render it through an adapted generator with adapt3d render --latent

Steps: read the image, find the face and crop it like EG3D's FFHQ images (:mod:`adapt3d.inversion.face_align`;
``--no-align``: centre crop + resize, see :mod:`adapt3d.inversion.images`); build the loss (LPIPS, or the
stated fallback); take the camera from ``--camera`` or estimate it (:mod:`adapt3d.inversion.camera_search`);
project into W or W+ (:mod:`adapt3d.inversion.projector`); optionally tune the generator around the latent
(``--pti``, :mod:`adapt3d.inversion.pti`, saved as a checkpoint in OUT/pti). Output folder::

    input.png                the aligned (or cropped), resized input (what was inverted)
    alignment.png            the photo with the face box, eyes, estimated mouth and crop drawn (not with --no-align)
    reconstruction.png       the latent rendered by the source generator at the estimated camera
    reconstruction_views.png the latent at yaw -0.4, 0, +0.4 rad; reconstruction_depth.png its depth
    grid.png                 input | reconstruction | three views (| PTI reconstruction), captioned
    latent.pt, latent.json   the latent file (see adapt3d.inversion.latent_file)
    orbit.mp4                the reconstruction orbiting (--video); reconstruction.<mesh> (--mesh)
    pti/                     the tuned generator (adapt3d checkpoint) with --pti; pti_render/ its renders
    invert.json              options, camera-search table, losses, PSNR, timings, notes

Rerunning the same command reuses a finished latent.pt (and pti/); other options on the same --out are refused
unless --overwrite.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from adapt3d.clip.model import DEFAULT_CLIP_MODEL
from adapt3d.utils.io import check_output_folder, to_jsonable
from adapt3d.utils.parsing import check_at_least, check_view_outputs, flag_name, resolve_device

__all__ = ["InvertConfig", "InvertResult", "run", "validate"]


@dataclass
class InvertConfig:
    """Invert a photo into a 3D generator: latent + camera (+ pivotal tuning), reconstruction grid and video.
    Give --preset or --generator."""

    image: tyro.conf.Positional[Path]
    """Input photo (any size and aspect; RGB, RGBA or greyscale): its face is found and cropped (see --align)."""
    out: Path = Path("runs/invert")
    """Output folder (latent.pt, latent.json, images, invert.json)."""
    preset: str | None = None
    """Built-in generator with random weights (tiny, ffhq512, afhq512, shapenet128)."""
    generator: str | None = None
    """Source generator: adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq)."""
    camera: Path | None = None
    """Camera of the photo: .json / .npy EG3D label (25 numbers) or cam2world (16); default: estimate it by search."""
    space: Literal["w", "w+"] = "w+"
    """Latent space: w (one vector, stays on the generator's manifold) or w+ (one per layer, closer fit)."""
    num_steps: int = 300
    """Projection steps (DATID-3D: 300)."""
    lr: float = 0.01
    """Peak learning rate of w (warm-up 5 %, cosine decay over the last 25 %)."""
    loss: Literal["auto", "lpips", "mse", "clip", "lpips+mse", "mse+clip"] = "auto"
    """Reconstruction loss; auto = LPIPS-VGG when its weights are present, else MSE (+ CLIP image when a CLIP model
    is available), with a note."""
    mse_weight: float = 1.0
    """Weight of the pixel MSE term (images in [-1, 1]) when the loss has one."""
    clip_weight: float = 0.25
    """Weight of the CLIP-image term (1 - cosine of image embeddings) when the loss has one."""
    clip_model: str = "auto"
    """CLIP for the clip terms: HF id, folder, 'tiny' or 'none'; auto = openai/clip-vit-base-patch32 when available
    (none for --preset tiny)."""
    lpips_vgg_weights: str | None = None
    """VGG16 ImageNet weights for LPIPS (path or URL); default: the cache (see adapt3d.metrics.lpips)."""
    lpips_heads_weights: str | None = None
    """LPIPS v0.1 linear heads (path or URL); default: the cache."""
    optimize_noise: bool = True
    """Optimise the synthesis noise maps too (regularised); they are stored in latent.pt."""
    noise_regularize: float = 1e5
    """Weight of the noise maps' autocorrelation penalty (EG3D's projector: 1e5)."""
    w_noise: float = 0.05
    """Initial exploration noise on w, fraction of w_std (decays to 0 over 75 % of the steps)."""
    w_avg_samples: int = 1000
    """Mapping samples for the start point w_avg and w_std."""
    refine_camera: bool | None = None
    """Optimise yaw/pitch with w during the projection; default: on when the camera is estimated, off with --camera."""
    camera_lr: float = 0.01
    """Peak learning rate of yaw and pitch (radians) when the camera is refined."""
    search_yaw_range_deg: float = 30.0
    """Camera search: yaw grid half-width around the average camera, degrees."""
    search_yaw_steps: int = 5
    """Camera search: yaw grid points."""
    search_pitch_range_deg: float = 15.0
    """Camera search: pitch grid half-width, degrees."""
    search_pitch_steps: int = 3
    """Camera search: pitch grid points."""
    search_keep: int = 3
    """Camera search: grid cameras refined jointly with w."""
    search_steps: int = 60
    """Camera search: projection steps per refined candidate."""
    pti: bool = False
    """Pivotal tuning: fine-tune the generator around the latent and save it as OUT/pti."""
    pti_steps: int = 350
    """Pivotal tuning steps (PTI: 350)."""
    pti_lr: float = 3e-4
    """Pivotal tuning learning rate of the generator weights (PTI: 3e-4)."""
    pti_locality_weight: float = 0.1
    """Weight of PTI's locality regulariser (keeps other latents' renderings unchanged)."""
    pti_locality_radius: float = 1.0
    """Distance of PTI's regularisation latents from the pivot, in units of w_std."""
    align: bool = True
    """Find the face (OpenCV Haar cascades) and crop it like EG3D's FFHQ images: rotation from the eye line, scale
    and centre from the eyes and the mouth. --no-align: the centred largest square, as it is (renders, images that
    are already aligned, generators of other subjects)."""
    align_crop: Literal["eg3d", "ffhq"] = "eg3d"
    """Framing of the aligned crop: eg3d (EG3D's FFHQ crop: tighter, centred lower) or ffhq (FFHQ's original quad)."""
    background: Literal["white", "black", "grey"] = "white"
    """Colour that transparent pixels (RGBA input) are composited over."""
    video: Literal["none", "orbit", "yaw"] = "orbit"
    """Video of the reconstruction: EG3D's orbit, a yaw sweep, or none."""
    video_format: Literal["mp4", "gif"] = "mp4"
    """Video container."""
    video_frames: int = 48
    """Frames of the video."""
    fps: int = 24
    """Frames per second of the video."""
    mesh: Literal["none", "ply", "obj", "glb"] = "none"
    """Also export the reconstruction's mesh."""
    mesh_resolution: int = 128
    """Density grid resolution per axis for marching cubes."""
    seed: int = 0
    """Seed of w_avg sampling, exploration noise and PTI's regularisation samples."""
    overwrite: bool = False
    """Redo the inversion even if OUT holds one made with other options."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class InvertResult:
    out: Path
    latent: Path
    psnr: float
    loss: float
    yaw_deg: float
    pitch_deg: float
    loss_kind: str
    pti_generator: Path | None = None
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def validate(cfg: InvertConfig) -> dict:
    """Check every option, the image, the camera file and the output folder before any model loads; returns the
    parts the run needs (projector / search / PTI configs, the image's sha256)."""
    from adapt3d.inversion.camera_search import CameraSearchConfig
    from adapt3d.inversion.images import read_image
    from adapt3d.inversion.losses import LOSS_KINDS
    from adapt3d.inversion.projector import ProjectorConfig
    from adapt3d.inversion.pti import PTIConfig
    from adapt3d.models.loading import check_generator_source

    from adapt3d.inversion.face_align import CROP_STYLES
    from adapt3d.inversion.images import prepare_target

    check_generator_source(cfg.preset, cfg.generator, flag="--generator")
    if cfg.align_crop not in CROP_STYLES:
        raise ValueError(f"--align-crop: {cfg.align_crop!r} is not one of {', '.join(CROP_STYLES)}")
    read_image(cfg.image, background=cfg.background, arg="image")  # unreadable files fail here
    if cfg.loss not in LOSS_KINDS:
        raise ValueError(f"--loss: {cfg.loss!r} is not one of {', '.join(LOSS_KINDS)}")
    check_at_least(cfg, ("video_frames", "fps", "mesh_resolution"))
    if cfg.mesh != "none" and cfg.mesh_resolution < 8:
        raise ValueError(f"--mesh-resolution: must be >= 8, got {cfg.mesh_resolution}")
    check_view_outputs(video_frames=cfg.video_frames,
                       mesh_resolution=cfg.mesh_resolution if cfg.mesh != "none" else None)
    for name in ("mse_weight", "clip_weight"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            raise ValueError(f"{flag_name(name)}: must be >= 0, got {getattr(cfg, name)}")
    refine = cfg.camera is None if cfg.refine_camera is None else cfg.refine_camera
    projector = ProjectorConfig(space=cfg.space, num_steps=cfg.num_steps, lr=cfg.lr, w_noise=cfg.w_noise,
                                optimize_noise=cfg.optimize_noise, noise_regularize=cfg.noise_regularize,
                                refine_camera=refine, camera_lr=cfg.camera_lr, w_avg_samples=cfg.w_avg_samples,
                                seed=cfg.seed)
    search = CameraSearchConfig(cfg.search_yaw_range_deg, cfg.search_yaw_steps, cfg.search_pitch_range_deg,
                                cfg.search_pitch_steps, cfg.search_keep, cfg.search_steps)
    pti = PTIConfig(num_steps=cfg.pti_steps, lr=cfg.pti_lr, locality_weight=cfg.pti_locality_weight,
                    locality_radius=cfg.pti_locality_radius, seed=cfg.seed) if cfg.pti else None
    if cfg.camera is not None:  # format and rigidity now; a cam2world-only file gets the generator's fov later
        from adapt3d.inversion.camera_io import load_camera_file
        load_camera_file(cfg.camera, 18.837, Path(cfg.image).name)
    if cfg.align:  # a photo without a face fails here, before any model loads (detection takes milliseconds)
        prepare_target(cfg.image, 64, background=cfg.background, align=True, crop=cfg.align_crop, arg="image")
    resolve_device(cfg.device)
    check_output_folder(cfg.out)
    digest = hashlib.sha256(Path(cfg.image).read_bytes()).hexdigest()
    return {"projector": projector, "search": search, "pti": pti, "image_sha256": digest}


def _fingerprint(cfg: InvertConfig, parts: dict, stage: str) -> str:
    """Options that change the latent (stage 'latent') or the tuned generator (stage 'pti')."""
    keys = ["preset", "generator", "camera", "space", "num_steps", "lr", "loss", "mse_weight", "clip_weight",
            "clip_model", "optimize_noise", "noise_regularize", "w_noise", "w_avg_samples", "refine_camera",
            "camera_lr", "search_yaw_range_deg", "search_yaw_steps", "search_pitch_range_deg", "search_pitch_steps",
            "search_keep", "search_steps", "background", "align", "align_crop", "seed", "lpips_vgg_weights", "lpips_heads_weights"]
    if stage == "pti":
        keys += ["pti_steps", "pti_lr", "pti_locality_weight", "pti_locality_radius"]
    doc = {k: str(getattr(cfg, k)) for k in keys}
    doc["image_sha256"] = parts["image_sha256"]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _previous(out: Path) -> dict:
    path = out / "invert.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def _clip_name(cfg: InvertConfig) -> str | None:
    from adapt3d.diffusion.loading import PretrainedNotFoundError, resolve_pretrained
    if cfg.clip_model == "none" or (cfg.clip_model == "auto" and cfg.preset == "tiny"):
        return None
    if cfg.clip_model != "auto":
        return cfg.clip_model
    try:
        resolve_pretrained(DEFAULT_CLIP_MODEL, "clip")
    except (PretrainedNotFoundError, ValueError):
        return None
    return DEFAULT_CLIP_MODEL


def run(cfg: InvertConfig) -> InvertResult:
    """Run (or reuse) the inversion; see the module docstring. Options are validated before any model loads."""
    from adapt3d.export.images import label_images, make_grid, save_image, to_uint8
    from adapt3d.inversion import camera_io, latent_file
    from adapt3d.inversion.camera_search import search_camera
    from adapt3d.inversion.face_align import draw_alignment
    from adapt3d.inversion.images import read_image
    from adapt3d.inversion.images import prepare_target
    from adapt3d.inversion.losses import make_reconstruction_loss
    from adapt3d.inversion.projector import project, w_statistics
    from adapt3d.inversion.pti import pivotal_tuning
    from adapt3d.inversion.render_latent import VIEW_OFFSETS, RenderLatentConfig, render_latent
    from adapt3d.models.checkpoint import save_checkpoint
    from adapt3d.models.loading import load_generator
    from adapt3d.utils.io import atomic_write_json

    t0 = time.time()
    parts = validate(cfg)
    out, device = Path(cfg.out), resolve_device(cfg.device)
    fp_latent, fp_pti = _fingerprint(cfg, parts, "latent"), _fingerprint(cfg, parts, "pti")
    prev = _previous(out)
    if prev.get("fingerprint", {}).get("latent") not in (None, fp_latent) and not cfg.overwrite:
        raise ValueError(f"--out: {out} holds an inversion made with other options or another image; use another "
                         "--out, the same options to reuse it, or --overwrite")
    loaded = load_generator(preset=cfg.preset, checkpoint=cfg.generator, progress=cfg.progress)
    G = loaded.generator.to(device).eval().requires_grad_(False)
    notes = list(loaded.notes)
    prepared = prepare_target(cfg.image, G.img_resolution, background=cfg.background, align=cfg.align,
                              crop=cfg.align_crop)
    target, target_u8, original_hw = prepared.target, prepared.image, prepared.original_hw
    if prepared.alignment is not None:
        notes += prepared.alignment.notes
        if cfg.camera is not None:
            notes.append("--camera with --align: the camera is taken to describe the aligned crop (EG3D's framing, "
                         "as EG3D's dataset labels do); for a camera of the original framing use --no-align")
        save_image(out / "alignment.png", draw_alignment(read_image(cfg.image, background=cfg.background),
                                                         prepared.alignment))
    elif original_hw != (G.img_resolution, G.img_resolution):
        notes.append(f"input {original_hw[1]}x{original_hw[0]} centre-cropped to {min(original_hw)} px and resized "
                     f"to {G.img_resolution} px")
    save_image(out / "input.png", target_u8)
    choice = make_reconstruction_loss(cfg.loss, resolution=G.img_resolution, device=device,
                                      lpips_vgg_weights=cfg.lpips_vgg_weights,
                                      lpips_heads_weights=cfg.lpips_heads_weights, clip_model=_clip_name(cfg),
                                      mse_weight=cfg.mse_weight, clip_weight=cfg.clip_weight)
    notes += choice.notes
    loss_fn = choice.loss
    target = target.to(device)
    summary: dict = {"config": to_jsonable(asdict(cfg)),
                     "generator": loaded.source, "input_size": list(original_hw), "loss": choice.loss.describe(),
                     "alignment": prepared.alignment.to_dict() if prepared.alignment is not None else None,
                     "fingerprint": {"latent": fp_latent}}
    latent_path = out / latent_file.LATENT_PT
    reuse = (prev.get("fingerprint", {}).get("latent") == fp_latent and latent_path.is_file()
             and not cfg.overwrite)
    if reuse:
        code = latent_file.load_latent(latent_path)
        latent_file.check_architecture(G, code, "--out")
        summary.update({k: prev[k] for k in ("camera_search", "history", "projection_seconds") if k in prev})
        notes.append(f"reused the finished inversion in {latent_path}")
    else:
        t1 = time.time()
        stats = w_statistics(G, cfg.w_avg_samples, cfg.seed, device)
        projector, init_ws, init_noise = parts["projector"], None, None
        if cfg.camera is not None:
            label = camera_io.load_camera_file(cfg.camera, G.config.camera_fov_deg, Path(cfg.image).name).to(device)
            if projector.refine_camera:
                yaw, pitch, radius = camera_io.label_angles(label.cpu())
                camera = camera_io.OrbitCamera.for_generator(G, yaw, pitch, device=device)
                camera.radius = radius
                notes.append("--refine-camera: the given camera is re-parametrised as an orbit camera around the "
                             "generator's pivot (its own look-at target is not known)")
            else:
                camera = label
        else:
            found = search_camera(G, target, loss_fn, parts["search"], projector, stats=stats,
                                  progress=cfg.progress)
            camera, init_ws, init_noise = found.camera, found.projection.ws, found.projection.noise
            summary["camera_search"] = [c.to_dict() for c in found.candidates]
        res = project(G, target, camera, loss_fn, projector, stats=stats, init_ws=init_ws, init_noise=init_noise,
                      progress=cfg.progress)
        code = latent_file.LatentCode(
            ws=res.ws, camera=res.camera, space=cfg.space, architecture=latent_file.architecture_of(G),
            generator=json.loads(json.dumps(G.config.to_dict())), source=loaded.source, yaw=res.yaw,
            pitch=res.pitch, loss=res.loss, psnr=res.psnr, noise=res.noise, input_image="input.png",
            reconstruction="reconstruction.png")
        summary["history"] = res.history[::max(1, len(res.history) // 100)]
        summary["projection_seconds"] = round(time.time() - t1, 3)
    rl = render_latent(G, code, out, RenderLatentConfig.from_options(cfg, name="reconstruction"), flag="--out")
    files = dict(rl.files)
    notes += rl.notes
    rows = [target_u8, to_uint8(rl.image)[0]]
    captions = ["input", f"{code.psnr:.1f} dB"]
    pti_folder = None
    if cfg.pti:
        pti_folder = out / "pti"
        done = prev.get("fingerprint", {}).get("pti") == fp_pti and (pti_folder / "checkpoint.json").is_file()
        if done and not cfg.overwrite:
            from adapt3d.models.checkpoint import load_checkpoint
            G_pti = load_checkpoint(pti_folder, load_discriminator=False).generator.to(device).eval()
            summary["pti"] = prev.get("pti", {})
            notes.append(f"reused the tuned generator in {pti_folder}")
        else:
            tuned = pivotal_tuning(G, target, code.ws, code.camera, loss_fn, parts["pti"], noise=code.noise,
                                   progress=cfg.progress)
            G_pti = tuned.generator
            summary["pti"] = {"loss_before": tuned.loss_before, "loss_after": tuned.loss_after,
                              "psnr_before": tuned.psnr_before, "psnr_after": tuned.psnr_after,
                              "history": tuned.history[::max(1, len(tuned.history) // 100)]}
            save_checkpoint(pti_folder, G_pti, metadata={"kind": "adapt3d pti", "source": loaded.source,
                                                         "latent": str(latent_path), "fingerprint": fp_pti})
        summary["fingerprint"]["pti"] = fp_pti
        code.pti_generator = "pti"
        pti_render = render_latent(G_pti, code, out / "pti_render",
                                   RenderLatentConfig(name="reconstruction", comparison=False))
        files["pti_render"] = pti_render.files["image"]
        rows.append(to_uint8(pti_render.image)[0])
        captions.append(f"PTI {summary['pti'].get('psnr_after', float('nan')):.1f} dB")
    else:
        code.pti_generator = ""
    latent_file.save_latent(out, code, extra_json={"made_by": "adapt3d invert", "image": str(cfg.image)})
    files["latent"] = [str(latent_path), str(out / latent_file.LATENT_JSON)]
    rows += list(to_uint8(rl.views))
    captions += [f"yaw {d:+.1f}" for d in VIEW_OFFSETS]
    grid = make_grid(label_images(np.stack(rows), captions), nrow=len(rows))
    files["grid"] = [str(save_image(out / "grid.png", grid))]
    if prepared.alignment is not None:
        files["alignment"] = [str(out / "alignment.png")]
    yaw_deg, pitch_deg = math.degrees(code.yaw - math.pi / 2), math.degrees(code.pitch - math.pi / 2)
    result = InvertResult(out=out, latent=latent_path, psnr=code.psnr, loss=code.loss, yaw_deg=yaw_deg,
                          pitch_deg=pitch_deg, loss_kind=choice.kind, pti_generator=pti_folder, files=files,
                          notes=notes, seconds=time.time() - t0)
    summary.update({"psnr": code.psnr, "final_loss": code.loss, "loss_kind": choice.kind,
                    "camera": {"label": [float(v) for v in code.camera.reshape(-1)], "yaw_deg": yaw_deg,
                               "pitch_deg": pitch_deg}, "files": files, "notes": notes,
                    "seconds": round(result.seconds, 3)})
    atomic_write_json(out / "invert.json", summary)
    return result
