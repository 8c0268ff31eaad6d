"""Architecture configs of the released models adapt3d runs with (JSON data, no weights).

One JSON file per model, written from the models' public configuration files (each file's ``source`` names them):

- ``sd15``: Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text encoder, tokenizer, PNDM scheduler);
- ``sd21-base``: Stable Diffusion 2.1-base (UNet, VAE, OpenCLIP ViT-H text encoder, tokenizer, scheduler);
- ``sdxl-base``: SDXL base 1.0 (UNet, VAE, two text encoders, two tokenizers, Euler scheduler);
- ``controlnet-sd15-canny``, ``controlnet-sd15-depth``: ControlNet 1.0 for SD 1.5;
- ``clip-vit-b-32``, ``clip-vit-b-16``, ``clip-vit-l-14``: OpenAI CLIP (model, tokenizer, image processor);
- ``eg3d-ffhq512``, ``eg3d-afhq512``, ``eg3d-shapenet128``: EG3D generator + dual discriminator (official kwargs).

Each file holds ``name``, ``kind``, ``title``, ``source``, ``disk_dtype`` (the dtype the released weights ship in)
and ``components``: component name -> ``{"library", "class", "config"}`` (diffusers / transformers config
dicts, or for tokenizers a ``layout``: vocabulary size, maximum length, special tokens) or, for EG3D,
``{"class", "init_kwargs", "attributes"}`` exactly as the official training loop pickles them.
:mod:`adapt3d.testing.full_size` builds any of them with seeded random weights.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources

__all__ = ["model_names", "model_config"]

KINDS = ("stable-diffusion", "stable-diffusion-xl", "controlnet", "clip", "eg3d")


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath(f"{name}.json").read_text())


def model_names(kind: str | None = None) -> list[str]:
    """Names of the shipped configs (of one ``kind`` when given), sorted."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {KINDS}")
    names = sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".json"))
    return [n for n in names if kind is None or _load(n)["kind"] == kind]


def model_config(name: str) -> dict:
    """A fresh copy of the config of model ``name`` (see the module table)."""
    names = model_names()
    if name not in names:
        raise ValueError(f"unknown model config {name!r}; choose one of {names}")
    return copy.deepcopy(_load(name))
