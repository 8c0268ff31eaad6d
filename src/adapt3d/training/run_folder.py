"""The training run folder (stylegan3/EG3D's run-directory contract, adapt3d's formats).

    <out>/options.json                    every option + resolved values, written before the first step
    <out>/log.txt                         status lines (one per tick), notes, errors
    <out>/stats.jsonl                     one JSON record per tick: losses, R1, augment p, sec/kimg, memory
    <out>/samples/reals.png               a grid of dataset images
    <out>/samples/fakes-<step>.png        G_ema at fixed seeds x fixed cameras, every snapshot
    <out>/snapshots/snapshot-<step>/      adapt3d checkpoint (G_ema + D) + training_state.pt
    <out>/final/                          adapt3d checkpoint (G_ema + D) of the last step

``<step>`` is the optimiser step, six digits. ``training_state.pt`` holds only tensors and plain containers
(the training generator's weights, both optimiser states, step, images seen, augmentation state, RNG states) and
loads with ``torch.load(..., weights_only=True)``. Snapshots are written into a hidden temporary folder and renamed
into place, so a snapshot folder that exists is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from adapt3d.models.checkpoint import save_checkpoint
from adapt3d.utils.io import atomic_path, atomic_write_json, atomic_write_text, removed_on_error, replace_folder
from adapt3d.utils.torch_load import load_weights_only

__all__ = ["RunFolder", "TRAINING_STATE"]

TRAINING_STATE = "training_state.pt"
STATE_FORMAT = "adapt3d-training-state"
logger = logging.getLogger("adapt3d.training")


class RunFolder:
    """Reads and writes one run folder. Writers are no-ops unless ``is_main`` (rank 0)."""

    def __init__(self, out: str | os.PathLike, is_main: bool = True, echo: bool = False):
        self.out = Path(out)
        self.is_main = is_main
        self.echo = echo
        self.options_path = self.out / "options.json"
        self.log_path = self.out / "log.txt"
        self.stats_path = self.out / "stats.jsonl"
        self.samples = self.out / "samples"
        self.snapshots_dir = self.out / "snapshots"
        self.final = self.out / "final"

    # -- options ------------------------------------------------------------------------------------------------
    def read_options(self) -> dict | None:
        if not self.options_path.is_file():
            return None
        try:
            return json.loads(self.options_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--out: {self.options_path} is not valid JSON ({e}); remove it or use another --out")

    def write_options(self, doc: dict) -> None:
        if self.is_main:
            atomic_write_json(self.options_path, doc)

    # -- log and stats ------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Append a time-stamped line to log.txt (rank 0) and pass it to the ``adapt3d.training`` logger."""
        logger.info(message)
        if not self.is_main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"[{stamp}] {message}\n")
        if self.echo:
            from tqdm.auto import tqdm
            tqdm.write(message)

    def append_stats(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.stats_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_stats(self) -> list[dict]:
        if not self.stats_path.is_file():
            return []
        records = []
        for line in self.stats_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        return records

    def truncate_stats(self, max_step: int) -> None:
        """Keep only records up to ``max_step`` (used when resuming from an earlier snapshot)."""
        if not self.is_main or not self.stats_path.is_file():
            return
        kept = [r for r in self.read_stats() if r.get("step", 0) <= max_step]
        atomic_write_text(self.stats_path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- snapshots ----------------------------------------------------------------------------------------------
    def snapshot_path(self, step: int) -> Path:
        return self.snapshots_dir / f"snapshot-{step:06d}"

    def snapshots(self) -> list[tuple[int, Path]]:
        """Complete snapshots as (step, folder), oldest first."""
        if not self.snapshots_dir.is_dir():
            return []
        found = []
        for p in self.snapshots_dir.iterdir():
            if p.is_dir() and p.name.startswith("snapshot-") and (p / TRAINING_STATE).is_file() \
                    and (p / "checkpoint.json").is_file():
                try:
                    found.append((int(p.name.split("-", 1)[1]), p))
                except ValueError:
                    continue
        return sorted(found)

    def latest_snapshot(self) -> Path | None:
        snaps = self.snapshots()
        return snaps[-1][1] if snaps else None

    def resume_point(self, resume: str, identity: dict) -> Path | None:
        """Where a run with options ``identity`` continues: ``resume`` is 'auto' (the latest snapshot, if any),
        'never' (the folder must hold no run) or a snapshot folder. A folder holding a run with other options is
        refused, naming the options that differ."""
        existing, latest = self.read_options(), self.latest_snapshot()
        if existing is not None and existing.get("identity") != identity:
            old = existing.get("identity") or {}
            diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            raise ValueError(f"--out: {self.out} holds a run with other options (differences: {', '.join(diff)}); "
                             "use a new --out, or the same options to resume it")
        if resume == "auto":
            return latest
        if resume == "never":
            if existing is not None or latest is not None:
                raise ValueError(f"--resume never: {self.out} already holds a run; use another --out or "
                                 "--resume auto")
            return None
        snap = Path(resume).expanduser()
        if not (snap / "training_state.pt").is_file():
            raise ValueError(f"--resume: {snap} is not a snapshot folder (expected 'auto', 'never' or "
                             "<run>/snapshots/snapshot-XXXXXX)")
        return snap

    def save_snapshot(self, step: int, G_ema: torch.nn.Module, D: torch.nn.Module, state: dict,
                      metadata: dict) -> Path:
        """Write snapshot ``step`` (checkpoint of G_ema and D + training_state.pt) atomically."""
        dest = self.snapshot_path(step)
        if not self.is_main:
            return dest
        tmp = self.snapshots_dir / f".tmp-{dest.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with removed_on_error(tmp):  # a failed write (disk full) leaves no partial snapshot; older ones stay
            save_checkpoint(tmp, G_ema, D, metadata=metadata)
            with atomic_path(tmp / TRAINING_STATE) as t:
                torch.save({"format": STATE_FORMAT, "version": 1, **state}, t)
        replace_folder(tmp, dest)
        return dest

    def save_final(self, G_ema: torch.nn.Module, D: torch.nn.Module, metadata: dict) -> Path:
        if self.is_main:
            tmp = self.out / f".tmp-final-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            with removed_on_error(tmp):
                save_checkpoint(tmp, G_ema, D, metadata=metadata)
            replace_folder(tmp, self.final)
        return self.final


def load_training_state(snapshot: str | os.PathLike) -> dict[str, Any]:
    """``training_state.pt`` of a snapshot folder, loaded with ``weights_only=True``."""
    path = Path(snapshot) / TRAINING_STATE
    if not path.is_file():
        raise ValueError(f"--resume: {snapshot} is not a training snapshot (no {TRAINING_STATE}); pass a "
                         "snapshots/snapshot-XXXXXX folder of a run")
    state = load_weights_only(path, f"--resume {path}")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"--resume: {path} is not an adapt3d training state")
    return state
