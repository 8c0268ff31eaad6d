"""CLIP directional / global losses (adapt3d.clip.directional) against hand computations on fixed embeddings."""

import math

import pytest
import torch

from adapt3d.clip.directional import (DEFAULT_TEMPLATES, CLIPDirectionalLoss, compose_prompts,
                                      directional_loss_from_embeddings, global_loss_from_embeddings, load_templates,
                                      mixed_direction, text_direction_from_embeddings)

E = torch.eye(4)


def test_text_direction_is_the_normalised_template_mean():
    source = torch.stack([E[0], E[1], E[0]])  # three templates
    target = torch.stack([E[1], E[2], E[1]])
    # differences (-1, 1, 0, 0), (0, -1, 1, 0), (-1, 1, 0, 0): mean (-2, 1, 1, 0) / 3, normalised
    expected = torch.tensor([-2.0, 1.0, 1.0, 0.0]) / math.sqrt(6)
    torch.testing.assert_close(text_direction_from_embeddings(source, target), expected)
    with pytest.raises(ValueError, match="same CLIP embedding"):
        text_direction_from_embeddings(source, source)


def test_directional_loss_hand_computation():
    d = torch.tensor([-2.0, 1.0, 1.0, 0.0])  # normalised inside
    frozen = torch.stack([E[0], E[3]])
    train = torch.stack([torch.tensor([0.0, 0.6, 0.8, 0.0]), E[3]])
    # sample 0: dI = (-1, 0.6, 0.8, 0), |dI| = sqrt(2); cos = (2 + 0.6 + 0.8) / (sqrt(2) sqrt(6)) = 3.4 / sqrt(12)
    # sample 1: dI = 0 -> loss exactly 1
    loss = directional_loss_from_embeddings(train, frozen, d)
    torch.testing.assert_close(loss, torch.tensor([1 - 3.4 / math.sqrt(12), 1.0]))
    # below the norm floor the cosine becomes <dI, n(d)> / floor (a linear pull), above it nothing changes
    floored = directional_loss_from_embeddings(train, frozen, d, floor=2.0)
    torch.testing.assert_close(floored[0], torch.tensor(1 - 3.4 / math.sqrt(6) / 2.0))
    torch.testing.assert_close(directional_loss_from_embeddings(train, frozen, d, floor=1.0), loss)
    # gradient flows to the trainable embedding only
    t = train.clone().requires_grad_(True)
    f = frozen.clone().requires_grad_(True)
    directional_loss_from_embeddings(t, f, d).sum().backward()
    assert t.grad.abs().sum() > 0 and f.grad is None


def test_global_loss_and_mixed_direction():
    img = torch.stack([E[0], (E[0] + E[1]) / math.sqrt(2)])
    torch.testing.assert_close(global_loss_from_embeddings(img, E[0]), torch.tensor([0.0, 1 - 1 / math.sqrt(2)]))
    dT = E[0]
    dI = torch.stack([3 * E[1], -2 * E[2]])
    torch.testing.assert_close(mixed_direction(dT, dI, 0.5, 0.5), torch.stack([0.5 * E[0] + 0.5 * E[1],
                                                                             0.5 * E[0] - 0.5 * E[2]]))
    torch.testing.assert_close(mixed_direction(dT, dI, 1.0, 0.0), dT.expand(2, 4))


def test_templates(tmp_path):
    assert load_templates("default") == list(DEFAULT_TEMPLATES) and len(DEFAULT_TEMPLATES) >= 20
    assert load_templates("none") == ["{}"]
    f = tmp_path / "t.txt"
    f.write_text("# mine\na sketch of a {}.\n\nan {} here\n")
    assert load_templates(f) == ["a sketch of a {}.", "an {} here"]
    assert compose_prompts("zombie", ["a photo of a {}.", "{}"]) == ["a photo of a zombie.", "zombie"]
    with pytest.raises(ValueError, match="--templates"):
        load_templates(["no placeholder"])
    with pytest.raises(ValueError, match="--templates"):
        load_templates(str(tmp_path / "missing.txt"))


class _FakeScorer:
    """Text embeddings from a table, image 'embeddings' = the first D pixels, normalised."""

    def __init__(self, table: dict, dim: int = 4):
        self.table, self.dim = table, dim

    def encode_text(self, texts):
        return torch.stack([self.table[t] for t in texts])

    def encode_images(self, images):
        return torch.nn.functional.normalize(images.flatten(1)[:, :self.dim], dim=-1)


def test_multi_model_loss_is_the_weighted_sum():
    templates = ["a {}", "the {}"]
    a = _FakeScorer({"a photo": E[0], "the photo": E[0], "a sketch": E[1], "the sketch": E[2]})
    b = _FakeScorer({"a photo": E[3], "the photo": E[3], "a sketch": E[0], "the sketch": E[0]})
    loss = CLIPDirectionalLoss([a, b], [1.0, 0.5], "photo", "sketch", templates, names=["A", "B"], floor=0.0)
    torch.testing.assert_close(loss.text_directions[0], torch.tensor([-2.0, 1.0, 1.0, 0.0]) / math.sqrt(6))
    torch.testing.assert_close(loss.text_directions[1], torch.tensor([1.0, 0.0, 0.0, -1.0]) / math.sqrt(2))
    frozen = torch.zeros(1, 3, 2, 2)
    frozen.view(-1)[0] = 1.0  # embedding E0 for both fake models
    train = torch.zeros(1, 3, 2, 2)
    train.view(-1)[1] = 1.0  # embedding E1
    out = loss.directional(train, frozen)
    dI = E[1] - E[0]
    la = 1 - float(dI @ loss.text_directions[0]) / math.sqrt(2)
    lb = 1 - float(dI @ loss.text_directions[1]) / math.sqrt(2)
    assert out.per_model == pytest.approx({"A": la, "B": lb})
    assert float(out.loss) == pytest.approx(la + 0.5 * lb)
    # a zero weight drops the model; invalid setups name the flag
    only_a = CLIPDirectionalLoss([a, b], [1.0, 0.0], "photo", "sketch", templates, floor=0.0)
    assert float(only_a.directional(train, frozen).loss) == pytest.approx(la)
    with pytest.raises(ValueError, match="--clip-model-weights"):
        CLIPDirectionalLoss([a], [1.0, 1.0], "photo", "sketch", templates)
    with pytest.raises(ValueError, match="--source-text"):
        CLIPDirectionalLoss([a], [1.0], "photo", "photo", templates)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from adapt3d.clip import CLIPScorer
    from adapt3d.diffusion.tiny_models import make_tiny_clip
    return CLIPScorer.from_pretrained(str(make_tiny_clip(tmp_path_factory.getbasetemp() / "tiny-models" / "clip")))


def test_real_clip_text_direction_and_gradients(tiny_clip):
    templates = ["a photo of a {}.", "a rendering of a {}."]
    loss = CLIPDirectionalLoss([tiny_clip], [1.0], "photo", "zombie", templates)
    src = tiny_clip.encode_text(compose_prompts("photo", templates))
    tgt = tiny_clip.encode_text(compose_prompts("zombie", templates))
    manual = (tgt - src).mean(0)
    torch.testing.assert_close(loss.text_directions[0], manual / manual.norm())
    torch.testing.assert_close(loss.target_embeddings[0], tgt.mean(0) / tgt.mean(0).norm())
    g = torch.Generator().manual_seed(0)
    frozen = torch.rand(2, 3, 40, 40, generator=g) * 2 - 1
    train = (frozen + 0.3 * torch.randn(2, 3, 40, 40, generator=g)).requires_grad_(True)
    out = loss.directional(train, frozen)
    emb_t, emb_f = tiny_clip.encode_images(train), tiny_clip.encode_images(frozen)
    expected = directional_loss_from_embeddings(emb_t, emb_f, loss.text_directions[0], floor=0.1).mean()
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert train.grad is not None and train.grad.abs().sum() > 0
    glob = loss.global_loss(frozen)
    torch.testing.assert_close(glob.loss, (1 - emb_f @ loss.target_embeddings[0]).mean())
