"""A generator as a plain PyTorch state dict with EG3D's ``G_ema`` names: what DATID-3D's scripts load.

DATID-3D's ``gen_samples.py`` / ``gen_videos.py --model_is_state_dict True --generator_type ffhq|cat`` first load the
official EG3D pickle of that type (``pretrained/ffhqrebalanced512-128.pkl`` or ``pretrained/afhqcats512-128.pkl``),
take its ``G_ema``, then call ``G.load_state_dict(torch.load(path), strict=False)``. So the file must be a
``torch.save`` of a dict ``{name: tensor}`` whose names and shapes are exactly those of the official ``G_ema``:
with ``strict=False`` a misnamed tensor is silently skipped (the base model's value stays), a mis-shaped one stops
the script. adapt3d's generator uses EG3D's module names, so its ``state_dict()`` is that dict (parameters and
buffers: ``dataset_label_std``, ``w_avg``, ``noise_const``, ``resample_filter``); :func:`check_against_base`
compares it with the official model it will be loaded into. Neither the neural rendering resolution nor the
rendering settings are part of a state dict: the scripts take them from the base pickle (and ``--generator_type``).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from adapt3d.models.hub import get_checkpoint
from adapt3d.models.known_models import known_model_config, model_family
from adapt3d.models.triplane import TriPlaneGenerator
from adapt3d.utils.io import atomic_path

__all__ = ["eg3d_state_dict", "base_for", "base_state_shapes", "check_against_base", "save_state_dict",
           "DATID3D_GENERATOR_TYPE"]

# DATID-3D's --generator_type for each official base model (gen_samples.py / gen_videos.py).
DATID3D_GENERATOR_TYPE = {"ffhq": "ffhq", "afhq": "cat"}
# Buffers that are constants of the architecture (the [1, 3, 3, 1] filter): a base may have one the export lacks.
_CONSTANT_BUFFERS = ("resample_filter",)


def eg3d_state_dict(G: TriPlaneGenerator) -> "OrderedDict[str, torch.Tensor]":
    """``G``'s parameters and buffers as plain contiguous float32 CPU tensors, in ``state_dict()`` order."""
    return OrderedDict((k, v.detach().to("cpu", torch.float32).contiguous().clone())
                       for k, v in G.state_dict().items())


def base_for(G: TriPlaneGenerator) -> str | None:
    """The official EG3D model (known name: ffhq, afhq, shapenet) whose cameras ``G`` uses, or None."""
    family = model_family(G.rendering)
    return {"ffhq": "ffhq", "cat": "afhq", "shapenet": "shapenet"}.get(family) if family else None


def base_state_shapes(base: str) -> "OrderedDict[str, tuple[int, ...]]":
    """Names and shapes of the official ``G_ema`` state dict of the known model ``base`` (built on the meta device
    from its known configuration; adapt3d's module tree is EG3D's)."""
    with torch.device("meta"):
        G = TriPlaneGenerator(known_model_config(base).generator_config())
    return OrderedDict((k, tuple(v.shape)) for k, v in G.state_dict().items())


def check_against_base(state: dict, base: str) -> tuple[list[str], list[str]]:
    """Compare ``state`` with the official model ``base`` it will be loaded into with ``strict=False``.

    Returns (errors, notes): errors for tensors the scripts would skip (unknown names) or refuse (other shapes) and
    for base tensors the file does not replace; a note for a constant filter buffer only the base has.
    """
    shapes = base_state_shapes(base)
    file = get_checkpoint(base).filename
    errors, notes = [], []
    unexpected = [k for k in state if k not in shapes]
    wrong = [f"{k}: {tuple(state[k].shape)} vs {shapes[k]}" for k in state
             if k in shapes and tuple(state[k].shape) != shapes[k]]
    missing = [k for k in shapes if k not in state]
    constant = [k for k in missing if k.rsplit(".", 1)[-1] in _CONSTANT_BUFFERS]
    missing = [k for k in missing if k not in constant]
    if unexpected:
        errors.append(f"{len(unexpected)} tensors have no counterpart in {file} and would be ignored "
                      f"(e.g. {unexpected[:3]})")
    if wrong:
        errors.append(f"{len(wrong)} tensors have other shapes than in {file} (e.g. {wrong[:3]})")
    if missing:
        errors.append(f"{len(missing)} tensors of {file} would keep the base model's values (e.g. {missing[:3]})")
    if constant:
        notes.append(f"{file} has the constant filter buffer(s) {constant}, which this generator's "
                     "super-resolution head does not; the base's (identical) values stay")
    return errors, notes


def save_state_dict(state: dict, path: str | Path) -> Path:
    """``torch.save`` the dict atomically (zip format; loads with ``torch.load(path, weights_only=True)``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(OrderedDict(state), tmp)
    return path
