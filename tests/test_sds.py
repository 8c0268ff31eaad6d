"""Score distillation: the gradient is w(t) (eps_hat - eps) on a constructed case, weighting/CFG/v-prediction,
clipping and NaN guard, timestep annealing, view-dependent prompts, errors, and the tiny Stable Diffusion path."""

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

from adapt3d.diffusion.sds import ScoreDistillation, sds_weights, timestep_range, view_index, view_prompt
from adapt3d.diffusion.tiny_models import make_tiny_stable_diffusion


class StubUNet(torch.nn.Module):
    """eps(x, t, e) = 0.5 x + mean(e) * (1 + t / 1000) per sample: known outputs that depend on the prompt."""

    def __init__(self, nan: bool = False):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls, self.nan = [], nan

    def forward(self, x, t, encoder_hidden_states):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        e = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        out = 0.5 * x + e * (1 + t.float().view(-1, 1, 1, 1) / 1000)
        if self.nan:
            out = out.clone()
            out[:, 0, 0, 0] = float("nan")
        return SimpleNamespace(sample=out)


def _scheduler(prediction_type="epsilon"):
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def _case(b=3):
    g = torch.Generator().manual_seed(7)
    z = torch.randn(b, 4, 8, 8, generator=g).requires_grad_(True)
    cond = torch.randn(b, 5, 6, generator=g) + 1.0
    uncond = torch.randn(1, 5, 6, generator=g)
    return z, cond, uncond


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_gradient_is_weighted_cfg_residual(weighting):
    sched = _scheduler()
    unet = StubUNet()
    sds = ScoreDistillation(unet, sched)
    z, cond, uncond = _case()
    s = 7.5
    out = sds(latents=z, prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=s,
              t_range=(0.2, 0.6), weighting=weighting, generator=torch.Generator().manual_seed(3))
    # Reference, independently: same draws, diffusers' add_noise, explicit CFG and w(t).
    g = torch.Generator().manual_seed(3)
    t = torch.randint(200, 601, (3,), generator=g)
    eps = torch.randn(z.shape, generator=g)
    z_t = sched.add_noise(z.detach(), eps, t)
    ref_unet = StubUNet()
    eps_c = ref_unet(z_t, t, cond).sample
    eps_u = ref_unet(z_t, t, uncond.expand(3, -1, -1)).sample
    eps_hat = eps_u + s * (eps_c - eps_u)
    a = sched.alphas_cumprod[t].float()
    w = {"sds": 1 - a, "uniform": torch.ones(3), "fantasia3d": a.sqrt() * (1 - a)}[weighting]
    expected = w.view(3, 1, 1, 1) * (eps_hat - eps)
    assert torch.equal(out.timesteps, t) and torch.equal(out.noise, eps)
    torch.testing.assert_close(out.weights, w)
    torch.testing.assert_close(out.grad, expected, rtol=1e-5, atol=1e-5)
    # The MSE trick: d loss / d z = grad / B.
    out.loss.backward()
    torch.testing.assert_close(z.grad, expected / 3, rtol=1e-5, atol=1e-6)
    # One batched UNet call (cond + uncond), without autograd.
    assert unet.calls == [(6, False)]
    assert out.info["nonfinite"] == 0 and out.info["grad_norm"] > 0


def test_guidance_one_uses_only_the_conditional_branch():
    unet = StubUNet()
    sds = ScoreDistillation(unet, _scheduler())
    z, cond, _ = _case(2)
    t = torch.tensor([10, 900])
    out = sds(latents=z, prompt_embeds=cond, guidance_scale=1.0, timesteps=t,
              generator=torch.Generator().manual_seed(0))
    a = sds.alphas_cumprod[t].view(2, 1, 1, 1)
    z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * out.noise
    torch.testing.assert_close(out.noise_pred, StubUNet()(z_t, t, cond).sample)
    assert unet.calls == [(2, False)]


def test_v_prediction_is_converted_to_epsilon():
    sched = _scheduler("v_prediction")
    sds = ScoreDistillation(StubUNet(), sched)
    z, cond, uncond = _case(2)
    t = torch.tensor([100, 700])
    out = sds(latents=z, prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=3.0, timesteps=t,
              weighting="uniform", generator=torch.Generator().manual_seed(1))
    a = sched.alphas_cumprod[t].float().view(2, 1, 1, 1)
    z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * out.noise
    to_eps = lambda v: a.sqrt() * v + (1 - a).sqrt() * z_t  # noqa: E731
    v_c, v_u = StubUNet()(z_t, t, cond).sample, StubUNet()(z_t, t, uncond.expand(2, -1, -1)).sample
    expected = to_eps(v_u) + 3.0 * (to_eps(v_c) - to_eps(v_u)) - out.noise
    torch.testing.assert_close(out.grad, expected, rtol=1e-5, atol=1e-5)


def test_nan_guard_and_clipping():
    sds = ScoreDistillation(StubUNet(nan=True), _scheduler())
    z, cond, uncond = _case(2)
    out = sds(latents=z, prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=100.0, grad_clip=0.05,
              generator=torch.Generator().manual_seed(0))
    assert out.info["nonfinite"] == 2
    assert torch.isfinite(out.grad).all() and torch.all(out.grad[:, 0, 0, 0] == 0)
    assert float(out.grad.abs().max()) == pytest.approx(0.05)
    out.loss.backward()
    assert torch.isfinite(z.grad).all()


def test_weights_and_timestep_annealing():
    a = torch.tensor([0.25, 1.0])
    torch.testing.assert_close(sds_weights(a, "sds"), torch.tensor([0.75, 0.0]))
    torch.testing.assert_close(sds_weights(a, "fantasia3d"), torch.tensor([0.375, 0.0]))
    assert timestep_range(5, 10, (0.02, 0.98), "none") == (0.02, 0.98)
    lo, hi = timestep_range(5, 10, (0.02, 0.98), "linear", t_max_final=0.5)
    assert lo == 0.02 and hi == pytest.approx(0.74)
    assert timestep_range(10, 10, (0.02, 0.98), "linear", 0.5)[1] == pytest.approx(0.5)
    p = 0.98 - 0.96 * math.sqrt(0.25)
    assert timestep_range(25, 100, (0.02, 0.98), "sqrt") == pytest.approx((p, p))
    sds = ScoreDistillation(StubUNet(), _scheduler())
    z, cond, uncond = _case(3)
    out = sds(latents=z, prompt_embeds=cond, negative_prompt_embeds=uncond, t_range=(0.5, 0.5))
    assert out.timesteps.tolist() == [500, 500, 500]


def test_view_dependent_prompts():
    half = math.pi / 2
    yaws = torch.tensor([half, half + 0.5, half - 0.9, half + 1.2, half + math.pi, half - 2.5])
    assert view_index(yaws).tolist() == [0, 0, 1, 1, 2, 2]
    assert view_prompt("an elf", 1) == "an elf, side view" and view_prompt("an elf", "back") == "an elf, back view"


def test_errors_name_the_argument():
    sds = ScoreDistillation(StubUNet(), _scheduler())
    z, cond, uncond = _case(2)
    with pytest.raises(ValueError, match="exactly one of images"):
        sds(torch.zeros(2, 3, 8, 8), latents=z, prompt_embeds=cond, negative_prompt_embeds=uncond)
    with pytest.raises(ValueError, match="guidance-scale"):
        sds(latents=z, prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=-1)
    with pytest.raises(ValueError, match="t-range"):
        sds(latents=z, prompt_embeds=cond, negative_prompt_embeds=uncond, t_range=(0.9, 0.1))
    with pytest.raises(ValueError, match="weighting"):
        sds(latents=z, prompt_embeds=cond, negative_prompt_embeds=uncond, weighting="bogus")
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        sds(latents=z, prompt_embeds=cond, guidance_scale=7.5)
    with pytest.raises(ValueError, match="prompt_embeds"):
        sds(latents=z, prompt_embeds=cond[:, 0], negative_prompt_embeds=uncond)
    with pytest.raises(ValueError, match="no VAE"):
        sds(torch.zeros(2, 3, 8, 8), prompt_embeds=cond, negative_prompt_embeds=uncond)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return make_tiny_stable_diffusion(tmp_path_factory.getbasetemp() / "tiny-models" / "stable-diffusion")


def test_tiny_stable_diffusion_sends_gradient_to_the_images(tiny_sd):
    sds = ScoreDistillation.from_pretrained(str(tiny_sd))
    assert sds.resolution == 64 and sds.text_dim == 32 and sds.prediction_type == "epsilon"
    emb = sds.encode_prompt(["a zombie, front view", "an elf"])
    assert emb.shape == (2, 77, 32)
    assert torch.equal(sds.encode_prompt("an elf")[0], emb[1])  # cached, same values
    uncond = sds.encode_prompt("")
    images = (torch.rand(2, 3, 48, 48) * 2 - 1).requires_grad_(True)  # resized to 64 inside
    runs = []
    for _ in range(2):
        out = sds(images=images, prompt_embeds=emb, negative_prompt_embeds=uncond, guidance_scale=7.5,
                  generator=torch.Generator().manual_seed(0))
        images.grad = None
        out.loss.backward()
        runs.append((out.grad.clone(), images.grad.clone()))
    assert out.latents.shape == (2, 4, 32, 32)
    assert torch.isfinite(runs[0][1]).all() and runs[0][1].abs().sum() > 0
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])  # seeded: reproducible
    with pytest.raises(FileNotFoundError, match="--diffusion"):
        ScoreDistillation.from_pretrained(str(tiny_sd / "missing"))
