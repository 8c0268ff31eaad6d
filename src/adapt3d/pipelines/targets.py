"""Translate and score: the inner loop of target generation, shared by ``make-dataset`` and instance-selected
adaptation (``adapt --instance-seed``). One batch of a :class:`~adapt3d.data.target_dataset.TargetPlan`:

1. :func:`source_poses`: the camera of each source, drawn from the pose sampler with the plan's pose seed;
2. :func:`translate_and_score`: render the sources, quantise them to uint8 (what is saved is what diffusion sees),
   translate each target with img2img (its own diffusion seed), score it (CLIP cosine with its prompt; pose
   consistency against renders of its source around the label camera);
3. :func:`write_targets`: save every target not already done (source PNG, target PNG) and append its manifest
   record, in that order, so that a kill between the two leaves a PNG nobody recorded (regenerated on resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from adapt3d.data.manifest import Manifest
from adapt3d.data.target_dataset import TargetItem, TargetPlan, TargetRecord, image_relpath, source_relpath
from adapt3d.clip.model import DEFAULT_CLIP_MODEL
from adapt3d.diffusion.loading import DEFAULT_DIFFUSION
from adapt3d.export.images import save_image, to_uint8
from adapt3d.models.latents import default_cameras

__all__ = ["model_names", "source_poses", "TargetBatch", "translate_and_score",
           "write_targets"]

def model_names(preset: str | None, diffusion: str, clip_model: str) -> tuple[str, str | None]:
    """(img2img model, CLIP model or None) for --diffusion / --clip-model: 'auto' is 'tiny' with --preset tiny, else
    SD 2.1-base / CLIP ViT-B/32; --clip-model none gives None."""
    tiny = preset == "tiny"
    clip = None if clip_model == "none" else (("tiny" if tiny else DEFAULT_CLIP_MODEL) if clip_model == "auto"
                                              else clip_model)
    return ("tiny" if tiny else DEFAULT_DIFFUSION) if diffusion == "auto" else diffusion, clip


def source_poses(plan: TargetPlan, sampler, sources: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(yaw, pitch), each (S,), of ``sources``: one pose each from ``sampler`` seeded with the plan's pose seed."""
    poses = [sampler.sample(1, torch.Generator().manual_seed(plan.item(j * plan.samples_per_source).pose_seed))
             for j in sources]
    return torch.cat([p.yaw for p in poses]), torch.cat([p.pitch for p in poses])


@dataclass
class TargetBatch:
    """One translated batch: sources (S, H, W, 3) and targets (B, H', W', 3) as saved (uint8), the targets' scores
    (one dict per target: ``clip``, ``pose_ncc``, ``pose_margin``, ``pose_best`` when scored) and each target's
    source position in the batch (``local``)."""

    src_u8: np.ndarray
    tgt_u8: np.ndarray
    scores: list[dict]
    local: list[int]


@torch.no_grad()
def translate_and_score(G, ws: torch.Tensor, labels: torch.Tensor, yaw: torch.Tensor, pitch: torch.Tensor,
                        items: Sequence[TargetItem], first_source: int, translator, scorer, pose_filter, *,
                        negative_prompt: str | None, strength: float, guidance_scale: float,
                        num_inference_steps: int, resolution: int | None = None) -> TargetBatch:
    """Render the batch's sources (ws (S, num_ws, w_dim) at ``labels`` (S, 25)), translate and score its targets
    ``items`` (source ``it.source - first_source`` of the batch). ``scorer`` / ``pose_filter``: None to skip."""
    device = ws.device
    src = G.synthesis(ws, labels.to(device), noise_mode="const", sampling="deterministic").image
    src_u8 = to_uint8(src.cpu())  # (S, H, W, 3): what is saved, and what diffusion sees
    src_q = torch.from_numpy(src_u8).permute(0, 3, 1, 2).float() / 127.5 - 1  # (S, 3, H, W) in [-1, 1]
    local = [it.source - first_source for it in items]
    out = translator(src_q[local], [it.prompt for it in items], negative_prompt=negative_prompt, strength=strength,
                     guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                     seeds=[it.diffusion_seed for it in items], resolution=resolution)
    tgt_u8 = to_uint8(out.images, value_range=(0, 1))  # (B, H, W, 3)
    tgt_q = torch.from_numpy(tgt_u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    scores: list[dict] = [{} for _ in items]
    if scorer is not None:
        for s, v in zip(scores, scorer.score(tgt_q, [it.prompt for it in items]).cpu().tolist()):
            s["clip"] = v
    if pose_filter is not None:
        first = [local.index(k) for k in range(ws.shape[0])]  # one render per source, then one row per target

        def render(y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            c = default_cameras(G, y[first], p[first]).to(device)
            return G.synthesis(ws, c, noise_mode="const", sampling="deterministic").image.cpu()[local]

        ps = pose_filter.score(tgt_q, yaw[local], pitch[local], render, label_renders=src_q[local])
        for k, s in enumerate(scores):
            s.update(pose_ncc=float(ps.ncc[k]), pose_margin=float(ps.margin[k]), pose_best=list(ps.best[k]))
    return TargetBatch(src_u8, tgt_u8, scores, local)


def write_targets(folder: Path, manifest: Manifest, batch: TargetBatch, items: Sequence[TargetItem],
                  done: set[int], labels: torch.Tensor, yaw: torch.Tensor, pitch: torch.Tensor,
                  negative_prompt: str | None, latent_seed: int | None = None) -> int:
    """Save each target of ``items`` not in ``done`` and append its record; returns how many were written.
    ``latent_seed``: recorded for every target (None: each item's own)."""
    made = 0
    for k, it in enumerate(items):
        if it.index in done:
            continue
        j = batch.local[k]
        save_image(folder / source_relpath(it.source), batch.src_u8[j])
        save_image(folder / image_relpath(it.index), batch.tgt_u8[k])
        manifest.append(TargetRecord(
            index=it.index, source=it.source, sample=it.sample,
            latent_seed=it.latent_seed if latent_seed is None else latent_seed, pose_seed=it.pose_seed,
            diffusion_seed=it.diffusion_seed, prompt=it.prompt, negative_prompt=negative_prompt, yaw=float(yaw[j]),
            pitch=float(pitch[j]), label=[float(v) for v in labels[j]], image=image_relpath(it.index),
            source_image=source_relpath(it.source), scores=batch.scores[k]).to_dict())
        made += 1
    return made
