"""3D StyleGAN-NADA: CLIP-guided fine-tuning of a tri-plane generator from several views per latent.

One step (:meth:`NadaTrainer.train_step`)::

    z (B, z_dim) ~ N(0, I)            ws = G_frozen.mapping(z, frontal camera, psi)   (the trainable mapping when
                                      it is in --train-parts)
    cameras (B * V, 25)               V random views per latent: yaw, pitch ~ U(--yaw-range-deg, --pitch-range-deg)
    x_train = G_train(ws, cameras)    x_frozen = G_frozen(ws, cameras)   same tri-planes per latent for its V views,
                                      constant noise, deterministic ray marching (the pair differs only by weights)
    loss = lambda_direction * L_dir(x_train, x_frozen) + lambda_global * L_glob(x_train)     (adapt3d.clip.directional)
    Adam(lr * 4/5, betas (0, 0.99 ** 0.8)) on the trainable parameters

With ``--auto-layer-k`` the trainable layers are re-chosen every ``--auto-layer-interval`` steps by
:mod:`adapt3d.training.layer_selection` (objective: the global CLIP loss of one render per latent). Frozen
parameters have ``requires_grad=False`` and no gradient, so Adam leaves them bit-identical.

:class:`ClipAdaptTrainer` is the shared machinery (cameras, paired renders, run folder, ticks, snapshots, resume,
sample grids) that :class:`adapt3d.training.itportrait.ITportraitTrainer` builds on. Every random draw of step
``s`` comes from ``derive_seed(seed, s, phase)``, so a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adapt3d.cameras import camera_label, frontal_label
from adapt3d.clip.directional import CLIPDirectionalLoss
from adapt3d.export.images import make_grid, save_image, to_uint8
from adapt3d.models.checkpoint import load_checkpoint
from adapt3d.training.layer_selection import (candidate_rows, layers_for_rows, prefixes_for_parts,
                                               select_w_layers, set_trainable)
from adapt3d.training.loop import TrainingDiverged
from adapt3d.training.nada_config import ClipAdaptConfig, NadaConfig, resolved
from adapt3d.training.run_folder import RunFolder, load_training_state
from adapt3d.training.schedules import ema_beta, update_ema
from adapt3d.utils.parsing import parse_seeds
from adapt3d.utils.seeds import derive_seed

__all__ = ["ClipAdaptTrainer", "NadaTrainer", "ClipAdaptResult", "nada_adam", "SAMPLE_YAWS"]

SAMPLE_YAWS = (-0.4, 0.0, 0.4)  # radians from frontal: the columns of the sample grids


def nada_adam(params, lr: float) -> torch.optim.Adam:
    """StyleGAN-NADA's optimiser: Adam(lr * 4/5, betas (0, 0.99 ** (4/5)))."""
    ratio = 4 / 5
    return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)


@dataclass
class ClipAdaptResult:
    """Result of a run: the adapted generator (eval mode) and its checkpoint folder ``final``."""

    out: Path
    generator: torch.nn.Module
    step: int
    final: Path | None
    resumed_from: Path | None = None
    stats: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ClipAdaptTrainer:
    """Shared machinery of CLIP-guided adaptation. Subclasses implement :meth:`train_step` and may extend
    :meth:`training_state` / :meth:`load_state` / :meth:`output_generator`."""

    source_name = "adapt3d nada"

    def __init__(self, cfg: ClipAdaptConfig, G, clip_loss: CLIPDirectionalLoss, device: torch.device | str = "cpu",
                 run_folder: RunFolder | None = None, resume_from: str | Path | None = None):
        self.cfg, self.clip = cfg, clip_loss
        self.device = torch.device(device)
        self.run = run_folder
        self.steps = resolved(cfg, "steps")
        self.batch, self.views = resolved(cfg, "batch"), resolved(cfg, "num_views")
        # Train mode for both: the same (non-fused) convolution path, so the pair differs only by the weights and
        # the first step's renders are identical (image direction 0).
        self.G_frozen = copy.deepcopy(G).to(self.device).train().requires_grad_(False)
        self.G = G.to(self.device).train()
        self.nrr = cfg.neural_rendering_resolution or int(G.neural_rendering_resolution)
        self.allowed = prefixes_for_parts(self.G, cfg.train_parts)
        self.params = [p for n, p in self.G.named_parameters() if any(n.startswith(a) for a in self.allowed)]
        if not self.params:
            raise ValueError(f"--train-parts {' '.join(cfg.train_parts)}: no generator parameter to train")
        self.trainable = set_trainable(self.G, self.allowed)
        self.map_trainable = any(a.startswith("backbone.mapping.") for a in self.allowed)
        self.opt = nada_adam(self.params, cfg.lr)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if cfg.ema_kimg else None
        self.step = 0
        self.stats: list[dict] = []
        self._tick: dict[str, tuple[float, int]] = {}
        self.resumed_from = Path(resume_from) if resume_from else None
        self.last_snapshot = self.resumed_from

    # -- randomness, cameras, renders -------------------------------------------------------------------------
    def rng(self, phase: str) -> torch.Generator:
        s = derive_seed(self.cfg.seed, self.step, phase)
        torch.manual_seed(s)
        return torch.Generator().manual_seed(s)

    def frontal(self, n: int) -> torch.Tensor:
        r = self.G_frozen.rendering
        return frontal_label(r.avg_camera_radius, r.avg_camera_pivot, self.G_frozen.config.camera_fov_deg,
                             batch_size=n).to(self.device)  # (n, 25)

    def cameras(self, yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
        r = self.G_frozen.rendering
        return camera_label(yaw, pitch, radius=r.avg_camera_radius, pivot=r.avg_camera_pivot,
                            fov_deg=self.G_frozen.config.camera_fov_deg).to(self.device)  # (n, 25)

    def random_cameras(self, gen: torch.Generator, n: int) -> torch.Tensor:
        """n cameras with yaw / pitch offsets uniform in the configured ranges (degrees from frontal)."""
        (y0, y1), (p0, p1) = self.cfg.yaw_range_deg, self.cfg.pitch_range_deg
        u = torch.rand(2, n, generator=gen)
        yaw = math.pi / 2 + torch.deg2rad(y0 + (y1 - y0) * u[0])
        pitch = math.pi / 2 + torch.deg2rad(p0 + (p1 - p0) * u[1])
        return self.cameras(yaw, pitch)

    def latents(self, gen: torch.Generator, n: int) -> torch.Tensor:
        return torch.randn(n, self.G.z_dim, generator=gen).to(self.device)  # (n, z_dim)

    def map(self, G, z: torch.Tensor, psi: float | None = None) -> torch.Tensor:
        """ws (n, num_ws, w_dim) of z, conditioned on the frontal camera."""
        psi = self.cfg.train_trunc if psi is None else psi
        return G.mapping(z, self.frontal(len(z)), truncation_psi=psi)

    def render(self, G, ws: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
        """Images (n * V, 3, R, R) in [-1, 1] of ws (n, num_ws, w_dim) at cams (n * V, 25), latent-major: the
        tri-planes of each latent are computed once and reused for its V views."""
        views = cams.shape[0] // ws.shape[0]
        planes = G.planes(ws, noise_mode="const").repeat_interleave(views, 0)  # (n * V, 3, C, P, P)
        return G.synthesis(ws.repeat_interleave(views, 0), cams, planes=planes, noise_mode="const",
                           sampling="deterministic", neural_rendering_resolution=self.nrr).image

    # -- one step ------------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        raise NotImplementedError

    def optimizer_step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, what: str) -> None:
        opt.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss)):
            self.diverged(f"the {what} loss became NaN or infinite")
        loss.backward()
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    self.diverged(f"a gradient of the {what} loss became NaN or infinite")
        opt.step()

    def update_ema(self) -> None:
        if self.G_ema is not None:
            update_ema(self.G_ema, self.G, ema_beta(self.batch, self.cfg.ema_kimg, self.step * self.batch))

    def diverged(self, what: str) -> None:
        where = f"the last good snapshot is {self.last_snapshot}" if self.last_snapshot else "no snapshot yet"
        msg = f"training stopped at step {self.step}: {what}; {where}. Lower --lr and rerun (it resumes)."
        if self.run is not None:
            self.run.log("ERROR " + msg)
        raise TrainingDiverged(msg)

    # -- state, snapshots ---------------------------------------------------------------------------------------
    def output_generator(self):
        """The generator a snapshot / the final checkpoint holds."""
        return self.G_ema if self.G_ema is not None else self.G

    def training_state(self) -> dict:
        cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
        return {"step": self.step, "G": cpu(self.G.state_dict()), "opt": self.opt.state_dict(),
                "rng": {"torch": torch.get_rng_state()}}

    def load_state(self, snapshot: Path) -> None:
        state = load_training_state(snapshot)
        try:
            self.G.load_state_dict(state["G"])
            self.opt.load_state_dict(state["opt"])
            if self.G_ema is not None:
                self.G_ema.load_state_dict(load_checkpoint(snapshot, load_discriminator=False).generator.state_dict())
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"--resume: snapshot {snapshot} does not fit this generator / --train-parts ({e})") from e
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        self._loaded_state = state

    @torch.no_grad()
    def sample_images(self, seeds: list[int], trunc: float) -> torch.Tensor:
        """Output-generator images (len(seeds) * 3, 3, R, R) in [-1, 1]: each seed at ``SAMPLE_YAWS``."""
        G = self.output_generator()
        was_training = G.training
        G.eval()
        z = torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, G.z_dim) for s in seeds]))
        ws = self.map(G, z.float().to(self.device), psi=trunc)
        yaw = torch.tensor([math.pi / 2 + y for y in SAMPLE_YAWS])
        cams = self.cameras(yaw, torch.full_like(yaw, math.pi / 2))
        images = torch.cat([G.synthesis(ws[i:i + 1].expand(len(yaw), -1, -1), cams, noise_mode="const",
                                        sampling="deterministic").image for i in range(len(seeds))])
        G.train(was_training)
        return images.cpu()

    def metadata(self) -> dict:
        return {"step": self.step, "source": self.source_name, "prompt": self.cfg.prompt,
                "source_text": self.cfg.source_text}

    def snapshot(self) -> Path | None:
        if self.run is None:
            return None
        for name, G in (("generator", self.G), ("output generator", self.output_generator())):
            if not all(bool(torch.isfinite(p).all()) for p in G.parameters()):
                self.diverged(f"a {name} weight became NaN or infinite")
        grid = make_grid(to_uint8(self.sample_images(parse_seeds(self.cfg.seeds), self.cfg.trunc)),
                         nrow=len(SAMPLE_YAWS))
        save_image(self.run.samples / f"fakes-{self.step:06d}.png", grid)
        path = self.run.save_snapshot(self.step, self.output_generator(), None, self.training_state(),
                                      self.metadata())
        self.last_snapshot = path
        self.run.log(f"snapshot {path}")
        return path

    # -- loop ---------------------------------------------------------------------------------------------------
    def _end_tick(self, t0: float, steps: int) -> dict:
        rec = {"step": self.step, "nimg": self.step * self.batch}
        rec.update({k: s / n for k, (s, n) in sorted(self._tick.items()) if n})
        rec.update(self.extra_stats())
        rec.update({"sec_per_step": (time.time() - t0) / max(steps, 1),
                    "peak_memory_mb": round(_peak_memory_mb(self.device), 1), "timestamp": time.time()})
        self._tick = {}
        self.stats.append(rec)
        if self.run is not None:
            self.run.append_stats(rec)
            shown = " ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in rec.items() if k.startswith("loss/"))
            self.run.log(f"step {self.step}/{self.steps} {shown} sec/step {rec['sec_per_step']:.2f}")
        return rec

    def extra_stats(self) -> dict:
        """Fields added to every stats.jsonl record."""
        return {}

    def run_training(self) -> ClipAdaptResult:
        from tqdm.auto import tqdm
        t_start = time.time()
        if self.resumed_from is not None:
            self.load_state(self.resumed_from)
        tick, snap = resolved(self.cfg, "tick_steps"), resolved(self.cfg, "snapshot_steps")
        bar = tqdm(total=self.steps, initial=min(self.step, self.steps), unit="step", desc=self.source_name,
                   disable=not self.cfg.progress)
        t0, s0 = time.time(), self.step
        while self.step < self.steps:
            rec = self.train_step()
            self.step += 1
            self.update_ema()
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k.startswith(("loss/", "clip/", "branch/")):
                    s, n = self._tick.get(k, (0.0, 0))
                    self._tick[k] = (s + float(v), n + 1)
            done = self.step >= self.steps
            if self.step % tick == 0 or done:
                self._end_tick(t0, self.step - s0)
                t0, s0 = time.time(), self.step
            if self.step % snap == 0 or done:
                self.snapshot()
            bar.update(1)
        bar.close()
        final = None
        G_out = self.output_generator()
        if self.run is not None:
            final = self.run.save_final(G_out, None, self.metadata())
            self.run.log(f"done: {self.step} steps; final checkpoint {final}")
        return ClipAdaptResult(out=self.run.out if self.run else Path("."), generator=G_out.eval(), step=self.step,
                               final=final, resumed_from=self.resumed_from, stats=self.stats,
                               seconds=time.time() - t_start)


class NadaTrainer(ClipAdaptTrainer):
    """3D StyleGAN-NADA (see the module docstring)."""

    source_name = "adapt3d nada"

    def __init__(self, cfg: NadaConfig, G, clip_loss: CLIPDirectionalLoss, **kw):
        super().__init__(cfg, G, clip_loss, **kw)
        self.selected: list[int] | None = None  # w rows of the current adaptive selection
        self.last_scores: list[float] | None = None

    def select_layers(self) -> list[int]:
        """Re-choose the trainable layers (NADA's adaptive selection, objective = global CLIP loss)."""
        cfg = self.cfg
        gen = self.rng("select")
        n = resolved(cfg, "auto_layer_batch")
        with torch.no_grad():
            ws0 = self.map(self.G_frozen, self.latents(gen, n))  # (n, num_ws, w_dim)
        cams = self.random_cameras(gen, n)

        def objective(ws: torch.Tensor) -> torch.Tensor:
            return self.clip.global_loss(self.render(self.G, ws, cams)).loss

        picked = select_w_layers(ws0, objective, cfg.auto_layer_k, cfg.auto_layer_iters, cfg.auto_layer_lr,
                                 candidates=candidate_rows(self.G, self.allowed))
        self.trainable = set_trainable(self.G, layers_for_rows(self.G, picked.chosen, self.allowed))
        self.selected, self.last_scores = picked.chosen, [float(s) for s in picked.scores]
        return picked.chosen

    def train_step(self) -> dict:
        cfg = self.cfg
        rec: dict = {}
        if cfg.auto_layer_k is not None and (self.selected is None or self.step % cfg.auto_layer_interval == 0):
            rec["layers"] = self.select_layers()
        gen = self.rng("nada")
        z = self.latents(gen, self.batch)
        with torch.no_grad():
            ws_frozen = self.map(self.G_frozen, z)
        ws = self.map(self.G, z) if self.map_trainable else ws_frozen
        cams = self.random_cameras(gen, self.batch * self.views)
        with torch.no_grad():
            frozen = self.clip.encode(self.render(self.G_frozen, ws_frozen, cams), grad=False)
        train = self.clip.encode(self.render(self.G, ws, cams))
        loss = torch.zeros((), device=self.device)
        if cfg.lambda_direction > 0:
            d = self.clip.directional_from_embeddings(train, frozen)
            loss = loss + cfg.lambda_direction * d.loss
            rec["loss/direction"] = float(d.loss.detach())
            rec.update({f"clip/{k}": v for k, v in d.per_model.items()})
        if cfg.lambda_global > 0:
            g = self.clip.global_from_embeddings(train)
            loss = loss + cfg.lambda_global * g.loss
            rec["loss/global"] = float(g.loss.detach())
        rec["loss/total"] = float(loss.detach())
        self.optimizer_step(self.opt, loss, "CLIP")
        return rec

    def extra_stats(self) -> dict:
        return {"layers": list(self.selected)} if self.selected is not None else {}

    def training_state(self) -> dict:
        state = super().training_state()
        state["selected"] = list(self.selected) if self.selected is not None else []
        return state

    def load_state(self, snapshot: Path) -> None:
        super().load_state(snapshot)
        chosen = [int(i) for i in self._loaded_state.get("selected", [])]
        if self.cfg.auto_layer_k is not None and chosen:
            self.selected = chosen
            self.trainable = set_trainable(self.G, layers_for_rows(self.G, chosen, self.allowed))
