"""Losses and regularisers of EG3D / DATID-3D adversarial fine-tuning, as small pure functions.

Every loss returns a scalar averaged over the batch; the training loop multiplies by weights, lazy-regularisation
gains and the micro-batch share of the global batch. Formulas (``softplus(x) = log(1 + exp(x))``):

- generator, non-saturating logistic (StyleGAN2/EG3D ``loss_Gmain``):  ``mean softplus(-D(G(z)))``;
- discriminator, logistic: ``mean softplus(D(G(z)))`` (fake) + ``mean softplus(-D(x))`` (real);
- R1 (Mescheder et al. 2018) on real images, taken with respect to *both* inputs of the dual discriminator
  (image and raw image) as EG3D does: ``r1 = |dD/d image|^2 + |dD/d image_raw|^2`` per sample, loss
  ``mean(r1) * gamma / 2``;
- EG3D's density regulariser (``reg_type='l1'``): ``mean |sigma(x) - sigma(x + eps)|`` with ``x`` uniform in
  ``[-extent, extent]^3`` and ``eps ~ N(0, p_dist^2)`` per coordinate, a total-variation-like smoothness term;
- lazy regularisation (StyleGAN2 Appendix B): a regulariser evaluated every ``k`` steps is multiplied by ``k``, and
  the optimiser's learning rate and betas are scaled by ``c = k / (k + 1)``: ``lr * c``, ``beta ** c``;
- generator pose-conditioning swap (EG3D Sec. 4, "GPC"): each sample's mapping network is conditioned on the
  camera of the previous sample in the batch (``roll`` by one) with probability ``p``, else on its own rendering
  camera; ``p`` fades from 1 to ``gpc_reg_prob`` over ``fade_kimg``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "loss_g_nonsaturating",
    "loss_d_fake",
    "loss_d_real",
    "loss_d_logistic",
    "r1_penalty",
    "R1Loss",
    "loss_r1",
    "density_l1_regularization",
    "lazy_regularization_scaling",
    "swap_conditioning",
    "gpc_swap_probability",
]


def loss_g_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``mean softplus(-fake_logits)``; logits (N, 1) or (N,)."""
    return F.softplus(-fake_logits).mean()


def loss_d_fake(fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss on generated images ``mean softplus(fake_logits)``."""
    return F.softplus(fake_logits).mean()


def loss_d_real(real_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss on real images ``mean softplus(-real_logits)``."""
    return F.softplus(-real_logits).mean()


def loss_d_logistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss: ``loss_d_real(real) + loss_d_fake(fake)``."""
    return loss_d_real(real_logits) + loss_d_fake(fake_logits)


def r1_penalty(real_logits: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample squared gradient norm of ``real_logits`` w.r.t. ``inputs``, summed over the inputs: ``(N,)``.

    ``inputs`` are the tensors the logits were computed from (each ``(N, ...)`` with ``requires_grad``), e.g.
    ``[image, image_raw]`` of EG3D's dual discriminator. The graph is kept (``create_graph=True``) so the penalty
    can be back-propagated into the discriminator's weights.
    """
    if not inputs:
        raise ValueError("r1_penalty needs at least one input tensor")
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            raise ValueError(f"r1_penalty: inputs[{i}] does not require grad; call .requires_grad_(True) on the "
                             "real images before the discriminator")
    grads = torch.autograd.grad(outputs=[real_logits.sum()], inputs=list(inputs), create_graph=True,
                                only_inputs=True)
    return sum(g.square().flatten(1).sum(1) for g in grads)  # (N,)


class R1Loss(NamedTuple):
    """The R1 regulariser of one batch: ``loss = penalty * gamma / 2`` (back-propagate it, times the lazy interval
    and the micro-batch share) and ``penalty = mean(r1_penalty)`` (what the stats log as ``loss/r1_penalty``)."""

    loss: torch.Tensor
    penalty: torch.Tensor


def loss_r1(real_logits: torch.Tensor, inputs: Sequence[torch.Tensor], gamma: float) -> R1Loss:
    """R1 loss ``mean(r1_penalty) * gamma / 2``, with the mean penalty itself (both scalars, with graphs)."""
    penalty = r1_penalty(real_logits, inputs).mean()
    return R1Loss(penalty * (gamma / 2), penalty)


def density_l1_regularization(sigma_fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                              num_points: int = 1000, p_dist: float = 0.004, extent: float = 1.0,
                              generator: torch.Generator | None = None,
                              device: torch.device | str = "cpu") -> torch.Tensor:
    """EG3D's 'l1' density smoothness term ``mean |sigma(x) - sigma(x + eps)|``.

    Args:
        sigma_fn: points (B, 2 * num_points, 3) -> raw densities (B, 2 * num_points, 1) (or (..., ) without the
            last axis); called once on the stacked original and perturbed points.
        batch_size: B, the number of generated scenes (one point set per scene).
        num_points: points per scene (EG3D: 1000).
        p_dist: std of the Gaussian perturbation (EG3D ``density_reg_p_dist``: 0.004).
        extent: points are uniform in ``[-extent, extent]^3`` world units (EG3D: 1).
        generator: RNG for the points (the global RNG when None).
    Returns:
        Scalar; multiply by the weight ``density_reg`` (0.25) and the lazy interval in the loop.
    """
    if batch_size < 1 or num_points < 1:
        raise ValueError(f"batch_size and num_points must be >= 1, got {batch_size}, {num_points}")
    x = (torch.rand((batch_size, num_points, 3), generator=generator) * 2 - 1) * extent  # (B, P, 3)
    eps = torch.randn((batch_size, num_points, 3), generator=generator) * p_dist
    points = torch.cat([x, x + eps], dim=1).to(device)  # (B, 2P, 3)
    sigma = sigma_fn(points)
    return F.l1_loss(sigma[:, :num_points], sigma[:, num_points:])


def lazy_regularization_scaling(lr: float, betas: tuple[float, float],
                                interval: int | None) -> tuple[float, tuple[float, float]]:
    """Adam ``(lr, betas)`` for a module whose regulariser runs every ``interval`` steps (None: unchanged).

    With ``c = interval / (interval + 1)``: ``lr * c`` and ``(beta1 ** c, beta2 ** c)``.
    """
    if interval is None:
        return lr, tuple(betas)
    if interval < 1:
        raise ValueError(f"interval must be >= 1 or None, got {interval}")
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)


def swap_conditioning(c: torch.Tensor, prob: float | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Generator conditioning cameras (N, 25) for rendering cameras ``c`` (N, 25).

    Each row is replaced by the previous row's camera (``torch.roll(c, 1, 0)``) when a uniform draw is below
    ``prob``; ``prob=None`` gives zeros (no pose conditioning, EG3D's ShapeNet setting).
    """
    if prob is None:
        return torch.zeros_like(c)
    if not 0 <= prob <= 1:
        raise ValueError(f"prob must be in [0, 1] or None, got {prob}")
    u = torch.rand((c.shape[0], 1), generator=generator).to(c.device)  # (N, 1)
    return torch.where(u < prob, torch.roll(c, 1, 0), c)


def gpc_swap_probability(gpc_reg_prob: float | None, cur_nimg: int, fade_kimg: float) -> float | None:
    """Swap probability after ``cur_nimg`` images: fades linearly from 1 to ``gpc_reg_prob`` over ``fade_kimg``."""
    if gpc_reg_prob is None:
        return None
    alpha = 1.0 if fade_kimg <= 0 else min(cur_nimg / (fade_kimg * 1000), 1.0)
    return (1 - alpha) + alpha * gpc_reg_prob
