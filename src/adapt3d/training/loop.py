"""The adversarial fine-tuning loop (EG3D's training loop as used by DATID-3D), split into small steps.

One optimiser step runs EG3D's phases in order: ``Gmain`` (non-saturating loss through D), ``Greg`` (density
regulariser, every ``density_reg_interval`` steps), ``Dmain`` (logistic loss on generated and real images),
``Dreg`` (R1 on real images, every ``d_reg_interval`` steps); then the EMA generator, the ADA probability and the
schedules are updated. Each phase processes the process's share of the global batch in micro-batches of
``batch_gpu`` and sums gradients over processes (:mod:`adapt3d.training.distributed`).

Determinism: every random draw of micro-batch ``g`` (its global index) in phase ``P`` of step ``s`` comes from a
seed derived from ``(seed, s, P, g)`` (latents, cameras, pose swaps, augmentations, ray jitter and noise), and
the real images of step ``s`` from ``(seed, s)``. A run therefore gives the same result for any number of
processes with the same global batch and micro-batch, and a resumed run continues exactly like an uninterrupted
one. The mapping network's ``w_avg`` is updated once per step from the global batch mean of ``w`` (EG3D updates it
per micro-batch), for the same reason.

Python API: ``Trainer(cfg, G, D, dataset, ...).run()`` with built components; ``adapt3d.pipelines.finetune.run``
loads them from the command-line options.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from adapt3d.cameras import camera_label, frontal_label
from adapt3d.export.images import make_grid, save_image, to_uint8
from adapt3d.models.checkpoint import load_checkpoint
from adapt3d.models.discriminator import DualDiscriminator, filtered_resizing
from adapt3d.models.triplane import TriPlaneGenerator
from adapt3d.training import losses
from adapt3d.training.augment import AdaptiveAugment, blur_images
from adapt3d.training.config import FinetuneConfig, validate_finetune_config
from adapt3d.training.distributed import DistInfo, all_reduce_sum_, barrier, broadcast_module_
from adapt3d.training.freeze import apply_freeze
from adapt3d.training.run_folder import RunFolder, load_training_state
from adapt3d.training.schedules import (blur_sigma_at, ema_beta, resolve_rendering_schedule, update_ema,
                                       uses_official_weights)
from adapt3d.utils.parsing import parse_seeds
from adapt3d.utils.seeds import derive_seed

__all__ = ["Trainer", "FinetuneResult", "TrainingDiverged", "FinetuneConfig"]

SAMPLE_YAWS = (-0.4, 0.0, 0.4)  # radians from frontal, the columns of the sample grids


class TrainingDiverged(ValueError):
    """A loss or a weight became NaN or infinite; the message names the last good snapshot."""


@dataclass
class FinetuneResult:
    """Result of a run. ``generator`` is the EMA generator (eval mode), ``final`` its checkpoint folder."""

    out: Path
    generator: TriPlaneGenerator
    discriminator: DualDiscriminator
    step: int
    cur_nimg: int
    final: Path | None
    resumed_from: Path | None = None
    stats: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _StepSampler(torch.utils.data.Sampler):
    """Indices of this process's real images for steps ``start .. total - 1`` (one list per step)."""

    def __init__(self, n: int, batch: int, rank: int, per_process: int, seed: int, start: int, total: int):
        self.n, self.batch, self.rank, self.pp = n, batch, rank, per_process
        self.seed, self.start, self.total = seed, start, total

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        for step in range(self.start, self.total):
            g = torch.Generator().manual_seed(derive_seed(self.seed, step, "reals"))
            idx = torch.randint(self.n, (self.batch,), generator=g)
            yield idx[self.rank * self.pp:(self.rank + 1) * self.pp].tolist()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Trainer:
    """Adversarial fine-tuning of ``G`` against ``D`` on ``dataset`` (items: uint8 (3, R, R), label (25,)).

    ``run_folder=None`` trains without writing anything (benchmarks). ``callbacks`` are called as ``fn(trainer)``
    after every step.
    """

    def __init__(self, cfg: FinetuneConfig, G: TriPlaneGenerator, D: DualDiscriminator, dataset,
                 device: torch.device | str = "cpu", dist: DistInfo | None = None,
                 run_folder: RunFolder | None = None, callbacks: Sequence[Callable[["Trainer"], None]] = (),
                 resume_from: str | Path | None = None, notes: Sequence[str] = ()):
        self.cfg, self.dataset, self.dist = cfg, dataset, dist or DistInfo()
        self.device = torch.device(device)
        self.batch_gpu = validate_finetune_config(cfg, self.dist.world_size)
        self.per_process = cfg.batch // self.dist.world_size
        self.accum = self.per_process // self.batch_gpu
        self.run, self.callbacks, self.notes = run_folder, list(callbacks), list(notes)
        self.G = G.to(self.device).train()
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        self.D = D.to(self.device).train()
        self.frozen = apply_freeze(self.G, cfg.freeze)
        self.g_params = [p for _, p in self.frozen.trainable]
        self.d_params = list(self.D.parameters())
        self.D.requires_grad_(False)
        g_interval = cfg.density_reg_interval if cfg.density_reg > 0 else None
        d_interval = cfg.d_reg_interval if cfg.r1_gamma > 0 else None
        g_lr, g_betas = losses.lazy_regularization_scaling(cfg.g_lr, cfg.adam_betas, g_interval)
        d_lr, d_betas = losses.lazy_regularization_scaling(cfg.d_lr, cfg.adam_betas, d_interval)
        self.opt_G = torch.optim.Adam(self.g_params, lr=g_lr, betas=g_betas, eps=1e-8)
        self.opt_D = torch.optim.Adam(self.d_params, lr=d_lr, betas=d_betas, eps=1e-8)
        self.augment = AdaptiveAugment(cfg.augment, cfg.augment_p, tuple(cfg.augment_ops), cfg.ada_target,
                                       cfg.ada_kimg, cfg.ada_interval, cfg.batch)
        self.labels = dataset.labels.to(self.device)  # (N, 25) cameras for generated images
        self.nrr_schedule = resolve_rendering_schedule(
            cfg.neural_rendering_schedule, cfg.neural_rendering_resolution, cfg.neural_rendering_resolution_final,
            cfg.neural_rendering_resolution_fade_kimg, int(G.neural_rendering_resolution),
            official=uses_official_weights(G, from_checkpoint=cfg.generator is not None))
        self.ema_kimg = cfg.ema_kimg if cfg.ema_kimg is not None else cfg.batch * 10 / 32
        self.update_w_avg = not any(n.startswith("backbone.mapping.") for n in self.frozen.frozen)
        self.total_steps = max(1, math.ceil(cfg.kimg * 1000 / cfg.batch))
        self.tick_steps = max(1, round(cfg.tick_kimg * 1000 / cfg.batch))
        self.snapshot_steps = max(1, round(cfg.snapshot_kimg * 1000 / cfg.batch))
        self.step, self.cur_nimg = 0, 0
        self.resumed_from = Path(resume_from) if resume_from else None
        if self.resumed_from is not None:
            self._load_snapshot(self.resumed_from)
        broadcast_module_(self.G)
        broadcast_module_(self.G_ema)
        broadcast_module_(self.D)
        self._tick: dict[str, float] = {}
        self._tick_start = (time.time(), 0)
        self.stats: list[dict] = []
        self.last_good_snapshot = self.resumed_from

    # -- resume ---------------------------------------------------------------------------------------------------
    def _load_snapshot(self, snapshot: Path) -> None:
        state = load_training_state(snapshot)
        ck = load_checkpoint(snapshot, load_discriminator=True)
        if ck.discriminator is None:
            raise ValueError(f"--resume: snapshot {snapshot} has no discriminator")
        try:
            self.G.load_state_dict(state["G"])
            self.G_ema.load_state_dict(ck.generator.state_dict())
            self.D.load_state_dict(ck.discriminator.state_dict())
            self.opt_G.load_state_dict(state["opt_G"])
            self.opt_D.load_state_dict(state["opt_D"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"--resume: snapshot {snapshot} does not fit this generator/discriminator/--freeze "
                             f"setting ({e})") from e
        self.augment.load_state_dict(state["augment"])
        self.step, self.cur_nimg = int(state["step"]), int(state["cur_nimg"])
        torch.set_rng_state(state["rng"]["torch"])

    def training_state(self) -> dict:
        """Everything besides G_ema and D needed to continue: plain tensors and containers only."""
        cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
        return {"step": self.step, "cur_nimg": self.cur_nimg, "G": cpu(self.G.state_dict()),
                "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "augment": self.augment.state_dict(), "world_size": self.dist.world_size,
                "rng": {"torch": torch.get_rng_state()}}

    # -- one step ------------------------------------------------------------------------------------------------
    def _rng(self, phase: str, g: int) -> torch.Generator:
        """Seed every source of randomness for micro-batch ``g`` of ``phase`` in the current step."""
        s = derive_seed(self.cfg.seed, self.step, phase, g)
        torch.manual_seed(s)  # ray jitter and synthesis noise use the global RNG (CPU and CUDA)
        return torch.Generator().manual_seed(s)

    def _gen_inputs(self, gen: torch.Generator, swap_p: float | None):
        z = torch.randn((self.batch_gpu, self.G.z_dim), generator=gen).to(self.device)  # (b, z_dim)
        c = self.labels[torch.randint(len(self.labels), (self.batch_gpu,), generator=gen).to(self.device)]
        return z, c, losses.swap_conditioning(c, swap_p, generator=gen)  # rendering and conditioning (b, 25)

    def _run_D(self, image, image_raw, c, blur, gen):
        if blur > 0:
            image = blur_images(image, blur)
        image, image_raw, c = self.augment(image, image_raw, c, generator=gen)
        return self.D({"image": image, "image_raw": image_raw}, c)  # (b, 1)

    def _micro_batches(self):
        for a in range(self.accum):
            yield a, self.dist.rank * self.accum + a

    def _real_micro_batch(self, reals, real_c, a: int):
        # Fresh copies, not views: BLAS kernels may round differently on unaligned views, and a micro-batch must
        # compute the same numbers whichever process holds it.
        sl = slice(a * self.batch_gpu, (a + 1) * self.batch_gpu)
        return reals[sl].clone(), real_c[sl].clone()

    def _finish_phase(self, opt, params, values: torch.Tensor, name: str) -> torch.Tensor:
        """Sum gradients and ``values`` over processes, stop on NaN/inf, step the optimiser; returns values."""
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [values.reshape(-1)])
        all_reduce_sum_([flat])
        if not bool(torch.isfinite(flat).all()):
            bad = "loss" if not bool(torch.isfinite(flat[-values.numel():]).all()) else "gradient"
            self._diverged(f"the {name} {bad} became NaN or infinite")
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        opt.step()
        return flat[-values.numel():]

    def _phase_G(self, nrr: int, swap_p, blur: float, share: float) -> float:
        self.opt_G.zero_grad(set_to_none=True)
        total = torch.zeros(1, device=self.device)
        for _, g in self._micro_batches():
            gen = self._rng("Gmain", g)
            z, c, c_cond = self._gen_inputs(gen, swap_p)
            out = self.G.synthesis(self.G.mapping(z, c_cond), c, neural_rendering_resolution=nrr)
            loss = losses.loss_g_nonsaturating(self._run_D(out.image, out.image_raw, c, blur, gen))
            (loss * share).backward()
            total += loss.detach() * share
        return float(self._finish_phase(self.opt_G, self.g_params, total, "generator")[0])

    def _phase_G_reg(self, swap_p, share: float) -> float:
        cfg = self.cfg
        self.opt_G.zero_grad(set_to_none=True)
        total = torch.zeros(1, device=self.device)
        for _, g in self._micro_batches():
            gen = self._rng("Greg", g)
            z, _, c_cond = self._gen_inputs(gen, swap_p)
            ws = self.G.mapping(z, c_cond)
            sigma_fn = lambda pts: self.G.sample_density(pts, ws=ws, noise_mode="random")["sigma"]  # noqa: E731
            loss = losses.density_l1_regularization(sigma_fn, self.batch_gpu, cfg.density_reg_points,
                                                    cfg.density_reg_p_dist, generator=gen, device=self.device)
            (loss * cfg.density_reg * cfg.density_reg_interval * share).backward()
            total += loss.detach() * share
        return float(self._finish_phase(self.opt_G, self.g_params, total, "density regularisation")[0])

    def _phase_D(self, reals, real_c, nrr: int, swap_p, blur: float, share: float) -> list[float]:
        self.opt_D.zero_grad(set_to_none=True)
        self.D.requires_grad_(True)
        w_dim = self.G.w_dim
        values = torch.zeros(6 + w_dim, device=self.device)  # fake, real, logit sums, sign sum, count, w sum
        for a, g in self._micro_batches():
            gen = self._rng("Dmain", g)
            z, c, c_cond = self._gen_inputs(gen, swap_p)
            with torch.no_grad():
                ws = self.G.mapping(z, c_cond)
                out = self.G.synthesis(ws, c, neural_rendering_resolution=nrr)
            fake_logits = self._run_D(out.image, out.image_raw, c, blur, gen)
            real, rc = self._real_micro_batch(reals, real_c, a)
            real_logits = self._run_D(real, filtered_resizing(real, nrr), rc, blur, gen)
            loss_fake, loss_real = losses.loss_d_fake(fake_logits), losses.loss_d_real(real_logits)
            ((loss_fake + loss_real) * share).backward()
            values += torch.cat([torch.stack([loss_fake.detach() * share, loss_real.detach() * share,
                                              fake_logits.detach().sum(), real_logits.detach().sum(),
                                              torch.sign(real_logits.detach()).sum(),
                                              torch.tensor(float(real_logits.numel()), device=self.device)]),
                                 ws[:, 0].sum(0)])
        self.D.requires_grad_(False)
        v = self._finish_phase(self.opt_D, self.d_params, values, "discriminator")
        if self.update_w_avg and self.G.backbone.mapping.w_avg_beta is not None:
            w_avg = self.G.backbone.mapping.w_avg
            w_avg.copy_((v[6:] / self.cfg.batch).lerp(w_avg, self.G.backbone.mapping.w_avg_beta))
        self.augment.record(float(v[4]), float(v[5]))
        return [float(x) for x in v[:4]] + [float(v[5])]

    def _phase_D_reg(self, reals, real_c, nrr: int, blur: float, share: float) -> float:
        cfg = self.cfg
        self.opt_D.zero_grad(set_to_none=True)
        self.D.requires_grad_(True)
        total = torch.zeros(1, device=self.device)
        for a, g in self._micro_batches():
            gen = self._rng("Dreg", g)
            real, rc = self._real_micro_batch(reals, real_c, a)
            image = real.detach().requires_grad_(True)
            raw = filtered_resizing(real, nrr).detach().requires_grad_(True)
            logits = self._run_D(image, raw, rc, blur, gen)
            r1 = losses.loss_r1(logits, [image, raw], cfg.r1_gamma)
            (r1.loss * cfg.d_reg_interval * share).backward()
            total += r1.penalty.detach() * share
        self.D.requires_grad_(False)
        return float(self._finish_phase(self.opt_D, self.d_params, total, "R1 penalty")[0])

    def train_step(self, reals_u8: torch.Tensor, real_c: torch.Tensor) -> dict:
        """One optimiser step on this process's real images (per_process, 3, R, R) uint8 and labels (., 25)."""
        cfg = self.cfg
        nrr = self.nrr_schedule.at(self.cur_nimg)
        swap_p = losses.gpc_swap_probability(cfg.gpc_reg_prob, self.cur_nimg, cfg.gpc_reg_fade_kimg)
        blur = blur_sigma_at(cfg.blur_sigma, cfg.blur_fade_kimg, self.cur_nimg)
        share = self.batch_gpu / cfg.batch
        reals = reals_u8.to(self.device).float() / 127.5 - 1  # (per_process, 3, R, R) in [-1, 1]
        real_c = real_c.to(self.device)
        rec = {"loss/G": self._phase_G(nrr, swap_p, blur, share)}
        if cfg.density_reg > 0 and self.step % cfg.density_reg_interval == 0:
            rec["loss/density_reg"] = self._phase_G_reg(swap_p, share)
        fake, real, fake_sum, real_sum, count = self._phase_D(reals, real_c, nrr, swap_p, blur, share)
        rec.update({"loss/D_fake": fake, "loss/D_real": real, "loss/D": fake + real,
                    "logits/fake": fake_sum / count, "logits/real": real_sum / count})
        if cfg.r1_gamma > 0 and self.step % cfg.d_reg_interval == 0:
            rec["loss/r1_penalty"] = self._phase_D_reg(reals, real_c, nrr, blur, share)
        update_ema(self.G_ema, self.G, ema_beta(cfg.batch, self.ema_kimg, self.cur_nimg, cfg.ema_rampup))
        self.G_ema.neural_rendering_resolution = nrr
        self.step += 1
        self.cur_nimg += cfg.batch
        self.augment.adjust(self.step)
        rec.update({"augment_p": self.augment.p, "neural_rendering_resolution": nrr,
                    "gpc_swap_prob": swap_p, "blur_sigma": blur})
        return rec

    # -- ticks, samples, snapshots ---------------------------------------------------------------------------
    def _diverged(self, what: str) -> None:
        snap = self.last_good_snapshot
        where = f"the last good snapshot is {snap}" if snap else "no snapshot had been written yet"
        msg = (f"training stopped at step {self.step} (kimg {self.cur_nimg / 1000:.3f}): {what}; {where}. "
               "Lower --g-lr/--d-lr or raise --r1-gamma, then rerun (the run resumes from the last snapshot).")
        if self.run is not None:
            self.run.log("ERROR " + msg)
        raise TrainingDiverged(msg)

    def _accumulate_tick(self, rec: dict) -> None:
        for k, v in rec.items():
            if k.startswith(("loss/", "logits/")):
                s, n = self._tick.get(k, (0.0, 0))
                self._tick[k] = (s + v, n + 1)

    def _end_tick(self, rec: dict) -> dict:
        t0, nimg0 = self._tick_start
        dt, dn = time.time() - t0, self.cur_nimg - nimg0
        out = {"step": self.step, "kimg": round(self.cur_nimg / 1000, 6), "nimg": self.cur_nimg}
        out.update({k: s / n for k, (s, n) in sorted(self._tick.items())})
        out.update({k: rec[k] for k in ("augment_p", "neural_rendering_resolution", "gpc_swap_prob", "blur_sigma")})
        out.update({"sec_per_step": dt / max(dn / self.cfg.batch, 1), "sec_per_kimg": dt / max(dn / 1000, 1e-9),
                    "peak_memory_mb": round(_peak_memory_mb(self.device), 1), "timestamp": time.time()})
        self._tick, self._tick_start = {}, (time.time(), self.cur_nimg)
        self.stats.append(out)
        if self.run is not None:
            self.run.append_stats(out)
            losses_txt = " ".join(f"{k.split('/', 1)[1]} {out[k]:.4f}" for k in ("loss/G", "loss/D") if k in out)
            self.run.log(f"step {self.step}/{self.total_steps} kimg {out['kimg']:.3f} {losses_txt} augment_p "
                         f"{out['augment_p']:.3f} sec/kimg {out['sec_per_kimg']:.2f} mem {out['peak_memory_mb']:.0f}"
                         " MB")
        return out

    @torch.no_grad()
    def sample_images(self, seeds: Sequence[int], trunc: float) -> torch.Tensor:
        """G_ema images (len(seeds) * 3, 3, R, R) in [-1, 1]: each seed at ``SAMPLE_YAWS``, deterministic."""
        G, r = self.G_ema, self.G_ema.rendering
        z = torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, G.z_dim) for s in seeds]))
        c_cond = frontal_label(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg,
                               batch_size=len(seeds)).to(self.device)
        ws = G.mapping(z.float().to(self.device), c_cond, truncation_psi=trunc)
        yaw = torch.tensor([math.pi / 2 + y for y in SAMPLE_YAWS])
        cams = camera_label(yaw, torch.full_like(yaw, math.pi / 2), radius=r.avg_camera_radius,
                            pivot=r.avg_camera_pivot, fov_deg=G.config.camera_fov_deg).to(self.device)
        images = [G.synthesis(ws[i:i + 1].expand(len(yaw), -1, -1), cams, noise_mode="const",
                              sampling="deterministic").image for i in range(len(seeds))]
        return torch.cat(images).cpu()

    def _check_weights(self) -> None:
        for name, module in (("generator", self.G), ("EMA generator", self.G_ema), ("discriminator", self.D)):
            if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                self._diverged(f"a {name} weight became NaN or infinite")

    def snapshot(self) -> Path | None:
        """Write samples and a snapshot of the current step (rank 0); all ranks wait for it."""
        self._check_weights()
        path = None
        if self.run is not None:
            if self.run.is_main:
                seeds = parse_seeds(self.cfg.sample_seeds, "--sample-seeds")
                grid = make_grid(to_uint8(self.sample_images(seeds, self.cfg.sample_trunc)), nrow=len(SAMPLE_YAWS))
                save_image(self.run.samples / f"fakes-{self.step:06d}.png", grid)
            meta = {"step": self.step, "kimg": self.cur_nimg / 1000, "augment_p": self.augment.p,
                    "source": "adapt3d finetune"}
            path = self.run.save_snapshot(self.step, self.G_ema, self.D, self.training_state(), meta)
            self.last_good_snapshot = path
            self.run.log(f"snapshot {path}")
        barrier()
        return path

    def data_loader(self):
        sampler = _StepSampler(len(self.dataset), self.cfg.batch, self.dist.rank, self.per_process, self.cfg.seed,
                               self.step, self.total_steps)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.workers,
                                           pin_memory=self.device.type == "cuda",
                                           persistent_workers=False)

    def run_training(self) -> FinetuneResult:
        """Train until ``cfg.kimg``; snapshots every ``snapshot_kimg`` and at the end; returns the result."""
        t0 = time.time()
        from tqdm.auto import tqdm
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc="finetune",
                   disable=not (self.cfg.progress and self.dist.is_main))
        self._tick_start = (time.time(), self.cur_nimg)
        rec: dict = {}
        for reals, real_c in self.data_loader():
            rec = self.train_step(reals, real_c)
            self._accumulate_tick(rec)
            done = self.step >= self.total_steps
            if self.step % self.tick_steps == 0 or done:
                bar.set_postfix(G=f"{rec['loss/G']:.3f}", D=f"{rec['loss/D']:.3f}", p=f"{self.augment.p:.2f}")
                self._end_tick(rec)
            if self.step % self.snapshot_steps == 0 or done:
                self.snapshot()
            for fn in self.callbacks:
                fn(self)
            bar.update(1)
        bar.close()
        final = None
        if self.run is not None:
            meta = {"step": self.step, "kimg": self.cur_nimg / 1000, "source": "adapt3d finetune"}
            final = self.run.save_final(self.G_ema, self.D, meta)
            self.run.log(f"done: {self.step} steps, {self.cur_nimg / 1000:.3f} kimg; final checkpoint {final}")
            barrier()
        return FinetuneResult(out=self.run.out if self.run else Path("."), generator=self.G_ema,
                              discriminator=self.D, step=self.step, cur_nimg=self.cur_nimg, final=final,
                              resumed_from=self.resumed_from, stats=self.stats, notes=self.notes,
                              seconds=time.time() - t0)
