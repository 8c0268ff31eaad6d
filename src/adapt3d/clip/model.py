"""CLIP embeddings and image-text scores for tensors, differentiable with respect to the pixels.

``CLIPScorer`` wraps a transformers ``CLIPModel`` (any checkpoint) plus its image normalisation and tokenizer. It
takes generator images (B, 3, H, W) in [-1, 1] directly (no PIL round trip), so the same code scores a dataset
and drives CLIP losses. Preprocessing (the tensor version of ``CLIPImageProcessor``): map to [0, 1], resize the
shorter side to the model's input size (bicubic, antialiased), centre-crop to a square, normalise with the
processor's mean / std.

    scorer = CLIPScorer.from_pretrained("openai/clip-vit-base-patch32", device="cuda")
    s = scorer.score(images, "a 3D render of a face in Pixar style")   # (B,) cosine similarities in [-1, 1]
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from adapt3d.diffusion.loading import download_error, resolve_pretrained

if TYPE_CHECKING:
    from transformers import CLIPModel

__all__ = ["CLIPScorer", "DEFAULT_CLIP_MODEL", "clip_preprocess"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
"""CLIP ViT-B/32, the backbone StyleGAN-NADA-style methods and most CLIP scores use (151 M parameters)."""


def _features(out) -> torch.Tensor:
    """transformers 5 returns a ModelOutput from get_*_features (projected features in pooler_output); 4.x a
    tensor."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected CLIP features output {type(out).__name__}")
    return pooled


def clip_preprocess(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> normalised CLIP input (B, 3, size, size); differentiable."""
    x = (images.float() + 1) / 2
    h, w = x.shape[-2:]
    # Shorter side -> size, longer side -> int(size * long / short) (truncated, as CLIPImageProcessor and
    # torchvision's Resize compute it).
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


class CLIPScorer:
    """Encode images and texts with a ``CLIPModel``; L2-normalised embeddings and cosine scores.

    ``processor_or_image_mean_std`` is a ``CLIPProcessor`` (its image processor gives the mean / std and its
    tokenizer is used for texts) or a ``(mean, std)`` pair of 3 floats each (then pass ``tokenizer`` to encode
    texts). The model is frozen and put in eval mode.
    """

    def __init__(self, model: CLIPModel, processor_or_image_mean_std, device: torch.device | str | None = None,
                 tokenizer=None) -> None:
        if isinstance(processor_or_image_mean_std, (tuple, list)):
            if len(processor_or_image_mean_std) != 2:
                raise ValueError("processor_or_image_mean_std: expected a CLIPProcessor or (mean, std)")
            mean, std = processor_or_image_mean_std
        else:
            ip = getattr(processor_or_image_mean_std, "image_processor", processor_or_image_mean_std)
            mean, std = ip.image_mean, ip.image_std
            tokenizer = tokenizer or getattr(processor_or_image_mean_std, "tokenizer", None)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"image mean/std must have 3 values each, got {mean!r} / {std!r}")
        self.model = model.eval().requires_grad_(False)
        if device is not None:
            self.model.to(torch.device(device))
        self.tokenizer = tokenizer
        self.mean = torch.tensor([float(m) for m in mean])
        self.std = torch.tensor([float(s) for s in std])
        self.source: str | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_CLIP_MODEL, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, flag: str = "--clip-model") -> CLIPScorer:
        """Load a CLIP checkpoint (Hugging Face id, local folder or ``'tiny'``). Missing weights offline raise
        :class:`adapt3d.diffusion.loading.PretrainedNotFoundError` naming the model and how to get it."""
        name = resolve_pretrained(name_or_path, "clip", flag)
        from transformers import CLIPModel, CLIPProcessor

        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torchvision.*")
                model = CLIPModel.from_pretrained(name, dtype=dtype) if dtype else CLIPModel.from_pretrained(name)
                processor = CLIPProcessor.from_pretrained(name)
        except OSError as e:
            raise download_error(str(name_or_path), "clip", flag, e) from e
        scorer = cls(model, processor, device=device)
        scorer.source = str(name_or_path)
        return scorer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        """The vision tower's input size in pixels (224 for ViT-B/32)."""
        return int(self.model.config.vision_config.image_size)

    @property
    def embed_dim(self) -> int:
        """Dimension D of the joint embedding space (projection_dim)."""
        return int(self.model.config.projection_dim)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> normalised (B, 3, S, S) on the model's device and dtype."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected a (B, 3, H, W) tensor in [-1, 1], got {shape}")
        x = clip_preprocess(images.to(self.device), self.image_size, self.mean.to(self.device),
                            self.std.to(self.device))
        return x.to(self.dtype)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> L2-normalised embeddings (B, D), float32. Differentiable."""
        feats = _features(self.model.get_image_features(pixel_values=self.preprocess(images)))
        return F.normalize(feats.float(), dim=-1)

    def encode_text(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Texts -> L2-normalised embeddings (B, D), float32 (truncated to the tokenizer's 77 tokens)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts: expected a non-empty list of strings")
        if self.tokenizer is None:
            raise ValueError("this CLIPScorer has no tokenizer: build it with a CLIPProcessor or pass tokenizer=")
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            feats = _features(self.model.get_text_features(**tok))
        return F.normalize(feats.float(), dim=-1)

    def score(self, images: torch.Tensor, texts: str | Sequence[str]) -> torch.Tensor:
        """Cosine similarity (B,) of each image with its text (one text for all, or one per image)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if len(texts) not in (1, images.shape[0]):
            raise ValueError(f"texts: got {len(texts)} texts for {images.shape[0]} images; give 1 or one per image")
        t = self.encode_text(texts)
        return (self.encode_images(images) * t).sum(-1)
