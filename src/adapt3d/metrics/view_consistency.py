"""Weights-free multi-view consistency: warp one rendered view into another with the rendered depth and the exact
cameras, and measure the reprojection error on pixels visible in both.

Geometry (conventions of :mod:`adapt3d.cameras`): pixel (i, j) of an H x W view A has normalised coordinates
``u = (j + 0.5) / W``, ``v = (i + 0.5) / H``; its camera-frame ray is ``d = K_A^-1 (u, v, 1)``. With the rendered
depth D_A (EG3D renders the distance *along the unit ray*, ``depth_kind="ray"``; ``"z"`` = camera-frame z) the
surface point is ``X = cam2world_A (D_A d / |d|)``. ``X`` is projected into view B (``project_points``) and B's
image is sampled there (bilinear, ``grid_sample`` with ``align_corners=False``, which puts the centre of pixel j
at u = (j + 0.5) / W). A pixel of A is *visible in both* when X lies in front of B, projects inside B's image,
A's depth is finite, and (when B's depth is given) B's rendered depth at that spot agrees with |X - o_B| (or z)
within ``depth_tolerance * |X - o_B|`` (otherwise X is occluded in B or off the surface).

Errors, with images mapped from [-1, 1] to [0, 1], over visible pixels and channels::

    mean_abs = mean |I_A - warp(I_B)|,     psnr = 10 log10(1 / max(mean (I_A - warp(I_B))^2, 1e-10))  (<= 100 dB)

A perfectly 3D-consistent, view-independent renderer gives 0 / 100 dB up to interpolation error. Real generators
have view-dependent effects (and super-resolution), so compare numbers between models at the same cameras, not
against 0. The raw neural render (``image_raw``, same resolution as the depth) is the exact test; the final
super-resolved image uses the depth upsampled bilinearly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from adapt3d.cameras import matrices_from_label, project_points

__all__ = [
    "backproject",
    "WarpResult",
    "warp_to_view",
    "ReprojectionResult",
    "reprojection_error",
    "ViewConsistencyResult",
    "evaluate_view_consistency",
    "PSNR_CAP_DB",
]

PSNR_CAP_DB = 100.0
DepthKind = Literal["ray", "z"]


def _check(name: str, t: torch.Tensor, ndim: int, what: str) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != ndim:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"`{name}` must be {what}, got {shape}")


def _camera_rays(intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Camera-frame ray directions at z = 1 for every pixel centre, row-major.  # (B, H*W, 3)"""
    dev, dt = intrinsics.device, intrinsics.dtype
    v, u = torch.meshgrid((torch.arange(height, device=dev, dtype=dt) + 0.5) / height,
                          (torch.arange(width, device=dev, dtype=dt) + 0.5) / width, indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)  # (1, M)
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    skew, cx, cy = intrinsics[:, 0, 1, None], intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None]
    y = (v - cy) / fy  # (B, M)
    x = (u - cx - skew * y) / fx
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def backproject(depth: torch.Tensor, label: torch.Tensor, depth_kind: DepthKind = "ray") -> torch.Tensor:
    """World points (B, H*W, 3) of every pixel of depth maps (B, 1, H, W) seen from cameras ``label`` (B, 25)."""
    _check("depth", depth, 4, "(B, 1, H, W)")
    if depth_kind not in ("ray", "z"):
        raise ValueError(f"`depth_kind` must be 'ray' or 'z', got {depth_kind!r}")
    b, _, h, w = depth.shape
    cam2world, intrinsics = matrices_from_label(label.to(depth.dtype))
    rays = _camera_rays(intrinsics.to(depth.device), h, w)  # (B, M, 3)
    if depth_kind == "ray":
        rays = rays / rays.norm(dim=-1, keepdim=True)
    points_cam = rays * depth.reshape(b, -1, 1)  # (B, M, 3)
    c2w = cam2world.to(depth.device)
    return points_cam @ c2w[:, :3, :3].transpose(1, 2) + c2w[:, None, :3, 3]


@dataclass
class WarpResult:
    warped: torch.Tensor  # (B, C, H, W): view B's image resampled at view A's pixels
    valid: torch.Tensor  # (B, 1, H, W) bool: A's pixel is visible in both views
    uv: torch.Tensor  # (B, H, W, 2): where A's pixels land in B, normalised [0, 1] coordinates
    depth_in_b: torch.Tensor  # (B, 1, H, W): the point's depth as seen from B (ray distance or z)


def warp_to_view(image_b: torch.Tensor, depth_a: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor, *,
                 depth_b: torch.Tensor | None = None, depth_tolerance: float = 0.02,
                 depth_kind: DepthKind = "ray", mask_a: torch.Tensor | None = None) -> WarpResult:
    """Resample view B's image (B, C, Hb, Wb) at the pixels of view A (depth_a (B, 1, H, W), cameras (B, 25))."""
    _check("image_b", image_b, 4, "(B, C, H, W)")
    _check("depth_a", depth_a, 4, "(B, 1, H, W)")
    if not depth_tolerance > 0:
        raise ValueError(f"`depth_tolerance` must be > 0 (relative), got {depth_tolerance}")
    b, _, h, w = depth_a.shape
    depth_a = depth_a.float()
    finite = torch.isfinite(depth_a) & (depth_a > 0)
    points = backproject(torch.where(finite, depth_a, torch.ones_like(depth_a)), label_a, depth_kind)  # (B, M, 3)
    cam2world_b, intr_b = matrices_from_label(label_b.to(points))
    uv, z_b = project_points(points, cam2world_b, intr_b)  # (B, M, 2), (B, M)
    dist_b = z_b if depth_kind == "z" else (points - cam2world_b[:, None, :3, 3]).norm(dim=-1)
    uv = torch.nan_to_num(uv, nan=-1.0, posinf=-1.0, neginf=-1.0).reshape(b, h, w, 2)
    grid = uv * 2 - 1
    warped = F.grid_sample(image_b.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (uv >= 0).all(-1) & (uv <= 1).all(-1)  # (B, H, W)
    valid = finite[:, 0] & inside & (z_b.reshape(b, h, w) > 0)
    dist_b = dist_b.reshape(b, 1, h, w)
    if depth_b is not None:
        _check("depth_b", depth_b, 4, "(B, 1, H, W)")
        sampled = F.grid_sample(depth_b.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        valid &= ((sampled - dist_b).abs() <= depth_tolerance * dist_b)[:, 0] & torch.isfinite(sampled[:, 0])
    if mask_a is not None:
        valid &= mask_a.reshape(b, h, w).bool()
    return WarpResult(warped, valid[:, None], uv, dist_b)


@dataclass
class ReprojectionResult:
    mean_abs: torch.Tensor  # (B,) in [0, 1] image units; NaN where nothing is visible in both views
    psnr: torch.Tensor  # (B,) dB, capped at 100; NaN where nothing is visible
    valid_fraction: torch.Tensor  # (B,)
    error_map: torch.Tensor  # (B, 1, H, W): mean |I_A - warp(I_B)| over channels, 0 where not visible
    warp: WarpResult


def _resize_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth.float(), size=size, mode="bilinear", align_corners=False)


def reprojection_error(image_a: torch.Tensor, image_b: torch.Tensor, depth_a: torch.Tensor, label_a: torch.Tensor,
                       label_b: torch.Tensor, *, depth_b: torch.Tensor | None = None, depth_tolerance: float = 0.02,
                       depth_kind: DepthKind = "ray", mask_a: torch.Tensor | None = None) -> ReprojectionResult:
    """Reprojection error of view A (image (B, C, H, W) in [-1, 1]) against view B warped into A.

    Depth maps at another resolution than the images are resized bilinearly to them.
    """
    _check("image_a", image_a, 4, "(B, C, H, W)")
    size = tuple(image_a.shape[-2:])
    depth_a = _resize_depth(depth_a, size)
    if depth_b is not None:
        depth_b = _resize_depth(depth_b, tuple(image_b.shape[-2:]))
    wr = warp_to_view(image_b, depth_a, label_a, label_b, depth_b=depth_b, depth_tolerance=depth_tolerance,
                      depth_kind=depth_kind, mask_a=mask_a)
    diff = (image_a.float() - wr.warped) / 2  # [0, 1] units
    valid = wr.valid.float()
    count = valid.sum(dim=(1, 2, 3)) * image_a.shape[1]  # (B,)
    abs_sum = (diff.abs() * valid).sum(dim=(1, 2, 3))
    sq_sum = (diff ** 2 * valid).sum(dim=(1, 2, 3))
    nan = torch.full_like(count, float("nan"))
    mean_abs = torch.where(count > 0, abs_sum / count.clamp(min=1), nan)
    mse = torch.where(count > 0, sq_sum / count.clamp(min=1), nan)
    psnr = 10 * torch.log10(1 / mse.clamp(min=10 ** (-PSNR_CAP_DB / 10)))
    error_map = diff.abs().mean(1, keepdim=True) * valid
    return ReprojectionResult(mean_abs, psnr, valid.mean(dim=(1, 2, 3)), error_map, wr)


def _nanmean(x: torch.Tensor) -> float | None:
    x = x[torch.isfinite(x)]
    return float(x.double().mean()) if x.numel() else None


@dataclass
class ViewConsistencyResult:
    """Reprojection statistics over all latents and ordered view pairs (i != j), for the raw neural render and
    the final image. ``views`` (S, V, 3, R, R) are the final images, for CLIP agreement and figures."""

    raw: dict
    final: dict
    per_pair: list[dict]
    views: torch.Tensor
    examples: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"raw": self.raw, "final": self.final, "per_pair": self.per_pair}


@torch.no_grad()
def evaluate_view_consistency(G, ws: torch.Tensor, labels: torch.Tensor, *, depth_tolerance: float = 0.02,
                              batch_size: int = 4, noise_mode: str = "const",
                              view_names: Sequence[str] | None = None) -> ViewConsistencyResult:
    """Render each latent ws (S, num_ws, w_dim) at the V cameras ``labels`` (V, 25) (deterministic ray marching,
    shared tri-planes) and compute the reprojection error for every ordered pair of views."""
    if labels.ndim != 2 or labels.shape[0] < 2 or labels.shape[1] != 25:
        raise ValueError(f"`labels` must be (V >= 2, 25) cameras, got {tuple(labels.shape)}")
    device = ws.device
    s, v = ws.shape[0], labels.shape[0]
    names = list(view_names) if view_names is not None else [f"view{i}" for i in range(v)]
    raws, depths, finals = [], [], []
    for i in range(0, s, batch_size):
        w = ws[i:i + batch_size]
        planes = G.planes(w, noise_mode=noise_mode)
        per_view = [G.synthesis(w, labels[j:j + 1].expand(w.shape[0], -1).to(device), noise_mode=noise_mode,
                                sampling="deterministic", planes=planes) for j in range(v)]
        raws.append(torch.stack([o.image_raw.cpu() for o in per_view], 1))
        depths.append(torch.stack([o.image_depth.cpu() for o in per_view], 1))
        finals.append(torch.stack([o.image.cpu() for o in per_view], 1))
    raw, depth, final = torch.cat(raws), torch.cat(depths), torch.cat(finals)  # (S, V, C, H, W)
    labels = labels.cpu().float()
    per_pair, pooled = [], {"raw": ([], [], []), "final": ([], [], [])}
    examples = {}
    for a in range(v):
        for bb in range(v):
            if a == bb:
                continue
            la, lb = labels[a:a + 1].expand(s, -1), labels[bb:bb + 1].expand(s, -1)
            entry = {"from": names[bb], "to": names[a]}
            for kind, imgs in (("raw", raw), ("final", final)):
                r = reprojection_error(imgs[:, a], imgs[:, bb], depth[:, a], la, lb, depth_b=depth[:, bb],
                                       depth_tolerance=depth_tolerance)
                entry[kind] = {"mean_abs": _nanmean(r.mean_abs), "psnr": _nanmean(r.psnr),
                               "valid_fraction": float(r.valid_fraction.double().mean())}
                for lst, val in zip(pooled[kind], (r.mean_abs, r.psnr, r.valid_fraction)):
                    lst.append(val)
                if kind == "final" and not examples and s > 0:
                    examples = {"view_a": imgs[0, a], "view_b": imgs[0, bb], "warped": r.warp.warped[0],
                                "valid": r.warp.valid[0], "error": r.error_map[0], "pair": (names[bb], names[a])}
            per_pair.append(entry)
    summary = {}
    for kind, (abs_l, psnr_l, frac_l) in pooled.items():
        abs_all, psnr_all = torch.cat(abs_l), torch.cat(psnr_l)
        summary[kind] = {"mean_abs": _nanmean(abs_all), "psnr": _nanmean(psnr_all),
                         "valid_fraction": float(torch.cat(frac_l).double().mean()),
                         "num_pairs_without_overlap": int((~torch.isfinite(abs_all)).sum()),
                         "resolution": int((raw if kind == "raw" else final).shape[-1])}
    if summary["raw"]["mean_abs"] is None:
        summary["raw"]["note"] = "no pixel was visible in both views of any pair"
    return ViewConsistencyResult(summary["raw"], summary["final"], per_pair, final, examples)
