"""The plan and the records of a text-guided target dataset (``adapt3d make-dataset``).

Plan: ``num_images`` targets made from ``ceil(num_images / samples_per_source)`` sources. Target ``i`` comes from
source ``j = i // samples_per_source`` (its diffusion sample ``k = i % samples_per_source``). Every random choice is
a pure function of the job seed and an index, so any single image can be regenerated alone:

- latent seed of source j: ``seed + j`` (EG3D's ``z = RandomState(seed + j).randn(z_dim)``, as ``adapt3d render``);
- camera of source j: the pose sampler with ``torch.Generator().manual_seed(pose_seed)``, one pose;
- diffusion seed of target i: its own CPU ``torch.Generator`` seed;
- prompt of target i: ``prompts[i % len(prompts)]`` (prompts x templates, expanded in order).

``pose_seed`` and ``diffusion_seed`` are :func:`adapt3d.utils.seeds.stream_seed` ``(seed, index, stream)``, i.e.
``numpy.random.SeedSequence([seed, index, stream]).generate_state(1)`` (uint32; stream 1 = pose, 2 = diffusion).
Work is split into batches of ``batch_size`` sources, aligned on fixed boundaries, and shard ``s`` of ``n`` owns batches ``b`` with ``b % n == s``: resumed and sharded runs compute every
batch with the same composition as one uninterrupted process, so they produce the same bytes.

Working folder layout (``out/``): ``job.json``, ``manifest.jsonl`` (one :class:`TargetRecord` per line),
``sources/src{j:08d}.png``, ``images/img{i:08d}.png`` (every target), ``dataset/`` (EG3D format: the kept images +
``dataset.json``), optional ``dataset.zip``, ``contact_sheet.png``, ``make_dataset.json`` (summary).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from adapt3d.data.manifest import Manifest
from adapt3d.utils.seeds import stream_seed

__all__ = ["TargetItem", "TargetPlan", "TargetRecord", "image_relpath", "source_relpath",
           "read_records", "MANIFEST", "JOB_JSON", "DATASET_DIR", "DATASET_ZIP", "CONTACT_SHEET"]

MANIFEST = "manifest.jsonl"
JOB_JSON = "job.json"
DATASET_DIR = "dataset"
DATASET_ZIP = "dataset.zip"
CONTACT_SHEET = "contact_sheet.png"
POSE_STREAM, DIFFUSION_STREAM = 1, 2


def image_relpath(index: int) -> str:
    return f"images/img{index:08d}.png"


def source_relpath(source: int) -> str:
    return f"sources/src{source:08d}.png"


@dataclass(frozen=True)
class TargetItem:
    index: int
    source: int
    sample: int
    latent_seed: int
    pose_seed: int
    diffusion_seed: int
    prompt: str


class TargetPlan:
    """Which target comes from which source, seeds and prompt (see module docstring)."""

    def __init__(self, num_images: int, samples_per_source: int, prompts: Sequence[str], seed: int,
                 batch_size: int) -> None:
        if num_images < 1 or samples_per_source < 1 or batch_size < 1 or not prompts:
            raise ValueError("num_images, samples_per_source and batch_size must be >= 1 and prompts non-empty")
        self.num_images, self.samples_per_source = int(num_images), int(samples_per_source)
        self.prompts, self.seed, self.batch_size = list(prompts), int(seed), int(batch_size)
        self.num_sources = math.ceil(self.num_images / self.samples_per_source)
        self.num_batches = math.ceil(self.num_sources / self.batch_size)

    def item(self, index: int) -> TargetItem:
        if not 0 <= index < self.num_images:
            raise IndexError(f"target index {index} outside [0, {self.num_images})")
        j, k = divmod(index, self.samples_per_source)
        return TargetItem(index=index, source=j, sample=k, latent_seed=self.seed + j,
                          pose_seed=stream_seed(self.seed, j, POSE_STREAM),
                          diffusion_seed=stream_seed(self.seed, index, DIFFUSION_STREAM),
                          prompt=self.prompts[index % len(self.prompts)])

    def batch_sources(self, batch: int) -> range:
        return range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.num_sources))

    def batch_items(self, batch: int) -> list[TargetItem]:
        src = self.batch_sources(batch)
        first, last = src.start * self.samples_per_source, min(src.stop * self.samples_per_source, self.num_images)
        return [self.item(i) for i in range(first, last)]

    def shard_batches(self, shard_index: int = 0, num_shards: int = 1) -> list[int]:
        return [b for b in range(self.num_batches) if b % num_shards == shard_index]

    def shard_indices(self, shard_index: int = 0, num_shards: int = 1) -> list[int]:
        return [it.index for b in self.shard_batches(shard_index, num_shards) for it in self.batch_items(b)]


@dataclass
class TargetRecord:
    """One manifest line: everything needed to audit or regenerate target ``index``."""

    index: int
    source: int
    sample: int
    latent_seed: int
    pose_seed: int
    diffusion_seed: int
    prompt: str
    negative_prompt: str | None
    yaw: float
    """Render camera, EG3D orbit angles in radians (pi/2, pi/2 = frontal)."""
    pitch: float
    label: list[float]
    """The 25-number EG3D camera label of the render (and of the target)."""
    image: str
    source_image: str
    scores: dict[str, Any] = field(default_factory=dict)
    """clip (cosine with its prompt), pose_ncc, pose_margin, pose_best [dyaw, dpitch], nn_distance."""
    kept: bool | None = None
    """None until the filters ran over the whole set."""
    reasons: list[str] = field(default_factory=list)
    """Why a rejected image was dropped: clip_threshold, clip_top_fraction, pose, near_duplicate."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetRecord:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def read_records(folder: str | Path) -> dict[int, TargetRecord]:
    """index -> record of ``folder/manifest.jsonl`` (the last record of an index wins)."""
    return {r["index"]: TargetRecord.from_dict(r) for r in Manifest(Path(folder) / MANIFEST).read()}


def completed_indices(folder: Path) -> set[int]:
    """Indices of the targets whose manifest record and image file both exist (what a resumed run skips)."""
    return {i for i, r in read_records(folder).items() if (folder / r.image).is_file()}
