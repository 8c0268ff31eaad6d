"""One entry point for every way a user names a generator.

- ``preset="tiny"`` (or ffhq512, afhq512, shapenet128): the architecture with seeded random weights;
- ``checkpoint="runs/x/final"``: an adapt3d checkpoint folder (safetensors + JSON);
- ``checkpoint="ffhqrebalanced512-128.pkl"``: an official EG3D pickle, read without executing anything;
- ``checkpoint="ffhq"``: a known name, downloaded once into the cache (see ``adapt3d.models.hub``).

``check_generator_source`` validates these cheaply (no model built, no download) so commands fail fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapt3d.models import hub
from adapt3d.models.checkpoint import CheckpointError, is_checkpoint_folder, load_checkpoint
from adapt3d.models.triplane import PRESETS, TriPlaneGenerator, build_generator


@dataclass
class LoadedGenerator:
    generator: TriPlaneGenerator
    discriminator: torch.nn.Module | None
    source: dict
    notes: list[str] = field(default_factory=list)


def check_generator_source(preset: str | None, checkpoint: str | None, flag: str = "--checkpoint") -> None:
    """Raise ValueError (naming the flag) unless exactly one valid generator source is given.

    ``flag`` is the name of the checkpoint option in the calling command (``--checkpoint``, ``--generator``).
    """
    if (preset is None) == (checkpoint is None):
        raise ValueError("give exactly one of --preset (built-in architecture: "
                         f"{', '.join(sorted(PRESETS))}) and {flag} (a checkpoint folder, an EG3D .pkl or a "
                         f"known name: {', '.join(sorted(hub.known_checkpoints()))})")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"--preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        if p.is_dir():
            if not is_checkpoint_folder(p):
                raise ValueError(f"{flag}: {p} is a folder without checkpoint.json (not an adapt3d checkpoint)")
        elif not p.is_file() and hub.checkpoint_key(str(checkpoint)) not in hub.known_checkpoints():
            raise ValueError(f"{flag}: {checkpoint!r} is neither an existing file or folder nor a known "
                             f"name ({', '.join(sorted(hub.known_checkpoints()))})")


def load_generator(preset: str | None = None, checkpoint: str | None = None, seed: int = 0,
                   load_discriminator: bool = False, progress: bool = True) -> LoadedGenerator:
    """Load a generator (eval mode, CPU) from a preset or a checkpoint of any supported kind."""
    check_generator_source(preset, checkpoint)
    if preset is not None:
        G = build_generator(preset, seed=seed).eval()
        return LoadedGenerator(G, None, {"preset": preset, "seed": seed},
                               [f"preset {preset!r} has random weights (seed {seed}): its images are meaningless"])
    p = Path(checkpoint).expanduser()
    if p.is_dir() or p.name == "checkpoint.json":
        ck = load_checkpoint(p, load_discriminator=load_discriminator)
        return LoadedGenerator(ck.generator, ck.discriminator, {"checkpoint": str(p), "metadata": ck.metadata})
    path = hub.resolve_checkpoint(checkpoint, progress=progress)
    from adapt3d.models.eg3d_convert import load_official_pickle
    try:
        G, D, notes = load_official_pickle(path, load_discriminator=load_discriminator)
    except CheckpointError as e:
        raise CheckpointError(f"--checkpoint {checkpoint}: {e}") from e
    source = {"checkpoint": str(checkpoint), "file": str(path), "format": "eg3d-pickle"}
    if not p.is_file() and hub.checkpoint_key(str(checkpoint)) in hub.known_checkpoints():
        from adapt3d.models.known_models import KNOWN_MODELS, check_known_model
        if hub.checkpoint_key(str(checkpoint)) in KNOWN_MODELS:  # a file that is not what the name stands for: say so
            notes = list(notes) + check_known_model(str(checkpoint), G)
    return LoadedGenerator(G, D, source, notes)
