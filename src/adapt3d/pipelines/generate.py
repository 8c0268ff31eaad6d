"""``adapt3d generate``: a prompt + seeds -> 3D-aware portraits from a distilled text-conditioned generator, ONE
forward pass per sample (no per-prompt optimisation).

    from adapt3d.pipelines.generate import GenerateConfig, run
    result = run(GenerateConfig(checkpoint="runs/dp/final", prompt="a portrait of an elf with silver hair",
                                seeds="0-7", video="orbit", mesh="ply", out=Path("runs/elf")))

Per sample: z = RandomState(seed).randn(1, z_dim) (EG3D's scripts), ws = adapters(mapping(z, frontal camera),
prompt), planes = synthesis network(ws) + gated cross-attention(planes, prompt): that is the one forward pass. The
still image, the orbit video frames and the mesh are all rendered from these planes (rendering more views of the
same 3D representation never recomputes it). Prompt embeddings come from the text encoder of the diffusion model
recorded in the checkpoint (or --diffusion). Outputs: seedNNNN.png, grid.png, orbit.mp4 (a grid of all seeds),
seedNNNN.ply, generate.json (files, timings: seconds per sample of the forward pass, prompt encoding).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from adapt3d.cameras import frontal_label, orbit_trajectory, yaw_sweep
from adapt3d.export.images import make_grid, save_image, to_uint8
from adapt3d.export.mesh import density_grid, extract_mesh, save_mesh
from adapt3d.export.video import write_video
from adapt3d.pipelines.render import check_output_folder, default_cameras, latents, resolve_device
from adapt3d.utils.io import atomic_write_json
from adapt3d.utils.parsing import check_text, check_view_outputs, parse_seeds

__all__ = ["GenerateConfig", "GenerateResult", "run", "generate_samples", "GeneratedSamples", "write_outputs"]


@dataclass
class GenerateConfig:
    """Generate 3D-aware images, orbit videos and meshes for a prompt with a distilled text-conditioned generator
    (one forward pass per sample)."""

    checkpoint: str
    """Text-conditioned checkpoint folder written by `adapt3d distill` (e.g. runs/dp/final)."""
    prompt: str
    """Text prompt, e.g. "a portrait of an elf with silver hair"."""
    out: Path = Path("runs/generate")
    """Output folder (created if missing)."""
    seeds: str = "0-7"
    """Latent seeds: ranges and lists, e.g. '0-7' or '1,5,9'."""
    trunc: float = 0.7
    """Truncation psi (1 = none)."""
    trunc_cutoff: int | None = None
    """Number of w layers truncated (None = all)."""
    diffusion: str | None = None
    """Text encoder source (a Stable Diffusion folder or id); default: the one recorded in the checkpoint."""
    yaw_deg: float = 0.0
    """Camera yaw offset from frontal of the still images, degrees."""
    pitch_deg: float = 0.0
    """Camera pitch offset from frontal of the still images, degrees."""
    video: Literal["none", "orbit", "yaw"] = "none"
    """Video of all seeds (a grid): EG3D's orbit, a yaw sweep, or none."""
    video_format: Literal["mp4", "gif"] = "mp4"
    video_frames: int = 48
    fps: int = 24
    mesh: Literal["none", "ply", "obj", "glb"] = "none"
    """Coloured mesh per seed (marching cubes of the density)."""
    mesh_resolution: int = 128
    """Density grid resolution per axis."""
    mesh_level: float | None = None
    """Density iso-level; None = 10 (EG3D), or the field's midpoint when it never crosses 10 (noted)."""
    batch_size: int = 4
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    progress: bool = True


@dataclass
class GenerateResult:
    out: Path
    seeds: list[int]
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds_per_sample: float = 0.0
    """Wall time of the forward pass (mapping + adapters + tri-planes + cross-attention + one render) per sample."""
    seconds: float = 0.0


@dataclass
class GeneratedSamples:
    """The forward pass's outputs for S seeds: ws (S, num_ws, w_dim), planes (S, 3, C, P, P), images (S, 3, R, R)
    in [-1, 1] on the CPU, and the seconds it took."""

    ws: torch.Tensor
    planes: torch.Tensor
    images: torch.Tensor
    seconds: float


def validate(cfg: GenerateConfig) -> list[int]:
    seeds = parse_seeds(cfg.seeds)
    if not isinstance(cfg.prompt, str) or not cfg.prompt.strip():
        raise ValueError("--prompt: empty; describe the portrait, e.g. 'a portrait of an elf with silver hair'")
    check_text(cfg.prompt, "--prompt", "prompt")
    ck = Path(cfg.checkpoint).expanduser()
    if not (ck / "checkpoint.json").is_file():
        raise ValueError(f"--checkpoint: {ck} is not a checkpoint folder (no checkpoint.json); pass the final/ or a "
                         "snapshots/snapshot-XXXXXX folder of an `adapt3d distill` run")
    if not 0 <= cfg.trunc <= 2:
        raise ValueError(f"--trunc: {cfg.trunc} is outside [0, 2]; 1 means no truncation, 0.7 is typical")
    for name in ("video_frames", "fps", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(cfg, name)}")
    if cfg.mesh != "none" and cfg.mesh_resolution < 8:
        raise ValueError(f"--mesh-resolution: must be >= 8, got {cfg.mesh_resolution}")
    check_view_outputs(video_frames=cfg.video_frames, mesh_resolution=cfg.mesh_resolution if cfg.mesh != "none"
                       else None, yaw_deg=cfg.yaw_deg, pitch_deg=cfg.pitch_deg)
    resolve_device(cfg.device)
    check_output_folder(cfg.out)
    return seeds


@torch.no_grad()
def generate_samples(model, text: torch.Tensor | None, seeds: list[int], cameras: torch.Tensor, trunc: float = 0.7,
                     trunc_cutoff: int | None = None, batch_size: int = 4) -> GeneratedSamples:
    """The forward pass for each seed: ws, planes and one image at ``cameras`` (S, 25). ``model`` is a
    :class:`adapt3d.models.text_conditioned.TextConditionedGenerator`, ``text`` (1, L, D) or None."""
    device = next(model.parameters()).device
    z = latents(seeds, model.z_dim).to(device)
    r = model.rendering
    ws_all, planes_all, images = [], [], []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(0, len(seeds), batch_size):
        zb = z[i:i + batch_size]
        c_cond = frontal_label(r.avg_camera_radius, r.avg_camera_pivot, model.config.camera_fov_deg,
                               batch_size=zb.shape[0]).to(device)
        ws = model.mapping(zb, c_cond, text, truncation_psi=trunc, truncation_cutoff=trunc_cutoff)
        planes = model.planes(ws, text, noise_mode="const")
        out = model.synthesis(ws, cameras[i:i + batch_size].to(device), planes=planes, noise_mode="const",
                              sampling="deterministic")
        ws_all.append(ws)
        planes_all.append(planes)
        images.append(out.image.cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return GeneratedSamples(torch.cat(ws_all), torch.cat(planes_all), torch.cat(images), time.perf_counter() - t0)


@torch.no_grad()
def _mesh(model, planes: torch.Tensor, resolution: int, level: float | None, notes: list[str], seed: int):
    half = model.rendering.box_warp / 2
    bounds = ((-half,) * 3, (half,) * 3)
    device = planes.device
    query = lambda pts: model.base.sample_density(pts[None].to(device), planes=planes)["sigma"][0, :, 0]  # noqa
    sigma = density_grid(query, bounds, resolution, device=device)
    lvl = 10.0 if level is None else level
    lo, hi = float(sigma.min()), float(sigma.max())
    if level is None and not lo < lvl < hi:
        lvl = (lo + hi) / 2
        notes.append(f"seed {seed}: density range [{lo:.3g}, {hi:.3g}] never crosses 10; mesh at the midpoint "
                     f"{lvl:.3g} instead")
    colors = lambda v: model.base.sample_density(v[None].to(device), planes=planes)["rgb"][0, :, :3].clamp(0, 1)  # noqa
    return extract_mesh(sigma, lvl, bounds, colors_fn=colors)


def write_outputs(model, samples: GeneratedSamples, seeds: list[int], out: Path, *, video: str = "none",
                  video_format: str = "mp4", video_frames: int = 48, fps: int = 24, mesh: str = "none",
                  mesh_resolution: int = 128, mesh_level: float | None = None, batch_size: int = 4,
                  progress: bool = False, notes: list[str] | None = None,
                  mesh_seeds: list[int] | None = None) -> dict[str, list[str]]:
    """Save per-seed images, the grid, a video and meshes (of ``mesh_seeds``, default all), all rendered from
    ``samples.planes``."""
    notes = notes if notes is not None else []
    files: dict[str, list[str]] = {}
    u8 = to_uint8(samples.images)
    for k, s in enumerate(seeds):
        files.setdefault("images", []).append(str(save_image(out / f"seed{s:04d}.png", u8[k])))
    files["grid"] = [str(save_image(out / "grid.png", make_grid(u8)))]
    n = len(seeds)
    if video != "none":
        poses = orbit_trajectory(video_frames) if video == "orbit" else yaw_sweep(
            video_frames, math.pi / 2 - 0.5, math.pi / 2 + 0.5)

        @torch.no_grad()
        def frames():
            for t in range(len(poses)):
                cam = default_cameras(model, poses.yaw[t:t + 1].expand(n), poses.pitch[t:t + 1].expand(n))
                imgs = []
                for i in range(0, n, batch_size):
                    sl = slice(i, i + batch_size)
                    imgs.append(model.base.synthesis(samples.ws[sl], cam[sl].to(samples.ws.device),
                                                     planes=samples.planes[sl], noise_mode="const",
                                                     sampling="deterministic").image.cpu())
                yield make_grid(to_uint8(torch.cat(imgs)))

        path = out / f"{video}.{video_format}"
        write_video(path, frames(), fps=fps, progress=progress, total=len(poses))
        files["video"] = [str(path)]
    if mesh != "none":
        for k, s in enumerate(seeds):
            if mesh_seeds is not None and s not in mesh_seeds:
                continue
            m = _mesh(model, samples.planes[k:k + 1], mesh_resolution, mesh_level, notes, s)
            files.setdefault("mesh", []).append(str(save_mesh(out / f"seed{s:04d}.{mesh}", m)))
    return files


def load_prompt_encoder(diffusion: str, device: torch.device, flag: str = "--diffusion"):
    """A ScoreDistillation holding only the text encoder + tokenizer of ``diffusion`` (no UNet, no VAE)."""
    from adapt3d.diffusion.sds import ScoreDistillation
    return ScoreDistillation.from_pretrained(diffusion, device=device, flag=flag, load_unet=False, load_vae=False,
                                             torch_dtype=torch.float32)


def run(cfg: GenerateConfig) -> GenerateResult:
    """Run the generate job (see the module docstring). Arguments are checked before any model is loaded."""
    from adapt3d.models.text_conditioned import load_text_conditioned
    t_start = time.time()
    seeds = validate(cfg)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    model, _, meta = load_text_conditioned(Path(cfg.checkpoint).expanduser())
    model = model.to(device).eval().requires_grad_(False)
    info = meta["text_conditioning"].get("text_encoder", {})
    diffusion = cfg.diffusion or info.get("diffusion")
    if not diffusion:
        raise ValueError(f"--diffusion: {cfg.checkpoint} does not record its text encoder; pass --diffusion (the "
                         "Stable Diffusion model used by `adapt3d distill`)")
    t0 = time.perf_counter()
    encoder = load_prompt_encoder(diffusion, device)
    text = encoder.encode_prompt([cfg.prompt]).to(device)  # (1, L, D)
    encode_s = time.perf_counter() - t0
    if text.shape[-1] != model.cond_config.text_dim:
        raise ValueError(f"--diffusion: {diffusion}'s text encoder gives {text.shape[-1]}-dim embeddings, the "
                         f"checkpoint was trained with {model.cond_config.text_dim}; use the distillation's model")
    del encoder
    yaw = torch.full((len(seeds),), math.pi / 2 + math.radians(cfg.yaw_deg))
    pitch = torch.full((len(seeds),), math.pi / 2 + math.radians(cfg.pitch_deg))
    cams = default_cameras(model, yaw, pitch)
    samples = generate_samples(model, text, seeds, cams, cfg.trunc, cfg.trunc_cutoff, cfg.batch_size)
    result = GenerateResult(out=out, seeds=seeds, seconds_per_sample=samples.seconds / len(seeds))
    result.files = write_outputs(model, samples, seeds, out, video=cfg.video, video_format=cfg.video_format,
                                 video_frames=cfg.video_frames, fps=cfg.fps, mesh=cfg.mesh,
                                 mesh_resolution=cfg.mesh_resolution, mesh_level=cfg.mesh_level,
                                 batch_size=cfg.batch_size, progress=cfg.progress, notes=result.notes)
    result.seconds = time.time() - t_start
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
               "diffusion": diffusion, "prompt": cfg.prompt, "seeds": seeds, "files": result.files,
               "notes": result.notes, "device": str(device),
               "timing": {"forward_s_per_sample": samples.seconds / len(seeds), "prompt_encoding_s": encode_s,
                          "total_s": round(result.seconds, 3)}}
    atomic_write_json(out / "generate.json", summary)
    return result
