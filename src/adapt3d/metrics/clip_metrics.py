"""Text alignment and cross-view agreement measured with a CLIP model.

Every function takes a *scorer*: any object with ``encode_images(images (B, 3, H, W) in [-1, 1]) -> (B, D)`` and
``encode_text(list[str]) -> (B, D)`` (``adapt3d.clip.CLIPScorer``). Embeddings are L2-normalised again here, so
all numbers are cosines in [-1, 1].

* CLIP score (per image): ``cos(E_I(x), E_T(prompt))``. ``clipscore_100`` additionally reports Hessel et al.'s
  / torchmetrics' ``100 * max(cos, 0)``.
* Directional CLIP similarity (StyleGAN-NADA's direction, used as a metric), per latent rendered at the same
  camera by the source and the adapted generator::

      dI = E_I(adapted) - E_I(source),  dT = E_T(target prompt) - E_T(source prompt)
      directional = cos(dI, dT)                      # defined as 0 when |dI| < eps (identical images)

  A generator compared with itself therefore scores exactly 0 and ``num_undefined`` counts such samples.
* View agreement: for one latent rendered at V cameras, the mean cosine between the image embeddings of all
  V(V-1)/2 view pairs, averaged over latents (1 = the views look the same to CLIP).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "ImageTextEncoder",
    "encode_images",
    "encode_texts",
    "ClipScoreResult",
    "DirectionalResult",
    "ViewAgreementResult",
    "clip_score",
    "clip_score_from_embeddings",
    "directional_similarity",
    "directional_similarity_from_embeddings",
    "view_agreement",
    "view_agreement_from_embeddings",
    "DIRECTION_EPS",
]

DIRECTION_EPS = 1e-6


class ImageTextEncoder(Protocol):
    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"`{name}` must be images (B, 3, H, W) in [-1, 1], got {shape}")


@torch.no_grad()
def encode_images(scorer: ImageTextEncoder, images: torch.Tensor | Iterable[torch.Tensor],
                  batch_size: int = 32) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) on the CPU, float32, computed in batches.

    ``images``: a tensor (N, 3, H, W) in [-1, 1] (uint8 tensors are mapped from [0, 255]) or an iterable of such
    batches.
    """
    batches = [images] if isinstance(images, torch.Tensor) else images
    out = []
    for batch in batches:
        _check_images(batch, "images")
        for i in range(0, batch.shape[0], batch_size):
            x = batch[i:i + batch_size]
            x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
            out.append(F.normalize(scorer.encode_images(x).float(), dim=-1).cpu())
    if not out:
        raise ValueError("`images` is empty")
    return torch.cat(out)  # (N, D)


@torch.no_grad()
def encode_texts(scorer: ImageTextEncoder, texts: str | Sequence[str]) -> torch.Tensor:
    """L2-normalised text embeddings (T, D) on the CPU."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"`texts` must be non-empty strings, got {texts!r}")
    return F.normalize(scorer.encode_text(texts).float(), dim=-1).cpu()


def _stats(values: torch.Tensor) -> dict:
    v = values.double()
    return {"mean": float(v.mean()), "std": float(v.std(unbiased=False)), "min": float(v.min()),
            "max": float(v.max()), "count": int(v.numel())}


@dataclass
class ClipScoreResult:
    """Per-image cosines (N,) between images and the prompt, and their summary."""

    per_image: torch.Tensor
    mean: float
    std: float
    clipscore_100: float  # mean of 100 * max(cos, 0)

    def to_dict(self) -> dict:
        return {**_stats(self.per_image), "clipscore_100": self.clipscore_100}


@dataclass
class DirectionalResult:
    """Per-latent directional similarity (N,) with undefined (identical-image) samples set to 0."""

    per_sample: torch.Tensor
    mean: float
    std: float
    num_undefined: int
    text_direction_norm: float

    def to_dict(self) -> dict:
        return {**_stats(self.per_sample), "num_undefined": self.num_undefined,
                "text_direction_norm": self.text_direction_norm}


@dataclass
class ViewAgreementResult:
    """Mean pairwise cosine across the views of each latent (S,), and the mean over latents."""

    per_latent: torch.Tensor
    mean: float
    num_views: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**_stats(self.per_latent), "num_views": self.num_views, **self.extra}


def clip_score_from_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor) -> ClipScoreResult:
    """image_emb (N, D), text_emb (D,) or (1, D), both L2-normalised."""
    text_emb = text_emb.reshape(1, -1)
    if image_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embedding sizes differ: images {tuple(image_emb.shape)}, text {tuple(text_emb.shape)}")
    cos = (image_emb * text_emb).sum(-1)  # (N,)
    return ClipScoreResult(cos, float(cos.double().mean()), float(cos.double().std(unbiased=False)),
                           float((100 * cos.clamp(min=0)).double().mean()))


def clip_score(scorer: ImageTextEncoder, images: torch.Tensor, prompt: str, batch_size: int = 32) -> ClipScoreResult:
    """CLIP score of images (N, 3, H, W) in [-1, 1] against ``prompt``."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"`prompt` must be a non-empty string, got {prompt!r}")
    return clip_score_from_embeddings(encode_images(scorer, images, batch_size), encode_texts(scorer, prompt)[0])


def directional_similarity_from_embeddings(source_emb: torch.Tensor, adapted_emb: torch.Tensor,
                                           source_text_emb: torch.Tensor, target_text_emb: torch.Tensor,
                                           eps: float = DIRECTION_EPS) -> DirectionalResult:
    """Directional similarity from normalised embeddings: source/adapted (N, D), texts (D,) or (T, D) (averaged)."""
    if source_emb.shape != adapted_emb.shape:
        raise ValueError(f"source and adapted embeddings differ in shape: {tuple(source_emb.shape)} vs "
                         f"{tuple(adapted_emb.shape)}; render both generators at the same seeds and cameras")
    d_text = target_text_emb.reshape(-1, source_emb.shape[1]).mean(0) - \
        source_text_emb.reshape(-1, source_emb.shape[1]).mean(0)  # (D,)
    text_norm = float(d_text.norm())
    if text_norm < eps:
        raise ValueError("`source_prompt` and `prompt` have the same CLIP embedding; the text direction is "
                         "undefined. Give a different --source-prompt")
    d_img = (adapted_emb - source_emb).double()  # (N, D)
    norms = d_img.norm(dim=-1)
    undefined = norms < eps
    cos = (d_img @ (d_text.double() / text_norm)) / norms.clamp(min=eps)
    cos = torch.where(undefined, torch.zeros_like(cos), cos).float()
    return DirectionalResult(cos, float(cos.double().mean()), float(cos.double().std(unbiased=False)),
                             int(undefined.sum()), text_norm)


def directional_similarity(scorer: ImageTextEncoder, source_images: torch.Tensor, adapted_images: torch.Tensor,
                           source_prompt: str, prompt: str, batch_size: int = 32) -> DirectionalResult:
    """Directional CLIP similarity between the source->adapted image change and source_prompt->prompt."""
    _check_images(source_images, "source_images")
    _check_images(adapted_images, "adapted_images")
    if source_images.shape != adapted_images.shape:
        raise ValueError(f"`source_images` {tuple(source_images.shape)} and `adapted_images` "
                         f"{tuple(adapted_images.shape)} must have the same shape (same seeds and cameras)")
    texts = encode_texts(scorer, [source_prompt, prompt])
    return directional_similarity_from_embeddings(encode_images(scorer, source_images, batch_size),
                                                  encode_images(scorer, adapted_images, batch_size),
                                                  texts[0], texts[1])


def view_agreement_from_embeddings(emb: torch.Tensor) -> ViewAgreementResult:
    """emb (S, V, D) normalised embeddings of S latents at V views -> mean pairwise cosine per latent."""
    if emb.ndim != 3 or emb.shape[1] < 2:
        raise ValueError(f"view embeddings must be (S, V >= 2, D), got {tuple(emb.shape)}")
    v = emb.shape[1]
    gram = emb @ emb.transpose(1, 2)  # (S, V, V)
    iu = torch.triu_indices(v, v, offset=1)
    per_latent = gram[:, iu[0], iu[1]].mean(-1)  # (S,)
    return ViewAgreementResult(per_latent, float(per_latent.double().mean()), v)


def view_agreement(scorer: ImageTextEncoder, views: torch.Tensor, batch_size: int = 32) -> ViewAgreementResult:
    """views (S, V, 3, H, W) in [-1, 1]: CLIP image-embedding agreement across the V views of each latent."""
    if not isinstance(views, torch.Tensor) or views.ndim != 5 or views.shape[2] != 3 or views.shape[1] < 2:
        shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
        raise ValueError(f"`views` must be (S, V >= 2, 3, H, W) in [-1, 1], got {shape}")
    s, v = views.shape[:2]
    emb = encode_images(scorer, views.reshape(s * v, *views.shape[2:]), batch_size)
    return view_agreement_from_embeddings(emb.reshape(s, v, -1))
