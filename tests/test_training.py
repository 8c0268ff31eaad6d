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


def test_density_regulariser_defaults_are_eg3ds_and_points_fill_the_box():
    """EG3D's defaults (1000 points per scene in [-1, 1]^3, perturbation std 0.004), the box really filled, and
    sizes below 1 refused."""
    seen = {}

    def record(p):
        seen["p"] = p
        return p[..., :1]
    losses.density_l1_regularization(record, 2, generator=torch.Generator().manual_seed(0))
    pts = seen["p"]
    assert pts.shape == (2, 2000, 3)
    x, eps = pts[:, :1000], pts[:, 1000:] - pts[:, :1000]
    assert x.min() < -0.99 and x.max() > 0.99 and x.abs().max() <= 1.0
    assert 0.0038 < float(eps.std()) < 0.0042 and abs(float(eps.mean())) < 3e-4
    losses.density_l1_regularization(record, 1, 50, p_dist=0.0, extent=0.5)
    assert seen["p"].min() < -0.45 and seen["p"].max() > 0.45 and seen["p"].abs().max() <= 0.5
    assert losses.density_l1_regularization(record, 1, 1).shape == ()
    for b, n in ((0, 10), (1, 0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            losses.density_l1_regularization(record, b, n)


def test_lazy_regularisation_scaling_hand_values():
    lr, betas = losses.lazy_regularization_scaling(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0018823529411764706) and betas[0] == 0.0
    assert betas[1] == pytest.approx(0.9905854573074332)
    lr, betas = losses.lazy_regularization_scaling(0.0025, (0.0, 0.99), 4)
    assert lr == pytest.approx(0.002) and betas[1] == pytest.approx(0.9919919678228657)
    assert losses.lazy_regularization_scaling(0.1, (0.5, 0.9), None) == (0.1, (0.5, 0.9))
    lr, betas = losses.lazy_regularization_scaling(0.1, (0.5, 0.9), 4)  # c = 0.8: beta ** c, not beta * c
    assert lr == pytest.approx(0.08) and betas == pytest.approx((0.5743491774985174, 0.9191661188401216))
    lr, betas = losses.lazy_regularization_scaling(0.1, (0.5, 0.9), 1)  # every step: c = 1/2
    assert lr == pytest.approx(0.05) and betas == pytest.approx((0.7071067811865476, 0.9486832980505138))
    with pytest.raises(ValueError, match="interval"):
        losses.lazy_regularization_scaling(0.1, (0.5, 0.9), 0)


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
    assert losses.gpc_swap_probability(0.8, 250, 1.0) == pytest.approx(0.95)  # a fade shorter than 1 kimg
    assert losses.gpc_swap_probability(0.8, 10_000, 1.0) == pytest.approx(0.8)  # after the fade: stays there
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="prob"):
            losses.swap_conditioning(c, bad)
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


def test_r1_step_sends_half_gamma_times_interval_times_the_penalty_gradient_to_D(tiny_G):
    """Through the trainer: the discriminator gradient of the lazy R1 step equals, computed here independently,
    d/dtheta_D [gamma / 2 * d_reg_interval * mean_i (|dD/d image_i|^2 + |dD/d image_raw_i|^2)] on the real images at
    D's weights of that step. Every real image is the same, so the reference does not depend on which ones the
    trainer draws; micro-batches of 2 (batch 4) check the accumulation share too."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from adapt3d.models.discriminator import filtered_resizing
    from adapt3d.pipelines.finetune import default_discriminator
    from adapt3d.training.loop import Trainer
    G, gamma, interval, nrr = copy.deepcopy(tiny_G), 3.0, 2, 16
    D = default_discriminator(G)
    label = _pair(1)[2][0]  # (25,)
    image = (torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)

    class SameImage(torch.utils.data.Dataset):
        labels = label[None].repeat(8, 1)

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return image, label

    cfg = FinetuneConfig(dataset="x", kimg=0.004, batch=4, batch_gpu=2, r1_gamma=gamma, d_reg_interval=interval,
                         density_reg=0, augment="none", neural_rendering_resolution=nrr, progress=False)
    real = (image.float() / 127.5 - 1)[None].repeat(2, 1, 1, 1)  # one micro-batch (2, 3, 64, 64) in [-1, 1]
    c = label[None].repeat(2, 1)

    def reference_r1_gradient(D_now):
        Dr = copy.deepcopy(D_now).requires_grad_(True)
        img = real.clone().requires_grad_(True)
        raw = filtered_resizing(real, nrr).detach().requires_grad_(True)
        logits = Dr({"image": img, "image_raw": raw}, c)
        g_img, g_raw = torch.autograd.grad(logits.sum(), [img, raw], create_graph=True)
        penalty = (g_img.square().sum((1, 2, 3)) + g_raw.square().sum((1, 2, 3))).mean()
        params = list(Dr.parameters())  # some (e.g. the last bias) do not change the input gradient: zeros
        grads = torch.autograd.grad(penalty * gamma / 2 * interval, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    d_params = list(D.parameters())
    d_ids = {id(p) for p in d_params}
    d_steps = []  # (gradient the optimiser applies, reference R1 gradient at the same weights)

    def before_step(opt, args, kwargs):
        if any(id(p) in d_ids for group in opt.param_groups for p in group["params"]):
            grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in d_params]
            d_steps.append((grads, reference_r1_gradient(D)))

    handle = register_optimizer_step_pre_hook(before_step)  # every optimiser, whatever the trainer calls it
    try:
        Trainer(cfg, G, D, SameImage()).run_training()
    finally:
        handle.remove()
    assert len(d_steps) == 2  # the logistic step and the R1 step (step 0 is a multiple of the interval)

    def matches(grads, ref):
        return all(torch.allclose(g, r, rtol=1e-4, atol=1e-8) for g, r in zip(grads, ref))
    assert [matches(*s) for s in d_steps].count(True) == 1
    assert max(float(r.abs().max()) for r in d_steps[-1][1]) > 1e-6  # a gradient that is there to compare


def test_loss_assembly_through_the_trainer(tiny_G):
    """One trainer step with every phase (generator, density, discriminator, R1) in micro-batches of 2 out of a batch
    of B = 4. Captured with hooks on the modules the trainer calls, whatever its structure:

    - the gradient reaching each discriminator logit l is what the EG3D losses give: -sigmoid(-l) / B in the
      generator step (mean softplus(-l)), +sigmoid(l) / B for generated and -sigmoid(-l) / B for real images in
      the discriminator step;
    - each density sigma_a (original point) and sigma_b (perturbed) receives +-density_reg * interval *
      sign(sigma_a - sigma_b) / (B * P), P points per scene;
    - the logged losses and logits are means over the whole batch, and w_avg moves to lerp(mean w, w_avg, beta)
      with the discriminator step's latents.
    """
    from adapt3d.pipelines.finetune import default_discriminator
    from adapt3d.training.loop import Trainer
    G, B, P, density_reg, interval = copy.deepcopy(tiny_G), 4, 50, 0.25, 2
    D = default_discriminator(G)
    label = _pair(1)[2][0]
    image = (torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    real = (image.float() / 127.5 - 1)[None]  # (1, 3, 64, 64)

    class SameImage(torch.utils.data.Dataset):
        labels = label[None].repeat(8, 1)

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return image, label

    cfg = FinetuneConfig(dataset="x", kimg=0.004, batch=B, batch_gpu=2, density_reg=density_reg,
                         density_reg_interval=interval, density_reg_points=P, d_reg_interval=2, r1_gamma=1.0,
                         augment="none", neural_rendering_resolution=16, progress=False, tick_kimg=0.004)
    logits = {"G": [], "fake": [], "real": []}  # (logit values, gradient into them)
    densities, d_step_ws = [], []

    r1 = []

    def on_D(module, args, out):
        if not any(p.requires_grad for p in module.parameters()):
            phase = "G"
        elif args[0]["image"].requires_grad:  # the R1 step (its gradient: test_r1_step_sends_half_gamma_...)
            g_img, g_raw = torch.autograd.grad(out.sum(), [args[0]["image"], args[0]["image_raw"]],
                                               retain_graph=True)
            r1.append(g_img.square().sum((1, 2, 3)) + g_raw.square().sum((1, 2, 3)))
            return
        else:
            phase = "real" if torch.equal(args[0]["image"], real.expand_as(args[0]["image"])) else "fake"
        value = out.detach().clone()
        out.register_hook(lambda g: logits[phase].append((value, g.detach().clone())))

    def on_mapping(module, args, out):
        if not torch.is_grad_enabled():  # the discriminator step maps its latents without autograd
            d_step_ws.append(out[:, 0].clone())

    trainer = Trainer(cfg, G, D, SameImage())
    sample_density = G.sample_density

    def recording_sample_density(*args, **kwargs):
        out = sample_density(*args, **kwargs)
        sigma = out["sigma"]
        if sigma.requires_grad:
            value = sigma.detach().clone()
            sigma.register_hook(lambda g: densities.append((value, g.detach().clone())))
        return out
    G.sample_density = recording_sample_density
    w_avg_before = G.backbone.mapping.w_avg.clone()
    hooks = [D.register_forward_hook(on_D), G.backbone.mapping.register_forward_hook(on_mapping)]
    try:
        result = trainer.run_training()
    finally:
        for h in hooks:
            h.remove()
        del G.sample_density

    cat = {k: (torch.cat([v for v, _ in pairs]), torch.cat([g for _, g in pairs])) for k, pairs in logits.items()}
    assert all(len(v) == B for v, _ in cat.values()), {k: len(v) for k, (v, _) in cat.items()}
    torch.testing.assert_close(cat["G"][1], -torch.sigmoid(-cat["G"][0]) / B, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(cat["fake"][1], torch.sigmoid(cat["fake"][0]) / B, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(cat["real"][1], -torch.sigmoid(-cat["real"][0]) / B, rtol=1e-5, atol=1e-9)

    assert sum(v.shape[0] for v, _ in densities) == B
    for sigma, grad in densities:  # (b, 2P, 1) each
        a, b_ = sigma[:, :P], sigma[:, P:]
        expected = density_reg * interval * torch.sign(a - b_) / (B * P)
        torch.testing.assert_close(grad[:, :P], expected, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(grad[:, P:], -expected, rtol=1e-5, atol=1e-12)

    stats = result.stats[-1]
    softplus = torch.nn.functional.softplus
    assert stats["loss/G"] == pytest.approx(float(softplus(-cat["G"][0]).mean()), rel=1e-5)
    assert stats["loss/D_fake"] == pytest.approx(float(softplus(cat["fake"][0]).mean()), rel=1e-5)
    assert stats["loss/D_real"] == pytest.approx(float(softplus(-cat["real"][0]).mean()), rel=1e-5)
    assert stats["loss/D"] == pytest.approx(stats["loss/D_fake"] + stats["loss/D_real"], rel=1e-6)
    assert stats["logits/fake"] == pytest.approx(float(cat["fake"][0].mean()), rel=1e-5, abs=1e-7)
    assert stats["logits/real"] == pytest.approx(float(cat["real"][0].mean()), rel=1e-5, abs=1e-7)
    assert stats["loss/r1_penalty"] == pytest.approx(float(torch.cat(r1).mean()), rel=1e-4)
    assert not any(p.requires_grad for p in D.parameters())  # D is frozen again after its steps
    sig = torch.cat([s for s, _ in densities])
    assert stats["loss/density_reg"] == pytest.approx(float((sig[:, :P] - sig[:, P:]).abs().mean()), rel=1e-5)
    mean_w = torch.cat(d_step_ws).mean(0)
    assert torch.cat(d_step_ws).shape[0] == B
    beta = G.backbone.mapping.w_avg_beta
    torch.testing.assert_close(G.backbone.mapping.w_avg, mean_w.lerp(w_avg_before, beta), rtol=1e-5, atol=1e-7)


def test_lazy_regulariser_schedule_and_step_counters(tiny_G):
    """Density regularisation every density_reg_interval steps and R1 every d_reg_interval steps, from step 0; none
    of either when its weight is 0; step and image counters."""
    from adapt3d.pipelines.finetune import default_discriminator
    from adapt3d.training.loop import Trainer
    g = torch.Generator().manual_seed(0)
    labels = _pair(4)[2]
    images = (torch.rand(4, 3, 64, 64, generator=g) * 255).to(torch.uint8)

    class DS(torch.utils.data.Dataset):
        def __init__(self):
            self.labels = labels

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return images[i], labels[i]

    def run(**kw):
        G = copy.deepcopy(tiny_G)
        cfg = FinetuneConfig(dataset="x", batch=2, augment="none", neural_rendering_resolution=16, progress=False,
                             density_reg_points=20, tick_kimg=0.002, **kw)
        return Trainer(cfg, G, default_discriminator(G), DS()).run_training()
    out = run(kimg=0.008, density_reg_interval=2, d_reg_interval=3)  # steps 0, 1, 2, 3
    assert (out.step, out.cur_nimg) == (4, 8) and [s["step"] for s in out.stats] == [1, 2, 3, 4]
    assert ["loss/density_reg" in s for s in out.stats] == [True, False, True, False]
    assert ["loss/r1_penalty" in s for s in out.stats] == [True, False, False, True]
    out = run(kimg=0.002, density_reg=0.0, r1_gamma=0.0)
    assert "loss/density_reg" not in out.stats[-1] and "loss/r1_penalty" not in out.stats[-1]


def test_ada_records_the_signs_of_the_real_logits_and_D_is_frozen_outside_its_phases(tiny_G):
    """Each step adds sum(sign(D(real))) of the discriminator phase and the number of real images to ADA's
    accumulators (not the R1 phase's logits, not the logit sums); D's parameters require grad only inside its
    own phases, so the generator phase never computes discriminator gradients."""
    from adapt3d.pipelines.finetune import default_discriminator
    from adapt3d.training.loop import Trainer
    g = torch.Generator().manual_seed(1)
    labels = _pair(4)[2]
    images = (torch.rand(4, 3, 64, 64, generator=g) * 255).to(torch.uint8)

    class DS(torch.utils.data.Dataset):
        labels = None

    DS.labels = labels
    G = copy.deepcopy(tiny_G)
    cfg = FinetuneConfig(dataset="x", batch=4, augment="ada", augment_p=0.0, ada_interval=4, r1_gamma=1.0,
                         d_reg_interval=2, neural_rendering_resolution=16, progress=False, density_reg_points=20)
    trainer = Trainer(cfg, G, default_discriminator(G), DS())
    reals = images.float() / 127.5 - 1
    calls = []  # (input image, logits) of every D call
    trainer.D.register_forward_hook(lambda m, args, out: calls.append((args[0]["image"].detach(), out.detach())))
    expected_sum = 0.0
    for step in range(2):  # step 0 runs R1 (d_reg_interval 2), step 1 does not
        calls.clear()
        trainer.train_step(images, labels)
        # the D phase's real call: the real images, not requiring grad (R1's do; generated ones differ)
        real_logits = [out for image, out in calls if image.shape == reals.shape and torch.allclose(image, reals,
                                                                                                   atol=1e-4)]
        assert len(real_logits) == 2 - step  # D phase (+ R1 at step 0)
        expected_sum += float(torch.sign(real_logits[0]).sum())
        assert not any(p.requires_grad for p in trainer.D.parameters()), f"D not frozen after step {step}"
    assert trainer.augment.sign_count == 8.0
    assert trainer.augment.sign_sum == expected_sum
    assert expected_sum != 8.0  # not all positive: a sum equal to the count would not tell signs from counts


def test_regulariser_phases_leave_parameters_they_do_not_reach(tiny_G):
    """Each regulariser phase steps only the parameters its loss reaches, as EG3D's Adam skips parameters whose
    gradient is None: the density regulariser does not reach the super-resolution head, R1 (a gradient norm w.r.t.
    the images) does not reach D's output bias. Those leave the phase bit-identical, Adam state included; zeroed
    instead of None gradients would move them by the momentum of the previous phase (beta1 > 0) and decay their
    second moments."""
    from adapt3d.pipelines.finetune import default_discriminator
    from adapt3d.training.loop import Trainer
    g = torch.Generator().manual_seed(2)
    labels = _pair(2)[2]
    images = (torch.rand(2, 3, 64, 64, generator=g) * 255).to(torch.uint8)

    class DS(torch.utils.data.Dataset):
        pass

    DS.labels = labels
    G = copy.deepcopy(tiny_G)
    cfg = FinetuneConfig(dataset="x", batch=2, augment="none", r1_gamma=1.0, density_reg=0.25,
                         adam_betas=(0.5, 0.99),  # beta1 > 0: Adam with a zero gradient would still move
                         neural_rendering_resolution=16, progress=False, density_reg_points=20)
    trainer = Trainer(cfg, G, default_discriminator(G), DS())
    out_bias = trainer.D.b4.out.bias
    snapshots = []

    def snapshot():
        state = trainer.opt_D.state.get(out_bias, {})
        snapshots.append(({k: v.clone() for k, v in trainer.G.superresolution.state_dict().items()},
                          out_bias.detach().clone(), {k: torch.as_tensor(v).clone() for k, v in state.items()}))

    def wrapped(phase, before=False):
        return lambda *a: ((snapshot() if before else None), phase(*a), snapshot())[1]
    trainer._phase_G = wrapped(trainer._phase_G, before=True)
    trainer._phase_G_reg = wrapped(trainer._phase_G_reg)
    trainer._phase_D = wrapped(trainer._phase_D)
    trainer._phase_D_reg = wrapped(trainer._phase_D_reg)
    rec = trainer.train_step(images, labels)
    assert "loss/density_reg" in rec and "loss/r1_penalty" in rec and len(snapshots) == 5
    (sr0, _, _), (sr_G, _, _), (sr_reg, _, _), (_, bias_D, state_D), (_, bias_R1, state_R1) = snapshots
    assert any(not torch.equal(sr0[k], sr_G[k]) for k in sr0)  # the G phase trains the head
    for k in sr_G:
        assert torch.equal(sr_G[k], sr_reg[k]), k
    assert state_D and torch.equal(bias_D, bias_R1)  # the D phase trained the bias; R1 leaves it
    for k in state_D:
        assert torch.equal(state_D[k], state_R1[k]), k
