"""Lighting and backgrounds of 3D-DST renders, drawn per view from a seed and recorded in the annotation.

3D-DST renders with Blender Cycles under one large area light above the object (and, with ``--bg_hdr_dir``, a random
HDR environment per image). adapt3d's rasteriser is Lambertian; this module varies what it can vary:

* **lighting** ``headlight`` (default): a light at the camera, ambient 0.35 + diffuse 0.65 (every visible face lit,
  the rasteriser's default); ``random``: a directional light from azimuth U[0, 360) deg and elevation
  U[``light_elevation_deg``] above the object's horizon (object frame, +z up, so light comes from above as in
  3D-DST), ambient U[``ambient``], diffuse intensity U[``diffuse``].
* **background** ``white`` (default, 3D-DST's flat film), ``solid`` (one uniform random colour), ``gradient``
  (two random colours blended linearly along a random direction) or ``images`` (a random picture from
  ``background_dir``, scaled to cover the image and cropped at a random offset). The object is composited over it
  with its silhouette; the visual prompt (Canny edges) is computed from the composited render, as 3D-DST computes
  it from its render with the HDR environment.

Every view draws from its own ``numpy.random.default_rng([seed, mesh_key, view_index, 1])`` (the viewpoint uses the
same key without the trailing 1), so lighting and background do not depend on sharding or the order of work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["SceneConfig", "SceneSample", "LIGHTING_MODES", "BACKGROUND_KINDS", "IMAGE_EXTENSIONS",
           "check_scene_config", "sample_scene", "render_background", "composite"]

LIGHTING_MODES = ("headlight", "random")
BACKGROUND_KINDS = ("white", "solid", "gradient", "images")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class SceneConfig:
    """How lighting and backgrounds are drawn (see the module docstring)."""

    lighting: Literal["headlight", "random"] = "headlight"
    light_elevation_deg: tuple[float, float] = (15.0, 75.0)
    ambient: tuple[float, float] = (0.2, 0.45)
    diffuse: tuple[float, float] = (0.5, 1.0)
    background: Literal["white", "solid", "gradient", "images"] = "white"
    background_dir: Path | None = None


@dataclass
class SceneSample:
    """The lighting and background of one view (what the annotation records)."""

    lighting: dict
    background: dict

    def to_dict(self) -> dict:
        return {"lighting": dict(self.lighting), "background": dict(self.background)}


def _range(name: str, value, lo: float, hi: float) -> None:
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise ValueError(f"--{name.replace('_', '-')}: need two numbers {lo} <= a <= b <= {hi}, got {value}")


def background_images(folder: Path) -> list[Path]:
    """The picture files of a background folder (recursive, sorted)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def check_scene_config(cfg: SceneConfig) -> list[Path]:
    """Raise ValueError naming the flag of the first bad option; returns the background pictures (or [])."""
    if cfg.lighting not in LIGHTING_MODES:
        raise ValueError(f"--lighting: {cfg.lighting!r} is not one of {LIGHTING_MODES}")
    if cfg.background not in BACKGROUND_KINDS:
        raise ValueError(f"--background: {cfg.background!r} is not one of {BACKGROUND_KINDS}")
    _range("light_elevation_deg", cfg.light_elevation_deg, -90.0, 90.0)
    _range("ambient", cfg.ambient, 0.0, 1.0)
    _range("diffuse", cfg.diffuse, 0.0, 2.0)
    if cfg.background != "images":
        if cfg.background_dir is not None:
            raise ValueError("--background-dir: only used with --background images")
        return []
    if cfg.background_dir is None or not Path(cfg.background_dir).is_dir():
        raise ValueError(f"--background-dir: {cfg.background_dir} must be a folder of pictures "
                         f"({', '.join(IMAGE_EXTENSIONS)}) for --background images")
    images = background_images(cfg.background_dir)
    if not images:
        raise ValueError(f"--background-dir: {cfg.background_dir} holds no pictures ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def sample_scene(cfg: SceneConfig, seed: int, mesh_key: int, view_index: int,
                 images: list[Path] | None = None) -> SceneSample:
    """Draw the lighting and background of one view (deterministic in its arguments)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(mesh_key) & 0xFFFFFFFF, int(view_index), 1])
    if cfg.lighting == "headlight":
        lighting = {"mode": "headlight", "ambient": 0.35, "diffuse": 0.65, "direction": None}
    else:
        az = math.radians(360.0 * rng.random())
        el = math.radians(rng.uniform(*cfg.light_elevation_deg))
        direction = [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
        lighting = {"mode": "random", "ambient": float(rng.uniform(*cfg.ambient)),
                    "diffuse": float(rng.uniform(*cfg.diffuse)), "direction": [round(c, 12) for c in direction],
                    "azimuth_deg": round(math.degrees(az), 9), "elevation_deg": round(math.degrees(el), 9)}
    if cfg.background == "white":
        background = {"kind": "white", "color": [1.0, 1.0, 1.0]}
    elif cfg.background == "solid":
        background = {"kind": "solid", "color": [round(float(c), 6) for c in rng.random(3)]}
    elif cfg.background == "gradient":
        background = {"kind": "gradient", "colors": [[round(float(c), 6) for c in rng.random(3)] for _ in range(2)],
                      "angle_deg": round(360.0 * float(rng.random()), 6)}
    else:
        if not images:
            raise ValueError("--background images: no pictures to draw from")
        k = int(rng.integers(len(images)))
        background = {"kind": "images", "image": str(images[k]), "crop": [round(float(c), 6) for c in rng.random(2)]}
    return SceneSample(lighting=lighting, background=background)


def render_background(sample: SceneSample, height: int, width: int) -> np.ndarray:
    """The background (H, W, 3) float64 in [0, 1] of a scene sample."""
    bg = sample.background
    if bg["kind"] in ("white", "solid"):
        return np.broadcast_to(np.asarray(bg["color"], dtype=np.float64), (height, width, 3)).copy()
    if bg["kind"] == "gradient":
        a = math.radians(bg["angle_deg"])
        ys, xs = np.mgrid[0:height, 0:width]
        t = ((xs + 0.5) / width - 0.5) * math.cos(a) + ((ys + 0.5) / height - 0.5) * math.sin(a)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-12)
        c0, c1 = (np.asarray(c, dtype=np.float64) for c in bg["colors"])
        return c0 * (1 - t[..., None]) + c1 * t[..., None]
    from PIL import Image

    try:
        with Image.open(bg["image"]) as img:
            img = img.convert("RGB")
            scale = max(width / img.width, height / img.height)
            size = (max(width, math.ceil(img.width * scale)), max(height, math.ceil(img.height * scale)))
            img = img.resize(size, Image.BILINEAR)
            x0 = int(round(bg["crop"][0] * (size[0] - width)))
            y0 = int(round(bg["crop"][1] * (size[1] - height)))
            arr = np.asarray(img.crop((x0, y0, x0 + width, y0 + height)), dtype=np.float64) / 255.0
    except OSError as e:
        raise ValueError(f"--background-dir: picture {bg['image']} could not be read ({e})") from e
    return arr


def composite(rgb: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The render (H, W, 3) uint8 over ``background`` (H, W, 3) in [0, 1] where ``mask`` (H, W) is False."""
    bg = np.round(np.clip(background, 0, 1) * 255).astype(np.uint8)
    return np.where(mask[..., None], rgb, bg)
