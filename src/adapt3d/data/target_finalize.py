"""Finish a target dataset: filter decisions over the whole set, the EG3D dataset, the contact sheet; shard merging.

Decisions (every score is already in the manifest, written as each image was made):

- ``clip_threshold``: clip score < threshold -> rejected;
- ``clip_top_fraction``: not among the best ceil(f * N) clip scores -> rejected;
- ``pose``: pose_margin < -pose_margin -> rejected (see :mod:`adapt3d.data.target_filters`);
- ``near_duplicate``: among images that passed the above, greedy removal by CLIP image-embedding cosine distance
  (best clip score first); embeddings are computed from the saved PNGs. ``nn_distance`` (to the nearest other
  image of the whole set) is recorded whenever a CLIP model is available.

Finishing is deterministic and idempotent: the same manifest and options give the same files, so a run killed
while finishing is simply rerun.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapt3d.data.dataset_writer import export_dataset_folder, write_dataset_zip
from adapt3d.data.manifest import Manifest
from adapt3d.data.target_dataset import (CONTACT_SHEET, DATASET_DIR, DATASET_ZIP, JOB_JSON, MANIFEST,
                                         TargetRecord, read_records)
from adapt3d.data.target_filters import greedy_diverse_subset, nearest_neighbour_distance
from adapt3d.utils.io import atomic_path, atomic_write_json

__all__ = ["SelectionConfig", "FinalizeResult", "finalize_folder", "merge_shard_folders", "mark_shard_complete",
           "wait_for_shards", "SHARD_DONE", "load_images"]

SHARD_DONE = "shard_complete.json"
_SHARD_RE = re.compile(r"^shard-(\d+)of(\d+)$")


@dataclass(frozen=True)
class SelectionConfig:
    clip_threshold: float | None = None
    clip_top_fraction: float | None = None
    pose_filter: bool = True
    pose_margin: float = 0.05
    diversity_min_distance: float = 0.0
    zip: bool = False
    contact_sheet_max: int = 64


@dataclass
class FinalizeResult:
    num_images: int = 0
    num_kept: int = 0
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)


def load_images(folder: Path, relpaths: list[str]) -> torch.Tensor:
    """PNG files -> (N, 3, H, W) float in [-1, 1]."""
    arrays = [np.asarray(Image.open(folder / p).convert("RGB")) for p in relpaths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _decide(records: list[TargetRecord], sel: SelectionConfig, embeddings: torch.Tensor | None) -> None:
    from adapt3d.clip.filters import select_by_score

    n = len(records)
    reasons: list[list[str]] = [[] for _ in range(n)]
    clip = [r.scores.get("clip") for r in records]
    if sel.clip_threshold is not None or sel.clip_top_fraction is not None:
        if any(c is None for c in clip):
            raise ValueError("the manifest has no CLIP scores (made with --clip-model none); drop the CLIP filters")
        above, top = select_by_score(clip, sel.clip_threshold, sel.clip_top_fraction)
        for i in range(n):
            if not above[i]:
                reasons[i].append("clip_threshold")
            if not top[i]:
                reasons[i].append("clip_top_fraction")
    if sel.pose_filter:
        for i, r in enumerate(records):
            if "pose_margin" in r.scores and r.scores["pose_margin"] < -sel.pose_margin:
                reasons[i].append("pose")
    if embeddings is not None:
        nn = nearest_neighbour_distance(embeddings)
        for r, d in zip(records, nn.tolist()):
            r.scores["nn_distance"] = d if np.isfinite(d) else None
        if sel.diversity_min_distance > 0:
            kept = greedy_diverse_subset(embeddings, sel.diversity_min_distance,
                                         priority=[c if c is not None else 0.0 for c in clip],
                                         candidates=[not rs for rs in reasons])
            for i in range(n):
                if not reasons[i] and not kept[i]:
                    reasons[i].append("near_duplicate")
    for r, rs in zip(records, reasons):
        r.reasons, r.kept = rs, not rs


def _contact_sheet(folder: Path, records: list[TargetRecord], max_pairs: int, per_row: int = 4) -> Path | None:
    from adapt3d.export.images import contact_sheet, save_image

    shown = records[:max_pairs]
    if not shown:
        return None
    thumb = lambda p: np.asarray(Image.open(folder / p).convert("RGB").resize((96, 96), Image.BICUBIC))  # noqa
    rows, caps, marks = [], [], []
    for start in range(0, len(shown), per_row):
        chunk = shown[start:start + per_row]
        rows.append([im for r in chunk for im in (thumb(r.source_image), thumb(r.image))])
        caps.append([c for r in chunk for c in (
            f"#{r.index} src", (f"{r.scores['clip']:.2f} " if r.scores.get("clip") is not None else "")
            + ("ok" if r.kept else ",".join(r.reasons)))])
        marks.append([not r.kept for r in chunk for _ in range(2)])
    path = folder / CONTACT_SHEET
    save_image(path, contact_sheet(rows, caps, marks))
    return path


def finalize_folder(folder: Path, num_images: int, sel: SelectionConfig, scorer=None, progress: bool = True,
                    batch_size: int = 32) -> FinalizeResult:
    """Decide kept flags for all ``num_images`` records in ``folder``, rewrite the manifest, write ``dataset/``,
    ``dataset.zip`` (with ``sel.zip``; a stale one is removed otherwise) and ``contact_sheet.png``."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    by_index = read_records(folder)
    missing = [i for i in range(num_images) if i not in by_index or not (folder / by_index[i].image).is_file()]
    if missing:
        raise ValueError(f"--out: {folder} is missing {len(missing)} of {num_images} images (e.g. index "
                         f"{missing[0]}); rerun the same command to finish them")
    records = [by_index[i] for i in range(num_images)]
    embeddings = None
    if scorer is not None:
        chunks = []
        for s in tqdm(range(0, num_images, batch_size), desc="filter", unit="batch", disable=not progress):
            imgs = load_images(folder, [r.image for r in records[s:s + batch_size]])
            with torch.no_grad():
                chunks.append(scorer.encode_images(imgs).cpu())
        embeddings = torch.cat(chunks)
    _decide(records, sel, embeddings)
    Manifest(folder / MANIFEST).rewrite([r.to_dict() for r in records])
    kept = [r for r in records if r.kept]
    entries = [(r.image, r.label) for r in kept]
    res = FinalizeResult(num_images=num_images, num_kept=len(kept))
    res.files["dataset"] = str(export_dataset_folder(folder, folder / DATASET_DIR, entries).parent)
    res.files["manifest"] = str(folder / MANIFEST)
    if sel.zip:
        res.files["zip"] = str(write_dataset_zip(folder, folder / DATASET_ZIP, entries))
    else:
        (folder / DATASET_ZIP).unlink(missing_ok=True)
    sheet = _contact_sheet(folder, records, sel.contact_sheet_max)
    if sheet is not None:
        res.files["contact_sheet"] = str(sheet)
    for r in records:
        for reason in r.reasons:
            res.rejected[reason] = res.rejected.get(reason, 0) + 1
    if not kept:
        res.notes.append("every image was rejected: dataset.json has no labels; loosen the filters and rerun")
    return res


def mark_shard_complete(folder: Path, count: int) -> None:
    atomic_write_json(Path(folder) / SHARD_DONE, {"images": count})


def _shard_folders(out: Path) -> dict[int, tuple[int, Path]]:
    found: dict[int, tuple[int, Path]] = {}
    for p in sorted(Path(out).glob("shard-*of*")):
        m = _SHARD_RE.match(p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = (int(m.group(2)), p)
    return found


def wait_for_shards(out: Path, count: int, poll_s: float = 2.0, timeout_s: float | None = None) -> None:
    """Block until every shard folder of ``count`` has its completion file (torchrun rank 0 before merging)."""
    t0 = time.time()
    while True:
        done = [i for i in range(count) if (Path(out) / f"shard-{i:02d}of{count:02d}" / SHARD_DONE).is_file()]
        if len(done) == count:
            return
        if timeout_s is not None and time.time() - t0 > timeout_s:
            raise TimeoutError(f"shards {sorted(set(range(count)) - set(done))} of {count} did not finish")
        time.sleep(poll_s)


def _copy(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def merge_shard_folders(out: Path, job: dict) -> int:
    """Copy every shard's images, sources and records into ``out``; checks the shard set is complete and of
    the same job. Returns the number of records merged. ``job`` is the unsharded ``job.json`` content."""
    out = Path(out)
    shards = _shard_folders(out)
    if not shards:
        raise ValueError(f"--merge: no shard-XXofYY folders in {out}")
    counts = {c for c, _ in shards.values()}
    if len(counts) != 1:
        raise ValueError(f"--merge: {out} mixes shard counts {sorted(counts)}; remove the stale shard folders")
    count = counts.pop()
    absent = sorted(set(range(count)) - set(shards))
    if absent:
        raise ValueError(f"--merge: shard(s) {absent} of {count} are missing in {out}")
    manifest = Manifest(out / MANIFEST)
    have = read_records(out)
    merged = 0
    for i in range(count):
        folder = shards[i][1]
        import json
        sj = json.loads((folder / JOB_JSON).read_text()) if (folder / JOB_JSON).is_file() else {}
        if sj.get("fingerprint") != job["fingerprint"]:
            raise ValueError(f"--merge: {folder} belongs to a different job (fingerprint {sj.get('fingerprint')} "
                             f"!= {job['fingerprint']}); use the same options as the shard runs")
        if not (folder / SHARD_DONE).is_file():
            raise ValueError(f"--merge: {folder} is not finished; rerun that shard (same command) first")
        for idx, rec in sorted(read_records(folder).items()):
            _copy(folder / rec.source_image, out / rec.source_image)
            _copy(folder / rec.image, out / rec.image)
            if idx not in have:
                manifest.append(rec.to_dict())
            merged += 1
    if not (out / JOB_JSON).is_file():
        atomic_write_json(out / JOB_JSON, job)
    return merged
