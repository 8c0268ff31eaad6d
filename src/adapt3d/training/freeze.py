"""Layer freezing for generator fine-tuning that really freezes.

DATID-3D's ``--freeze_dec_sr`` sets ``requires_grad_(False)`` once, but EG3D's loop turns gradients back on every
phase and its optimiser holds every parameter, so nothing stays frozen. Here a frozen tensor gets
``requires_grad=False`` *and* is left out of the optimiser (so neither gradients, Adam's moments nor weight updates
can touch it), and the loop never calls ``requires_grad_(True)`` on the whole generator.

Part names (of :class:`adapt3d.models.triplane.TriPlaneGenerator`):

- ``mapping``: the mapping network (z, camera -> w);
- ``backbone``: every tri-plane synthesis block; ``b4``, ``b8``, ... ``b256``: one block by its resolution
  (``backbone.b64`` is accepted too);
- ``decoder``: the tri-plane feature decoder MLP (colour + density);
- ``superresolution``: the 2D super-resolution network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from torch import nn

__all__ = ["FREEZE_PARTS", "freeze_prefixes", "apply_freeze", "FreezeResult"]

FREEZE_PARTS = ("mapping", "backbone", "b<res>", "decoder", "superresolution")


def _block_resolutions(G: nn.Module) -> list[int]:
    names = {n.split(".")[2] for n, _ in G.named_parameters() if n.startswith("backbone.synthesis.")}
    return sorted(int(n[1:]) for n in names if re.fullmatch(r"b\d+", n))


def freeze_prefixes(G: nn.Module, parts: Sequence[str]) -> list[str]:
    """Parameter-name prefixes of the named parts; raises ValueError naming an unknown part."""
    resolutions = _block_resolutions(G)
    prefixes = []
    for raw in parts:
        part = raw.strip()
        if part.startswith("backbone.") and re.fullmatch(r"backbone\.b\d+", part):
            part = part.split(".", 1)[1]
        if part == "mapping":
            prefixes.append("backbone.mapping.")
        elif part == "backbone":
            prefixes.append("backbone.synthesis.")
        elif part in ("decoder", "superresolution"):
            prefixes.append(f"{part}.")
        elif re.fullmatch(r"b\d+", part) and int(part[1:]) in resolutions:
            prefixes.append(f"backbone.synthesis.{part}.")
        else:
            blocks = ", ".join(f"b{r}" for r in resolutions)
            raise ValueError(f"--freeze: unknown part {raw!r}; choose from mapping, backbone, {blocks}, decoder, "
                             "superresolution")
    return prefixes


@dataclass
class FreezeResult:
    """``trainable``: (name, parameter) pairs for the optimiser; ``frozen``: names of frozen parameters."""

    trainable: list[tuple[str, nn.Parameter]]
    frozen: list[str]


def apply_freeze(G: nn.Module, parts: Sequence[str]) -> FreezeResult:
    """Freeze the named parts of ``G`` (requires_grad False) and return what stays trainable."""
    prefixes = freeze_prefixes(G, parts)
    trainable, frozen = [], []
    for name, p in G.named_parameters():
        if any(name.startswith(pre) for pre in prefixes):
            p.requires_grad_(False)
            frozen.append(name)
        else:
            p.requires_grad_(True)
            trainable.append((name, p))
    if not trainable:
        raise ValueError(f"--freeze {' '.join(parts)} leaves no generator parameter to train")
    return FreezeResult(trainable=trainable, frozen=frozen)
