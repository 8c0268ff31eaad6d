"""ITportrait on a tri-plane generator: image-guided (APT) and image-text (ITE) stages, alternated.

Three generators start from the source: ``G_frozen`` (fixed), ``G_img`` (stage 1, the image-style model) and ``G``
(stage 2, the output of ``fusion`` and ``text``). The reference is an inverted latent ``w_ref`` (1, num_ws, w_dim),
its camera ``c_ref`` and its image ``x_ref`` in [-1, 1].

Stage 1, APT (a step of ``G_img``)::

    ws = w_ref with rows [apt_mix_from:] taken from random mapped latents         (style mixing of fine layers)
    loss = mean_b recon(G_img(ws_b, c_ref), x_ref)           recon: LPIPS (or MSE without its weights), as inversion
    Adam(apt_lr, betas (0, 0.99))

Stage 2, ITE (a step of ``G``)::

    ws = w_ref with rows [ite_mix_from:] = (1 - a) w_ref + a w_random,  a = ite_mix (0.8)
    V random views per latent; x = G(ws, views), x_frozen = G_frozen(ws, views | frontal), x_img = G_img(ws, views)
    dI_img = E_I(x_img) - E_I(x_frozen);  m = mean over CLIP models and samples of |dI_img|
    branch = text  if m < direction_threshold or u < text_probability (u ~ U(0, 1) drawn every step)
             image otherwise
    (w_text, w_image) = text_branch_weights or image_branch_weights
    loss = sum_models weight * mean_b [1 - cos(E_I(x) - E_I(x_frozen), w_text dT + w_image n(dI_img))]
    Adam(lr * 4/5, betas (0, 0.99 ** 0.8))

Schedules: ``fusion`` runs stage 1 at even steps and stage 2 at odd steps; ``image`` only stage 1 (output
``G_img``); ``text`` only stage 2 with (w_text, w_image) = (1, 0) (``G_img`` is never trained). In the released
ITportrait code both branches use (0.5, 0.5), so its threshold has no effect; here the defaults differ so that it
does, and the step's branch is logged (``branch/text`` in stats.jsonl: the fraction of stage-2 steps that took the
text branch).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from adapt3d.clip.directional import CLIPDirectionalLoss, mixed_direction
from adapt3d.training.itp_config import ITportraitConfig
from adapt3d.training.layer_selection import set_trainable
from adapt3d.training.nada import ClipAdaptTrainer
from adapt3d.training.nada_config import resolved
from adapt3d.training.schedules import ema_beta, update_ema

__all__ = ["Reference", "ITportraitTrainer", "choose_branch"]


@dataclass
class Reference:
    """The reference portrait: ``ws`` (1, num_ws, w_dim), ``camera`` (1, 25), ``image`` (1, 3, R, R) in [-1, 1]."""

    ws: torch.Tensor
    camera: torch.Tensor
    image: torch.Tensor


def choose_branch(image_direction_norm: float, u: float, threshold: float, text_probability: float) -> str:
    """ITportrait's threshold function: ``'text'`` if the image model is still close to the frozen one
    (norm < threshold) or with probability ``text_probability`` (u < p), else ``'image'``."""
    return "text" if image_direction_norm < threshold or u < text_probability else "image"


class ITportraitTrainer(ClipAdaptTrainer):
    """ITportrait (see the module docstring). ``recon_loss(x, y) -> (B,)`` compares renders with the reference."""

    source_name = "adapt3d itportrait"

    def __init__(self, cfg: ITportraitConfig, G, clip_loss: CLIPDirectionalLoss, reference: Reference,
                 recon_loss, **kw):
        super().__init__(cfg, G, clip_loss, **kw)
        num_ws = self.G.num_ws
        if tuple(reference.ws.shape) != (1, num_ws, self.G.w_dim):
            raise ValueError(f"--latent: ws has shape {tuple(reference.ws.shape)}, the generator needs "
                             f"{(1, num_ws, self.G.w_dim)}")
        self.ref = Reference(reference.ws.to(self.device).float(), reference.camera.to(self.device).float(),
                             reference.image.to(self.device).float())
        self.recon = recon_loss
        self.apt_from = num_ws // 2 if cfg.apt_mix_from is None else min(cfg.apt_mix_from, num_ws)
        self.ite_from = min(cfg.ite_mix_from, num_ws)
        self.G_img = copy.deepcopy(self.G).train()
        set_trainable(self.G_img, self.allowed)
        self.img_params = [p for n, p in self.G_img.named_parameters() if any(n.startswith(a) for a in self.allowed)]
        self.opt_img = torch.optim.Adam(self.img_params, lr=cfg.apt_lr, betas=(0.0, 0.99), eps=1e-8)

    # -- latents ------------------------------------------------------------------------------------------------
    def _random_ws(self, gen: torch.Generator, n: int) -> torch.Tensor:
        with torch.no_grad():
            return self.map(self.G_frozen, self.latents(gen, n))  # (n, num_ws, w_dim)

    def apt_latents(self, gen: torch.Generator, n: int) -> torch.Tensor:
        ws = self.ref.ws.repeat(n, 1, 1)
        ws[:, self.apt_from:] = self._random_ws(gen, n)[:, self.apt_from:]
        return ws

    def ite_latents(self, gen: torch.Generator, n: int) -> torch.Tensor:
        ws = self.ref.ws.repeat(n, 1, 1)
        a = self.cfg.ite_mix
        ws[:, self.ite_from:] = (1 - a) * ws[:, self.ite_from:] + a * self._random_ws(gen, n)[:, self.ite_from:]
        return ws

    # -- stages -------------------------------------------------------------------------------------------------
    def apt_step(self) -> dict:
        """One stage-1 step; every process computes the whole (small) --apt-batch, so they stay identical."""
        gen = self.rng("apt")
        n = resolved(self.cfg, "apt_batch")
        ws = self.apt_latents(gen, n)
        image = self.G_img.synthesis(ws, self.ref.camera.expand(n, -1), noise_mode="const", sampling="deterministic",
                                     neural_rendering_resolution=self.nrr).image  # (n, 3, R, R)
        loss = self.recon(image, self.ref.image.expand_as(image)).mean()
        self.optimizer_step(self.opt_img, loss, "APT reconstruction")
        return {"loss/apt": float(loss.detach())}

    def ite_step(self) -> dict:
        cfg = self.cfg
        gen = self.rng("ite")
        ws = self.ite_latents(gen, self.batch)
        cams = self.random_cameras(gen, self.batch * self.views)
        u = float(torch.rand((), generator=gen))
        frozen_cams = cams if cfg.frozen_view == "same" else self.frontal(len(cams))
        with torch.no_grad():
            frozen = self.clip.encode(self.render(self.G_frozen, ws, frozen_cams), grad=False)
            styled = self.clip.encode(self.render(self.G_img, ws, cams), grad=False) \
                if cfg.schedule != "text" else None
        rec: dict = {}
        if styled is None:
            branch, weights = "text", (1.0, 0.0)
        else:
            active = self.clip.active()
            norm = sum(float((styled[i] - frozen[i]).norm(dim=-1).mean()) for i in active) / len(active)
            branch = choose_branch(norm, u, cfg.direction_threshold, cfg.text_probability)
            weights = cfg.text_branch_weights if branch == "text" else cfg.image_branch_weights
            rec["branch/image_direction_norm"] = norm
        directions = [None] * len(frozen)
        for i in self.clip.active():
            dT = self.clip.text_directions[i].to(frozen[i])
            dI = styled[i] - frozen[i] if styled is not None else torch.zeros_like(frozen[i])
            directions[i] = mixed_direction(dT, dI, float(weights[0]), float(weights[1]))
        self.last_directions = [None if d is None else d.detach() for d in directions]  # for inspection

        # The frozen / image-model embeddings and the branch above cover the whole batch on every process (no
        # gradient), so all processes take the same branch; the trained renders are split into micro-batches.
        def micro_loss(g: int, lat: slice, cam: slice):
            train = self.clip.encode(self.render(self.G, ws[lat], cams[cam]))
            part = lambda xs: [None if x is None else x[cam] for x in xs]  # noqa: E731
            d = self.clip.directional_from_embeddings(train, part(frozen), part(directions))
            return d.loss, {"loss/direction": d.loss.detach(), **{f"clip/{k}": v for k, v in d.per_model.items()}}

        rec.update(self.accumulate_step(self.opt, self.params, micro_loss, "ITE directional"))
        rec.update({"branch/text": 1.0 if branch == "text" else 0.0, "branch": branch, "weights": list(weights)})
        return rec

    def train_step(self) -> dict:
        schedule = self.cfg.schedule
        if schedule == "image" or (schedule == "fusion" and self.step % 2 == 0):
            return self.apt_step()
        return self.ite_step()

    # -- outputs and state --------------------------------------------------------------------------------------
    def output_generator(self):
        if self.G_ema is not None:
            return self.G_ema
        return self.G_img if self.cfg.schedule == "image" else self.G

    def update_ema(self) -> None:
        if self.G_ema is not None:
            source = self.G_img if self.cfg.schedule == "image" else self.G
            update_ema(self.G_ema, source, ema_beta(self.batch, self.cfg.ema_kimg, self.step * self.batch))

    def trained_modules(self) -> dict:
        return {**super().trained_modules(), "image-style generator": self.G_img}

    def state_dict_extra(self) -> dict:
        state = super().state_dict_extra()
        state["G_img"] = self.cpu_state(self.G_img)
        state["opt_img"] = self.opt_img.state_dict()
        return state

    def load_state_extra(self, snapshot: Path, state: dict) -> None:
        super().load_state_extra(snapshot, state)
        try:
            self.G_img.load_state_dict(state["G_img"])
            self.opt_img.load_state_dict(state["opt_img"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"--resume: snapshot {snapshot} is not an ITportrait snapshot of this generator ({e})") \
                from e

    def metadata(self) -> dict:
        return {**super().metadata(), "schedule": self.cfg.schedule}
