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


# CLIP's image preprocessing, written here independently of adapt3d.clip (OpenAI CLIP / CLIPImageProcessor): scale
# to [0, 1]; resize (bicubic, PIL's kernel a = -0.5, antialiased when shrinking) so the shorter side is S and the
# longer int(S * long / short); centre crop S x S at offset floor((n - S) / 2) (CLIPImageProcessor); normalise
# with OpenAI's mean / std.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _reference_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S), float64, by PIL's float-image ("F" mode) bicubic resize."""
    from PIL import Image
    out = []
    for img in ((images.double() + 1) / 2).numpy():
        h, w = img.shape[1:]
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        top, left = (nh - size) // 2, (nw - size) // 2
        chans = []
        for c in range(3):
            a = Image.fromarray(img[c].astype(np.float32), mode="F")
            a = np.asarray(a.resize((nw, nh), Image.BICUBIC) if (nh, nw) != (h, w) else a, dtype=np.float64)
            chans.append((a[top:top + size, left:left + size] - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c])
        out.append(np.stack(chans))
    return torch.from_numpy(np.stack(out))


@pytest.mark.parametrize("hw", [(64, 64), (24, 24), (48, 64), (70, 41), (32, 32)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_preprocess_matches_independent_clip_preprocessing(scorer, hw):
    """Shrinking, enlarging, non-square (48 x 64: long side int(42.67) = 42, not 43) and native size. Measured on
    noise images: bicubic agrees within 1.1e-5; bilinear differs by 0.09-0.64 and a rounded long side by > 1,
    so the 1e-4 tolerance separates them by three orders of magnitude."""
    g = torch.Generator().manual_seed(hw[0] * 100 + hw[1])
    images = torch.rand(2, 3, *hw, generator=g) * 2 - 1
    ours = scorer.preprocess(images).double()
    assert ours.shape == (2, 3, 32, 32)
    assert (ours - _reference_preprocess(images, 32)).abs().max() < 1e-4


@pytest.mark.parametrize("hw", [(64, 64), (48, 64), (24, 24)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_preprocess_and_embeddings_close_to_processor(scorer, reference, hw):
    """Against transformers' CLIPProcessor on uint8 noise images. The processor resizes uint8 PIL images (rounded and
    clipped to [0, 255]), so single pixels differ where bicubic overshoots; the mean difference does not. Measured:
    bicubic mean |pixel diff| <= 0.0071 and max |embedding diff| <= 0.0017; bilinear >= 0.09 and >= 0.0115."""
    from PIL import Image
    model, proc = reference
    u8 = _uint8_images(2, hw[0], seed=hw[1]) if hw[0] == hw[1] else \
        np.random.default_rng(hw[1]).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    inputs = proc(images=[Image.fromarray(a) for a in u8], return_tensors="pt")
    with torch.no_grad():
        ref = F.normalize(model.get_image_features(**inputs).pooler_output, dim=-1)
    x = _to_tensor(u8)
    assert (scorer.preprocess(x) - inputs["pixel_values"]).abs().mean() < 0.02
    assert (scorer.encode_images(x) - ref).abs().max() < 0.005


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
    for bad in ([], ["a zombie", 3]):
        with pytest.raises(ValueError, match="texts"):
            scorer.encode_text(bad)


def test_long_texts_are_truncated_to_77_tokens(scorer):
    long = " ".join(["zombie"] * 200)  # far more than CLIP's 77 positions
    emb = scorer.encode_text([long, "a zombie"])
    assert emb.shape == (2, 16) and torch.isfinite(emb).all()


def test_missing_weights_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFoundError) as e:
        CLIPScorer.from_pretrained("openai/clip-vit-base-patch32-not-cached")
    assert "openai/clip-vit-base-patch32-not-cached" in str(e.value) and "--clip-model" in str(e.value)
    assert "huggingface-cli download" in str(e.value)


def test_mean_std_pair_and_its_errors(reference):
    model, proc = reference
    scorer = CLIPScorer(model, (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))  # (mean, std) instead of a processor
    x = _to_tensor(_uint8_images(1, 32))
    torch.testing.assert_close(scorer.preprocess(x).double(), _reference_preprocess(x, 32), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="has no tokenizer"):
        scorer.encode_text("a zombie")
    with pytest.raises(ValueError, match="CLIPProcessor or"):
        CLIPScorer(model, (OPENAI_CLIP_MEAN,))
    for mean, std in (((0.5, 0.5), OPENAI_CLIP_STD), (OPENAI_CLIP_MEAN, (0.5,) * 4)):
        with pytest.raises(ValueError, match="3 values each"):
            CLIPScorer(model, (mean, std))
