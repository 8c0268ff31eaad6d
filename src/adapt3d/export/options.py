"""Option groups of the commands that show a generator's results, each written once (nerfstudio's config pieces).

A command's config inherits the groups it offers, so every group keeps one definition (type, default, help text,
checks) while the options stay flat on the command line (``--seeds``, ``--video``) and in the Python API
(``RenderConfig(seeds="0-3", video="orbit")``). A command overrides a default with one line (the help text is
inherited).

- :class:`SeedOptions`: which latents (``seeds``, ``trunc``);
- :class:`ViewOptions`: + truncation cutoff, camera offsets and batch size of still renders (render, generate);
- :class:`MediaOptions`: video and mesh outputs (render, generate, ``render --latent``);
- :class:`RenderStageOptions`: the render stage that ends an adaptation run (adapt, its instance mode, nada,
  itportrait); numbers left at None take the method's defaults (smaller with ``--preset tiny``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from adapt3d.utils.parsing import check_at_least, check_trunc, check_view_outputs, parse_seeds

__all__ = ["VideoKind", "MeshFormat", "SeedOptions", "ViewOptions", "MediaOptions", "RenderStageOptions"]

VideoKind = Literal["none", "orbit", "yaw"]
MeshFormat = Literal["none", "ply", "obj", "glb"]


@dataclass
class SeedOptions:
    seeds: str = "0-3"
    """Latent seeds: ranges and lists, e.g. '0-7' or '1,5,9'."""
    trunc: float = 0.7
    """Truncation psi in [0, 2] (1 = none)."""

    def check_seeds(self) -> list[int]:
        """Check --seeds and --trunc; returns the parsed seeds."""
        check_trunc(self.trunc)
        return parse_seeds(self.seeds)


@dataclass
class ViewOptions(SeedOptions):
    trunc_cutoff: int | None = None
    """Number of w layers truncated (None = all)."""
    yaw_deg: float = 0.0
    """Camera yaw offset from frontal of the still images, degrees (EG3D convention: h = pi/2 + yaw)."""
    pitch_deg: float = 0.0
    """Camera pitch offset from frontal of the still images, degrees (EG3D convention: v = pi/2 + pitch)."""
    batch_size: int = 4
    """Samples per forward pass (>= 1)."""

    def check_views(self) -> list[int]:
        """Check the seeds, truncation, camera offsets and batch size; returns the parsed seeds."""
        seeds = self.check_seeds()
        if self.trunc_cutoff is not None and self.trunc_cutoff < 0:
            raise ValueError(f"--trunc-cutoff: must be >= 0 or None, got {self.trunc_cutoff}")
        check_at_least(self, ("batch_size",))
        check_view_outputs(yaw_deg=self.yaw_deg, pitch_deg=self.pitch_deg)
        return seeds


@dataclass
class MediaOptions:
    video: VideoKind = "none"
    """Camera trajectory of the video: EG3D's orbit, a yaw sweep (+-0.5 rad), or no video."""
    video_format: Literal["mp4", "gif"] = "mp4"
    """Container of the video."""
    video_frames: int = 48
    """Frames of the video (>= 1)."""
    fps: int = 24
    """Frames per second of the video (>= 1)."""
    mesh: MeshFormat = "none"
    """Coloured mesh per sample (marching cubes of the density) in this format, or none."""
    mesh_resolution: int = 128
    """Density grid resolution per axis for marching cubes (>= 8)."""
    mesh_level: float | None = None
    """Density (raw sigma) iso-level; None = 10 as in EG3D's shape export, falling back to the field's midpoint
    (with a note) when the field never crosses 10, as for untrained models."""

    def check_media(self) -> None:
        """Check the video and mesh options (the mesh resolution only when a mesh is written)."""
        check_at_least(self, ("video_frames", "fps", "mesh_resolution"))
        check_view_outputs(video_frames=self.video_frames,
                           mesh_resolution=self.mesh_resolution if self.mesh != "none" else None)


@dataclass
class RenderStageOptions(SeedOptions):
    video: VideoKind = "orbit"
    """Video of the adapted generator: EG3D's orbit, a yaw sweep, or none."""
    video_frames: int | None = None
    """Frames of the video (default 48; fewer with --preset tiny)."""
    mesh: MeshFormat = "ply"
    """Mesh format of the adapted generator's shapes, or none."""
    mesh_resolution: int | None = None
    """Marching-cubes grid resolution (default 128; smaller with --preset tiny; >= 8)."""
