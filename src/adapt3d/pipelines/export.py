"""``adapt3d export``: a generator as a plain state-dict file for EG3D's and DATID-3D's scripts.

    adapt3d export --checkpoint runs/pixar/train/final --out pixar.pt
    # then, in DATID-3D's eg3d/ folder (with pretrained/ffhqrebalanced512-128.pkl there):
    python gen_samples.py --network ../pixar.pt --model_is_state_dict True --generator_type ffhq --seeds 0-3 \\
        --trunc 0.7 --outdir out

Python API::

    from adapt3d.pipelines.export import ExportConfig, run
    result = run(ExportConfig(checkpoint="runs/pixar/train/final", out="pixar.pt"))
    result.commands   # the DATID-3D command lines for this file

The file is ``torch.save`` of the generator's ``state_dict()`` (EG3D's ``G_ema`` names, float32, buffers included;
see :mod:`adapt3d.export.state_dict`), written atomically, with ``<out>.json`` next to it (source, base model,
neural rendering resolution, tensor count, commands). Before writing, the names and shapes are checked against the
official model the scripts load first (``--base``), because they load the file with ``strict=False`` and would
otherwise silently keep the base model's tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from adapt3d.export.state_dict import (DATID3D_GENERATOR_TYPE, base_for, check_against_base, eg3d_state_dict,
                                       save_state_dict)
from adapt3d.models.hub import get_checkpoint
from adapt3d.models.loading import check_generator_source, load_generator
from adapt3d.utils.io import atomic_write_json

__all__ = ["ExportConfig", "ExportResult", "run", "check_inputs"]

Base = Literal["auto", "ffhq", "afhq", "shapenet", "none"]


@dataclass
class ExportConfig:
    """Write a generator (adapt3d checkpoint folder, official EG3D .pkl or known name) as a plain PyTorch state dict
    that DATID-3D's gen_samples.py / gen_videos.py load with --model_is_state_dict True."""

    checkpoint: str
    """Generator to export: adapt3d checkpoint folder (e.g. runs/pixar/train/final), EG3D .pkl or known name."""
    out: Path = Path("generator_state_dict.pt")
    """Output file (.pt); <out>.json with what was exported is written next to it."""
    base: Base = "auto"
    """Official EG3D model the scripts load before this file (DATID-3D: --generator_type ffhq loads
    ffhqrebalanced512-128.pkl, cat loads afhqcats512-128.pkl); names and shapes are checked against it. auto: from
    the generator's cameras; none: no check (an architecture no script knows, e.g. --preset tiny)."""
    overwrite: bool = False
    """Replace an existing output file."""
    progress: bool = True
    """Show download progress when --checkpoint is a known name not yet in the cache."""


@dataclass
class ExportResult:
    out: Path
    num_tensors: int = 0
    base: str | None = None
    generator_type: str | None = None
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_inputs(cfg: ExportConfig) -> Path:
    """Validate the options before anything is loaded; returns the output path."""
    check_generator_source(None, cfg.checkpoint, flag="--checkpoint")
    if cfg.base not in ("auto", "ffhq", "afhq", "shapenet", "none"):
        raise ValueError(f"--base: expected auto, ffhq, afhq, shapenet or none, got {cfg.base!r}")
    out = Path(cfg.out).expanduser()
    if out.is_dir():
        raise ValueError(f"--out: {out} is a folder; give a file name such as {out / 'generator_state_dict.pt'}")
    if out.exists() and not cfg.overwrite:
        raise ValueError(f"--out: {out} exists; pass --overwrite to replace it or choose another file")
    if out.suffix.lower() == ".pkl":
        raise ValueError(f"--out: {out} ends in .pkl, but this is a torch.save state dict, not a network pickle; "
                         "use .pt or .pth")
    return out


def _commands(out: Path, generator_type: str | None, base: str | None, nrr: int) -> list[str]:
    if generator_type is None:
        return []
    base_file = get_checkpoint(base).filename
    common = f"--network {out.resolve()} --model_is_state_dict True --generator_type {generator_type}"
    return [f"cd DATID-3D/eg3d  # needs pretrained/{base_file}",
            f"python gen_samples.py {common} --seeds 0-3 --trunc 0.7 --outdir out/samples",
            f"python gen_videos.py {common} --seeds 0-3 --trunc 0.7 --grid 2x2 --nrr {nrr} --outdir out/videos"]


def run(cfg: ExportConfig) -> ExportResult:
    """Export as configured; see the module docstring. Raises ValueError naming the option on bad input."""
    t0 = time.time()
    out = check_inputs(cfg)
    loaded = load_generator(checkpoint=cfg.checkpoint, progress=cfg.progress)
    G = loaded.generator
    state = eg3d_state_dict(G)
    notes = list(loaded.notes)
    base = base_for(G) if cfg.base == "auto" else (None if cfg.base == "none" else cfg.base)
    if cfg.base == "auto" and base is None:
        raise ValueError(f"--base auto: the generator's cameras (radius {G.rendering.avg_camera_radius}, pivot "
                         f"{G.rendering.avg_camera_pivot}) are not those of an official EG3D model; pass --base "
                         "ffhq|afhq|shapenet to check against one, or --base none")
    if base is not None:
        errors, base_notes = check_against_base(state, base)
        if errors:
            raise ValueError(f"--checkpoint {cfg.checkpoint}: cannot be loaded into {get_checkpoint(base).filename} "
                             f"(--base {base}): " + "; ".join(errors) + ". Pass --base none to write it anyway")
        notes += base_notes
    generator_type = DATID3D_GENERATOR_TYPE.get(base) if base else None
    if base is not None and generator_type is None:
        notes.append(f"DATID-3D's scripts only take ffhq and cat models; load this file into "
                     f"{get_checkpoint(base).filename}'s G_ema with load_state_dict yourself")
    nrr = int(G.neural_rendering_resolution)
    if generator_type is not None and nrr != 128:
        notes.append(f"this generator renders at {nrr} px; gen_samples.py uses the base pickle's 128, "
                     f"gen_videos.py takes --nrr {nrr}")
    save_state_dict(state, out)
    commands = _commands(out, generator_type, base, nrr)
    atomic_write_json(out.with_name(out.name + ".json"), {
        "format": "torch.save state dict, EG3D G_ema names", "file": out.name, "source": loaded.source,
        "num_tensors": len(state), "base": base, "generator_type": generator_type,
        "neural_rendering_resolution": nrr, "rendering": G.rendering.to_dict(), "commands": commands,
        "notes": notes})
    return ExportResult(out=out, num_tensors=len(state), base=base, generator_type=generator_type,
                        commands=commands, notes=notes + commands, seconds=time.time() - t0)
