"""Live renders for the studio's Explore tab: two generator slots ("a" = source, "b" = e.g. adapted) rendered at
the same latent and camera.

Generators load through :func:`adapt3d.models.loading.load_generator` (presets, adapt3d checkpoint folders,
official EG3D pickles read without executing code, known names). Through the browser only presets, known names,
the checkpoints given on the command line and checkpoints under the runs folder may be loaded.

A view is ``z = RandomState(seed).randn(1, z_dim)`` mapped with the frontal camera (as ``adapt3d render``), or the
``ws`` of an inverted latent file, rendered at EG3D angles ``yaw = pi/2 + yaw_deg``, ``pitch = pi/2 + pitch_deg``
around the generator's average camera pivot and radius, with deterministic ray marching.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapt3d.export.images import depth_to_image, to_uint8
from adapt3d.models import hub
from adapt3d.models.latents import default_cameras, map_seeds
from adapt3d.models.loading import check_generator_source, load_generator
from adapt3d.models.triplane import PRESETS
from adapt3d.studio.files import resolve_under
from adapt3d.utils.parsing import check_trunc, resolve_device

__all__ = ["ExploreError", "GeneratorSlots", "ViewRequest", "SLOTS"]

SLOTS = ("a", "b")


class ExploreError(ValueError):
    """A render or load request with a bad value (the message names the parameter)."""


@dataclass
class ViewRequest:
    """One live view; angles in degrees from frontal, truncation psi in [0, 2]."""

    slot: str = "a"
    seed: int = 0
    trunc: float = 0.7
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    view: str = "image"  # "image" (the final image) or "depth" (near = bright)
    latent: str | None = None  # latent.pt under the runs folder instead of the seed

    def check(self) -> None:
        if self.slot not in SLOTS:
            raise ExploreError(f"slot: {self.slot!r} is not one of {SLOTS}")
        if not 0 <= self.seed < 2 ** 32:
            raise ExploreError(f"seed: {self.seed} is outside [0, 2^32)")
        try:
            check_trunc(self.trunc, "trunc")
        except ValueError as e:
            raise ExploreError(str(e)) from None
        if not (abs(self.yaw_deg) <= 180 and abs(self.pitch_deg) <= 89):
            raise ExploreError(f"yaw_deg/pitch_deg: ({self.yaw_deg}, {self.pitch_deg}) is outside [-180, 180] x "
                               "[-89, 89]")
        if self.view not in ("image", "depth"):
            raise ExploreError(f"view: {self.view!r} is not 'image' or 'depth'")


@dataclass
class _Slot:
    generator: torch.nn.Module
    source: dict
    label: str
    arg: dict  # how a job names this generator: {"preset": name} or {"checkpoint": path}
    notes: list[str] = field(default_factory=list)


class GeneratorSlots:
    """The loaded generators and a small cache of mapped latents; thread-safe (one render at a time)."""

    def __init__(self, runs_root: Path, device: str = "auto", allowed: tuple[str, ...] = ()):
        self.root = Path(runs_root).resolve()
        self.device = resolve_device(device)
        self.allowed = {str(a) for a in allowed}  # checkpoints named on the command line
        self._slots: dict[str, _Slot] = {}
        self._ws: OrderedDict = OrderedDict()
        self._lock = threading.RLock()

    def state(self) -> dict:
        def one(v: _Slot | None) -> dict | None:
            return {"label": v.label, "arg": v.arg, "source": v.source, "notes": v.notes} if v else None
        return {s: one(self._slots.get(s)) for s in SLOTS}

    def _checkpoint_path(self, checkpoint: str) -> str:
        if checkpoint in self.allowed or hub.checkpoint_key(checkpoint) in hub.known_checkpoints():
            return checkpoint
        try:
            return str(resolve_under(self.root, checkpoint))
        except FileNotFoundError as e:
            raise ExploreError(f"checkpoint: {checkpoint!r} is not under the runs folder {self.root}, not a known "
                               f"name ({', '.join(sorted(hub.known_checkpoints()))}) and not given on the command "
                               "line") from e

    def load(self, slot: str, preset: str | None = None, checkpoint: str | None = None) -> dict:
        """Load a generator into ``slot``; both None empties it. Checkpoints must be allowed (see module doc)."""
        if slot not in SLOTS:
            raise ExploreError(f"slot: {slot!r} is not one of {SLOTS}")
        if preset is None and checkpoint is None:
            with self._lock:
                self._slots.pop(slot, None)
                self._drop_cache(slot)
            return self.state()
        if preset is not None and preset not in PRESETS:
            raise ExploreError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        path = self._checkpoint_path(checkpoint) if checkpoint is not None else None
        try:
            check_generator_source(preset, path)
        except ValueError as e:
            raise ExploreError(str(e)) from e
        try:
            loaded = load_generator(preset=preset, checkpoint=path, progress=False)
        except (ValueError, OSError) as e:  # CheckpointError (refused pickle, corrupt file), download failure
            raise ExploreError(f"checkpoint: cannot load {checkpoint!r}: {e}") from e
        G = loaded.generator.to(self.device).eval().requires_grad_(False)
        with self._lock:
            arg = {"preset": preset} if preset is not None else {"checkpoint": path}
            self._slots[slot] = _Slot(G, loaded.source, preset or checkpoint, arg, list(loaded.notes))
            self._drop_cache(slot)
        return self.state()

    def _drop_cache(self, slot: str) -> None:
        for key in [k for k in self._ws if k[0] == slot]:
            del self._ws[key]

    def _ws_for(self, req: ViewRequest, G) -> torch.Tensor:
        key = (req.slot, req.latent, req.seed, req.trunc)
        if key in self._ws:
            self._ws.move_to_end(key)
            return self._ws[key]
        if req.latent:
            from adapt3d.inversion.latent_file import check_architecture, load_latent
            code = load_latent(resolve_under(self.root, req.latent), flag="latent")
            check_architecture(G, code, flag="latent")
            ws = code.ws.to(self.device)
        else:
            ws = map_seeds(G, [req.seed], req.trunc, None, self.device)  # (1, num_ws, w_dim)
        self._ws[key] = ws
        while len(self._ws) > 64:
            self._ws.popitem(last=False)
        return ws

    @torch.no_grad()
    def render(self, req: ViewRequest) -> bytes:
        """PNG bytes of one view (image: the generator's final image; depth: its depth map, near = bright)."""
        from PIL import Image
        req.check()
        with self._lock:
            slot = self._slots.get(req.slot)
            if slot is None:
                raise ExploreError(f"slot: no generator loaded in slot {req.slot!r}; load one first")
            G = slot.generator
            try:
                ws = self._ws_for(req, G)
            except (FileNotFoundError, ValueError) as e:  # missing, unreadable or mismatched latent file
                raise ExploreError(str(e) if str(e).startswith("latent") else f"latent: {e}") from e
            yaw = torch.tensor([math.pi / 2 + math.radians(req.yaw_deg)])
            pitch = torch.tensor([math.pi / 2 + math.radians(req.pitch_deg)])
            c = default_cameras(G, yaw, pitch).to(self.device)  # (1, 25)
            out = G.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        if req.view == "depth":
            r = G.rendering
            array = depth_to_image(out.image_depth.cpu(), near=None if r.ray_start == "auto" else r.ray_start,
                                   far=None if r.ray_end == "auto" else r.ray_end)[0]  # (h, w, 3)
        else:
            array = to_uint8(out.image.cpu())[0]  # (H, W, 3)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()
