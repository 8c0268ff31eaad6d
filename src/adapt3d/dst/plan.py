"""The work plan of a 3D-DST synthesis run: which views and images exist, how they are batched and sharded.

A run has ``per_mesh`` views per mesh and ``samples`` generated images per view. The work is cut into **units**:
consecutive views of one mesh, ``views_per_unit = max(1, batch_size // samples)`` at a time. A unit's images
``(view, sample)`` are generated in batches of ``batch_size`` *within the unit*, so the make-up of every batch is a
function of the options alone, never of what a previous (interrupted) run or another shard already did. Diffusion
results depend on the batch they were computed in (batched matrix products round differently), so this is what makes
a resumed or sharded run byte-identical to an uninterrupted single one. ``--shard i/n`` takes every n-th unit from i.

Units stream: nothing here loads a mesh; the job holds one mesh and one batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from adapt3d.data.cad import CadModel

__all__ = ["WorkUnit", "plan_units", "unit_batches", "parse_shard"]


@dataclass(frozen=True)
class WorkUnit:
    model: CadModel
    views: tuple[int, ...]
    samples: int

    def items(self) -> list[tuple[int, int]]:
        """(view, sample) pairs of the unit, view-major."""
        return [(v, s) for v in self.views for s in range(self.samples)]


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n), checked; errors name --shard."""
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard: {text!r} must look like 'i/n', e.g. '0/4'") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard: {text!r} needs 0 <= i < n")
    return i, n


def plan_units(models: list[CadModel], per_mesh: int, samples: int, batch_size: int,
               shard: tuple[int, int] = (0, 1)) -> list[WorkUnit]:
    """The units of ``shard`` (see the module docstring); models sorted by (class, id)."""
    per_unit = max(1, batch_size // samples)
    units = [WorkUnit(m, tuple(range(start, min(start + per_unit, per_mesh))), samples)
             for m in sorted(models, key=lambda m: (m.class_name, m.model_id))
             for start in range(0, per_mesh, per_unit)]
    return units[shard[0]::shard[1]]


def unit_batches(unit: WorkUnit, batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """The unit's (view, sample) items in batches of at most ``batch_size``."""
    items = unit.items()
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]
