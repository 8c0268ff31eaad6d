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
from adapt3d.training.run_folder import RunFolder
from adapt3d.training.trainer_core import TrainerCore
from adapt3d.utils.parsing import parse_seeds

__all__ = ["DistillTrainer", "DistillResult", "make_training_pose_sampler", "view_bands_deg"]


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


class DistillTrainer(TrainerCore):
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
                 callbacks: Sequence[Callable[["DistillTrainer"], None]] = (), notes: Sequence[str] = (), dist=None):
        from adapt3d.training.distributed import world_info
        super().__init__(device=device, run_folder=run_folder, resume_from=resume_from,
                         dist=dist if dist is not None else world_info(),
                         callbacks=callbacks, notes=notes, total_steps=resolved_steps(cfg),
                         tick_steps=cfg.tick_steps, snapshot_steps=cfg.snapshot_steps, progress=cfg.progress)
        self.cfg, self.prompts, self.sds, self.scorer = cfg, list(prompts), sds, scorer
        self.batch_gpu, self.accum = self.split_batch(cfg.batch, cfg.batch_gpu)
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
        # SDXL teachers also take pooled text embeddings (None for SD 1.x/2.x and teachers without them).
        encode_pooled = getattr(sds, "encode_pooled", lambda prompts: None)
        pooled = encode_pooled(self.prompts)
        self.pooled = pooled.to(self.device) if pooled is not None else None  # (P, Dp)
        self.view_pooled = torch.stack([encode_pooled(v) for v in views]).to(self.device) \
            if pooled is not None else None  # (3, P, Dp)
        self.uncond_pooled = encode_pooled([cfg.negative_prompt])  # (1, Dp) or None
        self.source_diversity: float | None = None
        self.init_weight_scales()
        self.resume_if_needed()

    # -- state (the trainer core saves, resumes and checks it) -----------------------------------------------------
    name = "distill"
    divergence_hint = "Lower --lr / --d-lr or --guidance-scale or set --grad-clip, then rerun (it resumes from the " \
        "last snapshot)."
    tick_prefixes = ("loss/", "sds/", "logits/", "views/")

    def trained_modules(self) -> dict:
        mods = {"conditioning": _ParamList(self.model.conditioning_parameters())}
        base = [p for p in self.model.base.parameters() if p.requires_grad]
        if base:
            mods["generator (--train-base)"] = _ParamList(base)
        if self.D is not None:
            mods["discriminator"] = self.D
        return mods

    def state_dict_extra(self) -> dict:
        return {"view_counts": list(self.view_counts), "opt_G": self.opt_G.state_dict(),
                "opt_D": self.opt_D.state_dict() if self.opt_D is not None else {},
                "source_diversity": self.source_diversity if self.source_diversity is not None else -1.0}

    def load_state_extra(self, snapshot: Path, state: dict) -> None:
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
        self.view_counts = [int(v) for v in state.get("view_counts", [0, 0, 0])]
        sd = float(state.get("source_diversity", -1.0))
        self.source_diversity = sd if sd >= 0 else None

    def write_checkpoint(self, folder: Path, metadata: dict) -> None:
        save_text_conditioned(folder, self.model, self.D, metadata=metadata, text_encoder=self.text_encoder_info)

    # -- one step --------------------------------------------------------------------------------------------------
    def _rng(self, phase: str, g: int = 0) -> torch.Generator:
        return self.seed_step(self.cfg.seed, phase, g)  # also seeds the global RNG (ray jitter, synthesis noise)

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

    def train_step(self) -> dict:
        """One step over the global batch: this process's micro-batches (global index g, randomness from
        ``(seed, step, phase, g)``), gradients summed over micro-batches and processes; a G or D update whose loss or
        gradient is not finite is skipped (on every process alike) and the step counted in ``skipped``."""
        cfg = self.cfg
        # Every step in train mode, whatever ran before it (eval renders, callbacks, a resume): the mode picks the
        # modulated convolutions' code path (fused or not), whose rounding differs.
        self.model.train()
        t_range = timestep_range(self.step, self.total_steps, cfg.t_range, cfg.t_anneal, cfg.t_max_final)
        share = self.batch_gpu / cfg.batch
        self.opt_G.zero_grad(set_to_none=True)
        fakes, names, total = [], [], None
        for g in self.micro_batch_indices(self.accum):
            fake, values = self._g_micro_batch(g, t_range, share)
            fakes.append((g, fake))
            names = sorted(values)
            vec = torch.stack([torch.as_tensor(values[k], dtype=torch.float32, device=self.device).reshape(())
                               for k in names]) * share
            total = vec if total is None else total + vec
        summed, ok = self.reduce_grads(self.g_params, total)
        if ok:
            self.opt_G.step()
        else:
            self.opt_G.zero_grad(set_to_none=True)
        rec: dict = {k: float(v) for k, v in zip(names, summed)}
        for v, name in enumerate(VIEWS):  # the global batch's share per view suffix -> run totals
            self.view_counts[v] += round(rec.get(f"views/{name}", 0.0) * cfg.batch)
        if self.D is not None:
            d_rec = self._step_D(fakes, share)
            ok = ok and not d_rec.pop("skipped_D")
            rec.update(d_rec)
        self.skipped += int(not ok)  # a step is skipped if its G or its D update was (the core bounds the count)
        self.step += 1
        rec.update({"skipped": float(not ok), "t_min": t_range[0], "t_max": t_range[1]})
        return rec

    def _g_micro_batch(self, g: int, t_range, share: float):
        """Forward + backward (weighted by ``share``) of generator micro-batch ``g``; returns its detached renders
        (image, raw image, cameras) for D and its values."""
        cfg, b = self.cfg, self.batch_gpu
        gen = self._rng("G", g)
        z = torch.randn((b, self.model.z_dim), generator=gen).to(self.device)
        poses, c = self._cameras(b, gen)
        k = torch.randint(len(self.prompts), (b,), generator=gen).to(self.device)
        view_ids = view_index(poses.yaw, cfg.view_front_deg, cfg.view_back_deg)  # (b,) 0 front, 1 side, 2 back
        views = view_ids.to(self.device) if cfg.view_prompts else None
        text = self.texts[k]  # (b, L, D)
        teacher = self.view_texts[views, k] if views is not None else text
        teacher_pooled = None if self.pooled is None else (
            self.view_pooled[views, k] if views is not None else self.pooled[k])  # (b, Dp)
        ws = self.model.mapping(z, self._c_cond(b), text, truncation_psi=cfg.trunc)
        out = self.model.synthesis(ws, c, text, neural_rendering_resolution=self.nrr, sampling="stochastic")
        values: dict = {f"views/{name}": float((view_ids == v).sum()) / b  # share per view suffix (camera band)
                        for v, name in enumerate(VIEWS)}
        loss = torch.zeros((), device=self.device)
        if cfg.lambda_sds > 0:
            s = self.sds(images=out.image, prompt_embeds=teacher, negative_prompt_embeds=self.uncond,
                         guidance_scale=cfg.guidance_scale, t_range=t_range, weighting=cfg.weighting,
                         grad_clip=cfg.grad_clip, generator=gen, pooled_prompt_embeds=teacher_pooled,
                         negative_pooled_prompt_embeds=self.uncond_pooled)
            loss = loss + cfg.lambda_sds * s.loss
            values.update({"sds/grad_norm": s.info["grad_norm"], "sds/t_mean": s.info["t_mean"],
                           "sds/nonfinite": float(s.info["nonfinite"])})
        if self.D is not None:
            g_gan = losses.loss_g_nonsaturating(self.D({"image": out.image, "image_raw": out.image_raw}, c))
            loss = loss + cfg.lambda_gan * g_gan
            values["loss/G_gan"] = g_gan.detach()
        (loss * share).backward()
        return (out.image.detach(), out.image_raw.detach(), c, k), values

    def _step_D(self, fakes, share: float) -> dict:
        """Logistic loss on the detached renders vs real images (+ lazy R1), micro-batch by micro-batch."""
        cfg = self.cfg
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        r1_due = cfg.r1_gamma > 0 and (self.step % cfg.d_reg_interval == 0)
        names, total = [], None
        for g, (fake, fake_raw, fake_c, prompt_ids) in fakes:
            gen = self._rng("D", g)
            real, real_raw, real_c = self._reals(fake.shape[0], gen, prompt_ids)
            fake_logits = self.D({"image": fake, "image_raw": fake_raw}, fake_c)
            real_logits = self.D({"image": real, "image_raw": real_raw}, real_c)
            loss = losses.loss_d_logistic(real_logits, fake_logits)
            (loss * share).backward()
            values = {"loss/D": loss.detach(), "logits/fake": fake_logits.detach().mean(),
                      "logits/real": real_logits.detach().mean()}
            if r1_due:
                image = real.detach().requires_grad_(True)
                raw = real_raw.detach().requires_grad_(True)
                r1 = losses.loss_r1(self.D({"image": image, "image_raw": raw}, real_c), [image, raw], cfg.r1_gamma)
                (r1.loss * cfg.d_reg_interval * share).backward()
                values["loss/r1_penalty"] = r1.penalty.detach()
            names = sorted(values)
            vec = torch.stack([values[k].float().reshape(()) for k in names]) * share
            total = vec if total is None else total + vec
        summed, d_ok = self.reduce_grads(list(self.D.parameters()), total)
        if d_ok:
            self.opt_D.step()
        self.D.requires_grad_(False)
        rec = {k: float(v) for k, v in zip(names, summed)}
        rec["skipped_D"] = not d_ok
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

    def tick_fields(self, rec: dict) -> dict:
        done = self.step >= self.total_steps
        diversity = self.measure_diversity() if (self.step % self.cfg.diversity_steps == 0 or done) else None
        return self._tick_extras(rec, diversity)

    def _tick_extras(self, rec: dict, diversity: dict | None) -> dict:
        out = {"t_min": rec.get("t_min"), "t_max": rec.get("t_max")}
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
        return out

    def done_message(self, final: Path) -> str:
        total = max(sum(self.view_counts), 1)
        shares = ", ".join(f"{name} {n / total:.0%}" for name, n in zip(VIEWS, self.view_counts))
        return f"done: {self.step} steps ({self.skipped} skipped); view suffixes {shares}; final checkpoint {final}"

    def tick_message(self, out: dict) -> str:
        parts = [f"{k} {out[k]:.4g}" for k in ("sds/grad_norm", "loss/G_gan", "loss/D", "diversity/mean")
                 if out.get(k) is not None]
        speed = f" sec/step {out['sec_per_step']:.3f}" if out["sec_per_step"] is not None else ""
        return f"step {self.step}/{self.total_steps} " + " ".join(parts) + speed

    def before_training(self) -> None:
        """Diversity of the untrained model, recorded as the step-0 stats record."""
        if self.step == 0:
            diversity = self.measure_diversity()
            out = {"step": 0, "skipped_total": self.skipped, **self._tick_extras({}, diversity),
                   "sec_per_step": None, "timestamp": time.time()}
            self.stats.append(out)
            if self.run is not None:
                self.run.append_stats(out)
                self.run.log(self.tick_message(out))

    def save_samples(self) -> list[Path]:  # type: ignore[override]
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

    def metadata(self) -> dict:
        return {"step": self.step, "source": "adapt3d distill", "prompts": self.prompts,
                "guidance_scale": self.cfg.guidance_scale}

    def run_training(self) -> DistillResult:
        """Train until ``total_steps``; snapshots every ``snapshot_steps`` and at the end; the final checkpoint."""
        final, seconds = self.train_loop()
        self.model.eval()
        return DistillResult(out=self.run.out if self.run else Path("."), model=self.model, step=self.step,
                             final=final, resumed_from=self.resumed_from, stats=self.stats, notes=self.notes,
                             seconds=seconds)


class _ParamList(torch.nn.Module):
    """A view of some parameters as one module (the weight checks of the trainer core take modules)."""

    def __init__(self, params):
        super().__init__()
        self._list = list(params)

    def parameters(self, recurse: bool = True):  # noqa: ARG002 - the listed parameters, not registered
        return iter(self._list)
