"""The inverted-latent file: ``latent.pt`` (machine) + ``latent.json`` (human), and the architecture check.

``latent.pt`` is ``torch.save`` of a flat dict holding only tensors, strings, floats and ints, so it loads with
``torch.load(path, weights_only=True)`` (no code runs)::

    format        "adapt3d-latent"             version   1
    ws            float32 (1, num_ws, w_dim)   the latent (in W+ form even for a W inversion: rows are equal)
    camera        float32 (1, 25)              EG3D label of the input view
    space         "w" | "w+"
    architecture  JSON string: the generator fields that must match to render ws (see ARCHITECTURE_KEYS)
    generator     JSON string: the full config of the generator it was inverted with (information)
    source        JSON string: where that generator came from (preset / checkpoint)
    yaw, pitch    floats, EG3D orbit angles of ``camera`` (radians)
    loss, psnr    floats, of the final reconstruction (PSNR in dB over [-1, 1] clamped images)
    noise/<name>  optional float32 tensors: optimised noise_const buffers of the synthesis network
    input_image, reconstruction, pti_generator   strings: file / folder names next to latent.pt ("" = none)

``latent.json`` repeats everything but the tensors (ws summarised by its shape and norm).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapt3d.utils.io import atomic_path, atomic_write_json
from adapt3d.utils.torch_load import OldTorchError, load_weights_only

__all__ = ["LatentCode", "LatentFileError", "LatentMismatchError", "ARCHITECTURE_KEYS", "architecture_of",
           "check_architecture", "save_latent", "load_latent", "LATENT_PT", "LATENT_JSON", "FORMAT"]

FORMAT = "adapt3d-latent"
VERSION = 1
LATENT_PT = "latent.pt"
LATENT_JSON = "latent.json"
NOISE_PREFIX = "noise/"
# Config fields that decide the shapes and meaning of ws and of every weight. Rendering settings (ray range,
# neural rendering resolution, camera averages) may differ: an adapted generator can change them.
ARCHITECTURE_KEYS = ("z_dim", "w_dim", "c_dim", "img_resolution", "img_channels", "mapping_kwargs", "channel_base",
                     "channel_max", "triplane_resolution", "triplane_channels")


class LatentFileError(ValueError):
    """A latent file is missing, unreadable or not an adapt3d latent."""


class LatentMismatchError(ValueError):
    """A latent and a generator of different architectures."""


def architecture_of(G) -> dict:
    """The architecture fingerprint of a generator: ARCHITECTURE_KEYS + num_ws + super-resolution head."""
    cfg = G.config.to_dict()
    arch = {k: cfg[k] for k in ARCHITECTURE_KEYS}
    arch["num_ws"] = int(G.num_ws)
    arch["superresolution_module"] = cfg["rendering"]["superresolution_module"]
    return json.loads(json.dumps(arch, sort_keys=True))


@dataclass
class LatentCode:
    """An inverted (or chosen) instance: ``ws`` (1, num_ws, w_dim) seen from ``camera`` (1, 25)."""

    ws: torch.Tensor
    camera: torch.Tensor
    space: str = "w+"
    architecture: dict = field(default_factory=dict)
    generator: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    yaw: float = math.pi / 2
    pitch: float = math.pi / 2
    loss: float = float("nan")
    psnr: float = float("nan")
    noise: dict[str, torch.Tensor] = field(default_factory=dict)
    input_image: str = ""
    reconstruction: str = ""
    pti_generator: str = ""
    path: Path | None = None
    """The latent.pt this code was loaded from (None when built in memory)."""

    def folder(self) -> Path | None:
        return None if self.path is None else self.path.parent


def check_architecture(G, latent: LatentCode, flag: str = "--latent") -> None:
    """Raise :class:`LatentMismatchError` (naming ``flag`` and the differing fields) unless ``G`` can render
    ``latent``: same architecture fingerprint and ws shape."""
    arch = architecture_of(G)
    where = f"{flag} {latent.path}" if latent.path is not None else flag
    if latent.architecture and latent.architecture != arch:
        diff = sorted(k for k in set(arch) | set(latent.architecture) if arch.get(k) != latent.architecture.get(k))
        shown = ", ".join(f"{k}: latent {latent.architecture.get(k)!r} vs generator {arch.get(k)!r}" for k in diff[:4])
        raise LatentMismatchError(f"{where}: the latent was made with a generator of another architecture ({shown}); "
                                  "render it through the generator it was inverted with or one fine-tuned from it")
    want = (1, arch["num_ws"], arch["w_dim"])
    if tuple(latent.ws.shape) != want:
        raise LatentMismatchError(f"{where}: ws has shape {tuple(latent.ws.shape)}, the generator needs {want}")


def _summary(code: LatentCode) -> dict:
    return {"format": FORMAT, "version": VERSION, "space": code.space, "ws_shape": list(code.ws.shape),
            "ws_norm": float(code.ws.float().norm()), "camera": [float(v) for v in code.camera.reshape(-1)],
            "yaw": code.yaw, "pitch": code.pitch, "yaw_deg_from_frontal": math.degrees(code.yaw - math.pi / 2),
            "pitch_deg_from_frontal": math.degrees(code.pitch - math.pi / 2),
            "loss": code.loss if math.isfinite(code.loss) else None,
            "psnr": code.psnr if math.isfinite(code.psnr) else None, "architecture": code.architecture,
            "generator": code.generator, "source": code.source, "noise_buffers": sorted(code.noise),
            "input_image": code.input_image, "reconstruction": code.reconstruction,
            "pti_generator": code.pti_generator}


def save_latent(folder: str | os.PathLike, code: LatentCode, extra_json: dict | None = None) -> Path:
    """Write ``folder/latent.pt`` and ``folder/latent.json`` atomically; returns the latent.pt path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict = {"format": FORMAT, "version": VERSION, "ws": code.ws.detach().float().cpu().contiguous(),
                 "camera": code.camera.detach().float().cpu().reshape(1, 25).contiguous(), "space": code.space,
                 "architecture": json.dumps(code.architecture, sort_keys=True),
                 "generator": json.dumps(code.generator, sort_keys=True),
                 "source": json.dumps(code.source, sort_keys=True, default=str),
                 "yaw": float(code.yaw), "pitch": float(code.pitch), "loss": float(code.loss),
                 "psnr": float(code.psnr), "input_image": code.input_image, "reconstruction": code.reconstruction,
                 "pti_generator": code.pti_generator}
    for name, t in code.noise.items():
        doc[NOISE_PREFIX + name] = t.detach().float().cpu().contiguous()
    path = folder / LATENT_PT
    with atomic_path(path) as tmp:
        torch.save(doc, tmp)
    atomic_write_json(folder / LATENT_JSON, {**_summary(code), **(extra_json or {})})
    code.path = path
    return path


def _json_field(doc: dict, key: str, path: Path) -> dict:
    try:
        value = json.loads(doc.get(key) or "{}")
    except (TypeError, json.JSONDecodeError) as e:
        raise LatentFileError(f"--latent: {path} field {key!r} is not valid JSON ({e})") from e
    return value if isinstance(value, dict) else {}


def load_latent(path: str | os.PathLike, flag: str = "--latent") -> LatentCode:
    """Read a latent file (``latent.pt`` or the folder holding it) with ``weights_only=True``."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / LATENT_PT
    if not path.is_file():
        raise LatentFileError(f"{flag}: {path} does not exist (expected the latent.pt written by adapt3d invert, "
                              "or its folder)")
    try:
        doc = load_weights_only(path, f"{flag} {path}")
    except OldTorchError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means: not our file
        raise LatentFileError(f"{flag}: cannot read {path} as an adapt3d latent ({type(e).__name__}: {e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LatentFileError(f"{flag}: {path} is not an adapt3d latent file (format "
                              f"{doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r})")
    if int(doc.get("version", 0)) > VERSION:
        raise LatentFileError(f"{flag}: {path} has version {doc['version']}, newer than this adapt3d ({VERSION})")
    ws, camera = doc.get("ws"), doc.get("camera")
    if not isinstance(ws, torch.Tensor) or ws.ndim != 3 or ws.shape[0] != 1:
        raise LatentFileError(f"{flag}: {path} has no ws tensor of shape (1, num_ws, w_dim)")
    if not isinstance(camera, torch.Tensor) or camera.numel() != 25:
        raise LatentFileError(f"{flag}: {path} has no 25-number camera label")
    if not (torch.isfinite(ws).all() and torch.isfinite(camera).all()):
        raise LatentFileError(f"{flag}: {path} holds NaN or infinite values")
    noise = {k[len(NOISE_PREFIX):]: v for k, v in doc.items() if k.startswith(NOISE_PREFIX)}
    return LatentCode(ws=ws.float(), camera=camera.float().reshape(1, 25), space=str(doc.get("space", "w+")),
                      architecture=_json_field(doc, "architecture", path),
                      generator=_json_field(doc, "generator", path), source=_json_field(doc, "source", path),
                      yaw=float(doc.get("yaw", math.pi / 2)), pitch=float(doc.get("pitch", math.pi / 2)),
                      loss=float(doc.get("loss", float("nan"))), psnr=float(doc.get("psnr", float("nan"))),
                      noise=noise, input_image=str(doc.get("input_image", "")),
                      reconstruction=str(doc.get("reconstruction", "")),
                      pti_generator=str(doc.get("pti_generator", "")), path=path)
