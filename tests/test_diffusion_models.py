"""Diffusion models in the layouts users download and share (issue #20): SDXL folders, single files in the original
LDM / A1111 layout (.safetensors and .ckpt), fp16 weight variants, and a clear one-line error for each combination
that cannot work, raised before any weight is loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adapt3d.diffusion.controlnet import ControlNetGenerator
from adapt3d.diffusion.img2img import Img2ImgTranslator
from adapt3d.diffusion.loading import PretrainedNotFoundError, download_error
from adapt3d.diffusion.options import DiffusionOptions
from adapt3d.diffusion.sds import ScoreDistillation
from adapt3d.diffusion.sources import check_controlnet_pair, load_pipeline, resolve_model
from adapt3d.testing.diffusion_layouts import (build_tiny_controlnet_original, build_tiny_sd_factor8, build_tiny_sdxl,
                                               build_tiny_sdxl_controlnet, write_variant_folder)
from adapt3d.testing.fixtures import tiny_models  # noqa: F401
from adapt3d.testing.ldm_layout import write_controlnet_single_file, write_stable_diffusion_single_file

X = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64).sin()  # two fixed "renders" in [-1, 1]


@pytest.fixture(scope="module")
def m(tiny_models, tmp_path_factory):  # noqa: F811
    """Every layout, built once: name -> path."""
    root = tmp_path_factory.mktemp("layouts")
    sd = tiny_models["stable-diffusion"]
    out = {"sd": sd, "cn": tiny_models["controlnet"], "sdxl": build_tiny_sdxl(root / "sdxl"),
           "refiner": build_tiny_sdxl(root / "refiner", refiner=True), "sd8": build_tiny_sd_factor8(root / "sd8")}
    out["sdxl-cn"] = build_tiny_sdxl_controlnet(out["sdxl"], root / "sdxl-cn")
    out["cn8"] = build_tiny_controlnet_original(out["sd8"], root / "cn8")
    out["cn8-file"] = write_controlnet_single_file(out["cn8"], root / "control_tiny.safetensors")
    out["sd-file"] = write_stable_diffusion_single_file(sd, root / "tiny_sd15.safetensors")
    out["sd-ckpt"] = write_stable_diffusion_single_file(sd, root / "tiny_sd15.ckpt")
    out["sdxl-file"] = write_stable_diffusion_single_file(out["sdxl"], root / "tiny_sdxl.safetensors")
    out["fp16"] = write_variant_folder(sd, root / "sd-fp16-only")
    out["both"] = write_variant_folder(sd, root / "sd-both", keep_standard=True)
    return out


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return sorted(set(sa) ^ set(sb)) + [k for k in sa if k in sb and not torch.equal(sa[k], sb[k].to(sa[k].dtype))]


# -- architecture detection -----------------------------------------------------------------------------------------
def test_family_and_text_width_are_read_from_the_files(m):
    assert (resolve_model(m["sd"]).family, resolve_model(m["sd"]).cross_attention_dim) == ("sd", 32)
    assert (resolve_model(m["sdxl"]).family, resolve_model(m["sdxl"]).cross_attention_dim) == ("sdxl", 80)
    assert resolve_model(m["refiner"]).family == "sdxl-refiner"
    assert resolve_model(m["cn"], "controlnet").family == "sd"
    assert resolve_model(m["sdxl-cn"], "controlnet").family == "sdxl"
    for name, family in (("sd-file", "sd"), ("sd-ckpt", "sd"), ("sdxl-file", "sdxl")):
        src = resolve_model(m[name], config=str(m[name.split("-")[0]]))
        width = 32 if family == "sd" else 80
        assert (src.layout, src.family, src.cross_attention_dim) == ("single-file", family, width)
    cn = resolve_model(m["cn8-file"], "controlnet", config=str(m["cn8"]), config_flag="--controlnet-config")
    assert (cn.layout, cn.family, cn.cross_attention_dim) == ("single-file", "sd", 32)


# -- item 1: SDXL ---------------------------------------------------------------------------------------------------
def test_sdxl_img2img_uses_the_sdxl_pipeline_and_matches_diffusers(m):
    """Regression (issue #20.1): an SDXL folder was loaded as an SD img2img pipeline and crashed in get_aug_embed."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    t = Img2ImgTranslator.from_pretrained(str(m["sdxl"]), scheduler="ddim")
    assert isinstance(t.pipe, StableDiffusionXLImg2ImgPipeline) and t.resolution == 64
    out = t(X, ["a zombie", "an elf"], num_inference_steps=4, strength=0.5, seeds=[3, 4], guidance_scale=5.0)
    # Reference: the diffusers pipeline called directly with the same scheduler, generators and inputs.
    ref_pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(m["sdxl"])
    ref_pipe.scheduler = t.pipe.scheduler
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe(prompt=["a zombie", "an elf"], image=(X + 1) / 2, strength=0.5, num_inference_steps=4,
                   guidance_scale=5.0, generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
                   output_type="pt").images
    assert out.images.shape == (2, 3, 64, 64)
    assert torch.allclose(out.images, ref.clamp(0, 1), atol=1e-5)


def test_sdxl_refiner_translates_but_is_refused_as_sds_teacher(m):
    t = Img2ImgTranslator.from_pretrained(str(m["refiner"]))
    assert t(X[:1], "x", num_inference_steps=2).images.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"^--diffusion: .* is the SDXL refiner; score distillation supports "):
        ScoreDistillation.from_pretrained(str(m["refiner"]))


def test_sdxl_sds_matches_the_pipelines_conditioning(m):
    """Prompt embeddings, pooled embeddings and size ids as diffusers' SDXL pipeline builds them; the SDS gradient
    equals w(t) (eps_hat - eps) computed from the UNet called by hand with those inputs."""
    from diffusers import StableDiffusionXLPipeline
    sds = ScoreDistillation.from_pretrained(str(m["sdxl"]))
    pipe = StableDiffusionXLPipeline.from_pretrained(m["sdxl"])
    assert sds.is_sdxl and sds.text_dim == 80
    emb, neg, pooled, neg_pooled = pipe.encode_prompt("a zombie", device="cpu", do_classifier_free_guidance=True,
                                                      negative_prompt=None)  # None + force_zeros: zeros
    assert torch.allclose(sds.encode_prompt(["a zombie"]), emb, atol=1e-6)
    assert torch.allclose(sds.encode_pooled(["a zombie"]), pooled, atol=1e-6)
    assert torch.equal(sds.encode_prompt([""]), neg) and torch.equal(sds.encode_pooled([""]), neg_pooled)

    z = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 700])
    out = sds(latents=z, prompt_embeds=emb, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled,
              negative_pooled_prompt_embeds=neg_pooled, guidance_scale=7.5, timesteps=t,
              generator=torch.Generator().manual_seed(1))
    ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=emb.dtype,
                                 text_encoder_projection_dim=48).repeat(2, 1)  # (2, 6)
    a = sds.alphas_cumprod[t].view(2, 1, 1, 1)
    z_t = a.sqrt() * z + (1 - a).sqrt() * out.noise
    with torch.no_grad():
        eps = [pipe.unet(z_t, t, encoder_hidden_states=e.expand(2, -1, -1),
                         added_cond_kwargs={"text_embeds": p.expand(2, -1), "time_ids": ids}).sample
               for e, p in ((emb, pooled), (neg, neg_pooled))]
    ref = (1 - a) * (eps[1] + 7.5 * (eps[0] - eps[1]) - out.noise)
    assert torch.allclose(out.grad, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="pooled_prompt_embeds: an SDXL teacher also needs"):
        sds(latents=z, prompt_embeds=emb, negative_prompt_embeds=neg, guidance_scale=7.5)


def test_mismatched_base_and_controlnet_are_refused_before_loading(m):
    """Regression (issue #20.1): SDXL base + SD 1.5 ControlNet failed with a raw shape error inside diffusers."""
    sdxl, sd_cn = resolve_model(m["sdxl"]), resolve_model(m["cn"], "controlnet")
    with pytest.raises(ValueError, match=r"^--controlnet: .* is a ControlNet for Stable Diffusion 1\.x/2\.x, but "
                                         r"--diffusion .* is Stable Diffusion XL; they do not fit together"):
        check_controlnet_pair(sdxl, sd_cn)
    with pytest.raises(ValueError, match="ControlNet for Stable Diffusion XL, but --diffusion"):
        ControlNetGenerator.from_pretrained(str(m["sd"]), str(m["sdxl-cn"]))
    # Same family, different text width (SD 1.x ControlNet on an SD 2.x base): a ControlNet with wider attention.
    wide = resolve_model(m["cn"], "controlnet")
    wide = type(wide)(**{**wide.__dict__, "cross_attention_dim": 1024})
    with pytest.raises(ValueError, match=r"attends to 1024-wide text embeddings, --diffusion .* produces 32"):
        check_controlnet_pair(resolve_model(m["sd"]), wide)
    assert ControlNetGenerator.from_pretrained(str(m["sdxl"]), str(m["sdxl-cn"])).is_sdxl


def test_unsupported_architectures_get_one_line_errors(m, tmp_path):
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline",
                                                      "transformer": ["diffusers", "SD3Transformer2DModel"]}))
    with pytest.raises(ValueError, match=r"^--diffusion: .* is Stable Diffusion 3; img2img supports Stable Diffusion "
                                         r"1\.x/2\.x and Stable Diffusion XL and the SDXL refiner$"):
        Img2ImgTranslator.from_pretrained(str(sd3))
    inpaint = tmp_path / "inpaint"
    shutil.copytree(m["sd"], inpaint)
    cfg = json.loads((inpaint / "unet" / "config.json").read_text())
    (inpaint / "unet" / "config.json").write_text(json.dumps({**cfg, "in_channels": 9}))
    with pytest.raises(ValueError, match="inpainting model"):
        ScoreDistillation.from_pretrained(str(inpaint))
    junk = tmp_path / "junk.safetensors"
    from safetensors.torch import save_file
    save_file({"foo.weight": torch.zeros(2)}, str(junk))
    with pytest.raises(ValueError, match=r"^--diffusion: .*junk.safetensors is not a Stable Diffusion pipeline "
                                         "checkpoint adapt3d recognises"):
        resolve_model(junk)
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match="is a file but not a single-file checkpoint"):
        resolve_model(text)


# -- item 2: single files -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,folder", [("sd-file", "sd"), ("sd-ckpt", "sd"), ("sdxl-file", "sdxl")])
def test_single_file_loads_every_weight_of_the_original(m, name, folder):
    """The file was written in the LDM layout by adapt3d.testing.ldm_layout; diffusers' own conversion reads it back:
    every tensor equal means both directions agree."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    cls = StableDiffusionXLPipeline if folder == "sdxl" else StableDiffusionPipeline
    a = load_pipeline(cls, resolve_model(m[name], config=str(m[folder])))
    b = cls.from_pretrained(m[folder])
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(b, part, None) is not None:
            assert _equal_state(getattr(a, part), getattr(b, part)) == [], part
    assert a.scheduler.config == b.scheduler.config


def test_single_file_img2img_and_sds_match_the_folder(m):
    opts = DiffusionOptions(diffusion_config=str(m["sd"]))
    a = Img2ImgTranslator.from_pretrained(str(m["sd-file"]), options=opts)(X, "a zombie", num_inference_steps=3)
    b = Img2ImgTranslator.from_pretrained(str(m["sd"]))(X, "a zombie", num_inference_steps=3)
    assert torch.equal(a.images, b.images)
    sa = ScoreDistillation.from_pretrained(str(m["sd-ckpt"]), options=opts)
    sb = ScoreDistillation.from_pretrained(str(m["sd"]))
    assert torch.equal(sa.encode_prompt(["an elf"]), sb.encode_prompt(["an elf"]))
    assert sa.model_source.layout == "single-file" and sa.model_source.config == str(m["sd"])


def test_controlnet_single_file_matches_its_folder(m):
    control = torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64)
    a = ControlNetGenerator.from_pretrained(str(m["sd8"]), str(m["cn8-file"]), controlnet_config=str(m["cn8"]))
    b = ControlNetGenerator.from_pretrained(str(m["sd8"]), str(m["cn8"]))
    assert _equal_state(a.pipe.controlnet, b.pipe.controlnet) == []
    images = [g(control, "a car", num_inference_steps=2).images for g in (a, b)]
    assert torch.equal(*images)
    assert a.source["controlnet_config"] == str(m["cn8"])


def test_single_file_errors_name_the_option(m, tmp_path):
    # No config given, offline, the architecture's reference repository not cached.
    with pytest.raises(PretrainedNotFoundError, match=r"^--diffusion: the single file tiny_sd15.safetensors needs "
                                                      r"the configs .* by default 'stable-diffusion-v1-5/"
                                                      r"stable-diffusion-v1-5'.*pass --diffusion-config"):
        resolve_model(m["sd-file"])
    with pytest.raises(ValueError, match=r"^--diffusion-config: .* describes Stable Diffusion XL, but --diffusion "
                                         r"tiny_sd15.safetensors is Stable Diffusion 1\.x/2\.x"):
        resolve_model(m["sd-file"], config=str(m["sdxl"]))
    with pytest.raises(ValueError, match=r"^--diffusion-config: only used with a single-file --diffusion"):
        resolve_model(m["sd"], config=str(m["sd"]))
    with pytest.raises(ValueError, match=r"^--weights-variant fp16: weight variants are files of a diffusers folder"):
        resolve_model(m["sd-file"], config=str(m["sd"]), variant="fp16")


def test_pickled_checkpoints_are_read_as_tensors_only(m, tmp_path):
    """A .ckpt whose pickle would run a command is refused with one line, and the command never runs."""
    try:
        from .malicious_pickles import PAYLOADS
    except ImportError:
        from malicious_pickles import PAYLOADS
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(PAYLOADS["os.system"](marker))
    with pytest.raises(ValueError, match=r"^--diffusion: .*model.ckpt could not be read as tensors only .*"
                                         r"torch's weights-only loader"):
        resolve_model(bad, config=str(m["sd"]))
    assert not marker.exists()


# -- item 3: variants -----------------------------------------------------------------------------------------------
def test_fp16_only_folder_needs_and_loads_with_weights_variant(m):
    """Regression (issue #20.3): an fp16-only folder failed, and the advice named the local path as a hub id."""
    with pytest.raises(ValueError, match=r"^--diffusion: .*sd-fp16-only holds only 'fp16'-variant weights .*; pass "
                                         r"--weights-variant fp16$") as err:
        Img2ImgTranslator.from_pretrained(str(m["fp16"]))
    assert "huggingface-cli" not in str(err.value)
    t = Img2ImgTranslator.from_pretrained(str(m["fp16"]), options=DiffusionOptions(weights_variant="fp16"))
    ref = Img2ImgTranslator.from_pretrained(str(m["sd"]))
    w, w_ref = t.pipe.unet.conv_in.weight, ref.pipe.unet.conv_in.weight
    assert w.dtype == torch.float32 and torch.equal(w, w_ref.half().float())  # fp16 files, computed in fp32 here
    both = resolve_model(m["both"])
    assert both.variant is None and resolve_model(m["both"], variant="fp16").variant == "fp16"
    with pytest.raises(ValueError, match=r"^--weights-variant bf16: .* has no 'bf16' weight files"):
        resolve_model(m["both"], variant="bf16")


def test_errors_about_local_paths_never_advise_downloading_them(tmp_path):
    err = download_error(str(tmp_path / "my-model"), "stable-diffusion", "--diffusion", OSError("no file named x"))
    assert "huggingface-cli" not in str(err) and "local path" in str(err) and "complete" in str(err)
    err = download_error("owner/model", "stable-diffusion", "--diffusion", OSError("offline"))
    assert "huggingface-cli download owner/model" in str(err)


# -- the commands, end to end ---------------------------------------------------------------------------------------
def test_make_dataset_with_an_sdxl_single_file_records_its_options_and_resumes(m, tmp_path):
    import dataclasses

    from adapt3d.pipelines.make_dataset import MakeDatasetConfig, run
    opts = DiffusionOptions(diffusion_config=str(m["sdxl"]), attention_slicing=True, vae_slicing=True)
    cfg = MakeDatasetConfig(out=tmp_path / "ds", preset="tiny", prompt=("a zombie",), num_images=2, batch_size=2,
                            num_inference_steps=2, strength=0.5, pose_filter=False, clip_model="none",
                            diffusion=str(m["sdxl-file"]), device="cpu", progress=False, diffusion_options=opts)
    assert run(cfg).num_images == 2
    job = json.loads((tmp_path / "ds" / "job.json").read_text())
    assert job["diffusion_model"]["family"] == "sdxl" and job["diffusion_model"]["layout"] == "single-file"
    assert job["diffusion_options"]["attention_slicing"] is True
    assert job["diffusion_options"]["torch_dtype"] == "float32"
    assert job["job"]["diffusion_config"] == str(m["sdxl"])  # how the weights are read is part of the job
    summary = json.loads((tmp_path / "ds" / "make_dataset.json").read_text())
    assert summary["config"]["diffusion_options"]["vae_slicing"] is True
    # Memory options may change between runs (nothing is regenerated); the precision may not.
    again = run(dataclasses.replace(cfg, diffusion_options=DiffusionOptions(diffusion_config=str(m["sdxl"]))))
    assert again.generated_now == 0
    with pytest.raises(ValueError, match=r"^--out: .* holds a different make-dataset job \(options that differ: "
                                         r"dtype\)"):
        run(dataclasses.replace(cfg, diffusion_options=DiffusionOptions(diffusion_config=str(m["sdxl"]),
                                                                        dtype="bf16")))


def test_distill_with_an_sdxl_single_file_teacher_then_generate(m, tmp_path):
    from adapt3d.models.text_conditioned import load_text_conditioned
    from adapt3d.pipelines.distill import DistillConfig, run
    from adapt3d.pipelines.generate import GenerateConfig
    from adapt3d.pipelines.generate import run as generate
    opts = DiffusionOptions(diffusion_config=str(m["sdxl"]), gradient_checkpointing=True)
    out = run(DistillConfig(prompts="a zombie;an elf", preset="tiny", diffusion=str(m["sdxl-file"]), clip_model="none",
                            diversity_features="pixels", out=tmp_path / "run", steps=1, batch=2, tick_steps=1,
                            diversity_steps=1, snapshot_steps=1, diversity_seeds="0-1", sample_seeds="0",
                            evaluate=False, attn_resolution=16, attn_dim=32, device="cpu", progress=False,
                            diffusion_options=opts))
    options = json.loads((tmp_path / "run" / "options.json").read_text())
    assert options["resolved"]["diffusion_model"]["family"] == "sdxl"
    assert options["options"]["diffusion_options"]["gradient_checkpointing"] is True
    assert options["identity"]["diffusion_config"] == str(m["sdxl"])
    norms = [s["sds/grad_norm"] for s in out.stats if "sds/grad_norm" in s]
    assert norms and all(torch.isfinite(torch.tensor(norms)))
    model, _, meta = load_text_conditioned(out.final)
    assert model.cond_config.text_dim == 80  # 32 + 48: both SDXL text encoders
    assert meta["text_conditioning"]["text_encoder"]["diffusion_config"] == str(m["sdxl"])
    # generate reads the teacher's single file with the recorded config.
    result = generate(GenerateConfig(checkpoint=str(out.final), prompt="an elf", out=tmp_path / "gen", seeds="0",
                                     batch_size=1, device="cpu", progress=False))
    assert (tmp_path / "gen" / "seed0000.png").is_file() and result.seeds == [0]


def test_distill_refuses_teacher_gan_reals_with_an_sdxl_teacher_before_loading(m, tmp_path, monkeypatch):
    """--gan-real teacher builds D's reals with the SD 1.x/2.x img2img pipeline: an SDXL teacher is refused by name
    before any model loads ('auto' falls back to source samples instead, tested above)."""
    import adapt3d.pipelines.distill as distill_module
    from adapt3d.pipelines.distill import DistillConfig, run

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the --gan-real check")
    monkeypatch.setattr(distill_module, "load_pipeline", no_load, raising=False)
    monkeypatch.setattr(ScoreDistillation, "from_pretrained", classmethod(no_load))
    opts = DiffusionOptions(diffusion_config=str(m["sdxl"]))
    with pytest.raises(ValueError, match=r"^--gan-real teacher: .* is sdxl: pass --gan-real source or dataset"):
        run(DistillConfig(prompts="a zombie", preset="tiny", diffusion=str(m["sdxl-file"]), clip_model="none",
                          diversity_features="pixels", out=tmp_path / "run", steps=1, batch=1, gan_real="teacher",
                          device="cpu", progress=False, diffusion_options=opts))


def test_synth_with_a_controlnet_single_file_records_it(m, tmp_path):
    from adapt3d.pipelines.synth import SynthConfig, synth
    base = dict(preset="tiny", per_mesh=1, num_inference_steps=2, batch_size=2, device="cpu", progress=False)
    with pytest.raises(ValueError, match="ControlNet for Stable Diffusion 1.x/2.x, but --diffusion"):
        synth(SynthConfig(out=tmp_path / "bad", diffusion=str(m["sdxl"]), controlnet=str(m["cn"]), **base))
    assert not list((tmp_path / "bad").glob("*/*/render/*.png"))  # refused before rendering
    synth(SynthConfig(out=tmp_path / "dst", diffusion=str(m["sd8"]), controlnet=str(m["cn8-file"]),
                      controlnet_config=str(m["cn8"]), diffusion_options=DiffusionOptions(vae_slicing=True), **base))
    summary = json.loads((tmp_path / "dst" / "synth.json").read_text())
    assert summary["config"]["diffusion_options"]["vae_slicing"] is True
    ann = json.loads(next((tmp_path / "dst").glob("*/*/annotation/*.json")).read_text())
    assert ann["generation"]["controlnet_config"] == str(m["cn8"]) and ann["generation"]["dtype"] == "float32"
