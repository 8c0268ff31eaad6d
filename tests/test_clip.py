"""CLIP back-end: CLIPScorer against transformers' own preprocessing and forward pass; CLIPFilter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adapt3d.clip import CLIPScorer
from adapt3d.diffusion import PretrainedNotFoundError
from adapt3d.testing.fixtures import tiny_models  # noqa: F401


@pytest.fixture(scope="module")
def scorer(tiny_models):  # noqa: F811
    return CLIPScorer.from_pretrained(str(tiny_models["clip"]))


@pytest.fixture(scope="module")
def reference(tiny_models):  # noqa: F811
    from transformers import CLIPModel, CLIPProcessor
    path = str(tiny_models["clip"])
    return CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)


def _uint8_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)  # (B, H, W, C)


def _to_tensor(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]


def test_properties(scorer):
    assert scorer.image_size == 32 and scorer.embed_dim == 16
    assert not any(p.requires_grad for p in scorer.model.parameters())


def test_matches_transformers_forward_at_native_size(scorer, reference):
    from PIL import Image
    model, proc = reference
    u8 = _uint8_images(3, 32)
    texts = ["a zombie", "a cat", "the elf"]
    with torch.no_grad():
        out = model(**proc(text=texts, images=[Image.fromarray(a) for a in u8], return_tensors="pt", padding=True))
    img = scorer.encode_images(_to_tensor(u8))
    txt = scorer.encode_text(texts)
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    torch.testing.assert_close(img, F.normalize(out.image_embeds, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, F.normalize(out.text_embeds, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    expected = torch.diagonal(out.logits_per_image) / model.logit_scale.exp()
    torch.testing.assert_close(scorer.score(_to_tensor(u8), texts), expected, atol=1e-5, rtol=0)


def test_resize_close_to_processor(scorer, reference):
    """Smooth 64 px images: our bicubic-antialias resize agrees with the processor's PIL resize."""
    from PIL import Image
    model, proc = reference
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    u8 = np.stack([np.stack([xx, yy, (xx + yy) / 2], -1), np.stack([yy, 1 - xx, xx * yy], -1)])
    u8 = (u8 * 255).round().astype(np.uint8)
    with torch.no_grad():
        ref = F.normalize(model.get_image_features(**proc(images=[Image.fromarray(a) for a in u8],
                                                          return_tensors="pt")).pooler_output, dim=-1)
    ours = scorer.encode_images(_to_tensor(u8))
    assert (ours - ref).abs().max() < 0.02


def test_gradients_reach_pixels(scorer):
    x = _to_tensor(_uint8_images(2, 48)).requires_grad_(True)
    scorer.score(x, "a zombie").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_score_argument_errors(scorer):
    x = _to_tensor(_uint8_images(2, 32))
    with pytest.raises(ValueError, match="texts"):
        scorer.score(x, ["a", "b", "c"])
    with pytest.raises(ValueError, match="images"):
        scorer.encode_images(x[0])


def test_missing_weights_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFoundError) as e:
        CLIPScorer.from_pretrained("openai/clip-vit-base-patch32-not-cached")
    assert "openai/clip-vit-base-patch32-not-cached" in str(e.value) and "--clip-model" in str(e.value)
    assert "huggingface-cli download" in str(e.value)
