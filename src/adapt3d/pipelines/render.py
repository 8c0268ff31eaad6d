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

from adapt3d.cameras import video_trajectory
from adapt3d.export.images import depth_to_image, make_grid, save_image, to_uint8
from adapt3d.export.mesh import generator_mesh, save_mesh
from adapt3d.export.options import MediaOptions, ViewOptions
from adapt3d.export.video import write_video
from adapt3d.models.cpu_kernels import kernel_status
from adapt3d.models.latents import default_cameras, map_seeds
from adapt3d.models.ops import current_conv3x3_algorithm
from adapt3d.models.triplane import TriPlaneGenerator
from adapt3d.utils.io import atomic_write_json, check_output_folder, to_jsonable
from adapt3d.utils.parsing import parse_seeds, resolve_device


@dataclass
class RenderConfig(MediaOptions, ViewOptions):
    """Render a generator: image grid, per-seed images and depth, orbit video, meshes. Give --preset or
    --checkpoint. (Seeds, views, video and mesh options: :mod:`adapt3d.export.options`.)"""

    out: Path = Path("runs/render")
    """Output folder (created if missing)."""
    preset: str | None = None
    """Built-in architecture with seeded random weights: tiny, ffhq512, afhq512, shapenet128."""
    checkpoint: str | None = None
    """adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq, shapenet)."""
    latent: Path | None = None
    """latent.pt from adapt3d invert (or an adapt run's OUT/instance/latent.pt): render THAT instance instead of
    --seeds: at its own camera, three views, input | source reconstruction | this generator, --video, --mesh."""
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


def check_render_options(cfg: RenderConfig) -> list[int]:
    """Check the seed, view, video and mesh options alone (no generator, no folder); returns the parsed seeds."""
    seeds = cfg.check_views()
    cfg.check_media()
    return seeds


def validate(cfg: RenderConfig) -> list[int]:
    """Check every argument; returns the parsed seeds. Raises ValueError naming the argument."""
    from adapt3d.models.loading import check_generator_source
    seeds = parse_seeds(cfg.seeds)
    check_generator_source(cfg.preset, cfg.checkpoint)
    check_render_options(cfg)
    resolve_device(cfg.device)
    if cfg.latent is not None:
        from adapt3d.inversion.latent_file import load_latent
        load_latent(cfg.latent)  # a missing or foreign file fails before any model loads
    check_output_folder(cfg.out)
    return seeds


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
        poses = video_trajectory(cfg.video, cfg.video_frames)
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
            planes = G.planes(ws[k:k + 1], noise_mode=cfg.noise_mode)
            mesh = generator_mesh(G, planes, cfg.mesh_resolution, cfg.mesh_level, result.notes, f"seed {s}: ")
            files.setdefault("mesh", []).append(str(save_mesh(out / f"seed{s:04d}.{cfg.mesh}", mesh)))

    result.seconds = time.time() - t0
    summary = {"config": to_jsonable(asdict(cfg)),
               "generator": loaded.source, "seeds": seeds, "files": files, "notes": result.notes,
               "seconds": round(result.seconds, 3),
               "conv3x3_algorithm": current_conv3x3_algorithm() if device.type == "cpu" else "direct",
               "cpu_kernels": kernel_status() if device.type == "cpu" else "unused"}
    atomic_write_json(out / "render.json", summary)
    return result
