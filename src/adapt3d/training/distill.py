"""DreamPortrait-style distillation loop: SDS over a distribution of latents x cameras x prompts, plus a GAN
regulariser, training the condition adapters and gated cross-attention of a :class:`TextConditionedGenerator`.

One step (batch B; every random draw of step s comes from ``derive_seed(seed, s, phase)``, so a resumed run
continues exactly like an uninterrupted one):

1. draw z ~ N(0, I) (B, z_dim), cameras from the pose sampler around the generator's average camera, and prompt
   indices k ~ U{0..P-1}; map z with the frontal camera (as ``generate`` does), condition on prompt k's token
   embeddings, render (stochastic ray marching, random noise);
2. SDS (:class:`adapt3d.diffusion.sds.ScoreDistillation`) on the final images with the teacher prompt "<prompt k>,
   <front|side|back> view" (from the camera yaw) against the negative prompt; loss ``lambda_sds * L_sds``;
3. GAN: ``lambda_gan * softplus(-D(render, c))`` (EG3D's non-saturating loss); steps the generator's Adam over the
   conditioning modules (+ the ``--train-base`` parts). Steps whose loss or gradients are not finite are skipped
   (counted in ``skipped``);
4. D: logistic loss on the detached renders vs real images (``--gan-real``: the teacher's translations of source
   samples, of the same prompts as the fakes (default); source-generator samples with independent z and cameras;
   or a dataset; see :mod:`adapt3d.training.distill_reals`), lazy R1 every ``d_reg_interval`` steps
   (:mod:`adapt3d.training.losses`).

At each diversity measurement, ``direction/source_distance`` in stats.jsonl is the mean over prompts and fixed
seeds of ``1 - cos(f(prompt render), f(source render))`` (CLIP image embeddings, or pixels): how far the outputs
have moved from the source; a regulariser that pulls back toward the source keeps it down.

Reused from the fine-tuning machinery: losses, ``derive_seed``, ``RunFolder`` (log, stats.jsonl, options,
snapshot discovery), ``load_training_state``, ``lazy_regularization_scaling``, ``freeze_prefixes``.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from adapt3d.cameras import frontal_label, make_pose_sampler
from adapt3d.diffusion.sds import VIEWS, ScoreDistillation, timestep_range, view_index, view_prompt
from adapt3d.export.images import make_grid, save_image, to_uint8
from adapt3d.models.discriminator import filtered_resizing
from adapt3d.models.text_conditioned import TextConditionedGenerator, load_text_conditioned, save_text_conditioned
from adapt3d.models.triplane import TriPlaneGenerator
from adapt3d.training import losses
from adapt3d.training.distill_config import DistillConfig, resolved_gan_options, resolved_steps
from adapt3d.training.distill_eval import SAMPLE_YAWS, diversity_scores, render_fixed, source_distance
from adapt3d.training.freeze import freeze_prefixes
from adapt3d.training.loop import TrainingDiverged
from adapt3d.training.run_folder import TRAINING_STATE, RunFolder, load_training_state
from adapt3d.utils.io import atomic_path, replace_folder
from adapt3d.utils.parsing import parse_seeds
from adapt3d.utils.seeds import derive_seed

__all__ = ["DistillTrainer", "DistillResult", "make_training_pose_sampler", "view_bands_deg"]

STATE_FORMAT = "adapt3d-training-state"


@dataclass
class DistillResult:
    """Result of a distillation run; ``model`` is the trained generator (eval mode), ``final`` its folder."""

    out: Path
    model: TextConditionedGenerator
    step: int
    final: Path | None
    resumed_from: Path | None = None
    stats: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def view_bands_deg(cfg: DistillConfig) -> tuple[tuple[float, float], ...]:
    """|azimuth| bands (degrees) of the front, side and back views of --pose-sampler views."""
    back_from = 180.0 - cfg.view_back_deg
    return ((0.0, cfg.view_front_deg), (cfg.view_front_deg, min(cfg.side_max_deg, back_from)), (back_from, 180.0))


def make_training_pose_sampler(name: str, yaw_spread: float, pitch_spread: float, cfg: DistillConfig | None = None):
    """Pose sampler around the frontal camera with the given spreads (radians); ``views`` needs ``cfg``."""
    half = math.pi / 2
    if name == "views":
        if cfg is None:
            raise ValueError("--pose-sampler views: needs the view options")
        return make_pose_sampler("yaw_bins", bins_deg=view_bands_deg(cfg), shares=tuple(cfg.view_shares),
                                 pitch_std=pitch_spread)
    if name == "gaussian":
        return make_pose_sampler("gaussian", yaw_std=yaw_spread, pitch_std=pitch_spread)
    if name == "uniform":
        return make_pose_sampler("uniform", yaw_range=(half - yaw_spread, half + yaw_spread),
                                 pitch_range=(half - pitch_spread, half + pitch_spread))
    if name == "sinusoidal":
        return make_pose_sampler("sinusoidal", yaw_range=yaw_spread, pitch_range=pitch_spread)
    raise ValueError(f"--pose-sampler: {name!r} is not one of views, gaussian, uniform, sinusoidal")


class DistillTrainer:
    """Trains ``model``'s conditioning against the teacher ``sds`` on ``prompts`` (components passed in).

    ``D`` is the discriminator (None when ``cfg.lambda_gan == 0``); ``source`` the frozen source generator for
    real samples (default: ``model.base`` when the base is frozen); ``dataset`` an EG3D dataset of real images
    instead; ``scorer`` a CLIP scorer for diversity. ``run_folder=None`` writes nothing (benchmarks, tests).
    """

    def __init__(self, cfg: DistillConfig, model: TextConditionedGenerator, sds: ScoreDistillation,
                 prompts: Sequence[str], D: torch.nn.Module | None = None, source: TriPlaneGenerator | None = None,
                 dataset=None, scorer=None, device: torch.device | str = "cpu", run_folder: RunFolder | None = None,
                 teacher_reals=None,
                 resume_from: str | Path | None = None, text_encoder_info: dict | None = None,
                 callbacks: Sequence[Callable[["DistillTrainer"], None]] = (), notes: Sequence[str] = ()):
        self.cfg, self.prompts, self.sds, self.scorer = cfg, list(prompts), sds, scorer
        self.device = torch.device(device)
        self.run, self.callbacks, self.notes = run_folder, list(callbacks), list(notes)
        self.text_encoder_info = dict(text_encoder_info or {})
        self.model = model.to(self.device).train()
        self.D = D.to(self.device).train().requires_grad_(False) if D is not None and cfg.lambda_gan > 0 else None
        self.dataset = dataset
        self.teacher_reals = teacher_reals  # distill_reals.TeacherReals: the teacher's translations (--gan-real)
        kind = resolved_gan_options(cfg)["gan_real"]
        if self.D is not None and (kind == "teacher") != (teacher_reals is not None):
            raise ValueError(f"--gan-real {kind}: the trainer needs teacher_reals exactly when the discriminator's "
                             "reals are the teacher's (adapt3d.training.distill_reals.build_teacher_reals)")
        if self.D is not None and kind == "dataset" and dataset is None:
            raise ValueError("--gan-real dataset: the trainer needs the dataset")
        # What trains: the conditioning modules, plus the named base parts.
        self.model.base.requires_grad_(False)
        prefixes = freeze_prefixes(self.model.base, cfg.train_base) if cfg.train_base else []
        base_params = [p for n, p in self.model.base.named_parameters() if any(n.startswith(x) for x in prefixes)]
        for p in base_params:
            p.requires_grad_(True)
        cond_params = self.model.conditioning_parameters()
        for p in cond_params:
            p.requires_grad_(True)
        groups = [{"params": cond_params, "lr": cfg.lr}]
        if base_params:
            groups.append({"params": base_params, "lr": cfg.base_lr})
        self.g_params = cond_params + base_params
        self.opt_G = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-8)
        if source is None:
            source = self.model.base if not base_params else copy.deepcopy(self.model.base)
        self.source = source.to(self.device).requires_grad_(False)
        if self.source is not self.model.base:  # the default source *is* the base: it trains in train mode
            self.source.eval()
        self.opt_D = None
        if self.D is not None:
            d_lr, d_betas = losses.lazy_regularization_scaling(cfg.d_lr, (0.0, 0.99),
                                                                cfg.d_reg_interval if cfg.r1_gamma > 0 else None)
            self.opt_D = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=d_betas, eps=1e-8)
        self.pose_sampler = make_training_pose_sampler(cfg.pose_sampler, cfg.yaw_spread, cfg.pitch_spread, cfg)
        self.view_counts = [0, 0, 0]  # teacher prompts per view suffix (front, side, back) over the whole run
        self.nrr = cfg.neural_rendering_resolution or int(self.model.neural_rendering_resolution)
        # Prompt embeddings, computed once: generator conditioning (plain prompts) and teacher prompts per view.
        self.texts = sds.encode_prompt(self.prompts).to(self.device)  # (P, L, D)
        views = [[view_prompt(p, v) for p in self.prompts] for v in range(3)]
        self.view_texts = torch.stack([sds.encode_prompt(v) for v in views]).to(self.device)  # (3, P, L, D)
        self.uncond = sds.encode_prompt([cfg.negative_prompt]).to(self.device)  # (1, L, D)
        self.total_steps = resolved_steps(cfg)
        self.step, self.skipped = 0, 0
        self.stats: list[dict] = []
        self._tick: dict[str, tuple[float, int]] = {}
        self.source_diversity: float | None = None
        self.resumed_from = Path(resume_from) if resume_from else None
        if self.resumed_from is not None:
            self._load_snapshot(self.resumed_from)

    # -- resume ---------------------------------------------------------------------------------------------------
    def training_state(self) -> dict:
        return {"step": self.step, "skipped": self.skipped, "view_counts": list(self.view_counts),
                "opt_G": self.opt_G.state_dict(),
                "opt_D": self.opt_D.state_dict() if self.opt_D is not None else {},
                "source_diversity": self.source_diversity if self.source_diversity is not None else -1.0,
                "rng": {"torch": torch.get_rng_state()}}

    def _load_snapshot(self, snapshot: Path) -> None:
        state = load_training_state(snapshot)
        try:
            loaded, D, _ = load_text_conditioned(snapshot, load_discriminator=self.D is not None)
            self.model.load_state_dict(loaded.state_dict())
            if self.D is not None:
                if D is None:
                    raise ValueError("the snapshot has no discriminator")
                self.D.load_state_dict(D.state_dict())
                self.opt_D.load_state_dict(state["opt_D"])
            self.opt_G.load_state_dict(state["opt_G"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"--resume: snapshot {snapshot} does not fit this model/options ({e})") from e
        self.step, self.skipped = int(state["step"]), int(state.get("skipped", 0))
        self.view_counts = [int(v) for v in state.get("view_counts", [0, 0, 0])]
        sd = float(state.get("source_diversity", -1.0))
        self.source_diversity = sd if sd >= 0 else None
        torch.set_rng_state(state["rng"]["torch"])

    # -- one step --------------------------------------------------------------------------------------------------
    def _rng(self, phase: str) -> torch.Generator:
        s = derive_seed(self.cfg.seed, self.step, phase)
        torch.manual_seed(s)  # ray jitter and synthesis noise use the global RNG
        return torch.Generator().manual_seed(s)

    def _c_cond(self, n: int) -> torch.Tensor:
        r = self.model.rendering
        return frontal_label(r.avg_camera_radius, r.avg_camera_pivot, self.model.config.camera_fov_deg,
                             batch_size=n).to(self.device)

    def _cameras(self, n: int, gen: torch.Generator):
        poses = self.pose_sampler.sample(n, gen)
        r = self.model.rendering
        return poses, poses.labels(r.avg_camera_radius, r.avg_camera_pivot, self.model.config.camera_fov_deg
                                   ).to(self.device)

    @torch.no_grad()
    def _reals(self, n: int, gen: torch.Generator, prompt_ids: torch.Tensor | None = None):
        """Real images (n, 3, R, R), raw images (n, 3, r, r) and cameras (n, 25) for the discriminator; with a
        teacher pool, one of each fake's prompt (``prompt_ids`` (n,))."""
        if self.teacher_reals is not None:
            ids = prompt_ids.cpu() if prompt_ids is not None else torch.randint(len(self.prompts), (n,), generator=gen)
            img, c = self.teacher_reals.sample(ids, gen)
            img, c = img.to(self.device), c.to(self.device)
            return img, filtered_resizing(img, self.nrr), c
        if self.dataset is not None:
            idx = torch.randint(len(self.dataset), (n,), generator=gen).tolist()
            items = [self.dataset[i] for i in idx]
            img = torch.stack([it[0] for it in items]).to(self.device).float() / 127.5 - 1
            c = torch.stack([it[1] for it in items]).to(self.device)
            return img, filtered_resizing(img, self.nrr), c
        z = torch.randn((n, self.model.z_dim), generator=gen).to(self.device)
        _, c = self._cameras(n, gen)
        ws = self.source.mapping(z, self._c_cond(n), truncation_psi=self.cfg.trunc)
        out = self.source.synthesis(ws, c, neural_rendering_resolution=self.nrr, sampling="stochastic")
        return out.image, out.image_raw, c

    def _grads_finite(self, params) -> bool:
        return all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)

    def train_step(self) -> dict:
        cfg, b = self.cfg, self.cfg.batch
        # Every step in train mode, whatever ran before it (eval renders, callbacks, a resume): the mode picks the
        # modulated convolutions' code path (fused or not), whose rounding differs.
        self.model.train()
        gen = self._rng("G")
        z = torch.randn((b, self.model.z_dim), generator=gen).to(self.device)
        poses, c = self._cameras(b, gen)
        k = torch.randint(len(self.prompts), (b,), generator=gen).to(self.device)
        view_ids = view_index(poses.yaw, cfg.view_front_deg, cfg.view_back_deg)  # (B,) 0 front, 1 side, 2 back
        views = view_ids.to(self.device) if cfg.view_prompts else None
        text = self.texts[k]  # (B, L, D)
        teacher = self.view_texts[views, k] if views is not None else text
        self.opt_G.zero_grad(set_to_none=True)
        ws = self.model.mapping(z, self._c_cond(b), text, truncation_psi=cfg.trunc)
        out = self.model.synthesis(ws, c, text, neural_rendering_resolution=self.nrr, sampling="stochastic")
        t_range = timestep_range(self.step, self.total_steps, cfg.t_range, cfg.t_anneal, cfg.t_max_final)
        rec: dict = {}
        for v, name in enumerate(VIEWS):  # share of the batch per view suffix (the camera's band without suffixes)
            count = int((view_ids == v).sum())
            rec[f"views/{name}"] = count / b
            self.view_counts[v] += count
        loss = torch.zeros((), device=self.device)
        if cfg.lambda_sds > 0:
            s = self.sds(images=out.image, prompt_embeds=teacher, negative_prompt_embeds=self.uncond,
                         guidance_scale=cfg.guidance_scale, t_range=t_range, weighting=cfg.weighting,
                         grad_clip=cfg.grad_clip, generator=gen)
            loss = loss + cfg.lambda_sds * s.loss
            rec.update({"sds/grad_norm": s.info["grad_norm"], "sds/t_mean": s.info["t_mean"],
                        "sds/nonfinite": float(s.info["nonfinite"])})
        if self.D is not None:
            g_gan = losses.loss_g_nonsaturating(self.D({"image": out.image, "image_raw": out.image_raw}, c))
            loss = loss + cfg.lambda_gan * g_gan
            rec["loss/G_gan"] = float(g_gan.detach())
        loss.backward()
        ok = bool(torch.isfinite(loss.detach())) and self._grads_finite(self.g_params)
        if ok:
            self.opt_G.step()
        else:
            self.skipped += 1
            self.opt_G.zero_grad(set_to_none=True)
        if self.D is not None:
            rec.update(self._step_D(out.image.detach(), out.image_raw.detach(), c, k))
        self.step += 1
        rec.update({"skipped": float(not ok), "t_min": t_range[0], "t_max": t_range[1]})
        return rec

    def _step_D(self, fake, fake_raw, fake_c, prompt_ids=None) -> dict:
        cfg = self.cfg
        gen = self._rng("D")
        real, real_raw, real_c = self._reals(fake.shape[0], gen, prompt_ids)
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        fake_logits = self.D({"image": fake, "image_raw": fake_raw}, fake_c)
        real_logits = self.D({"image": real, "image_raw": real_raw}, real_c)
        loss = losses.loss_d_logistic(real_logits, fake_logits)
        loss.backward()
        rec = {"loss/D": float(loss.detach()), "logits/fake": float(fake_logits.detach().mean()),
               "logits/real": float(real_logits.detach().mean())}
        if cfg.r1_gamma > 0 and (self.step % cfg.d_reg_interval == 0):
            image = real.detach().requires_grad_(True)
            raw = real_raw.detach().requires_grad_(True)
            r1 = losses.loss_r1(self.D({"image": image, "image_raw": raw}, real_c), [image, raw], cfg.r1_gamma)
            (r1.loss * cfg.d_reg_interval).backward()
            rec["loss/r1_penalty"] = float(r1.penalty.detach())
        if bool(torch.isfinite(loss.detach())) and self._grads_finite(self.D.parameters()):
            self.opt_D.step()
        self.D.requires_grad_(False)
        return rec

    # -- monitoring, samples, snapshots ---------------------------------------------------------------------------
    def measure_diversity(self) -> dict:
        seeds = parse_seeds(self.cfg.diversity_seeds, "--diversity-seeds")
        was_training = self.model.training
        self.model.eval()
        d = diversity_scores(self.model, self.texts, seeds, 1.0, self.scorer, self.source_diversity)
        d["source_distance"] = source_distance(self.model, self.texts, seeds, 1.0, self.scorer)
        self.model.train(was_training)
        self.source_diversity = d["source"]
        return d

    def _end_tick(self, rec: dict, t0: float, steps: int, diversity: dict | None) -> dict:
        out = {"step": self.step, "skipped_total": self.skipped}
        out.update({k: s / n for k, (s, n) in sorted(self._tick.items())})
        out.update({"t_min": rec.get("t_min"), "t_max": rec.get("t_max"),
                    "sec_per_step": (time.time() - t0) / steps if steps else None, "timestamp": time.time()})
        out.update({f"gate/{k}": v for k, v in self.model.gates().items()})
        total = sum(self.view_counts)
        if total:  # shares of the view suffixes over the whole run so far (views/<name>: this tick)
            out.update({f"views_run/{name}": n / total for name, n in zip(VIEWS, self.view_counts)})
        if diversity is not None:
            out.update({"diversity/mean": diversity["mean"], "diversity/source": diversity["source"],
                        "diversity/ratio_to_source": diversity["ratio_to_source"]})
            out.update({f"diversity/prompt{k:02d}": v for k, v in enumerate(diversity["prompts"])})
            if "source_distance" in diversity:
                out["direction/source_distance"] = diversity["source_distance"]
        self._tick = {}
        self.stats.append(out)
        if self.run is not None:
            self.run.append_stats(out)
            parts = [f"{k} {out[k]:.4g}" for k in ("sds/grad_norm", "loss/G_gan", "loss/D", "diversity/mean")
                     if out.get(k) is not None]
            speed = f" sec/step {out['sec_per_step']:.3f}" if out["sec_per_step"] is not None else ""
            self.run.log(f"step {self.step}/{self.total_steps} " + " ".join(parts) + speed)
        return out

    def save_samples(self) -> list[Path]:
        """Per-prompt grids ``samples/promptKK-<step>.png``: rows = sample seeds, columns = three yaws."""
        if self.run is None:
            return []
        seeds = parse_seeds(self.cfg.sample_seeds, "--sample-seeds")
        was_training = self.model.training
        self.model.eval()
        paths = []
        if not (self.run.samples / "source.png").is_file():
            imgs = render_fixed(self.model, None, seeds, 0.7, SAMPLE_YAWS)
            paths.append(save_image(self.run.samples / "source.png", make_grid(to_uint8(imgs), nrow=3)))
        for k in range(len(self.prompts)):
            imgs = render_fixed(self.model, self.texts[k:k + 1], seeds, 0.7, SAMPLE_YAWS)
            paths.append(save_image(self.run.samples / f"prompt{k:02d}-{self.step:06d}.png",
                                    make_grid(to_uint8(imgs), nrow=3)))
        self.model.train(was_training)
        return paths

    def _metadata(self) -> dict:
        return {"step": self.step, "source": "adapt3d distill", "prompts": self.prompts,
                "guidance_scale": self.cfg.guidance_scale}

    def _check_weights(self) -> None:
        for p in self.g_params:
            if not bool(torch.isfinite(p).all()):
                snap = self.run.latest_snapshot() if self.run is not None else None
                raise TrainingDiverged(f"training stopped at step {self.step}: a generator weight became NaN or "
                                       f"infinite; the last good snapshot is {snap}. Lower --lr or --guidance-scale"
                                       " or set --grad-clip, then rerun (it resumes from the last snapshot).")

    def write_checkpoint(self, dest: Path, with_state: bool) -> Path:
        """Write the model (+ D, + training_state.pt) into ``dest`` atomically (temporary folder, rename)."""
        tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_text_conditioned(tmp, self.model, self.D, metadata=self._metadata(), text_encoder=self.text_encoder_info)
        if with_state:
            with atomic_path(tmp / TRAINING_STATE) as t:
                torch.save({"format": STATE_FORMAT, "version": 1, **self.training_state()}, t)
        replace_folder(tmp, dest)
        return dest

    def snapshot(self) -> Path | None:
        self._check_weights()
        if self.run is None:
            return None
        self.save_samples()
        path = self.write_checkpoint(self.run.snapshot_path(self.step), with_state=True)
        self.run.log(f"snapshot {path}")
        return path

    def run_training(self) -> DistillResult:
        """Train until ``total_steps``; snapshots every ``snapshot_steps`` and at the end; the final checkpoint."""
        from tqdm.auto import tqdm
        cfg, t_start = self.cfg, time.time()
        bar = tqdm(total=self.total_steps, initial=min(self.step, self.total_steps), unit="step", desc="distill",
                   disable=not cfg.progress)
        diversity = self.measure_diversity() if self.step == 0 else None
        if diversity is not None:
            self._end_tick({}, time.time(), 0, diversity)
        t0, steps_in_tick, rec = time.time(), 0, {}
        while self.step < self.total_steps:
            rec = self.train_step()
            steps_in_tick += 1
            for k, v in rec.items():
                if k.startswith(("loss/", "sds/", "logits/", "views/")):
                    s, n = self._tick.get(k, (0.0, 0))
                    self._tick[k] = (s + v, n + 1)
            done = self.step >= self.total_steps
            if self.step % cfg.tick_steps == 0 or done:
                div = self.measure_diversity() if (self.step % cfg.diversity_steps == 0 or done) else None
                self._end_tick(rec, t0, steps_in_tick, div)
                t0, steps_in_tick = time.time(), 0
            if self.step % cfg.snapshot_steps == 0 or done:
                self.snapshot()
            for fn in self.callbacks:
                fn(self)
            bar.update(1)
        bar.close()
        final = None
        if self.run is not None:
            self._check_weights()
            final = self.write_checkpoint(self.run.final, with_state=False)
            total = max(sum(self.view_counts), 1)
            shares = ", ".join(f"{name} {n / total:.0%}" for name, n in zip(VIEWS, self.view_counts))
            self.run.log(f"done: {self.step} steps ({self.skipped} skipped); view suffixes {shares}; final "
                         f"checkpoint {final}")
        self.model.eval()
        return DistillResult(out=self.run.out if self.run else Path("."), model=self.model, step=self.step,
                             final=final, resumed_from=self.resumed_from, stats=self.stats, notes=self.notes,
                             seconds=time.time() - t_start)
