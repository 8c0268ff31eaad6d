"""Specialised-to-general (S2G) sampling, PODIA-3D's remedy for the loss of detail when a text-to-image model is asked
for a *specialised* subject ("the face of a Pixar character"): the first ``switch_fraction`` of the denoising steps
that run use the specialised prompt, which fixes the layout (a face, matching the render and its depth), the rest the
*general* prompt ("a Pixar character"), for which the model draws richer detail.

Implemented with diffusers' ``callback_on_step_end``: after the last specialised step the callback returns the
general prompt's (negative, positive) text embeddings, which the SD 1.x / 2.x img2img, depth2img and ControlNet
img2img pipelines then use. Of the L denoising iterations that run (``int(N s)`` for N steps at strength s; PNDM's
PLMS start adds one), the first ``max(1, round(L * switch_fraction))`` are specialised (0: general throughout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["S2GSchedule", "s2g_pipeline_kwargs"]


@dataclass(frozen=True)
class S2GSchedule:
    """Specialised-to-general sampling: ``general_prompts`` (one per image) replace the specialised prompts after
    ``switch_fraction`` in [0, 1] of the denoising steps that run (0 = general throughout, 1 = never switch)."""

    general_prompts: tuple[str, ...]
    switch_fraction: float = 0.5

    def __post_init__(self):
        if not 0 <= self.switch_fraction <= 1 or not math.isfinite(self.switch_fraction):
            raise ValueError(f"--s2g-switch: {self.switch_fraction} must be in [0, 1] (fraction of the denoising "
                             "steps run with the specialised prompt)")


def _s2g_callback(pipe, s2g: S2GSchedule, negatives, cfg: bool, device, dtype):
    """A ``callback_on_step_end`` that swaps in the general prompt's embeddings after the last specialised step
    (``cfg``: classifier-free guidance on, i.e. guidance scale > 1, as the pipelines decide)."""
    pos, neg = pipe.encode_prompt(list(s2g.general_prompts), device, 1, cfg, negatives)
    general = (torch.cat([neg, pos]) if cfg else pos).to(dtype)

    def callback(_pipe, i, _t, kwargs):
        # the loop's real length (PNDM's PLMS start adds one UNet evaluation to the steps asked for)
        n = max(1, int(round(_pipe.num_timesteps * s2g.switch_fraction)))
        return {"prompt_embeds": general} if i + 1 == n else {}

    return callback


def s2g_pipeline_kwargs(pipe, s2g: S2GSchedule | None, negatives, strength: float, num_inference_steps: int,
                        guidance_scale: float, device, dtype) -> dict:
    """Extra pipeline call arguments for ``s2g`` (none when ``s2g`` is None)."""
    if s2g is None:
        return {}
    if s2g.switch_fraction == 0:  # general from the start
        return {"prompt": list(s2g.general_prompts)}
    return {"callback_on_step_end": _s2g_callback(pipe, s2g, negatives, guidance_scale > 1, device, dtype),
            "callback_on_step_end_tensor_inputs": ["prompt_embeds"]}
