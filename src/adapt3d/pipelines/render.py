"""Render a tri-plane generator: per-seed images and depth maps, a grid, an orbit video and meshes.

Python API mirroring ``adapt3d render``::

    from adapt3d.pipelines.render import RenderConfig, render
    result = render(RenderConfig(preset="tiny", seeds="0-3", out="runs/demo", video="orbit", mesh="ply"))

Latents follow EG3D's scripts: z = RandomState(seed).randn(1, z_dim); mapping is conditioned on the frontal
camera; images are rendered with deterministic ray marching so reruns give identical files.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from adapt3d.cameras import camera_label, frontal_label, orbit_trajectory, yaw_sweep
from adapt3d.export.images import depth_to_image, make_grid, save_image, to_uint8
from adapt3d.export.mesh import density_grid, extract_mesh, save_mesh
from adapt3d.export.video import write_video
from adapt3d.models.cpu_kernels import kernel_status
from adapt3d.models.ops import current_conv3x3_algorithm
from adapt3d.models.triplane import TriPlaneGenerator
from adapt3d.utils.io import atomic_write_json
from adapt3d.utils.parsing import check_view_outputs, parse_seeds


@dataclass
class RenderConfig:
    """Render a generator: image grid, per-seed images and depth, orbit video, meshes. Give --preset or
    --checkpoint."""

    out: Path = Path("runs/render")
    """Output folder (created if missing)."""
    preset: str | None = None
    """Built-in architecture with seeded random weights: tiny, ffhq512, afhq512, shapenet128."""
    checkpoint: str | None = None
    """adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq, shapenet)."""
    seeds: str = "0-3"
    """Latent seeds: ranges and lists, e.g. '0-7' or '1,5,9'."""
    trunc: float = 0.7
    """Truncation psi (1 = none)."""
    trunc_cutoff: int | None = None
    """Number of w layers truncated (None = all)."""
    yaw_deg: float = 0.0
    """Camera yaw offset from frontal, degrees (EG3D convention: h = pi/2 + yaw)."""
    pitch_deg: float = 0.0
    """Camera pitch offset from frontal, degrees (EG3D convention: v = pi/2 + pitch)."""
    video: Literal["none", "orbit", "yaw"] = "none"
    """Camera trajectory of the video: an orbit, a yaw sweep, or no video."""
    video_format: Literal["mp4", "gif"] = "mp4"
    video_frames: int = 48
    fps: int = 24
    mesh: Literal["none", "ply", "obj", "glb"] = "none"
    """Export a coloured mesh per seed in this format."""
    mesh_resolution: int = 128
    """Density grid resolution per axis for marching cubes."""
    mesh_level: float | None = None
    """Density (raw sigma) iso-level; None = 10 as in EG3D's shape export, falling back to the field's midpoint
    (with a note in render.json) when the field never crosses 10, as for untrained models."""
    latent: Path | None = None
    """latent.pt from adapt3d invert (or an adapt run's OUT/instance/latent.pt): render THAT instance instead of
    --seeds: at its own camera, three views, input | source reconstruction | this generator, --video, --mesh."""
    batch_size: int = 4
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    noise_mode: Literal["const", "random", "none"] = "const"
    progress: bool = True


@dataclass
class RenderResult:
    out: Path
    seeds: list[int]
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device: {device!r} is not a device name; expected 'auto', 'cpu' or 'cuda[:i]'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} asked for CUDA, but no CUDA device is available")
    return dev


def check_output_folder(out: Path, arg: str = "--out") -> Path:
    """Create ``out`` and prove it is writable, before any model is built."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{arg}: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".adapt3d-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{arg}: cannot write to {out} ({e.strerror or e})") from e
    return out


def validate(cfg: RenderConfig) -> list[int]:
    """Check every argument; returns the parsed seeds. Raises ValueError naming the argument."""
    from adapt3d.models.loading import check_generator_source
    seeds = parse_seeds(cfg.seeds)
    check_generator_source(cfg.preset, cfg.checkpoint)
    if not 0 <= cfg.trunc <= 2:
        raise ValueError(f"--trunc: {cfg.trunc} is outside [0, 2]; 1 means no truncation, 0.7 is typical")
    if cfg.trunc_cutoff is not None and cfg.trunc_cutoff < 0:
        raise ValueError(f"--trunc-cutoff: must be >= 0 or None, got {cfg.trunc_cutoff}")
    for name in ("video_frames", "fps", "batch_size", "mesh_resolution"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(cfg, name)}")
    if cfg.mesh != "none" and cfg.mesh_resolution < 8:
        raise ValueError(f"--mesh-resolution: must be >= 8, got {cfg.mesh_resolution}")
    check_view_outputs(video_frames=cfg.video_frames, mesh_resolution=cfg.mesh_resolution if cfg.mesh != "none"
                       else None, yaw_deg=cfg.yaw_deg, pitch_deg=cfg.pitch_deg)
    resolve_device(cfg.device)
    if cfg.latent is not None:
        from adapt3d.inversion.latent_file import load_latent
        load_latent(cfg.latent)  # a missing or foreign file fails before any model loads
    check_output_folder(cfg.out)
    return seeds


def latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """EG3D's z for each seed: np.random.RandomState(seed).randn(1, z_dim).  # (len(seeds), z_dim)"""
    return torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, z_dim) for s in seeds])).float()


def default_cameras(G: TriPlaneGenerator, yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """Labels (n, 25) of cameras at EG3D angles around the generator's average pivot and radius."""
    r = G.rendering
    return camera_label(yaw, pitch, radius=r.avg_camera_radius, pivot=r.avg_camera_pivot,
                        fov_deg=G.config.camera_fov_deg)


@torch.no_grad()
def map_seeds(G: TriPlaneGenerator, seeds: list[int], trunc: float, cutoff: int | None,
              device: torch.device) -> torch.Tensor:
    z = latents(seeds, G.z_dim).to(device)
    r = G.rendering
    c_cond = frontal_label(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg,
                           batch_size=len(seeds)).to(device)
    return G.mapping(z, c_cond, truncation_psi=trunc, truncation_cutoff=cutoff)  # (S, num_ws, w_dim)


@torch.no_grad()
def render_views(G: TriPlaneGenerator, ws: torch.Tensor, c: torch.Tensor, batch_size: int, noise_mode: str,
                 planes: torch.Tensor | None = None):
    """Render ws (S, num_ws, w_dim) at cameras c (S, 25) in batches; returns images and depths on CPU."""
    images, depths = [], []
    for i in range(0, ws.shape[0], batch_size):
        p = planes[i:i + batch_size] if planes is not None else None
        out = G.synthesis(ws[i:i + batch_size], c[i:i + batch_size], noise_mode=noise_mode,
                          sampling="deterministic", planes=p)
        images.append(out.image.cpu())
        depths.append(out.image_depth.cpu())
    return torch.cat(images), torch.cat(depths)


def _mesh_for(G, ws_one, cfg: RenderConfig, device, notes: list[str], seed: int):
    half = G.rendering.box_warp / 2
    bounds = ((-half,) * 3, (half,) * 3)
    with torch.no_grad():
        planes = G.planes(ws_one, noise_mode=cfg.noise_mode)
        query = lambda pts: G.sample_density(pts[None].to(device), planes=planes)["sigma"][0, :, 0]  # noqa: E731
        sigma = density_grid(query, bounds, cfg.mesh_resolution, progress=False, device=device)
        level = 10.0 if cfg.mesh_level is None else cfg.mesh_level
        lo, hi = float(sigma.min()), float(sigma.max())
        if cfg.mesh_level is None and not lo < level < hi:
            level = (lo + hi) / 2
            notes.append(f"seed {seed}: density range [{lo:.3g}, {hi:.3g}] never crosses 10; mesh at level "
                         f"{level:.3g} (the midpoint) instead")
        colors = lambda v: G.sample_density(v[None].to(device), planes=planes)["rgb"][0, :, :3].clamp(0, 1)  # noqa
        return extract_mesh(sigma, level, bounds, colors_fn=colors)


def render(cfg: RenderConfig) -> RenderResult:
    """Run the whole render job (see module docstring). Arguments are validated before any model is built."""
    from adapt3d.models.loading import load_generator
    t0 = time.time()
    seeds = validate(cfg)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    loaded = load_generator(preset=cfg.preset, checkpoint=cfg.checkpoint)
    G = loaded.generator.to(device).eval().requires_grad_(False)
    if cfg.latent is not None:  # one inverted / chosen instance instead of seeds
        from adapt3d.inversion.render_latent import render_latent_job
        files, notes = render_latent_job(G, cfg, loaded.source)
        return RenderResult(out=out, seeds=[], files=files, notes=list(loaded.notes) + notes,
                            seconds=time.time() - t0)
    result = RenderResult(out=out, seeds=seeds, notes=list(loaded.notes))
    files = result.files
    bar = lambda it, **kw: tqdm(it, disable=not cfg.progress, **kw)  # noqa: E731

    ws = map_seeds(G, seeds, cfg.trunc, cfg.trunc_cutoff, device)
    n = len(seeds)
    yaw = torch.full((n,), math.pi / 2 + math.radians(cfg.yaw_deg))
    pitch = torch.full((n,), math.pi / 2 + math.radians(cfg.pitch_deg))
    c = default_cameras(G, yaw, pitch).to(device)
    images, depths = [], []
    for i in bar(range(0, n, cfg.batch_size), desc="render", unit="batch"):
        img, dep = render_views(G, ws[i:i + cfg.batch_size], c[i:i + cfg.batch_size], cfg.batch_size,
                                cfg.noise_mode)
        images.append(img)
        depths.append(dep)
    images_u8 = to_uint8(torch.cat(images))
    depths_t = torch.cat(depths)
    depth_u8 = depth_to_image(depths_t, near=G.rendering.ray_start if G.rendering.ray_start != "auto" else None,
                              far=G.rendering.ray_end if G.rendering.ray_end != "auto" else None)
    for k, s in enumerate(seeds):
        files.setdefault("images", []).append(str(save_image(out / f"seed{s:04d}.png", images_u8[k])))
        files.setdefault("depth", []).append(str(save_image(out / f"seed{s:04d}_depth.png", depth_u8[k])))
    np.save(out / "depth.npy", depths_t.numpy())  # raw depth in world units, (S, 1, r, r)
    files["depth_raw"] = [str(out / "depth.npy")]
    files["grid"] = [str(save_image(out / "grid.png", make_grid(images_u8)))]

    if cfg.video != "none":
        poses = orbit_trajectory(cfg.video_frames) if cfg.video == "orbit" else yaw_sweep(
            cfg.video_frames, math.pi / 2 - 0.5, math.pi / 2 + 0.5)
        planes = torch.cat([G.planes(ws[i:i + cfg.batch_size], noise_mode=cfg.noise_mode)
                            for i in range(0, n, cfg.batch_size)])

        def frames():
            for t in range(len(poses)):
                cam = default_cameras(G, poses.yaw[t:t + 1].expand(n), poses.pitch[t:t + 1].expand(n)).to(device)
                img, _ = render_views(G, ws, cam, cfg.batch_size, cfg.noise_mode, planes=planes)
                yield make_grid(to_uint8(img))

        path = out / f"{cfg.video}.{cfg.video_format}"
        write_video(path, frames(), fps=cfg.fps, progress=cfg.progress, total=len(poses))
        files["video"] = [str(path)]

    if cfg.mesh != "none":
        for k, s in enumerate(bar(seeds, desc="mesh", unit="seed")):
            mesh = _mesh_for(G, ws[k:k + 1], cfg, device, result.notes, s)
            files.setdefault("mesh", []).append(str(save_mesh(out / f"seed{s:04d}.{cfg.mesh}", mesh)))

    result.seconds = time.time() - t0
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
               "generator": loaded.source, "seeds": seeds, "files": files, "notes": result.notes,
               "seconds": round(result.seconds, 3),
               "conv3x3_algorithm": current_conv3x3_algorithm() if device.type == "cpu" else "direct",
               "cpu_kernels": kernel_status() if device.type == "cpu" else "unused"}
    atomic_write_json(out / "render.json", summary)
    return result
