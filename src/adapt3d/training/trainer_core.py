"""The trainer core: what every adapt3d trainer shares (finetune, NADA / ITportrait, distillation, and new methods).

A trainer is a subclass of :class:`TrainerCore` that builds its modules and optimisers, then supplies one step::

    class MyTrainer(TrainerCore):
        name = "my-method"                          # progress bar, log lines, checkpoint metadata
        divergence_hint = "Lower --lr and rerun (it resumes from the last snapshot)."

        def __init__(self, cfg, G, ..., run_folder=None, resume_from=None, dist=None):
            super().__init__(device=..., run_folder=run_folder, resume_from=resume_from, dist=dist,
                             total_steps=cfg.steps, tick_steps=cfg.tick_steps, snapshot_steps=cfg.snapshot_steps)
            self.G = G.to(self.device).train(); self.opt = torch.optim.Adam(...)
            self.init_weight_scales()               # after the trained modules exist

        def train_step(self) -> dict:               # one optimiser step; must advance self.step
            self.seed_step("main")                  # every draw of step s from derive_seed(seed, s, phase)
            loss = ...; self.backward_and_step(self.opt, self.params, loss, "main")
            self.step += 1
            return {"loss/main": float(loss)}

        def trained_modules(self): return {"generator": self.G}            # weight checks, DDP broadcast
        def state_dict_extra(self): return {"G": ..., "opt": self.opt.state_dict()}   # training_state.pt
        def load_state_extra(self, snapshot, state): self.G.load_state_dict(state["G"]); ...
        def write_checkpoint(self, folder, metadata): save_checkpoint(folder, self.G, None, metadata=metadata)

What the core does, once for every trainer:

- **Run loop** (:meth:`run_training`): steps until ``total_steps``; a tick (stats.jsonl record + log line) every
  ``tick_steps``; a snapshot every ``snapshot_steps`` and at the end; callbacks ``fn(trainer)`` after each step; the
  final checkpoint.
- **Snapshots and resume**: ``snapshots/snapshot-<step>/`` = the checkpoint (:meth:`write_checkpoint`) +
  ``training_state.pt`` (step, skipped steps, torch RNG, world size, and :meth:`state_dict_extra`), written into a
  temporary folder and renamed. :meth:`resume_if_needed` loads it before the first step.
- **Divergence guard**: a step whose loss or gradient is not finite either stops the run (``TrainingDiverged``,
  naming the last good snapshot) or, for trainers that skip such steps, is counted in ``self.skipped``; more than
  :meth:`max_skipped_steps` skipped steps stop the run the same way. At every tick, snapshot and before the final
  checkpoint the weights of every trained module must be finite *and* bounded: their largest magnitude may not
  exceed ``WEIGHT_GROWTH_LIMIT`` times the module's largest initial magnitude (at least 1), so weights that
  explode (``--lr 1e30``) stop the run before they are saved as a result.
- **Data-parallel**: under ``torchrun`` every process holds full copies; :meth:`reduce_and_check` sums the gradients
  of the processes' micro-batches (pre-scaled by their share of the global batch) in one flattened all-reduce (the
  EG3D scheme), so N processes compute what one process computes with the same micro-batches; rank 0 writes every
  file and the others wait at the snapshot barrier.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from adapt3d.training.distributed import DistInfo, all_reduce_sum_, barrier, broadcast_module_
from adapt3d.training.run_folder import RunFolder, load_training_state

__all__ = ["TrainerCore", "TrainingDiverged", "WEIGHT_GROWTH_LIMIT", "peak_memory_mb"]

WEIGHT_GROWTH_LIMIT = 1e4  # a trained weight may grow to this many times the module's initial largest magnitude


class TrainingDiverged(ValueError):
    """A loss or a weight became NaN, infinite or exploded; the message names the last good snapshot."""


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, the resident set size on the CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _cpu(sd: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


class TrainerCore:
    """Shared machinery of every trainer (see the module docstring for the subclass contract)."""

    name = "train"
    divergence_hint = "Lower the learning rate and rerun (it resumes from the last snapshot)."
    tick_prefixes: tuple[str, ...] = ("loss/",)
    #: skipped steps allowed: max(min_skipped_allowed, skipped_fraction_allowed * total_steps)
    min_skipped_allowed = 2
    skipped_fraction_allowed = 0.05

    def __init__(self, *, device: torch.device | str = "cpu", run_folder: RunFolder | None = None,
                 resume_from: str | Path | None = None, dist: DistInfo | None = None,
                 callbacks: Sequence[Callable] = (), notes: Sequence[str] = (), total_steps: int = 1,
                 tick_steps: int = 1, snapshot_steps: int = 1, progress: bool = False):
        self.device = torch.device(device)
        self.run = run_folder
        self.dist = dist or DistInfo()
        self.callbacks, self.notes = list(callbacks), list(notes)
        self.total_steps, self.tick_steps, self.snapshot_steps = int(total_steps), int(tick_steps), int(snapshot_steps)
        self.progress = progress
        self.step, self.skipped = 0, 0
        self.stats: list[dict] = []
        self._tick: dict[str, tuple[float, int]] = {}
        self._tick_start = (time.time(), 0)
        self.resumed_from = Path(resume_from) if resume_from else None
        self.last_good_snapshot = self.resumed_from
        self._resumed = self.resumed_from is None
        self._weight_scales: dict[str, float] = {}

    # -- what a subclass supplies -------------------------------------------------------------------------------
    def train_step(self, *inputs) -> dict:
        """One optimiser step (advancing ``self.step``); returns the step's record (``loss/...`` floats)."""
        raise NotImplementedError

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        """Every module whose weights change (named for messages): weight checks and the DDP broadcast."""
        raise NotImplementedError

    def state_dict_extra(self) -> dict:
        """The trainer's part of training_state.pt (tensors and plain containers only)."""
        return {}

    def load_state_extra(self, snapshot: Path, state: dict) -> None:
        """Restore :meth:`state_dict_extra` (and the modules) from ``snapshot``; ValueError if it does not fit."""

    def write_checkpoint(self, folder: Path, metadata: dict) -> None:
        """Write the model checkpoint (what ``--generator`` / ``--checkpoint`` loads) into the new ``folder``."""
        raise NotImplementedError

    def metadata(self) -> dict:
        return {"step": self.step, "source": f"adapt3d {self.name}"}

    def save_samples(self) -> None:
        """Sample grids of the current step into ``run.samples`` (rank 0 only; called at every snapshot)."""

    def tick_fields(self, rec: dict) -> dict:
        """Fields added to the stats.jsonl record of a tick (``rec``: the last step's record)."""
        return {}

    def tick_message(self, out: dict) -> str:
        shown = " ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in out.items()
                         if k.startswith("loss/") and isinstance(v, (int, float)))
        return f"step {self.step}/{self.total_steps} {shown} sec/step {out['sec_per_step']:.2f}"

    def diverged_context(self) -> str:
        """Extra words after "step N" in the divergence message (e.g. the kimg)."""
        return ""

    def step_inputs(self) -> Iterator[tuple]:
        """The inputs of each remaining step (finetune: real images); default: none."""
        while self.step < self.total_steps:
            yield ()

    def one_step(self, *inputs) -> dict:
        """What the loop runs per step; subclasses whose ``train_step`` does not advance the step override it."""
        return self.train_step(*inputs)

    def before_training(self) -> None:
        """Called once before the first step of :meth:`run_training` (after resuming)."""

    def progress_postfix(self, rec: dict) -> dict:
        return {}

    # -- training state, resume -----------------------------------------------------------------------------------
    def training_state(self) -> dict:
        """Everything besides the checkpoint needed to continue: plain tensors and containers only."""
        return {"step": self.step, "skipped": self.skipped, "world_size": self.dist.world_size,
                **self.state_dict_extra(), "rng": {"torch": torch.get_rng_state()}}

    def resume_if_needed(self) -> None:
        """Load ``resume_from`` (once), then make every process hold rank 0's modules."""
        if not self._resumed:
            state = load_training_state(self.resumed_from)
            self.load_state_extra(self.resumed_from, state)
            self.step, self.skipped = int(state["step"]), int(state.get("skipped", 0))
            torch.set_rng_state(state["rng"]["torch"])
            self._loaded_state = state
            self._resumed = True
        if self.dist.enabled:
            for module in self.trained_modules().values():
                broadcast_module_(module)

    # -- randomness ---------------------------------------------------------------------------------------------
    def seed_step(self, seed: int, *phase) -> torch.Generator:
        """Seed the global RNG (ray jitter, synthesis noise) and return a generator for draw ``phase`` of this
        step: both from ``derive_seed(seed, step, *phase)``."""
        from adapt3d.utils.seeds import derive_seed
        s = derive_seed(seed, self.step, *phase)
        torch.manual_seed(s)
        return torch.Generator().manual_seed(s)

    # -- gradients, divergence ------------------------------------------------------------------------------------
    def split_batch(self, batch: int, batch_gpu: int | None, flag: str = "--batch") -> tuple[int, int]:
        """(micro-batch size, micro-batches per process) of a global ``batch`` over this run's processes."""
        world = self.dist.world_size
        if batch % world:
            raise ValueError(f"{flag}: {batch} samples cannot be split over {world} processes; give a multiple of "
                             f"{world}")
        batch_gpu = batch_gpu or batch // world
        if (batch // world) % batch_gpu:
            raise ValueError(f"--batch-gpu: {batch_gpu} does not divide the {batch // world} samples of each of the "
                             f"{world} process(es) ({flag} {batch})")
        return batch_gpu, batch // world // batch_gpu

    def micro_batch_indices(self, accum: int) -> list[int]:
        """Global indices of this process's micro-batches (rank r holds r * accum ... r * accum + accum - 1)."""
        return [self.dist.rank * accum + a for a in range(accum)]

    def reduce_grads(self, params: Iterable[torch.Tensor], values: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Sum the gradients of ``params`` and ``values`` over processes (one flattened all-reduce), in place;
        returns (summed values, whether everything is finite) - the same answer on every process."""
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [values.reshape(-1)])
        all_reduce_sum_([flat])
        finite = bool(torch.isfinite(flat).all())
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-values.numel():], finite

    def reduce_and_check(self, params: Iterable[torch.Tensor], values: torch.Tensor, what: str) -> torch.Tensor:
        """:meth:`reduce_grads`, stopping the run (:meth:`diverged`) if a value or gradient is not finite."""
        summed, finite = self.reduce_grads(params, values)
        if not finite:
            bad = "loss" if not bool(torch.isfinite(summed).all()) else "gradient"
            self.diverged(f"the {what} {bad} became NaN or infinite")
        return summed

    def max_skipped_steps(self) -> int:
        return max(self.min_skipped_allowed, int(self.skipped_fraction_allowed * self.total_steps))

    def check_skipped(self) -> None:
        if self.skipped > self.max_skipped_steps():
            self.diverged(f"{self.skipped} of {self.step} steps were skipped because a loss or gradient was NaN or "
                          f"infinite (at most {self.max_skipped_steps()} may be)")

    def diverged(self, what: str) -> None:
        snap = self.last_good_snapshot
        where = f"the last good snapshot is {snap}" if snap else "no snapshot had been written yet"
        msg = f"training stopped at step {self.step}{self.diverged_context()}: {what}; {where}. {self.divergence_hint}"
        if self.run is not None:
            self.run.log("ERROR " + msg)
        raise TrainingDiverged(msg)

    @torch.no_grad()
    def _largest_magnitudes(self) -> dict[str, float]:
        out = {}
        for name, module in self.trained_modules().items():
            peaks = [p.detach().abs().max() for p in module.parameters() if p.numel()]
            out[name] = float(torch.stack(peaks).max()) if peaks else 0.0
        return out

    def init_weight_scales(self) -> None:
        """Record every trained module's largest initial weight magnitude (the reference of :meth:`check_weights`)."""
        self._weight_scales = {k: max(v, 1.0) for k, v in self._largest_magnitudes().items()}

    def check_weights(self) -> None:
        """Stop if a weight of a trained module is NaN/inf or larger than ``WEIGHT_GROWTH_LIMIT`` x its initial
        scale."""
        for name, peak in self._largest_magnitudes().items():
            if not math.isfinite(peak):
                self.diverged(f"a {name} weight became NaN or infinite")
            limit = WEIGHT_GROWTH_LIMIT * self._weight_scales.get(name, 1.0)
            if peak > limit:
                self.diverged(f"a {name} weight exploded to {peak:.3g} (more than {WEIGHT_GROWTH_LIMIT:g} times its "
                              f"initial scale {self._weight_scales.get(name, 1.0):.3g})")

    # -- ticks, snapshots, final --------------------------------------------------------------------------------
    def accumulate_tick(self, rec: dict) -> None:
        for k, v in rec.items():
            if k.startswith(self.tick_prefixes) and isinstance(v, (int, float)) and not isinstance(v, bool):
                s, n = self._tick.get(k, (0.0, 0))
                self._tick[k] = (s + float(v), n + 1)

    def end_tick(self, rec: dict) -> dict:
        """Average the tick's values into one stats.jsonl record and log line; checks the weights."""
        self.check_weights()
        t0, step0 = self._tick_start
        steps = self.step - step0
        out = {"step": self.step, "skipped_total": self.skipped}
        out.update({k: s / n for k, (s, n) in sorted(self._tick.items()) if n})
        out.update(self.tick_fields(rec))
        out.update({"sec_per_step": (time.time() - t0) / max(steps, 1),
                    "peak_memory_mb": round(peak_memory_mb(self.device), 1), "timestamp": time.time()})
        self._tick, self._tick_start = {}, (time.time(), self.step)
        self.stats.append(out)
        if self.run is not None:
            self.run.append_stats(out)
            self.run.log(self.tick_message(out))
        return out

    def snapshot(self) -> Path | None:
        """Samples and a snapshot of the current step (rank 0 writes); every process waits for it."""
        self.check_weights()
        path = None
        if self.run is not None:
            if self.run.is_main:
                self.save_samples()
            path = self.run.write_snapshot(self.step, lambda folder: self.write_checkpoint(folder, self.metadata()),
                                           self.training_state())
            self.last_good_snapshot = path
            self.run.log(f"snapshot {path}")
        barrier()
        return path

    def save_final(self) -> Path | None:
        self.check_weights()
        if self.run is None:
            return None
        final = self.run.write_final(lambda folder: self.write_checkpoint(folder, self.metadata()))
        self.run.log(self.done_message(final))
        barrier()
        return final

    def done_message(self, final: Path) -> str:
        skipped = f" ({self.skipped} skipped)" if self.skipped else ""
        return f"done: {self.step} steps{skipped}; final checkpoint {final}"

    # -- loop ---------------------------------------------------------------------------------------------------
    def train_loop(self) -> tuple[Path | None, float]:
        """Run the remaining steps, ticks and snapshots, then the final checkpoint; returns (final, seconds)."""
        from tqdm.auto import tqdm
        t_start = time.time()
        self.resume_if_needed()
        if not self._weight_scales:
            self.init_weight_scales()
        bar = tqdm(total=self.total_steps, initial=min(self.step, self.total_steps), unit="step", desc=self.name,
                   disable=not (self.progress and self.dist.is_main))
        self.before_training()
        self._tick_start = (time.time(), self.step)
        for inputs in self.step_inputs():
            if self.step >= self.total_steps:
                break
            rec = self.one_step(*inputs)
            self.check_skipped()
            self.accumulate_tick(rec)
            done = self.step >= self.total_steps
            if self.step % self.tick_steps == 0 or done:
                postfix = self.progress_postfix(rec)
                if postfix:
                    bar.set_postfix(**postfix)
                self.end_tick(rec)
            if self.step % self.snapshot_steps == 0 or done:
                self.snapshot()
            for fn in self.callbacks:
                fn(self)
            bar.update(1)
        bar.close()
        return self.save_final(), time.time() - t_start

    @staticmethod
    def cpu_state(module_or_sd) -> dict:
        """A detached CPU copy of a state dict (or of a module's)."""
        sd = module_or_sd.state_dict() if hasattr(module_or_sd, "state_dict") else module_or_sd
        return _cpu(sd)
