"""Unit tests of adapt3d.training: losses, R1, density regulariser, lazy scaling, pose swap, schedules, EMA,
augmentation, ADA and layer freezing."""

import copy
import math

import pytest
import torch

from adapt3d.cameras import mirror_label
from adapt3d.training import losses
from adapt3d.training.augment import AdaptiveAugment, augment_pair, blur_images
from adapt3d.training.config import FinetuneConfig, validate_finetune_config
from adapt3d.training.freeze import apply_freeze, freeze_prefixes
from adapt3d.training.schedules import blur_sigma_at, ema_beta, neural_rendering_resolution_at, update_ema

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


# -- losses ------------------------------------------------------------------------------------------------------
def test_logistic_losses_match_hand_values():
    logits = torch.tensor([[0.0], [LN3]])
    # softplus(-0) = ln 2, softplus(-ln 3) = ln(1 + 1/3) = ln(4/3)
    assert losses.loss_g_nonsaturating(logits).item() == pytest.approx(0.4904146265, abs=1e-7)
    assert losses.loss_d_real(logits).item() == pytest.approx(0.4904146265, abs=1e-7)
    # softplus(0) = ln 2, softplus(ln 3) = ln 4
    assert losses.loss_d_fake(logits).item() == pytest.approx((LN2 + LN4) / 2, abs=1e-7)
    assert losses.loss_d_logistic(logits, logits).item() == pytest.approx(0.4904146265 + 1.0397207708, abs=1e-6)


def test_r1_penalty_matches_analytic_gradient_of_quadratic():
    torch.manual_seed(0)
    a = torch.tensor(0.7, requires_grad=True)
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    y = torch.randn(3, 2, 2, 2, requires_grad=True)
    logits = (a * x.square()).flatten(1).sum(1) + (a * y.square()).flatten(1).sum(1)  # D(x, y) = sum a x^2 + a y^2
    pen = losses.r1_penalty(logits, [x, y])
    expected = (2 * a * x).square().flatten(1).sum(1) + (2 * a * y).square().flatten(1).sum(1)
    torch.testing.assert_close(pen, expected.detach(), rtol=1e-6, atol=1e-6)
    loss, penalty = losses.loss_r1(logits, [x, y], gamma=5.0)
    assert loss.item() == pytest.approx(expected.mean().item() * 2.5, rel=1e-6)
    assert penalty.item() == pytest.approx(expected.mean().item(), rel=1e-6)
    # create_graph: the penalty is differentiable w.r.t. D's weights: d/da mean(4 a^2 sum x^2) = 8 a mean(sum x^2)
    (grad_a,) = torch.autograd.grad(pen.mean(), [a])
    sq = x.square().flatten(1).sum(1) + y.square().flatten(1).sum(1)
    assert grad_a.item() == pytest.approx((8 * a * sq).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="does not require grad"):
        losses.r1_penalty(logits, [x.detach()])


def test_density_regulariser_analytic_expectation():
    w = torch.tensor([1.0, -2.0, 2.0])  # |w| = 3
    linear = lambda p: (p @ w)[..., None]  # noqa: E731  sigma(x) = w . x  ->  |sigma(x) - sigma(x + e)| = |w . e|
    g = torch.Generator().manual_seed(0)
    val = losses.density_l1_regularization(linear, batch_size=4, num_points=20000, p_dist=0.004, generator=g)
    assert val.item() == pytest.approx(0.004 * 3 * math.sqrt(2 / math.pi), rel=0.02)  # E|N(0, (3 * 0.004)^2)|
    const = lambda p: torch.ones(p.shape[:-1] + (1,))  # noqa: E731
    assert losses.density_l1_regularization(const, 2, 10).item() == 0.0
    seen = {}

    def record(p):
        seen["p"] = p
        return p[..., :1]
    losses.density_l1_regularization(record, 2, 50, p_dist=0.0, extent=0.5)
    pts = seen["p"]
    assert pts.shape == (2, 100, 3) and pts.abs().max() <= 0.5
    torch.testing.assert_close(pts[:, :50], pts[:, 50:])  # no perturbation -> identical halves


def test_lazy_regularisation_scaling_hand_values():
    lr, betas = losses.lazy_regularization_scaling(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0018823529411764706) and betas[0] == 0.0
    assert betas[1] == pytest.approx(0.9905854573074332)
    lr, betas = losses.lazy_regularization_scaling(0.0025, (0.0, 0.99), 4)
    assert lr == pytest.approx(0.002) and betas[1] == pytest.approx(0.9919919678228657)
    assert losses.lazy_regularization_scaling(0.1, (0.5, 0.9), None) == (0.1, (0.5, 0.9))


def test_pose_conditioning_swap():
    c = torch.arange(4 * 25, dtype=torch.float32).view(4, 25)
    torch.testing.assert_close(losses.swap_conditioning(c, 1.0), torch.roll(c, 1, 0))
    torch.testing.assert_close(losses.swap_conditioning(c, 0.0), c)
    assert losses.swap_conditioning(c, None).abs().sum() == 0
    out = losses.swap_conditioning(c, 0.5, generator=torch.Generator().manual_seed(3))
    u = torch.rand((4, 1), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, torch.where(u < 0.5, torch.roll(c, 1, 0), c))
    assert losses.gpc_swap_probability(0.8, 500_000, 1000) == pytest.approx(0.9)
    assert losses.gpc_swap_probability(0.8, 0, 0) == 0.8
    assert losses.gpc_swap_probability(None, 0, 0) is None


# -- schedules and EMA -------------------------------------------------------------------------------------------
def test_schedules_and_ema():
    assert ema_beta(20, 6.25, 0) == pytest.approx(0.9977843871238888)
    assert ema_beta(4, 10.0, cur_nimg=100, ema_rampup=0.05) == pytest.approx(0.5 ** (4 / 5))
    assert neural_rendering_resolution_at(64, 128, 1000, 200_000) == 77  # DATID-3D after 200 kimg
    assert neural_rendering_resolution_at(64, None, 1000, 10 ** 9) == 64
    assert neural_rendering_resolution_at(64, 128, 1000, 10 ** 9) == 128
    assert blur_sigma_at(10, 200, 100_000) == pytest.approx(5.0) and blur_sigma_at(10, 0, 0) == 0
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        a.weight.fill_(0.0)
        b.weight.fill_(1.0)
    update_ema(a, b, beta=0.25)
    assert torch.all(a.weight == 0.75)


# -- augmentation ------------------------------------------------------------------------------------------------
def _pair(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    from adapt3d.cameras import camera_label
    yaw = 1.2 + torch.rand(n, generator=g)
    labels = camera_label(yaw, torch.full((n,), 1.5), radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837)
    return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, labels


def test_augment_identity_flip_translate_colour():
    img, raw, lab = _pair()
    out = augment_pair(img, raw, lab, p=0.0)
    assert out[0] is img and out[1] is raw and out[2] is lab
    i2, r2, l2 = augment_pair(img, raw, lab, p=1.0, ops=("xflip",))
    torch.testing.assert_close(i2, img.flip(-1))
    torch.testing.assert_close(r2, raw.flip(-1))
    torch.testing.assert_close(l2, mirror_label(lab))
    # translation by whole pixels: interior pixels are an exact shift of the input, raw moves by the same fraction
    g = torch.Generator().manual_seed(5)
    i3, r3, l3 = augment_pair(img, raw, lab, p=1.0, ops=("xint",), xint_max=0.25, generator=g)
    g = torch.Generator().manual_seed(5)
    torch.rand(4, generator=g)
    shifts = torch.round((torch.rand((4, 2), generator=g) * 2 - 1) * 0.25 * 16).long()
    # the camera moves with the image: its principal point by the same fraction of the size (nothing else changes)
    expect_lab = lab.clone()
    expect_lab[:, 18] += shifts[:, 0] / 16
    expect_lab[:, 21] += shifts[:, 1] / 16
    torch.testing.assert_close(l3, expect_lab, atol=1e-6, rtol=0)
    for k in range(4):
        dx, dy = int(shifts[k, 0]), int(shifts[k, 1])
        expect = torch.roll(img[k], shifts=(dy, dx), dims=(1, 2))
        ys = slice(max(dy, 0), 16 + min(dy, 0))
        xs = slice(max(dx, 0), 16 + min(dx, 0))
        torch.testing.assert_close(i3[k][:, ys, xs], expect[:, ys, xs], atol=1e-5, rtol=0)
    # colour: a grey image and its raw version get the same brightness/contrast (saturation keeps grey)
    grey = torch.full((4, 3, 16, 16), 0.1)
    i4, r4, _ = augment_pair(grey, torch.full((4, 3, 8, 8), 0.1), lab, p=1.0, ops=("color",),
                             generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(i4.mean((1, 2, 3)), r4.mean((1, 2, 3)))
    assert (i4.mean((1, 2, 3)) - 0.1).abs().min() > 1e-4
    with pytest.raises(ValueError, match="unknown"):
        augment_pair(img, raw, lab, p=0.5, ops=("shear",))


def test_augment_is_differentiable_for_r1():
    img, raw, lab = _pair()
    img.requires_grad_(True)
    raw.requires_grad_(True)
    i2, r2, _ = augment_pair(img, raw, lab, p=1.0, generator=torch.Generator().manual_seed(0))
    g = torch.autograd.grad(i2.sum() + r2.sum(), [img, raw])
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in g)


def test_ada_adjustment_and_state():
    ada = AdaptiveAugment("ada", p=0.1, target=0.6, ada_kimg=100, interval=4, batch_size=4)
    ada.record(4.0, 4.0)  # D is sure about every real image: r_t = 1 > 0.6 -> raise p
    ada.adjust(3)
    assert ada.p == 0.1
    ada.adjust(4)
    assert ada.p == pytest.approx(0.1 + 4 * 4 / 100_000)
    ada.record(-4.0, 4.0)
    ada.adjust(8)
    assert ada.p == pytest.approx(0.1)
    state = ada.state_dict()
    other = AdaptiveAugment("ada")
    other.load_state_dict(state)
    assert other.p == ada.p
    assert AdaptiveAugment("none", p=0.5).p == 0.0


def test_blur_preserves_mass_and_constants():
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    y = blur_images(x, 1.0)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-5) and y[0, 0, 7, 7] < 0.2
    c = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(blur_images(c, 2.0), c)
    assert blur_images(c, 0) is c


# -- config and freezing -----------------------------------------------------------------------------------------
def test_config_validation_names_flags():
    ok = FinetuneConfig(dataset="x", batch=8)
    assert validate_finetune_config(ok, world_size=2) == 4
    with pytest.raises(ValueError, match="--batch: 6 is not divisible"):
        validate_finetune_config(FinetuneConfig(dataset="x", batch=6), world_size=4)
    with pytest.raises(ValueError, match="--batch-gpu"):
        validate_finetune_config(FinetuneConfig(dataset="x", batch=8, batch_gpu=3))
    with pytest.raises(ValueError, match="--gpc-reg-prob"):
        validate_finetune_config(FinetuneConfig(dataset="x", gpc_reg_prob=1.5))
    with pytest.raises(ValueError, match="--kimg"):
        validate_finetune_config(FinetuneConfig(dataset="x", kimg=0))


@pytest.fixture(scope="module")
def tiny_G():
    from adapt3d.models.triplane import build_generator
    return build_generator("tiny")


def test_freeze_prefixes_and_errors(tiny_G):
    assert freeze_prefixes(tiny_G, ["mapping", "b8", "backbone.b16", "decoder", "superresolution"]) == [
        "backbone.mapping.", "backbone.synthesis.b8.", "backbone.synthesis.b16.", "decoder.", "superresolution."]
    with pytest.raises(ValueError, match=r"--freeze: unknown part 'b512'.*b4, b8, b16, b32, b64"):
        freeze_prefixes(tiny_G, ["b512"])
    with pytest.raises(ValueError, match="leaves no generator parameter"):
        apply_freeze(copy.deepcopy(tiny_G), ["mapping", "backbone", "decoder", "superresolution"])


def test_frozen_parts_stay_bit_identical_after_training(tiny_G):
    from adapt3d.pipelines.finetune import default_discriminator
    from adapt3d.training.loop import Trainer
    G = copy.deepcopy(tiny_G)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    labels = _pair(8)[2]
    images = (torch.rand(8, 3, 64, 64, generator=g) * 255).to(torch.uint8)

    class DS(torch.utils.data.Dataset):
        def __init__(self):
            self.labels = labels

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return images[i], labels[i]

    cfg = FinetuneConfig(dataset="x", kimg=0.004, batch=2, freeze=("mapping", "b4", "decoder"), progress=False,
                         neural_rendering_resolution=16, density_reg_interval=1, d_reg_interval=1,
                         g_lr=0.01, augment="none")
    trainer = Trainer(cfg, G, default_discriminator(G), DS())
    frozen = set(trainer.frozen.frozen)
    assert frozen and all(n.startswith(("backbone.mapping.", "backbone.synthesis.b4.", "decoder.")) for n in frozen)
    opt_ids = {id(p) for group in trainer.opt_G.param_groups for p in group["params"]}
    named = dict(G.named_parameters())
    assert not any(id(named[n]) in opt_ids for n in frozen)
    assert not any(named[n].requires_grad for n in frozen)
    trainer.run_training()
    after, ema = G.state_dict(), trainer.G_ema.state_dict()
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
        assert torch.equal(ema[name], before[name]), name
    assert torch.equal(after["backbone.mapping.w_avg"], before["backbone.mapping.w_avg"])  # mapping frozen
    changed = [n for n in named if n not in frozen and not torch.equal(after[n], before[n])]
    assert any(n.startswith("superresolution.") for n in changed)
    assert any(n.startswith("backbone.synthesis.b8.") for n in changed)
