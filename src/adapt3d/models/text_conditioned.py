"""A text-conditioned tri-plane generator: the source ``TriPlaneGenerator`` plus DreamPortrait-style conditioning.

The base generator's class is untouched; :class:`TextConditionedGenerator` holds it and adds two gated parts, both
driven by prompt token embeddings ``text`` (N, L, D) of a frozen text encoder (the diffusion model's):

1. Hierarchical condition adapters (:class:`ConditionAdapters`). The ``num_ws`` w layers are split into
   ``num_groups`` contiguous groups (coarse -> fine). Adapter g sees the pooled text ``t = mean_L(text)``, the
   group's mean w and the hidden state of adapter g-1, and modulates the group's layers::

       (scale_g, shift_g, h_g) = MLP_g([t, mean(w_g), h_{g-1}])
       w_g' = w_g (1 + tanh(a_g) scale_g) + tanh(a_g) shift_g

2. 3D-aware gated cross-attention (:class:`TriplaneCrossAttention`) from tri-plane features to text tokens. The
   planes (N, 3, C, P, P) are average-pooled to r x r cells; each cell is a query token made of its features plus
   an embedding of its 3D position (the cell's two in-plane box coordinates at their world axes, Fourier features,
   and the plane id; plane axes as in :mod:`adapt3d.rendering.triplane`). Keys and values are the text tokens.
   The attention output is upsampled (bilinear) to P x P and added with a gate::

       planes' = planes + tanh(b) * Up(Attn(Q(LN(f) + PE(xyz, plane)), K(text), V(text)))

Every gate (a_g, b) starts at exactly 0, so at step 0 the model's output equals the source generator's bit for
bit (``x * (1 + 0) + 0`` and ``planes + 0`` are exact). ``text=None`` is the unconditional path: the adapters and
the attention are skipped, so it *is* the source generator (bit-identical as long as the base stays frozen).

Rendering: ``ws' = adapters(G.mapping(z, c_cond), text)``; ``planes = G.planes(ws') + xattn``;
``G.synthesis(ws', c, planes=planes)`` (the super-resolution also sees ws').

Checkpoints: :func:`save_text_conditioned` writes the base with :func:`adapt3d.models.checkpoint.save_checkpoint`
and the conditioning weights to ``conditioning.safetensors`` (its config and sha256 in the checkpoint's metadata
under ``"text_conditioning"``). Plain loaders (``render --checkpoint``) still load the base generator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from adapt3d.models.checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint
from adapt3d.models.triplane import SynthesisOutput, TriPlaneGenerator
from adapt3d.rendering.triplane import PLANE_AXES
from adapt3d.utils.io import atomic_path, sha256_file

__all__ = ["TextConditioningConfig", "ConditionAdapters", "TriplaneCrossAttention", "TextConditionedGenerator",
           "BoundTextGenerator", "save_text_conditioned", "load_text_conditioned", "CONDITIONING_WEIGHTS",
           "METADATA_KEY", "is_text_conditioned"]

CONDITIONING_WEIGHTS = "conditioning.safetensors"
METADATA_KEY = "text_conditioning"
FORMAT = "adapt3d-text-conditioning"


@dataclass
class TextConditioningConfig:
    """Sizes of the conditioning modules. ``text_dim`` is the text encoder's hidden size (1024 for SD 2.x)."""

    text_dim: int
    num_groups: int = 3
    """Groups of w layers with their own adapter (coarse -> fine)."""
    adapter_hidden: int = 256
    """Hidden width of each adapter MLP."""
    attn_dim: int = 128
    """Width of the cross-attention queries/keys/values."""
    attn_heads: int = 4
    attn_resolution: int = 64
    """Tri-plane cells per side that attend (planes are pooled to this size; the residual is upsampled)."""
    pos_frequencies: int = 6
    """Fourier frequencies (2^0 .. 2^(F-1)) of the 3D position embedding."""

    def __post_init__(self) -> None:
        for name in ("text_dim", "num_groups", "adapter_hidden", "attn_dim", "attn_heads", "attn_resolution"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"text conditioning {name} must be an int >= 1, got {v!r}")
        if self.pos_frequencies < 0:
            raise ValueError(f"text conditioning pos_frequencies must be >= 0, got {self.pos_frequencies}")
        if self.attn_dim % self.attn_heads:
            raise ValueError(f"text conditioning attn_dim {self.attn_dim} must be divisible by attn_heads "
                             f"{self.attn_heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextConditioningConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown text conditioning config keys {unknown}; expected {sorted(known)}")
        return cls(**d)

    @classmethod
    def for_generator(cls, G: TriPlaneGenerator, text_dim: int, **overrides) -> TextConditioningConfig:
        """Sizes scaled to ``G``: hidden min(w_dim, 256), attention min(4 C, 128), cells min(P / 2, 64) (64 for
        EG3D's 256 planes)."""
        c, p = G.config.triplane_channels, G.config.triplane_resolution
        d = dict(text_dim=text_dim, adapter_hidden=min(G.w_dim, 256), attn_dim=min(4 * c, 128),
                 attn_resolution=max(1, min(p // 2, 64)), num_groups=min(3, G.num_ws))
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)


def _check_text(text: torch.Tensor, n: int, text_dim: int) -> torch.Tensor:
    if not isinstance(text, torch.Tensor) or text.ndim != 3 or text.shape[0] not in (1, n) \
            or text.shape[-1] != text_dim:
        shape = tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__
        raise ValueError(f"text: expected prompt token embeddings ({n} or 1, L, {text_dim}), got {shape}")
    return text.expand(n, -1, -1) if text.shape[0] == 1 and n != 1 else text


class ConditionAdapters(nn.Module):
    """Hierarchical FiLM adapters of the w layers, one per group, gated by tanh(a_g) with a_g = 0 at init."""

    def __init__(self, num_ws: int, w_dim: int, text_dim: int, num_groups: int, hidden: int):
        super().__init__()
        if num_groups > num_ws:
            raise ValueError(f"num_groups {num_groups} exceeds the generator's {num_ws} w layers")
        bounds = torch.linspace(0, num_ws, num_groups + 1).round().long().tolist()
        self.groups = [(bounds[i], bounds[i + 1]) for i in range(num_groups)]  # [start, end) layer indices
        self.w_dim, self.hidden = w_dim, hidden
        self.nets = nn.ModuleList(nn.Sequential(
            nn.LayerNorm(text_dim + w_dim + hidden), nn.Linear(text_dim + w_dim + hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2 * w_dim + hidden)) for _ in self.groups)
        self.gates = nn.Parameter(torch.zeros(num_groups))

    def forward(self, ws: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """ws (N, num_ws, w_dim), text (N, L, D) -> modulated ws (N, num_ws, w_dim)."""
        pooled = text.mean(1).to(ws.dtype)  # (N, D)
        h = ws.new_zeros(ws.shape[0], self.hidden)
        parts = []
        for g, ((s, e), net) in enumerate(zip(self.groups, self.nets)):
            w_g = ws[:, s:e]  # (N, L_g, w_dim)
            y = net(torch.cat([pooled, w_g.mean(1), h], dim=-1))
            scale, shift, h = y.split([self.w_dim, self.w_dim, self.hidden], dim=-1)
            gate = torch.tanh(self.gates[g])
            parts.append(w_g * (1 + gate * scale[:, None]) + gate * shift[:, None])
        return torch.cat(parts, dim=1)


def plane_positions(resolution: int, pos_frequencies: int) -> torch.Tensor:
    """Embedding inputs (3 * r * r, 3 + 6 F + 3) of the plane cells: box coordinates (x, y, z) in [-1, 1] (the
    off-plane axis 0), their sin/cos at frequencies 2^k pi, and the plane one-hot. Cell order: plane, row, col."""
    g = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    gy, gx = torch.meshgrid(g, g, indexing="ij")  # row index -> grid y, column index -> grid x
    rows = []
    for k, (ax_x, ax_y) in enumerate(PLANE_AXES):
        xyz = torch.zeros(resolution * resolution, 3)
        xyz[:, ax_x], xyz[:, ax_y] = gx.reshape(-1), gy.reshape(-1)
        onehot = torch.zeros(resolution * resolution, 3)
        onehot[:, k] = 1
        freq = (2.0 ** torch.arange(pos_frequencies)) * math.pi  # (F,)
        ang = (xyz[:, :, None] * freq).reshape(xyz.shape[0], -1)  # (r*r, 3F)
        rows.append(torch.cat([xyz, ang.sin(), ang.cos(), onehot], dim=1))
    return torch.cat(rows)


class TriplaneCrossAttention(nn.Module):
    """Gated cross-attention from (pooled) tri-plane cells with 3D position embeddings to text tokens."""

    def __init__(self, channels: int, text_dim: int, dim: int, heads: int, resolution: int, pos_frequencies: int):
        super().__init__()
        self.channels, self.dim, self.heads, self.resolution = channels, dim, heads, resolution
        self.register_buffer("positions", plane_positions(resolution, pos_frequencies), persistent=False)
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, dim)
        self.pos = nn.Linear(self.positions.shape[1], dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.to_kv = nn.Linear(text_dim, 2 * dim)
        self.to_out = nn.Linear(dim, channels)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, planes: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """planes (N, 3, C, P, P), text (N, L, D) -> planes + tanh(gate) * residual (N, 3, C, P, P)."""
        n, n_planes, c, p, _ = planes.shape
        r = self.resolution
        x = planes.reshape(n * n_planes, c, p, p)
        if r != p:
            x = F.adaptive_avg_pool2d(x, r)  # (N*3, C, r, r)
        tokens = x.reshape(n, n_planes, c, r * r).permute(0, 1, 3, 2).reshape(n, n_planes * r * r, c)
        q = self.to_q(self.norm(tokens)) + self.pos(self.positions.to(tokens.dtype))  # (N, 3 r r, dim)
        k, v = self.to_kv(self.text_norm(text.to(tokens.dtype))).chunk(2, dim=-1)  # (N, L, dim) each
        split = lambda t: t.reshape(n, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731 (N, h, ., dim/h)
        y = F.scaled_dot_product_attention(split(q), split(k), split(v))  # (N, h, 3 r r, dim/h)
        y = self.to_out(y.transpose(1, 2).reshape(n, n_planes * r * r, self.dim))  # (N, 3 r r, C)
        y = y.reshape(n, n_planes, r * r, c).permute(0, 1, 3, 2).reshape(n * n_planes, c, r, r)
        if r != p:
            y = F.interpolate(y, size=(p, p), mode="bilinear", align_corners=False)
        return planes + torch.tanh(self.gate) * y.reshape(n, n_planes, c, p, p)


class TextConditionedGenerator(nn.Module):
    """Source generator ``base`` + condition adapters + tri-plane cross-attention (see the module docstring)."""

    def __init__(self, base: TriPlaneGenerator, config: TextConditioningConfig):
        super().__init__()
        self.base = base
        self.cond_config = config
        self.adapters = ConditionAdapters(base.num_ws, base.w_dim, config.text_dim, config.num_groups,
                                          config.adapter_hidden)
        res = min(config.attn_resolution, base.config.triplane_resolution)
        self.cross_attention = TriplaneCrossAttention(base.config.triplane_channels, config.text_dim,
                                                      config.attn_dim, config.attn_heads, res,
                                                      config.pos_frequencies)

    # -- attributes of the base, for code written against TriPlaneGenerator ----------------------------------------
    z_dim = property(lambda self: self.base.z_dim)
    w_dim = property(lambda self: self.base.w_dim)
    num_ws = property(lambda self: self.base.num_ws)
    rendering = property(lambda self: self.base.rendering)
    config = property(lambda self: self.base.config)
    img_resolution = property(lambda self: self.base.img_resolution)
    neural_rendering_resolution = property(lambda self: self.base.neural_rendering_resolution)

    def conditioning_modules(self) -> dict[str, nn.Module]:
        return {"adapters": self.adapters, "cross_attention": self.cross_attention}

    def conditioning_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.conditioning_modules().values() for p in m.parameters()]

    def conditioning_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, m in self.conditioning_modules().items()
                for k, v in m.state_dict().items()}

    def gates(self) -> dict[str, float]:
        """tanh of every gate (0 at init): how much each conditioning path contributes."""
        g = {f"adapter{i}": float(torch.tanh(a)) for i, a in enumerate(self.adapters.gates.detach())}
        g["cross_attention"] = float(torch.tanh(self.cross_attention.gate.detach()))
        return g

    # -- forward -------------------------------------------------------------------------------------------------
    def condition_ws(self, ws: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Apply the adapters to ws (N, num_ws, w_dim); ``text=None`` returns ws unchanged."""
        if text is None:
            return ws
        return self.adapters(ws, _check_text(text, ws.shape[0], self.cond_config.text_dim))

    def mapping(self, z: torch.Tensor, c: torch.Tensor, text: torch.Tensor | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False) -> torch.Tensor:
        """z (N, z_dim), c (N, 25), text (N or 1, L, D) or None -> conditioned ws (N, num_ws, w_dim)."""
        ws = self.base.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                               update_emas=update_emas)
        return self.condition_ws(ws, text)

    def planes(self, ws: torch.Tensor, text: torch.Tensor | None = None, noise_mode: str = "random",
               **block_kwargs) -> torch.Tensor:
        """(Conditioned) ws -> tri-planes (N, 3, C, P, P) with the cross-attention residual when ``text``."""
        planes = self.base.planes(ws, noise_mode=noise_mode, **block_kwargs)
        if text is None:
            return planes
        return self.cross_attention(planes, _check_text(text, ws.shape[0], self.cond_config.text_dim))

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, text: torch.Tensor | None = None,
                  planes: torch.Tensor | None = None, noise_mode: str = "random", **kwargs) -> SynthesisOutput:
        """Render conditioned ws (from :meth:`mapping`) from cameras c (N, 25); images in [-1, 1]."""
        if planes is None:
            planes = self.planes(ws, text, noise_mode=noise_mode)
        return self.base.synthesis(ws, c, planes=planes, noise_mode=noise_mode, **kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor, text: torch.Tensor | None = None,
                c_cond: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, **synthesis_kwargs) -> SynthesisOutput:
        """One forward pass: map z with ``c_cond`` (default c), condition on ``text``, render from ``c``."""
        ws = self.mapping(z, c if c_cond is None else c_cond, text, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, c, text, **synthesis_kwargs)

    def bind(self, text: torch.Tensor | None) -> BoundTextGenerator:
        """A generator for one prompt with TriPlaneGenerator's call signatures (for render/metrics helpers)."""
        return BoundTextGenerator(self, text)


class BoundTextGenerator:
    """``TextConditionedGenerator`` with a fixed prompt embedding (1, L, D) (or None: the source generator)."""

    def __init__(self, model: TextConditionedGenerator, text: torch.Tensor | None):
        self.model, self.text = model, text

    def __getattr__(self, name: str) -> Any:  # z_dim, rendering, config, ... of the base
        return getattr(self.model, name)

    def mapping(self, z, c, truncation_psi: float = 1.0, truncation_cutoff: int | None = None, **kw):
        return self.model.mapping(z, c, self.text, truncation_psi, truncation_cutoff, **kw)

    def planes(self, ws, noise_mode: str = "random", **kw):
        return self.model.planes(ws, self.text, noise_mode=noise_mode, **kw)

    def synthesis(self, ws, c, planes=None, noise_mode: str = "random", **kw):
        return self.model.synthesis(ws, c, self.text, planes=planes, noise_mode=noise_mode, **kw)

    def sample_density(self, points, ws=None, planes=None, noise_mode: str = "const"):
        if planes is None:
            planes = self.planes(ws, noise_mode=noise_mode)
        return self.model.base.sample_density(points, planes=planes)

    def __call__(self, z, c, c_cond=None, truncation_psi: float = 1.0, truncation_cutoff=None, **kw):
        return self.model(z, c, self.text, c_cond, truncation_psi, truncation_cutoff, **kw)


def is_text_conditioned(metadata: dict) -> bool:
    return isinstance(metadata, dict) and isinstance(metadata.get(METADATA_KEY), dict)


def save_text_conditioned(folder: str | Path, model: TextConditionedGenerator,
                          discriminator: nn.Module | None = None, metadata: dict | None = None,
                          text_encoder: dict | None = None) -> Path:
    """Write an adapt3d checkpoint of ``model.base`` (+ D) plus ``conditioning.safetensors``.

    ``text_encoder`` (e.g. ``{"diffusion": "stabilityai/stable-diffusion-2-1-base"}``) records where prompt
    embeddings come from; it is stored with the conditioning config in the metadata. checkpoint.json is written
    last, so it names the sha256 of a complete conditioning file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.conditioning_state_dict().items()}
    path = folder / CONDITIONING_WEIGHTS
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    meta = dict(metadata or {})
    meta[METADATA_KEY] = {"format": FORMAT, "version": 1, "config": model.cond_config.to_dict(),
                          "weights": CONDITIONING_WEIGHTS, "sha256": sha256_file(path),
                          "text_encoder": dict(text_encoder or {})}
    return save_checkpoint(folder, model.base, discriminator, metadata=meta)


def load_text_conditioned(path: str | Path, load_discriminator: bool = False
                          ) -> tuple[TextConditionedGenerator, nn.Module | None, dict]:
    """(model in eval mode, D or None, metadata) from a folder written by :func:`save_text_conditioned`."""
    ck = load_checkpoint(path, load_discriminator=load_discriminator)
    entry = ck.metadata.get(METADATA_KEY)
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise CheckpointError(f"--checkpoint {path}: not a text-conditioned checkpoint (no '{METADATA_KEY}' in its "
                              "metadata); train one with `adapt3d distill`")
    file = ck.path / entry.get("weights", CONDITIONING_WEIGHTS)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {ck.path}: conditioning weights {file.name} are missing")
    digest = sha256_file(file)
    if entry.get("sha256") and digest != entry["sha256"]:
        raise CheckpointError(f"checkpoint {ck.path}: {file.name} has sha256 {digest[:12]}..., the metadata records "
                              f"{entry['sha256'][:12]}... (incomplete write or a swapped file)")
    try:
        model = TextConditionedGenerator(ck.generator, TextConditioningConfig.from_dict(entry["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ck.path}: unsupported text conditioning config ({e})") from e
    state = load_file(str(file))
    for name, module in model.conditioning_modules().items():
        sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        load_state_strict(module, sub, f"checkpoint {ck.path} ({name})")
    extra = sorted(k for k in state if k.split(".", 1)[0] not in model.conditioning_modules())
    if extra:
        raise CheckpointError(f"checkpoint {ck.path}: unexpected conditioning tensors {extra[:3]}")
    return model.eval(), ck.discriminator, ck.metadata
