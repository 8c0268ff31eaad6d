"""Convert an official EG3D pickle (or a known checkpoint name) into adapt3d's safetensors + JSON checkpoint.

Python API mirroring ``adapt3d convert SRC OUT``::

    from adapt3d.pipelines.convert import ConvertConfig, convert
    convert(ConvertConfig(src="ffhqrebalanced512-128.pkl", out="runs/ffhq"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from adapt3d.models.checkpoint import save_checkpoint
from adapt3d.models.hub import sha256_file
from adapt3d.models.loading import check_generator_source, load_generator
from adapt3d.utils.io import check_output_folder


@dataclass
class ConvertConfig:
    """Convert an official EG3D .pkl (read without running its code) into an adapt3d checkpoint folder."""

    src: tyro.conf.Positional[str]
    """Official EG3D .pkl file or a known checkpoint name (ffhq, afhq, shapenet, datid3d-*)."""
    out: tyro.conf.Positional[Path]
    """Output checkpoint folder."""
    discriminator: bool = True
    """Also convert the discriminator D when the file has one."""


def convert(cfg: ConvertConfig) -> Path:
    check_generator_source(None, cfg.src)
    if Path(cfg.src).is_dir():
        raise ValueError(f"SRC: {cfg.src} is a folder; convert takes an official EG3D .pkl or a known name")
    check_output_folder(Path(cfg.out), arg="OUT")
    loaded = load_generator(checkpoint=cfg.src, load_discriminator=cfg.discriminator)
    meta = {"converted_from": loaded.source, "sha256_of_source": sha256_file(loaded.source["file"]),
            "notes": loaded.notes}
    return save_checkpoint(cfg.out, loaded.generator, loaded.discriminator, metadata=meta)
