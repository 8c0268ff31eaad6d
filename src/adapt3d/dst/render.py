"""One annotated 3D-DST view: rasterise a CAD mesh at a sampled viewpoint, make the visual prompt, annotate.

Visual prompts (control images, uint8):

* ``canny``: ``cv2.Canny(render_rgb, low, high, apertureSize=3)`` on the RGB render, as 3D-DST (100/200);
* ``depth``: the exact rendered depth as a disparity map, ``0.2 + 0.8 * (1/z - 1/z_max) / (1/z_min - 1/z_max)`` on
  the object (near = bright), 0 on the background (the layout of MiDaS maps that depth ControlNets expect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from adapt3d.data.cad import CadMesh, CadModel
from adapt3d.dst.annotations import DstCamera, bbox_from_mask, dst_camera, keypoint_annotations, pascal3d_from_dst
from adapt3d.dst.scene import SceneSample, composite, render_background
from adapt3d.dst.viewpoints import Viewpoint
from adapt3d.rendering.mesh_raster import MeshRasterConfig, rasterize_mesh
from adapt3d.rendering.texture import MeshTextures

__all__ = ["RenderedView", "render_view", "mesh_textures", "canny_edges", "depth_control", "control_image",
           "view_annotation", "CONTROL_KINDS"]

CONTROL_KINDS = ("canny", "depth")


@dataclass
class RenderedView:
    rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    depth: np.ndarray  # (H, W) float32 camera z, 0 on the background
    normals: np.ndarray  # (H, W, 3) float32 world (object-frame) normals, 0 on the background
    camera: DstCamera
    viewpoint: Viewpoint
    keypoints: list[dict]
    bbox: list[float] | None
    scene: SceneSample | None = None


def canny_edges(rgb: np.ndarray, low: int = 100, high: int = 200, aperture: int = 3) -> np.ndarray:
    """Canny edge map (H, W) uint8 {0, 255} of an RGB uint8 image (H, W, 3), 3D-DST's visual prompt."""
    import cv2

    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
        raise ValueError(f"--canny-low/--canny-high: need integers 0 <= low <= high, got {low}/{high}")
    if aperture not in (3, 5, 7):
        raise ValueError(f"--canny-aperture: must be 3, 5 or 7, got {aperture}")
    return cv2.Canny(np.ascontiguousarray(rgb), low, high, apertureSize=aperture)


def depth_control(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Disparity control image (H, W) uint8 (see the module docstring)."""
    out = np.zeros(depth.shape, dtype=np.float64)
    if mask.any():
        disp = 1.0 / depth[mask].astype(np.float64)
        lo, hi = disp.min(), disp.max()
        out[mask] = 0.2 + 0.8 * ((disp - lo) / (hi - lo) if hi > lo else 1.0)
    return np.round(out * 255).astype(np.uint8)


def control_image(view: RenderedView, kind: str, low: int = 100, high: int = 200, aperture: int = 3) -> np.ndarray:
    if kind == "canny":
        return canny_edges(view.rgb, low, high, aperture)
    if kind == "depth":
        return depth_control(view.depth, view.mask)
    raise ValueError(f"--control: {kind!r} is not one of {CONTROL_KINDS}")


def mesh_textures(mesh: CadMesh, device: torch.device | str = "cpu") -> MeshTextures | None:
    """The rasteriser's materials of ``mesh`` on ``device`` (built once per mesh and device, then cached on it)."""
    if mesh.face_material is None:
        return None
    cache = mesh.__dict__.setdefault("_textures", {})
    key = str(device)
    if key not in cache:
        images = [None if m.texture is None else
                  torch.from_numpy(m.texture).to(device).permute(2, 0, 1).float().div(255) for m in mesh.materials]
        cache[key] = MeshTextures(
            uv=None if mesh.uv is None else torch.from_numpy(mesh.uv).to(device),
            face_material=torch.from_numpy(mesh.face_material).to(device),
            base_colors=torch.from_numpy(np.stack([m.base_color for m in mesh.materials])).to(device),
            images=images)
    return cache[key]


def render_view(mesh: CadMesh, viewpoint: Viewpoint, resolution: int, device: torch.device | str = "cpu",
                raster: MeshRasterConfig | None = None, keypoint_tolerance: float = 0.01,
                scene: SceneSample | None = None) -> RenderedView:
    """Rasterise ``mesh`` at ``viewpoint`` into a ``resolution``-pixel square image and annotate it.

    ``scene`` (from :func:`adapt3d.dst.scene.sample_scene`) sets the light and the background; without it the
    rasteriser's head light and ``raster.background`` are used."""
    cam = dst_camera(viewpoint.azimuth, viewpoint.polar, viewpoint.roll, viewpoint.distance, resolution, resolution)
    colors = None if mesh.colors is None else torch.from_numpy(mesh.colors).to(device)
    if scene is not None:
        light = scene.lighting
        raster = MeshRasterConfig(**{**(raster or MeshRasterConfig()).__dict__, "ambient": light["ambient"],
                                     "diffuse": light["diffuse"], "light_direction":
                                     None if light["direction"] is None else tuple(light["direction"])})
    out = rasterize_mesh(torch.from_numpy(mesh.vertices).to(device), torch.from_numpy(mesh.faces).to(device),
                         torch.from_numpy(cam.cam2world).to(device), torch.from_numpy(cam.intrinsics).to(device),
                         resolution, colors=colors, config=raster, textures=mesh_textures(mesh, device))
    rgb = np.round(out.rgb.permute(1, 2, 0).cpu().double().numpy() * 255).astype(np.uint8)
    mask = out.mask[0].cpu().numpy() > 0.5
    if scene is not None:
        rgb = composite(rgb, mask, render_background(scene, resolution, resolution))
    depth = out.depth[0].cpu().numpy().astype(np.float32)
    normals = out.normals.permute(1, 2, 0).cpu().numpy().astype(np.float32)
    kps = keypoint_annotations(mesh.keypoints, cam, depth, tolerance=keypoint_tolerance)
    return RenderedView(rgb=rgb, mask=mask, depth=depth, normals=normals, camera=cam, viewpoint=viewpoint,
                        keypoints=kps, bbox=bbox_from_mask(mask), scene=scene)


def _round(x, nd: int = 10):
    return np.round(np.asarray(x, dtype=np.float64), nd).tolist()


def view_annotation(model: CadModel, mesh: CadMesh, view: RenderedView, files: dict[str, str]) -> dict:
    """The JSON annotation of a rendered view (the generated image's fields are added by the caller).

    Angles in radians (3D-DST convention, plus ``pascal3d``), K/R/t/cam2world as described in
    :mod:`adapt3d.dst.annotations`, ``bbox`` = COCO ``[x, y, w, h]`` of the silhouette, ``area`` = its pixel count.
    The in-plane rotation is ``inplane_rotation`` (PASCAL3D+ calls it ``theta``, 3D-DST's ``.npy`` calls its azimuth
    ``theta``; adapt3d's top-level annotation has no ``theta`` so neither reading is possible).
    """
    from adapt3d.dst.imagenet import class_display_name

    vp, cam = view.viewpoint, view.camera
    return {
        "class": model.class_name,
        "class_name": class_display_name(model.class_name),
        "mesh_id": model.model_id,
        "mesh_path": str(model.path),
        "collection": model.collection,
        "strength": model.strength,
        "tags": list(model.tags),
        "width": cam.width,
        "height": cam.height,
        "azimuth": vp.azimuth,
        "elevation": vp.elevation,
        "polar": vp.polar,
        "inplane_rotation": vp.roll,
        "distance": vp.distance,
        "pose_sampling": vp.strategy,
        "alignment": {"azimuth_deg": model.azimuth_deg, "elevation_deg": model.elevation_deg,
                      "distance": model.distance, "up_axis": model.up_axis},
        "rendering_scale": mesh.scale,
        "rendering_offset": _round(mesh.offset),
        "pascal3d": pascal3d_from_dst(vp.azimuth, vp.polar, vp.roll, vp.distance),
        "K": _round(cam.K),
        "R": _round(cam.R),
        "t": _round(cam.t),
        "principal": [float(cam.K[0, 2]), float(cam.K[1, 2])],
        "focal_px": float(cam.K[0, 0]),
        "cam2world": _round(cam.cam2world),
        "eg3d_label": _round(cam.eg3d_label),
        "bbox": view.bbox,
        "area": int(view.mask.sum()),
        "keypoints": view.keypoints,
        "appearance": {"textured": mesh.textured, "materials": len(mesh.materials),
                       "vertex_colors": mesh.colors is not None},
        "scene": None if view.scene is None else view.scene.to_dict(),
        "files": dict(files),
        "units": {"angles": "rad", "pixels": "(0, 0) = top-left corner; pixel centres at j + 0.5",
                  "R_t": "object frame (+z up) -> OpenCV camera (x right, y down, z forward)"},
        "fov_deg": math.degrees(2 * math.atan(cam.width / 2 / cam.K[0, 0])),
    }
