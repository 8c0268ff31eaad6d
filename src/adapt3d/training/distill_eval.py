"""Measurements of a text-conditioned generator during and after distillation: fixed-set renders, diversity (mode
collapse monitor), per-prompt CLIP score and view consistency.

Diversity is the evaluation issue's mean pairwise distance ``mean_{i<j} |f_i - f_j|`` of L2-normalised features
(:func:`adapt3d.metrics.diversity.mean_pairwise_distance`, in [0, 2]) over the fixed seeds of one prompt, rendered
at the frontal camera. Features: CLIP image embeddings, or the 32x32 downsampled pixels when no CLIP model is
given. The source generator's value on the same seeds is the reference: ``ratio_to_source`` well below 1 means
the prompt's samples collapse to one mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adapt3d.models.latents import default_cameras, frontal_cameras, seed_latents
from adapt3d.metrics.clip_metrics import clip_score
from adapt3d.metrics.diversity import mean_pairwise_distance
from adapt3d.metrics.view_consistency import evaluate_view_consistency
from adapt3d.models.text_conditioned import TextConditionedGenerator

__all__ = ["seed_latents", "render_fixed", "image_features", "diversity_scores", "source_distance", "prompt_metrics",
           "SAMPLE_YAWS"]

SAMPLE_YAWS = (-0.4, 0.0, 0.4)  # radians from frontal: the columns of the sample grids


def yaw_cameras(model, yaws: tuple[float, ...], device) -> torch.Tensor:
    """Cameras (V, 25) at frontal pitch and yaw offsets (radians) around the generator's average camera."""
    yaw = torch.tensor([math.pi / 2 + y for y in yaws])
    return default_cameras(model, yaw, torch.full_like(yaw, math.pi / 2)).to(device)


@torch.no_grad()
def render_fixed(model: TextConditionedGenerator, text: torch.Tensor | None, seeds: list[int], trunc: float,
                 yaws: tuple[float, ...] = (0.0,), batch_size: int = 8) -> torch.Tensor:
    """Images (S * V, 3, R, R) in [-1, 1] on the CPU: each seed at each yaw (seed-major), const noise,
    deterministic ray marching; ``text`` (1, L, D) or None (the source generator)."""
    device = next(model.parameters()).device
    z = seed_latents(seeds, model.z_dim).to(device)
    cams = yaw_cameras(model, yaws, device)
    v = cams.shape[0]
    out = []
    for i in range(0, len(seeds), batch_size):
        zb = z[i:i + batch_size]
        ws = model.mapping(zb, frontal_cameras(model, zb.shape[0]).to(device), text, truncation_psi=trunc)
        planes = model.planes(ws, text, noise_mode="const")
        n = ws.shape[0]
        rep = lambda t: t.repeat_interleave(v, 0)  # noqa: E731 (n * V, ...) seed-major
        img = model.synthesis(rep(ws), cams.repeat(n, 1), planes=rep(planes), noise_mode="const",
                              sampling="deterministic").image
        out.append(img.cpu())
    return torch.cat(out)


@torch.no_grad()
def image_features(images: torch.Tensor, scorer=None) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, D): CLIP image embeddings, or flattened 32x32 pixels without a scorer."""
    if scorer is not None:
        return scorer.encode_images(images).float().cpu()
    x = F.interpolate(images.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    return x.flatten(1).cpu()


@torch.no_grad()
def diversity_scores(model: TextConditionedGenerator, texts: torch.Tensor, seeds: list[int], trunc: float,
                     scorer=None, source: float | None = None) -> dict:
    """Diversity of each prompt's samples (texts (P, L, D)) on the fixed ``seeds``, and of the source."""
    if source is None:
        source = mean_pairwise_distance(image_features(render_fixed(model, None, seeds, trunc), scorer))
    per = [mean_pairwise_distance(image_features(render_fixed(model, texts[k:k + 1], seeds, trunc), scorer))
           for k in range(texts.shape[0])]
    mean = float(sum(per) / len(per))
    return {"source": source, "prompts": per, "mean": mean,
            "ratio_to_source": mean / source if source > 0 else None}


@torch.no_grad()
def source_distance(model: TextConditionedGenerator, texts: torch.Tensor, seeds: list[int], trunc: float,
                    scorer=None) -> float:
    """Mean over prompts (texts (P, L, D)) and ``seeds`` of 1 - cos(f(prompt render), f(source render)) of the same
    latent (frontal, features of :func:`image_features`): 0 while the outputs are the source's, growing as the
    prompts move them away (in [0, 2])."""
    src = F.normalize(image_features(render_fixed(model, None, seeds, trunc), scorer), dim=-1)
    per = []
    for k in range(texts.shape[0]):
        gen = F.normalize(image_features(render_fixed(model, texts[k:k + 1], seeds, trunc), scorer), dim=-1)
        per.append(float((1 - (gen * src).sum(-1)).mean()))
    return float(sum(per) / len(per))


@torch.no_grad()
def prompt_metrics(model: TextConditionedGenerator, text: torch.Tensor, prompt: str, seeds: list[int], trunc: float,
                   scorer=None, view_yaws_deg: tuple[float, ...] = (-20.0, 0.0, 20.0),
                   source_diversity: float | None = None) -> tuple[dict, torch.Tensor]:
    """Per-prompt evaluation: CLIP score (frontal renders), diversity and view consistency (reprojection error
    between yaw views, :func:`adapt3d.metrics.view_consistency.evaluate_view_consistency`). Returns (metrics,
    frontal images (S, 3, R, R))."""
    device = next(model.parameters()).device
    images = render_fixed(model, text, seeds, trunc)
    m: dict = {"prompt": prompt, "num_samples": len(seeds)}
    if scorer is not None:
        m["clip_score"] = clip_score(scorer, images, prompt).to_dict()
    feats = image_features(images, scorer)
    m["diversity"] = mean_pairwise_distance(feats) if len(seeds) > 1 else None
    if source_diversity is not None and m["diversity"] is not None and source_diversity > 0:
        m["diversity_ratio_to_source"] = m["diversity"] / source_diversity
    bound = model.bind(text)
    z = seed_latents(seeds, model.z_dim).to(device)
    ws = bound.mapping(z, frontal_cameras(model, len(seeds)).to(device), truncation_psi=trunc)
    labels = yaw_cameras(model, tuple(math.radians(y) for y in view_yaws_deg), device)
    vc = evaluate_view_consistency(bound, ws, labels, view_names=[f"yaw{y:+g}" for y in view_yaws_deg])
    m["view_consistency"] = {"raw": vc.raw, "final": vc.final}
    return m, images
