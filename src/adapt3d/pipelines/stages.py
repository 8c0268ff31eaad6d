"""Stages and types shared by the adaptation commands (``adapt``, its instance mode, ``nada``, ``itportrait``).

Every adaptation command ends the same way: render the adapted generator (``adapt3d render`` into OUT/render) and
write OUT/compare.png (source vs adapted at the same seeds and cameras); each returns an :class:`AdaptResult`.
These pieces live here, not in one of the commands, so that the commands import them without importing each
other.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from adapt3d.export.options import RenderStageOptions
from adapt3d.models.latents import default_cameras, map_seeds
from adapt3d.pipelines.render import RenderConfig, render
from adapt3d.training.config import FinetuneConfig

__all__ = ["AdaptResult", "COMPARE_YAWS", "compare_grid", "save_compare", "finetune_stage_config",
           "render_stage_config", "render_stage",
           "compare_is_current", "newer", "pick"]

COMPARE_YAWS = (-0.4, 0.0, 0.4)  # radians from frontal: the three views per generator in compare.png


@dataclass
class AdaptResult:
    """What an adaptation run did: ``final`` is the adapted generator's checkpoint folder, ``dataset`` the target
    dataset (DATID-3D; None for the CLIP methods), ``files`` names every output, ``stages`` what each stage did
    (or ``{"skipped": "up to date"}``)."""

    out: Path
    dataset: Path | None = None
    final: Path | None = None
    files: dict[str, object] = field(default_factory=dict)
    stages: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def pick(value, default, tiny_default, tiny: bool):
    """``value`` when the user gave one, else the method's default (``tiny_default`` with ``--preset tiny``)."""
    return value if value is not None else (tiny_default if tiny else default)


@torch.no_grad()
def compare_grid(source, adapted, seeds: list[int], trunc: float, device: torch.device):
    """Rows of uint8 strips: for each seed, the source's and the adapted generator's views at ``COMPARE_YAWS``."""
    from adapt3d.export.images import make_grid, to_uint8
    rows = []
    for G in (source, adapted):
        G = G.to(device).eval()
        ws = map_seeds(G, seeds, trunc, None, device)  # (S, num_ws, w_dim)
        yaw = torch.tensor([math.pi / 2 + y for y in COMPARE_YAWS])
        cams = default_cameras(G, yaw, torch.full_like(yaw, math.pi / 2)).to(device)
        strips = []
        for k in range(len(seeds)):
            img = G.synthesis(ws[k:k + 1].expand(len(yaw), -1, -1), cams, noise_mode="const",
                              sampling="deterministic").image
            strips.append(make_grid(to_uint8(img.cpu()), nrow=len(yaw)))
        rows.append(strips)
    return [[rows[0][k], rows[1][k]] for k in range(len(seeds))]


def save_compare(path: Path, source, adapted, seeds: list[int], trunc: float, device: torch.device,
                 first_rows: Sequence[list] = (), first_captions: Sequence[list[str]] = ()) -> Path:
    """Write compare.png: ``first_rows`` (e.g. an instance), then one row per seed, source | adapted."""
    from adapt3d.export.images import contact_sheet, save_image
    rows = list(first_rows) + compare_grid(source, adapted, seeds, trunc, device)
    captions = list(first_captions) + [[f"source, seed {s}", f"adapted, seed {s}"] for s in seeds]
    return save_image(path, contact_sheet(rows, captions))


def newer(path: Path, than: Path) -> bool:
    """True when ``path`` is a file written after ``than``."""
    return path.is_file() and path.stat().st_mtime > than.stat().st_mtime


def finetune_stage_config(cfg, out: Path, *, kimg: float, snapshot_kimg: float, tiny: bool) -> FinetuneConfig:
    """The ``adapt3d finetune`` job of a DATID-3D run (``adapt`` and its instance mode): the dataset
    OUT/target/dataset, the run folder OUT/train, ``kimg`` thousand images (resolved by the method), --batch
    (default 20; tiny: 4), --freeze, --snapshot-kimg (default ``snapshot_kimg``; tiny: half the run), samples at
    --seeds, --neural-rendering-schedule, --augment-ops. ``cfg`` is the command's config."""
    return FinetuneConfig(
        dataset=Path(out) / "target" / "dataset", out=Path(out) / "train", preset=cfg.preset, generator=cfg.generator,
        kimg=kimg, batch=pick(cfg.batch, 20, 4, tiny), freeze=tuple(cfg.freeze),
        neural_rendering_schedule=cfg.neural_rendering_schedule, augment_ops=tuple(cfg.augment_ops),
        snapshot_kimg=pick(cfg.snapshot_kimg, snapshot_kimg, kimg / 2, tiny), tick_kimg=kimg / 10 if tiny else 1.0,
        sample_seeds=cfg.seeds, seed=cfg.seed, device=cfg.device, progress=cfg.progress)


def render_stage_config(options: RenderStageOptions, out: Path, checkpoint: Path, *, video_frames: int,
                        mesh_resolution: int, device: str, progress: bool) -> RenderConfig:
    """The ``adapt3d render`` job of a run's render stage: ``options``' seeds, truncation, video and mesh, with the
    number of video frames and the mesh resolution the method resolved (its defaults for None)."""
    return RenderConfig(out=Path(out), checkpoint=str(checkpoint), seeds=options.seeds, trunc=options.trunc,
                        video=options.video, video_frames=video_frames, mesh=options.mesh,
                        mesh_resolution=mesh_resolution, device=device, progress=progress)


def render_stage(rcfg: RenderConfig, final: Path, result: AdaptResult) -> bool:
    """Render the adapted generator ``final`` with ``rcfg`` (``adapt3d render``) into ``result``, unless its
    render.json is newer than the checkpoint and has the same seeds (then ``{"skipped": "up to date"}``).
    Returns True when it rendered (compare.png is then out of date too)."""
    summary = Path(rcfg.out) / "render.json"
    if newer(summary, final / "checkpoint.json") \
            and json.loads(summary.read_text()).get("config", {}).get("seeds") == rcfg.seeds:
        result.stages["render"] = {"skipped": "up to date"}
        result.files.update(json.loads(summary.read_text()).get("files", {}))
        return False
    t0 = time.time()
    rendered = render(rcfg)
    result.files.update(rendered.files)
    result.notes += [n for n in rendered.notes if "random weights" not in n and n not in result.notes]
    result.stages["render"] = {"seconds": round(time.time() - t0, 2), "folder": str(rcfg.out)}
    return True


def compare_is_current(compare: Path, final: Path, rendered: bool) -> bool:
    """True when compare.png is newer than the checkpoint ``final`` and the render stage was up to date."""
    return not rendered and newer(compare, final / "checkpoint.json")
