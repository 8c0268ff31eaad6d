"""Render one latent (an inverted photo or a chosen instance) through a generator: manipulated 3D reconstruction.

Given a :class:`~adapt3d.inversion.latent_file.LatentCode` and any generator of the same architecture (the source
it was inverted with, or one adapted from it), writes into ``out``::

    <name>.png           the latent at its own camera (the input view)
    <name>_depth.png     its depth (turbo colour map)
    <name>_views.png     the latent at yaw -0.4, 0, +0.4 rad from frontal (pitch of the input view)
    comparison.png       input | source reconstruction | this generator  (when the latent's folder holds
                         input.png / reconstruction.png, as ``adapt3d invert`` writes them)
    orbit.mp4 / yaw.mp4  optional video (EG3D's orbit or a yaw sweep)
    <name>.ply|obj|glb   optional coloured mesh of THIS latent's density field (not a fixed seed)

Rendering is deterministic (no ray jitter, ``noise_mode='const'`` with the latent's optimised noise maps when it
has them), so the same latent and generator always give the same files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapt3d.cameras import video_trajectory
from adapt3d.export.images import depth_to_image, label_images, make_grid, save_image, to_uint8
from adapt3d.export.mesh import generator_mesh, save_mesh
from adapt3d.export.options import MediaOptions
from adapt3d.export.video import write_video
from adapt3d.inversion.latent_file import LatentCode, check_architecture
from adapt3d.inversion.projector import use_noise
from adapt3d.models.latents import default_cameras
from adapt3d.utils.io import to_jsonable

__all__ = ["RenderLatentConfig", "RenderLatentResult", "render_latent", "VIEW_OFFSETS"]

VIEW_OFFSETS = (-0.4, 0.0, 0.4)


@dataclass
class RenderLatentConfig(MediaOptions):
    name: str = "latent"
    """File name stem of the outputs."""
    comparison: bool = True
    """Write comparison.png when the latent's folder has input.png and reconstruction.png."""
    progress: bool = False
    """Show progress bars (video frames, density grid)."""

    @classmethod
    def from_options(cls, options, name: str = "latent") -> "RenderLatentConfig":
        """Take the same-named fields (the video and mesh options, progress) from another config, e.g.
        ``adapt3d render``'s RenderConfig."""
        names = [f.name for f in fields(MediaOptions)] + ["progress"]
        kw = {k: getattr(options, k) for k in names if hasattr(options, k)}
        return cls(name=name, **kw)


@dataclass
class RenderLatentResult:
    out: Path
    image: torch.Tensor
    """The latent at its camera (1, 3, R, R) in [-1, 1], CPU."""
    views: torch.Tensor | None = None
    """The latent at the VIEW_OFFSETS yaws (3, 3, R, R) in [-1, 1], CPU."""
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _read_rgb(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.LANCZOS)
        return np.asarray(img)


@torch.no_grad()
def render_latent(G, latent: LatentCode, out: str | Path, config: RenderLatentConfig | None = None,
                  flag: str = "--latent") -> RenderLatentResult:
    """Render ``latent`` through ``G`` into ``out`` (see the module docstring). Raises
    :class:`~adapt3d.inversion.latent_file.LatentMismatchError` when the architectures differ."""
    cfg = config or RenderLatentConfig()
    check_architecture(G, latent, flag)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(G.parameters()).device
    G = G.eval()
    ws = latent.ws.to(device)
    res = RenderLatentResult(out=out, image=torch.empty(0))
    files = res.files
    with use_noise(G, latent.noise):
        synth = G.synthesis(ws, latent.camera.to(device), noise_mode="const", sampling="deterministic")
        res.image = synth.image.cpu()
        image_u8 = to_uint8(res.image)[0]
        files["image"] = [str(save_image(out / f"{cfg.name}.png", image_u8))]
        r = G.rendering
        near = r.ray_start if r.ray_start != "auto" else None
        far = r.ray_end if r.ray_end != "auto" else None
        files["depth"] = [str(save_image(out / f"{cfg.name}_depth.png",
                                         depth_to_image(synth.image_depth.cpu(), near=near, far=far)[0]))]
        yaws = torch.tensor([math.pi / 2 + d for d in VIEW_OFFSETS])
        cams = default_cameras(G, yaws, torch.full_like(yaws, float(latent.pitch))).to(device)
        views = G.synthesis(ws.expand(len(yaws), -1, -1), cams, noise_mode="const", sampling="deterministic").image
        res.views = views.cpu()
        files["views"] = [str(save_image(out / f"{cfg.name}_views.png", make_grid(to_uint8(res.views), nrow=3)))]

        folder = latent.folder()
        if cfg.comparison and folder is not None and latent.input_image and latent.reconstruction \
                and (folder / latent.input_image).is_file() and (folder / latent.reconstruction).is_file():
            size = image_u8.shape[0]
            row = np.stack([_read_rgb(folder / latent.input_image, size),
                            _read_rgb(folder / latent.reconstruction, size), image_u8])
            labelled = label_images(row, ["input", "source reconstruction", "this generator"])
            files["comparison"] = [str(save_image(out / "comparison.png", make_grid(labelled, nrow=3)))]

        if cfg.video != "none":
            poses = video_trajectory(cfg.video, cfg.video_frames)
            planes = G.planes(ws, noise_mode="const")

            def frames():
                for t in range(len(poses)):
                    c = default_cameras(G, poses.yaw[t:t + 1], poses.pitch[t:t + 1]).to(device)
                    img = G.synthesis(ws, c, noise_mode="const", sampling="deterministic", planes=planes).image
                    yield to_uint8(img.cpu())[0]

            path = out / f"{cfg.video}.{cfg.video_format}"
            write_video(path, frames(), fps=cfg.fps, progress=cfg.progress, total=len(poses))
            files["video"] = [str(path)]

        if cfg.mesh != "none":
            planes = G.planes(ws, noise_mode="const")
            mesh = generator_mesh(G, planes, cfg.mesh_resolution, cfg.mesh_level, res.notes, progress=cfg.progress)
            files["mesh"] = [str(save_mesh(out / f"{cfg.name}.{cfg.mesh}", mesh))]
    return res


def render_latent_job(G, options, source: dict | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """``adapt3d render --latent``: render ``options.latent`` through ``G`` into ``options.out`` with the
    command's video / mesh options, write ``render.json``; returns (files, notes)."""
    import time
    from dataclasses import asdict

    from adapt3d.inversion.latent_file import load_latent
    from adapt3d.utils.io import atomic_write_json

    t0 = time.time()
    done = render_latent(G, load_latent(options.latent), options.out, RenderLatentConfig.from_options(options))
    config = to_jsonable(asdict(options))
    atomic_write_json(Path(options.out) / "render.json", {
        "config": config, "generator": source or {}, "latent": str(options.latent), "files": done.files,
        "notes": done.notes, "seconds": round(time.time() - t0, 3)})
    return done.files, done.notes
