"""--dtype and the GPU memory options (issue #20.3-4): refused where they cannot work (one line, before loading),
applied where asked (the pipeline's processors, flags, hooks, compiled UNet), and results agree with a plain run."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from adapt3d.cli.main import main
from adapt3d.diffusion import options as options_module
from adapt3d.diffusion.img2img import Img2ImgTranslator
from adapt3d.diffusion.options import DiffusionOptions, apply_to_pipeline
from adapt3d.diffusion.sds import ScoreDistillation
from adapt3d.testing.fixtures import tiny_models  # noqa: F401

X = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64).sin()  # two fixed "renders" in [-1, 1]


@pytest.fixture(scope="module")
def sd(tiny_models):  # noqa: F811
    return str(tiny_models["stable-diffusion"])


@pytest.fixture(scope="module")
def plain(sd):
    return Img2ImgTranslator.from_pretrained(sd)(X, "a zombie", num_inference_steps=3).images


def _translate(sd, resolution=None, x=X, steps=3, **options):
    t = Img2ImgTranslator.from_pretrained(sd, options=DiffusionOptions(**options))
    return t, t(x, "a zombie", num_inference_steps=steps, resolution=resolution).images


# -- precision ------------------------------------------------------------------------------------------------------
def test_dtype_auto_is_fp16_on_cuda_and_fp32_on_the_cpu():
    assert DiffusionOptions().torch_dtype("cpu") == torch.float32
    assert DiffusionOptions().torch_dtype("cuda") == torch.float16
    assert DiffusionOptions(dtype="bf16").torch_dtype("cuda:1") == torch.bfloat16
    assert DiffusionOptions(dtype="fp32").torch_dtype("cuda") == torch.float32


def test_bf16_loads_the_weights_in_bf16(sd):
    t = Img2ImgTranslator.from_pretrained(sd, options=DiffusionOptions(dtype="bf16"))
    assert t.dtype == t.pipe.vae.dtype == t.pipe.text_encoder.dtype == torch.bfloat16
    s = ScoreDistillation.from_pretrained(sd, options=DiffusionOptions(dtype="bf16"), load_vae=False)
    assert s.dtype == torch.bfloat16


@pytest.mark.parametrize("opts,device,match", [
    (dict(dtype="fp16"), "cpu", r"^--dtype fp16: half precision on the CPU"),
    (dict(cpu_offload=True), "cpu", r"^--cpu-offload: needs a CUDA device \(--device cpu\)"),
    (dict(cpu_offload=True, compile_unet=True), "cuda", r"^--compile-unet with --cpu-offload: not supported"),
    (dict(gradient_checkpointing=True), "cpu", r"^--gradient-checkpointing: only distill backpropagates"),
])
def test_impossible_combinations_are_refused(opts, device, match):
    with pytest.raises(ValueError, match=match):
        DiffusionOptions(**opts).check(device)


@pytest.mark.parametrize("argv,match", [
    (["make-dataset", "--prompt", "x", "--dtype", "fp16"], "--dtype fp16: half precision on the CPU"),
    (["make-dataset", "--prompt", "x", "--cpu-offload"], "--cpu-offload: needs a CUDA device"),
    (["make-dataset", "--prompt", "x", "--gradient-checkpointing"], "--gradient-checkpointing: only distill"),
    (["distill", "--prompts", "a;b", "--cpu-offload"], "--cpu-offload: needs a CUDA device"),
    (["synth", "--dtype", "fp16"], "--dtype fp16: half precision on the CPU"),
    (["adapt", "--prompt", "x", "--method", "nada", "--vae-tiling"], "--vae-tiling: only used by --method datid3d"),
])
def test_the_commands_refuse_them_in_one_line(argv, match, tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([*argv, "--preset", "tiny", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 2 and match in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


# -- memory options on the img2img / ControlNet pipelines -----------------------------------------------------------
def test_attention_and_vae_slicing_are_set_and_change_nothing(sd, plain):
    from diffusers.models.attention_processor import SlicedAttnProcessor
    t, out = _translate(sd, attention_slicing=True, vae_slicing=True)
    assert all(isinstance(p, SlicedAttnProcessor) for p in t.pipe.unet.attn_processors.values())
    assert t.pipe.vae.use_slicing and not t.pipe.vae.use_tiling
    assert torch.allclose(out, plain, atol=1e-5)


def test_vae_tiling_decodes_in_tiles_and_stays_close(sd, monkeypatch):
    from diffusers import AutoencoderKL
    calls = []
    tiled = AutoencoderKL.tiled_decode
    monkeypatch.setattr(AutoencoderKL, "tiled_decode", lambda self, *a, **k: calls.append(1) or tiled(self, *a, **k))
    big = torch.nn.functional.interpolate(X, size=128, mode="bilinear")  # twice the VAE's 64 px tile
    t, out = _translate(sd, resolution=128, x=big, steps=2, vae_tiling=True)
    assert t.pipe.vae.use_tiling and calls and out.shape == (2, 3, 128, 128)
    # The tiled decode itself: tiles blended at the seams, close to the plain decode, far from another image.
    z = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiled_img = t.pipe.vae.decode(z).sample
        t.pipe.vae.disable_tiling()
        plain_img = t.pipe.vae.decode(z).sample
    # (tiny random VAE: mean |tiled - plain| is 0.13 of the mean difference between two images)
    assert (tiled_img - plain_img).abs().mean() < 0.25 * (plain_img - plain_img.flip(0)).abs().mean()


def test_cpu_offload_installs_hooks_and_changes_nothing(sd, plain):
    t = Img2ImgTranslator.from_pretrained(sd)
    notes = apply_to_pipeline(t.pipe, DiffusionOptions(cpu_offload=True), "cpu")  # the CPU stands in for the GPU
    assert all(hasattr(getattr(t.pipe, n), "_hf_hook") for n in ("unet", "vae", "text_encoder"))
    assert "model CPU offload" in notes[0]
    assert torch.equal(t(X, "a zombie", num_inference_steps=3).images, plain)


def test_compile_unet_runs_the_compiled_unet(sd, plain, monkeypatch):
    """The wiring: the pipeline calls what torch.compile returned (a real compilation takes minutes on this CPU; the
    GPU check compiles for real)."""
    compiled = []

    def fake_compile(module, backend=None):
        wrapper = torch.nn.Module()
        wrapper.inner, wrapper.calls, wrapper.backend = module, 0, backend
        wrapper.config, wrapper.dtype, wrapper.device = module.config, module.dtype, module.device
        wrapper.add_embedding = None

        def forward(*a, **k):
            wrapper.calls += 1
            return module(*a, **k)
        wrapper.forward = forward
        compiled.append(wrapper)
        return wrapper
    monkeypatch.setattr(torch, "compile", fake_compile)
    t, out = _translate(sd, compile_unet=True)
    assert t.pipe.unet is compiled[0] and compiled[0].calls > 0 and compiled[0].backend == "inductor"
    assert any("torch.compile" in n for n in t.notes)
    assert torch.equal(out, plain)


# -- memory options in score distillation ---------------------------------------------------------------------------
def _sds_grad(sd, **options):
    s = ScoreDistillation.from_pretrained(sd, options=DiffusionOptions(**options))
    images = X.clone().requires_grad_(True)
    e = s.encode_prompt(["a zombie", ""])
    out = s(images, prompt_embeds=e[:1], negative_prompt_embeds=e[1:], guidance_scale=7.5,
            timesteps=torch.tensor([200, 600]), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    return s, images.grad


def test_sds_gradient_checkpointing_recomputes_the_vae_encoder_and_keeps_the_gradient(sd):
    counts = {}
    _, ref = _sds_grad(sd)
    s, grad = _sds_grad(sd, gradient_checkpointing=True)
    assert s.vae.encoder.gradient_checkpointing
    # Count one encoder convolution's forwards in one more SDS call: twice (forward + recompute in the backward
    # pass) with checkpointing. (Module hooks do not fire during the recompute; the forward itself does.)
    for name, sds in (("plain", ScoreDistillation.from_pretrained(sd)), ("ckpt", s)):
        conv = sds.vae.encoder.down_blocks[0].resnets[0].conv1
        forward = conv.forward
        conv.forward = lambda *a, _n=name, _f=forward: counts.__setitem__(_n, counts.get(_n, 0) + 1) or _f(*a)
        images = X.clone().requires_grad_(True)
        e = sds.encode_prompt(["a zombie"])
        sds(images, prompt_embeds=e, guidance_scale=1.0, timesteps=torch.tensor([500, 500])).loss.backward()
        del conv.forward
    assert counts == {"plain": 1, "ckpt": 2}
    assert torch.allclose(grad, ref, atol=1e-6, rtol=1e-5)


def test_sds_slicing_options_keep_the_gradient(sd):
    _, ref = _sds_grad(sd)
    s, grad = _sds_grad(sd, attention_slicing=True, vae_slicing=True)
    assert s.vae.use_slicing
    assert torch.allclose(grad, ref, atol=1e-4, rtol=1e-3)  # batched vs per-image convolutions round differently


def test_sds_cpu_offload_moves_each_model_only_around_its_call(sd):
    """Text encoder and UNet go to the execution device just before their forward and back to CPU memory right after;
    the VAE stays (the gradient flows through it). On this CPU-only machine both ends are the CPU, so the test
    watches the order of the moves."""
    s = ScoreDistillation.from_pretrained(sd, device="cpu")
    s.offload = True  # what options.cpu_offload sets (refused on a CPU device by the options check)
    events = []
    for name in ("unet", "text_encoder", "vae"):  # a move of the VAE would show up as "vae.to(...)"
        module = getattr(s, name)
        original_to = module.to
        module.to = lambda *a, _n=name, _to=original_to, **k: events.append(f"{_n}.to({a[0]})") or _to(*a, **k)
        module.register_forward_pre_hook(lambda *_, _n=name: events.append(f"{_n}()"))
    e = s.encode_prompt(["a zombie"])
    s(X, prompt_embeds=e, guidance_scale=1.0, timesteps=torch.tensor([500, 500]))
    assert events == ["text_encoder.to(cpu)", "text_encoder()", "text_encoder.to(cpu)",
                      "unet.to(cpu)", "unet()", "unet.to(cpu)"]


def test_options_record_and_memory_record():
    opts = DiffusionOptions(dtype="bf16", cpu_offload=True)
    rec = opts.record("cpu")
    assert rec["torch_dtype"] == "bfloat16" and rec["cpu_offload"] is True and rec["weights_variant"] is None
    assert set(opts.memory_record()) == set(options_module.MEMORY_OPTIONS)
