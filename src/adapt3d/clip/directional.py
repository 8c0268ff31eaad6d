"""CLIP losses for text-guided generator adaptation: StyleGAN-NADA's directional loss, the global CLIP loss, prompt
templates, and ITportrait's image/text direction mix.

Notation: ``E_I`` / ``E_T`` are a CLIP model's L2-normalised image / text embeddings (:class:`CLIPScorer`),
``t(x)`` a prompt template applied to a text (``"a photo of a {}."`` -> ``"a photo of a sketch."``), ``n(v) = v /
max(|v|, eps)``. For a source text ``s``, a target text ``p`` and templates ``t_1 .. t_T``::

    text direction     dT = n( mean_j [ E_T(t_j(p)) - E_T(t_j(s)) ] )                          (D,)
    image direction    dI = E_I(G_train(w, c)) - E_I(G_frozen(w, c))       same w, same camera  (B, D)
    directional loss   L_dir = mean_b [ 1 - cos(dI_b, d) ]     d = dT (NADA), or ITportrait's mix below
                                                               (with a norm floor, see below)
    global loss        L_glob = mean_b [ 1 - cos(E_I(G_train(w, c))_b, n(mean_j E_T(t_j(p)))) ]
    ITportrait mix     d_b = w_text * dT + w_image * n(E_I(G_image(w, c))_b - E_I(G_frozen(w, c))_b)

Several CLIP models are combined as a weighted sum of their losses (NADA: ViT-B/32 and ViT-B/16, weights 1 and 1).
The norm floor. ``1 - cos(dI, d)`` is scale-free in ``dI``, so its gradient grows like ``1 / |dI|``. At the first
step the trainable and the frozen renders agree up to float rounding (here both use the same constant noise), so
``|dI|`` is about 1e-6 and the first gradient would be about 1e5 times later ones; Adam's second moment would then
keep every later step tiny for hundreds of steps. NADA never meets this case because its two generators draw
different noise (``|dI|`` about 0.1 from the start). adapt3d therefore divides by ``max(|dI|, floor)``::

    L_dir = mean_b [ 1 - <dI_b, n(d)> / max(|dI_b|, floor) ]        (floor = 0.1 by default)

which is exactly NADA's loss once the images have moved a CLIP distance ``floor`` and a linear pull along ``d``
(loss about 1, bounded gradient) before that. ``floor = 0`` gives NADA's formula everywhere.

Templates: :data:`DEFAULT_TEMPLATES` is adapt3d's own list of 24 photo/render phrasings (NADA averages CLIP's 79
ImageNet templates; pass them with a text file, one template per line, each containing ``{}``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["DEFAULT_TEMPLATES", "load_templates", "compose_prompts", "safe_normalize",
           "text_direction_from_embeddings", "directional_loss_from_embeddings", "global_loss_from_embeddings",
           "mixed_direction", "CLIPDirectionalLoss", "DirectionalLossOutput"]

EPS = 1e-8

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "an image of a {}.",
    "a close-up photo of a {}.", "a cropped photo of a {}.", "a portrait of a {}.", "a detailed photo of a {}.",
    "a bright photo of a {}.", "a dark photo of a {}.", "a blurry photo of a {}.", "a sharp photo of a {}.",
    "a good photo of a {}.", "a low resolution photo of a {}.", "a high resolution photo of a {}.",
    "a large photo of a {}.", "a small photo of a {}.", "a snapshot of a {}.", "a rendering of a {}.",
    "a 3D render of a {}.", "a drawing of a {}.", "a painting of a {}.", "a frontal view of a {}.",
    "a side view of a {}.",
)
"""adapt3d's prompt templates for text directions (``{}`` is replaced by the source / target text)."""


def load_templates(spec: str | os.PathLike | Sequence[str] = "default") -> list[str]:
    """Templates from ``'default'`` (:data:`DEFAULT_TEMPLATES`), ``'none'`` (the text as given, i.e. ``['{}']``), a
    text file (one template per line, blank lines and ``#`` comments skipped) or a list. Each must contain ``{}``
    exactly once; ValueError naming ``--templates`` otherwise."""
    if isinstance(spec, (str, os.PathLike)):
        name = str(spec)
        if name == "default":
            items = list(DEFAULT_TEMPLATES)
        elif name == "none":
            items = ["{}"]
        else:
            path = Path(name).expanduser()
            if not path.is_file():
                raise ValueError(f"--templates: {name!r} is neither 'default', 'none' nor an existing text file "
                                 "(one template per line, each containing {})")
            lines = path.read_text(encoding="utf-8").splitlines()
            items = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    else:
        items = [str(t) for t in spec]
    if not items:
        raise ValueError(f"--templates: {spec!r} holds no template")
    bad = [t for t in items if t.count("{}") != 1]
    if bad:
        raise ValueError(f"--templates: every template must contain '{{}}' exactly once, got {bad[0]!r}")
    return items


def compose_prompts(text: str, templates: Sequence[str]) -> list[str]:
    """``[t.format(text) for t in templates]``; ValueError for an empty text."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text: expected a non-empty string, got {text!r}")
    return [t.replace("{}", text.strip()) for t in templates]


def safe_normalize(v: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``v / max(|v|, eps)`` along the last dimension (a zero vector stays zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def text_direction_from_embeddings(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised mean over templates of (target - source); source, target (T, D) normalised embeddings -> (D,)."""
    if source.shape != target.shape or source.ndim != 2:
        raise ValueError(f"source {tuple(source.shape)} and target {tuple(target.shape)} must both be (T, D)")
    direction = (target - source).mean(0)
    if float(direction.norm()) < 1e-12:
        raise ValueError("the source and target texts have the same CLIP embedding: no text direction; use "
                         "different --source-text and --prompt")
    return safe_normalize(direction)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (safe_normalize(a) * safe_normalize(b)).sum(-1)


def directional_loss_from_embeddings(train: torch.Tensor, frozen: torch.Tensor, direction: torch.Tensor,
                                     floor: float = 0.0) -> torch.Tensor:
    """``1 - <dI, n(d)> / max(|dI|, floor)`` per sample (B,) with ``dI = train - frozen``: NADA's ``1 - cos(dI, d)``
    whenever ``|dI| >= floor``. train, frozen (B, D); direction (D,) or (B, D)."""
    if train.shape != frozen.shape:
        raise ValueError(f"train {tuple(train.shape)} and frozen {tuple(frozen.shape)} embeddings differ in shape")
    delta = train - frozen.detach()
    scale = delta.norm(dim=-1).clamp_min(max(float(floor), EPS))
    return 1 - (delta * safe_normalize(direction.expand_as(train))).sum(-1) / scale


def global_loss_from_embeddings(images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``1 - cos(image, text)`` per sample (B,); images (B, D), text (D,)."""
    return 1 - _cosine(images, text.expand_as(images))


def mixed_direction(text_direction: torch.Tensor, image_direction: torch.Tensor, text_weight: float,
                    image_weight: float) -> torch.Tensor:
    """ITportrait's target direction ``w_text * dT + w_image * n(dI_image)`` (B, D); dT (D,), dI_image (B, D)."""
    return text_weight * text_direction.expand_as(image_direction) + image_weight * safe_normalize(image_direction)


@dataclass
class DirectionalLossOutput:
    """``loss``: the weighted sum over CLIP models (scalar, differentiable); ``per_model``: each model's
    unweighted mean loss (floats), keyed by model name."""

    loss: torch.Tensor
    per_model: dict[str, float] = field(default_factory=dict)


class CLIPDirectionalLoss:
    """Directional and global CLIP losses over one or more CLIP models (see the module docstring).

    Args:
        scorers: :class:`adapt3d.clip.CLIPScorer` per CLIP model (frozen).
        weights: one weight per model (NADA's ``--clip_model_weights``); models with weight 0 are skipped.
        source_text: the source domain, e.g. ``"photo"``.
        target_text: the target domain, e.g. ``"sketch"``.
        templates: prompt templates (see :func:`load_templates`).
        names: a name per model for logs (default ``clip0``, ``clip1``, ...).
        floor: the norm floor of the image direction (see the module docstring; 0 = NADA's exact formula).
    """

    def __init__(self, scorers: Sequence, weights: Sequence[float], source_text: str, target_text: str,
                 templates: Sequence[str] = DEFAULT_TEMPLATES, names: Sequence[str] | None = None,
                 floor: float = 0.1):
        if not scorers:
            raise ValueError("--clip-models: give at least one CLIP model")
        if len(weights) != len(scorers):
            raise ValueError(f"--clip-model-weights: got {len(weights)} weights for {len(scorers)} CLIP models")
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"--clip-model-weights: weights must be >= 0 with at least one > 0, got {list(weights)}")
        if source_text.strip() == target_text.strip():
            raise ValueError(f"--source-text and --prompt are the same ({target_text!r}): no direction to follow")
        self.scorers, self.weights = list(scorers), [float(w) for w in weights]
        self.names = list(names) if names is not None else [f"clip{i}" for i in range(len(self.scorers))]
        if not floor >= 0:
            raise ValueError(f"--direction-floor: must be >= 0, got {floor}")
        self.floor = float(floor)
        self.source_text, self.target_text = source_text, target_text
        self.templates = list(templates)
        src, tgt = compose_prompts(source_text, self.templates), compose_prompts(target_text, self.templates)
        self.text_directions: list[torch.Tensor] = []  # per model (D_m,)
        self.target_embeddings: list[torch.Tensor] = []  # per model (D_m,), normalised template mean
        for scorer in self.scorers:
            e_src, e_tgt = scorer.encode_text(src), scorer.encode_text(tgt)  # (T, D) each
            self.text_directions.append(text_direction_from_embeddings(e_src, e_tgt))
            self.target_embeddings.append(safe_normalize(e_tgt.mean(0)))

    def active(self) -> list[int]:
        """Indices of the models with a non-zero weight."""
        return [i for i, w in enumerate(self.weights) if w > 0]

    def encode(self, images: torch.Tensor, grad: bool = True) -> list[torch.Tensor | None]:
        """Images (B, 3, H, W) in [-1, 1] -> per model normalised embeddings (B, D_m) (None for weight 0)."""
        out: list[torch.Tensor | None] = [None] * len(self.scorers)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            for i in self.active():
                out[i] = self.scorers[i].encode_images(images)
        return out

    def _combine(self, losses: dict[int, torch.Tensor]) -> DirectionalLossOutput:
        total = sum(self.weights[i] * v.mean() for i, v in losses.items())
        return DirectionalLossOutput(total, {self.names[i]: float(v.detach().mean()) for i, v in losses.items()})

    def directional_from_embeddings(self, train: list, frozen: list,
                                    directions: list | None = None) -> DirectionalLossOutput:
        """Directional loss from per-model embeddings; ``directions`` default: the text directions."""
        directions = directions or self.text_directions
        return self._combine({i: directional_loss_from_embeddings(train[i], frozen[i], directions[i].to(train[i]),
                                                                  self.floor) for i in self.active()})

    def directional(self, train_images: torch.Tensor, frozen_images: torch.Tensor) -> DirectionalLossOutput:
        """NADA's loss for paired renders (B, 3, H, W) in [-1, 1] of the trainable and the frozen generator."""
        return self.directional_from_embeddings(self.encode(train_images), self.encode(frozen_images, grad=False))

    def global_from_embeddings(self, images: list) -> DirectionalLossOutput:
        return self._combine({i: global_loss_from_embeddings(images[i], self.target_embeddings[i].to(images[i]))
                              for i in self.active()})

    def global_loss(self, images: torch.Tensor) -> DirectionalLossOutput:
        """Global CLIP loss of renders (B, 3, H, W) in [-1, 1] against the (template-averaged) target text."""
        return self.global_from_embeddings(self.encode(images))
