"""Cross-view consistency of translated targets of ONE instance (instance-selected adaptation).

The targets t_i are diffusion translations of the instance rendered at cameras c_i. Two numbers, over every pair
(i, j) of targets made from *different* views (same-view pairs are not a cross-view question):

- ``clip_agreement``: mean cosine of the image embeddings E(t_i), E(t_j) (CLIP, or 32x32 pixels without a
  scorer): do the views show the same look? In [-1, 1], higher is more consistent.
- ``warp_mean_abs``: mean |t_i - warp(t_j -> c_i)| (images in [0, 1]) over the pixels visible in both views, the
  warp made with the *source* instance's rendered depth at c_i (and c_j for occlusion), as
  :func:`adapt3d.metrics.view_consistency.reprojection_error`: is the look attached to the same 3D surface?
  Lower is more consistent. The source renders' own value (``source_warp_mean_abs``) is the floor the geometry
  and the super-resolution allow.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from adapt3d.metrics.view_consistency import reprojection_error

__all__ = ["target_consistency"]


@torch.no_grad()
def target_consistency(G, ws: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, views: list[int],
                       scorer=None, sources: torch.Tensor | None = None, max_pairs: int = 256) -> dict:
    """Consistency of ``targets`` (N, 3, H, W) in [-1, 1], target i made from view ``views[i]`` at camera
    ``labels[i]`` (N, 25), of the instance ``ws`` (1, num_ws, w_dim) of generator ``G``. ``sources`` (N, 3, H, W):
    the source renders, for the floor. At most ``max_pairs`` cross-view pairs (the first in order)."""
    device = ws.device
    n = targets.shape[0]
    pairs = [(i, j) for i, j in itertools.combinations(range(n), 2) if views[i] != views[j]][:max_pairs]
    if not pairs:
        raise ValueError("targets: need targets from at least two different views")
    out = G.synthesis(ws.expand(n, -1, -1), labels.to(device), noise_mode="const", sampling="deterministic")
    depth = out.image_depth.float().cpu()  # (N, 1, h, w): ray depth of the source instance at each camera
    if scorer is not None:
        feats = F.normalize(scorer.encode_images(targets.to(device)).float().cpu(), dim=-1)
    else:
        x = F.interpolate(targets.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        feats = F.normalize(x.flatten(1), dim=-1)
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    cos = (feats[a] * feats[b]).sum(-1)
    labels = labels.cpu().float()

    def warp_error(images: torch.Tensor) -> float:
        r = reprojection_error(images[a].float(), images[b].float(), depth[a], labels[a], labels[b],
                               depth_b=depth[b])
        v = r.mean_abs[torch.isfinite(r.mean_abs)]
        return float(v.double().mean()) if v.numel() else float("nan")

    result = {"pairs": len(pairs), "clip_agreement": float(cos.double().mean()),
              "warp_mean_abs": warp_error(targets.cpu()),
              "features": "clip" if scorer is not None else "pixels32"}
    if sources is not None:
        result["source_warp_mean_abs"] = warp_error(sources.cpu())
    return result
