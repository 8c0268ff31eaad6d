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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adapt3d.cameras import camera_label, frontal_label
from adapt3d.clip.directional import CLIPDirectionalLoss
from adapt3d.export.images import make_grid, save_image, to_uint8
from adapt3d.models.checkpoint import load_checkpoint, save_checkpoint
from adapt3d.training.layer_selection import (candidate_rows, layers_for_rows, prefixes_for_parts,
                                               select_w_layers, set_trainable)
from adapt3d.training.nada_config import ClipAdaptConfig, NadaConfig, resolved
from adapt3d.training.run_folder import RunFolder
from adapt3d.training.schedules import ema_beta, update_ema
from adapt3d.training.trainer_core import TrainerCore
from adapt3d.utils.parsing import parse_seeds

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


class ClipAdaptTrainer(TrainerCore):
    """Shared machinery of CLIP-guided adaptation on the trainer core. Subclasses implement :meth:`train_step`
    (which does not advance the step: :meth:`one_step` does, then updates the EMA) and may extend
    :meth:`state_dict_extra` / :meth:`load_state_extra` / :meth:`output_generator` / :meth:`trained_modules`."""

    source_name = "adapt3d nada"
    name = "nada"
    divergence_hint = "Lower --lr and rerun (it resumes)."
    tick_prefixes = ("loss/", "clip/", "branch/")

    def __init__(self, cfg: ClipAdaptConfig, G, clip_loss: CLIPDirectionalLoss, device: torch.device | str = "cpu",
                 run_folder: RunFolder | None = None, resume_from: str | Path | None = None,
                 callbacks=(), dist=None):
        from adapt3d.training.distributed import world_info
        super().__init__(device=device, run_folder=run_folder, resume_from=resume_from,
                         dist=dist if dist is not None else world_info(),
                         callbacks=callbacks, total_steps=resolved(cfg, "steps"),
                         tick_steps=resolved(cfg, "tick_steps"), snapshot_steps=resolved(cfg, "snapshot_steps"),
                         progress=cfg.progress)
        self.name = self.source_name.split()[-1]
        self.cfg, self.clip = cfg, clip_loss
        self.steps = self.total_steps
        self.batch, self.views = resolved(cfg, "batch"), resolved(cfg, "num_views")
        self.batch_gpu, self.accum = self.split_batch(self.batch, cfg.batch_gpu)
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

    # -- randomness, cameras, renders -------------------------------------------------------------------------
    def rng(self, phase: str) -> torch.Generator:
        return self.seed_step(self.cfg.seed, phase)

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

    def micro_batches(self):
        """(global index g, latent slice, camera slice) of this process's micro-batches of the global batch."""
        b, v = self.batch_gpu, self.views
        for g in self.micro_batch_indices(self.accum):
            yield g, slice(g * b, (g + 1) * b), slice(g * b * v, (g + 1) * b * v)

    def accumulate_step(self, opt: torch.optim.Optimizer, params, micro_loss, what: str) -> dict:
        """One data-parallel optimiser step: ``micro_loss(g, latents, cameras) -> (loss, {name: value})`` for each
        micro-batch of this process; gradients and values are weighted by the micro-batch's share of the global
        batch and summed over processes (one all-reduce); NaN/inf stops the run; returns the summed values."""
        opt.zero_grad(set_to_none=True)
        share = self.batch_gpu / self.batch
        names: list[str] = []
        total: torch.Tensor | None = None
        for g, lat, cam in self.micro_batches():
            loss, values = micro_loss(g, lat, cam)
            (loss * share).backward()
            names = sorted(values)
            vec = torch.stack([torch.as_tensor(values[k], dtype=torch.float32, device=self.device).reshape(())
                               for k in names]) * share
            total = vec if total is None else total + vec
        summed = self.reduce_and_check(params, total, f"{what} loss")
        opt.step()
        return {k: float(v) for k, v in zip(names, summed)}

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

    # -- state, snapshots ---------------------------------------------------------------------------------------
    def output_generator(self):
        """The generator a snapshot / the final checkpoint holds."""
        return self.G_ema if self.G_ema is not None else self.G

    def trained_modules(self) -> dict:
        mods = {"generator": self.G}
        if self.G_ema is not None:
            mods["EMA generator"] = self.G_ema
        return mods

    def state_dict_extra(self) -> dict:
        return {"G": self.cpu_state(self.G), "opt": self.opt.state_dict()}

    def load_state_extra(self, snapshot: Path, state: dict) -> None:
        try:
            self.G.load_state_dict(state["G"])
            self.opt.load_state_dict(state["opt"])
            if self.G_ema is not None:
                self.G_ema.load_state_dict(load_checkpoint(snapshot, load_discriminator=False).generator.state_dict())
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"--resume: snapshot {snapshot} does not fit this generator / --train-parts ({e})") from e
        self._loaded_state = state

    def load_state(self, snapshot: Path) -> None:
        """Resume from ``snapshot`` now (the run loop does this itself for ``resume_from``)."""
        self.resumed_from, self._resumed = Path(snapshot), False
        self.resume_if_needed()

    def write_checkpoint(self, folder: Path, metadata: dict) -> None:
        save_checkpoint(folder, self.output_generator(), None, metadata=metadata)

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

    @property
    def last_snapshot(self) -> Path | None:
        return self.last_good_snapshot

    def save_samples(self) -> None:
        grid = make_grid(to_uint8(self.sample_images(parse_seeds(self.cfg.seeds), self.cfg.trunc)),
                         nrow=len(SAMPLE_YAWS))
        save_image(self.run.samples / f"fakes-{self.step:06d}.png", grid)

    # -- loop (the trainer core's) ------------------------------------------------------------------------------
    def one_step(self) -> dict:
        rec = self.train_step()
        self.step += 1
        self.update_ema()
        return rec

    def tick_fields(self, rec: dict) -> dict:
        return {"nimg": self.step * self.batch, **self.extra_stats()}

    def extra_stats(self) -> dict:
        """Fields added to every stats.jsonl record."""
        return {}

    def run_training(self) -> ClipAdaptResult:
        final, seconds = self.train_loop()
        G_out = self.output_generator()
        return ClipAdaptResult(out=self.run.out if self.run else Path("."), generator=G_out.eval(), step=self.step,
                               final=final, resumed_from=self.resumed_from, stats=self.stats, seconds=seconds)


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
        z = self.latents(gen, self.batch)  # (B, z_dim): the global batch, every process draws the same
        cams = self.random_cameras(gen, self.batch * self.views)  # (B * V, 25)

        def micro_loss(g: int, lat: slice, cam: slice):
            with torch.no_grad():
                ws_frozen = self.map(self.G_frozen, z[lat])
            ws = self.map(self.G, z[lat]) if self.map_trainable else ws_frozen
            with torch.no_grad():
                frozen = self.clip.encode(self.render(self.G_frozen, ws_frozen, cams[cam]), grad=False)
            train = self.clip.encode(self.render(self.G, ws, cams[cam]))
            loss = torch.zeros((), device=self.device)
            values: dict = {}
            if cfg.lambda_direction > 0:
                d = self.clip.directional_from_embeddings(train, frozen)
                loss = loss + cfg.lambda_direction * d.loss
                values["loss/direction"] = d.loss.detach()
                values.update({f"clip/{k}": v for k, v in d.per_model.items()})
            if cfg.lambda_global > 0:
                gl = self.clip.global_from_embeddings(train)
                loss = loss + cfg.lambda_global * gl.loss
                values["loss/global"] = gl.loss.detach()
            values["loss/total"] = loss.detach()
            return loss, values

        rec.update(self.accumulate_step(self.opt, self.params, micro_loss, "CLIP"))
        return rec

    def extra_stats(self) -> dict:
        return {"layers": list(self.selected)} if self.selected is not None else {}

    def state_dict_extra(self) -> dict:
        state = super().state_dict_extra()
        state["selected"] = list(self.selected) if self.selected is not None else []
        return state

    def load_state_extra(self, snapshot: Path, state: dict) -> None:
        super().load_state_extra(snapshot, state)
        chosen = [int(i) for i in state.get("selected", [])]
        if self.cfg.auto_layer_k is not None and chosen:
            self.selected = chosen
            self.trainable = set_trainable(self.G, layers_for_rows(self.G, chosen, self.allowed))
