"""The shipped architecture configs (adapt3d.configs) and the full-size-random builder (adapt3d.testing.full_size).

Parameter counts are taken on the meta device (no weights allocated) and compared with published counts, written
here as literals with their sources. Saving and loading through the real loaders is tested on scaled-down copies
of the same configs (same classes, same code path, tiny sizes).
"""

from __future__ import annotations

import copy
import gzip
import itertools
import json

import pytest
import torch

from adapt3d.configs import model_config, model_names
from adapt3d.testing.full_size import (build_random_model, empty_components, ensure_full_size_model,
                                       full_size_location, is_full_size_model, parameter_counts, random_component)

# Published parameter counts (sum of numel over parameters), with where they are published.
PUBLISHED = {
    # diffusers docs, ModelMixin.num_parameters example: runwayml/stable-diffusion-v1-5 unet -> 859520964.
    # Text encoder and VAE: fast.ai forum "Stable Diffusion Parameter Budget Allocation" (SD 1.x pipeline):
    # text encoder 123,060,480, VAE 83,653,863, UNet 859,520,964.
    ("sd15", "unet"): 859_520_964,
    ("sd15", "vae"): 83_653_863,
    ("sd15", "text_encoder"): 123_060_480,
    # stabilityai/stable-diffusion-2-1-base: UNet 865,910,724 (issue #21); buddy-mlir's SD2 example allocates
    # 865910724 UNet and 340387840 text-encoder (OpenCLIP-H, 23 layers) parameters.
    ("sd21-base", "unet"): 865_910_724,
    ("sd21-base", "vae"): 83_653_863,
    ("sd21-base", "text_encoder"): 340_387_840,
    # SDXL base 1.0: UNet 2,567,463,684 (diffusers DreamBooth LoRA log "unet params = 2567463684"); text encoders
    # 123,060,480 (CLIP-L) + 694,659,840 (bigG with projection) = the 817,720,320 "conditioning" parameters
    # several model registries list for SDXL; VAE as SD.
    ("sdxl-base", "unet"): 2_567_463_684,
    ("sdxl-base", "vae"): 83_653_863,
    ("sdxl-base", "text_encoder"): 123_060_480,
    ("sdxl-base", "text_encoder_2"): 694_659_840,
    # lllyasviel SD 1.5 ControlNets: 361,279,120 (counted from the downloaded weights in public write-ups).
    ("controlnet-sd15-canny", "controlnet"): 361_279_120,
    ("controlnet-sd15-depth", "controlnet"): 361_279_120,
    # OpenAI CLIP on Hugging Face (MTEB / keras-hub model metadata): ViT-B/32 151277313, ViT-B/16 149620737,
    # ViT-L/14 427616513.
    ("clip-vit-b-32", "model"): 151_277_313,
    ("clip-vit-b-16", "model"): 149_620_737,
    ("clip-vit-l-14", "model"): 427_616_513,
}
# EG3D: elements of the official networks' state dicts (parameters + buffers), counted by running NVlabs/eg3d
# (shared/docs/eg3d-facts.md 1.2 and 1.7: G 177 tensors / 31,493,185 elements, D 92 tensors / 31,360,240).
EG3D_FFHQ_STATE = {"G": (177, 31_493_185), "D": (92, 31_360_240)}


def test_every_shipped_model_has_a_published_count_or_an_eg3d_check():
    checked = {m for m, _ in PUBLISHED} | {"eg3d-ffhq512", "eg3d-afhq512", "eg3d-shapenet128"}
    assert set(model_names()) == checked


@pytest.mark.parametrize("name", sorted({m for m, _ in PUBLISHED}))
def test_parameter_counts_equal_the_published_ones(name):
    counts = parameter_counts(name)
    assert counts == {c: n for (m, c), n in PUBLISHED.items() if m == name}


def test_meta_build_allocates_no_weights():
    model = empty_components("clip-vit-b-32")["model"]
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())  # buffers stay real


@pytest.mark.parametrize("name,preset", [("eg3d-ffhq512", "ffhq512"), ("eg3d-afhq512", "afhq512"),
                                         ("eg3d-shapenet128", "shapenet128")])
def test_eg3d_configs_are_the_presets_and_the_official_networks(name, preset):
    from adapt3d.models.eg3d_convert import generator_config_from_official
    from adapt3d.models.triplane import preset_config
    from adapt3d.pipelines.finetune import default_discriminator
    cfg = model_config(name)
    assert cfg["preset"] == preset
    g = cfg["components"]["G"]
    assert generator_config_from_official(g["init_kwargs"], g["attributes"]) == preset_config(preset)
    comps = empty_components(name)
    with torch.device("meta"):
        D_preset = default_discriminator(comps["G"])
    shapes = {k: v.shape for k, v in comps["D"].state_dict().items()}
    assert shapes == {k: v.shape for k, v in D_preset.state_dict().items()}
    # The official counts are those of the 512 px FFHQ networks; AFHQ shares D and differs in G only by its
    # super-resolution head (the released file's SuperresolutionHybrid8X, 128/64 channels, not 8XDC's 256/128).
    checked = {"eg3d-ffhq512": ("G", "D"), "eg3d-afhq512": ("D",), "eg3d-shapenet128": ()}[name]
    for comp in checked:
        sd = comps[comp].state_dict()
        assert (len(sd), sum(t.numel() for t in sd.values())) == EG3D_FFHQ_STATE[comp]
    if name == "eg3d-afhq512":
        assert g["init_kwargs"]["rendering_kwargs"]["superresolution_module"].endswith(".SuperresolutionHybrid8X")
        assert sum(p.numel() for p in comps["G"].superresolution.parameters()) < sum(
            p.numel() for p in empty_components("eg3d-ffhq512")["G"].superresolution.parameters())


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model config 'sd3'"):
        model_config("sd3")
    with pytest.raises(ValueError, match="unknown full-size model 'sd3'"):
        ensure_full_size_model("sd3")


def test_random_component_is_seeded_and_materialised_layer_by_layer():
    spec = _tiny_sd()["components"]["text_encoder"]
    a = random_component(spec, seed=1, dtype=torch.float16)
    b = random_component(spec, seed=1, dtype=torch.float16)
    c = random_component(spec, seed=2, dtype=torch.float16)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(t.device.type == "cpu" for t in sa.values())
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert all(p.dtype == torch.float16 for p in a.parameters())
    fc = a.encoder.layers[0].mlp.fc1  # PyTorch's default Linear init: U(-1/sqrt(in), 1/sqrt(in))
    bound = 1 / fc.in_features ** 0.5
    assert 0.5 * bound < float(fc.weight.float().abs().max()) <= bound
    ln = a.final_layer_norm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    # buffers stay real (e.g. CLIP's position ids), not meta or garbage
    assert torch.equal(a.embeddings.position_ids[0], torch.arange(16))


# -------------------------------------------------------------------------------- scaled-down configs, real loaders
def _shrink_text(cfg: dict, hidden: int = 32) -> None:
    cfg.update(hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
               max_position_embeddings=16, vocab_size=600)
    if "projection_dim" in cfg:
        cfg["projection_dim"] = hidden


def _tiny_sd() -> dict:
    cfg = model_config("sd21-base")
    u = cfg["components"]["unet"]["config"]
    u.update(block_out_channels=[32, 64], attention_head_dim=[2, 4], layers_per_block=1, sample_size=16,
             cross_attention_dim=32, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
             up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    v = cfg["components"]["vae"]["config"]
    v.update(block_out_channels=[32, 32], layers_per_block=1, sample_size=32,
             down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    _shrink_text(cfg["components"]["text_encoder"]["config"])
    cfg["components"]["tokenizer"]["layout"]["model_max_length"] = 16
    return cfg


def test_stable_diffusion_folder_loads_through_the_img2img_and_sds_loaders(tmp_path):
    from adapt3d.diffusion.img2img import Img2ImgTranslator
    from adapt3d.diffusion.sds import ScoreDistillation
    cfg = _tiny_sd()
    info = build_random_model(cfg, tmp_path, seed=0)
    assert info["parameters"] == parameter_counts(cfg) and info["disk_dtype"] == "float16"
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert sorted(p.name for p in (tmp_path / "unet").iterdir()) == ["config.json",
                                                                      "diffusion_pytorch_model.safetensors"]
    tr = Img2ImgTranslator.from_pretrained(str(tmp_path), device="cpu")  # float32 on CPU, from float16 files
    assert tr.dtype == torch.float32 and tr.resolution == 32
    assert sum(p.numel() for p in tr.pipe.unet.parameters()) == info["parameters"]["unet"]
    assert tr.pipe.tokenizer.model_max_length == 16 and tr.pipe.tokenizer.pad_token == "!"
    out = tr(torch.zeros(1, 3, 32, 32), "a zombie", strength=0.5, num_inference_steps=2)
    assert out.images.shape == (1, 3, 32, 32) and torch.isfinite(out.images).all()
    sds = ScoreDistillation.from_pretrained(str(tmp_path), device="cpu")
    assert sds.text_dim == 32


def test_controlnet_and_clip_folders_load_through_their_loaders(tmp_path):
    from adapt3d.clip import CLIPScorer
    from adapt3d.diffusion.controlnet import ControlNetGenerator
    sd = _tiny_sd()
    sd["components"]["unet"]["config"]["attention_head_dim"] = 2
    sd15 = model_config("sd15")
    sd15["components"] = {**sd["components"], "text_encoder": sd15["components"]["text_encoder"],
                          "tokenizer": sd15["components"]["tokenizer"]}
    _shrink_text(sd15["components"]["text_encoder"]["config"])
    sd15["components"]["tokenizer"]["layout"]["model_max_length"] = 16
    build_random_model(sd15, tmp_path / "sd", seed=0)
    cn = model_config("controlnet-sd15-canny")
    c = cn["components"]["controlnet"]["config"]
    u = sd15["components"]["unet"]["config"]
    c.update(block_out_channels=u["block_out_channels"], attention_head_dim=2, layers_per_block=1,
             cross_attention_dim=32, down_block_types=u["down_block_types"],
             conditioning_embedding_out_channels=[16, 32])  # one 2x downsampling = the tiny VAE factor
    (tmp_path / "cn").mkdir()
    info = build_random_model(cn, tmp_path / "cn", seed=0)
    gen = ControlNetGenerator.from_pretrained(str(tmp_path / "sd"), str(tmp_path / "cn"), device="cpu")
    assert sum(p.numel() for p in gen.pipe.controlnet.parameters()) == info["parameters"]["controlnet"]
    out = gen(torch.zeros(1, 1, 32, 32), "a car", num_inference_steps=2)
    assert out.images.shape == (1, 3, 32, 32)

    clip = model_config("clip-vit-b-32")
    m = clip["components"]["model"]["config"]
    _shrink_text(m["text_config"])
    m["vision_config"].update(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=32, patch_size=8)
    m["projection_dim"] = 16
    clip["components"]["image_processor"]["config"].update(size={"shortest_edge": 32},
                                                           crop_size={"height": 32, "width": 32})
    clip["components"]["tokenizer"]["layout"]["model_max_length"] = 16
    (tmp_path / "clip").mkdir()
    info = build_random_model(clip, tmp_path / "clip", seed=0)
    scorer = CLIPScorer.from_pretrained(str(tmp_path / "clip"))
    assert scorer.image_size == 32 and scorer.embed_dim == 16
    assert sum(p.numel() for p in scorer.model.parameters()) == info["parameters"]["model"]
    assert scorer.score(torch.zeros(2, 3, 40, 40), "a face").shape == (2,)


def test_eg3d_snapshot_loads_through_the_official_pickle_loader(tmp_path):
    """A scaled-down EG3D config (official kwargs: 128 px, 2X SR, narrow channels) written by build_random_model
    reads back through load_generator's safe pickle path with identical weights and renders."""
    from adapt3d.cameras import camera_label
    from adapt3d.models.loading import load_generator
    from adapt3d.testing.full_size import EG3D_SNAPSHOT
    cfg = model_config("eg3d-shapenet128")
    g, d = cfg["components"]["G"], cfg["components"]["D"]
    g["init_kwargs"].update(channel_base=1024, channel_max=32)
    g["init_kwargs"]["rendering_kwargs"].update(depth_resolution=6, depth_resolution_importance=6)
    g["attributes"]["neural_rendering_resolution"] = 32
    d["init_kwargs"].update(channel_base=1024, channel_max=32)
    info = build_random_model(cfg, tmp_path, seed=1)
    assert info["parameters"] == parameter_counts(cfg)
    loaded = load_generator(checkpoint=str(tmp_path / EG3D_SNAPSHOT), load_discriminator=True)
    assert loaded.source["format"] == "eg3d-pickle"
    G, D = loaded.generator, loaded.discriminator
    assert G.config.channel_base == 1024 and G.neural_rendering_resolution == 32
    assert sum(p.numel() for p in G.parameters()) == info["parameters"]["G"]
    assert sum(p.numel() for p in D.parameters()) == info["parameters"]["D"]
    again = random_component(g, seed=0)  # another build differs: the file holds the seeded weights
    assert not torch.equal(again.decoder.net[0].weight, G.decoder.net[0].weight)
    c = camera_label(1.6, 1.5, radius=1.7, pivot=[0, 0, 0], fov_deg=49.134)
    with torch.no_grad():
        out = G(torch.randn(1, 512, generator=torch.Generator().manual_seed(0)), c, noise_mode="const",
                sampling="deterministic")
        logits = D({"image": out.image, "image_raw": out.image_raw}, c)
    assert out.image.shape == (1, 3, 128, 128) and torch.isfinite(logits).all()


def test_official_pickle_writer_round_trips_weights_and_renders(tmp_path):
    from adapt3d.cameras import camera_label
    from adapt3d.models.eg3d_convert import load_official_pickle
    from adapt3d.testing.full_size import empty_components
    from adapt3d.testing.official_pickle import write_eg3d_snapshot
    cfg = model_config("eg3d-shapenet128")
    g_kwargs = dict(cfg["components"]["G"]["init_kwargs"], channel_base=512, channel_max=16)
    g_kwargs["rendering_kwargs"] = dict(g_kwargs["rendering_kwargs"], depth_resolution=4, depth_resolution_importance=4)
    spec = {"class": "TriPlaneGenerator", "init_kwargs": g_kwargs, "attributes": {"neural_rendering_resolution": 16}}
    torch.manual_seed(0)
    from adapt3d.testing.full_size import _construct
    G = _construct(spec).eval()
    path = write_eg3d_snapshot(tmp_path / "net.pkl", G, g_kwargs)
    G2, D2, notes = load_official_pickle(path)
    assert D2 is None and any("no discriminator" in n for n in notes)
    sa, sb = G.state_dict(), G2.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert set(sa) == set(empty_components({"kind": "eg3d", "components": {"G": spec}})["G"].state_dict())
    c = camera_label(1.6, 1.5, radius=1.7, pivot=[0, 0, 0], fov_deg=49.134)
    z = torch.randn(1, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = G(z, c, noise_mode="const", sampling="deterministic").image
        y = G2(z, c, noise_mode="const", sampling="deterministic").image
    assert torch.equal(x, y)


def test_ensure_caches_atomically_and_refuses_another_seed(tmp_path, monkeypatch):
    import adapt3d.testing.full_size as fs
    calls = []

    def fake_build(config, folder, seed, device="cpu"):
        calls.append(seed)
        (folder / fs.EG3D_SNAPSHOT).write_bytes(b"x")
        return {"parameters": {}}

    monkeypatch.setattr(fs, "build_random_model", fake_build)
    p = ensure_full_size_model("eg3d-shapenet128", root=tmp_path, seed=5)
    assert p == full_size_location("eg3d-shapenet128", tmp_path) and p.name == fs.EG3D_SNAPSHOT
    assert is_full_size_model(p.parent, "eg3d-shapenet128") and not is_full_size_model(p.parent, "sd15")
    assert ensure_full_size_model("eg3d-shapenet128", root=tmp_path, seed=5) == p and calls == [5]
    with pytest.raises(ValueError, match="built with seed 5, not 0"):
        ensure_full_size_model("eg3d-shapenet128", root=tmp_path, seed=0)
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]  # no temporary folder left


def test_clip_bpe_conversion_uses_clips_token_order(tmp_path):
    """A synthetic BPE file of CLIP's size: byte tokens and specials must get CLIP's ids (order bug -> wrong ids)."""
    from adapt3d.testing.clip_vocab import CLIP_VOCAB_SIZE, clip_bpe_tokenizer
    from adapt3d.diffusion.tiny_models import _bytes_to_unicode
    chars = sorted(_bytes_to_unicode().values())
    merges = [f"{a} {b}" for a, b in itertools.islice(itertools.product(chars, chars), 48894)]  # no "</w>" merges
    path = tmp_path / "bpe.txt.gz"
    path.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8")))
    tok = clip_bpe_tokenizer(path, pad_token="!")
    assert len(tok) == CLIP_VOCAB_SIZE and tok.pad_token_id == 0
    # CLIP: "a</w>" = 256 + index of "a" among the printable bytes (64) = 320; specials 49406 / 49407.
    assert tok("a").input_ids == [49406, 320, 49407]
    with pytest.raises(ValueError, match="expected CLIP's 49408"):
        short = tmp_path / "short.txt.gz"
        short.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(merges[:10])).encode()))
        clip_bpe_tokenizer(short)


def test_configs_are_plain_copies():
    a = model_config("sd15")
    a["components"]["unet"]["config"]["sample_size"] = 1
    assert model_config("sd15")["components"]["unet"]["config"]["sample_size"] == 64
    assert copy.deepcopy(model_config("sd15")) == model_config("sd15")
    with pytest.raises(ValueError, match="kind"):
        model_names("gan")


def test_build_command_builds_each_named_model_once_and_prints_where(tmp_path, monkeypatch, capsys):
    """`python -m adapt3d.testing.full_size NAME --root DIR --seed N`: what users run to get a full-size-random model
    (a root or seed not passed through, or a rebuild on the second call, fails here)."""
    import adapt3d.testing.full_size as fs
    calls = []

    def fake_build(config, folder, seed, device="cpu"):
        calls.append((config["name"], seed, device))
        (folder / fs.EG3D_SNAPSHOT).write_bytes(b"x")
        return {"parameters": {}}

    monkeypatch.setattr(fs, "build_random_model", fake_build)
    for _ in range(2):
        assert fs.main(["eg3d-shapenet128", "--root", str(tmp_path), "--seed", "3"]) == 0
    assert calls == [("eg3d-shapenet128", 3, "cpu")]
    where = tmp_path / "eg3d-shapenet128" / fs.EG3D_SNAPSHOT
    assert capsys.readouterr().out.splitlines() == [f"eg3d-shapenet128: {where}"] * 2


@pytest.mark.parametrize("argv,message", [
    (["sd3"], "NAME: unknown model(s) ['sd3']; choose from clip-vit-b-16"),
    (["sd15", "--device", "cuda"] if not torch.cuda.is_available() else ["sd15", "--device", "tpu"],
     "CUDA is not available here" if not torch.cuda.is_available() else "--device: 'tpu' is not supported"),
])
def test_build_command_refuses_bad_input_in_one_line_before_building(tmp_path, monkeypatch, argv, message):
    import adapt3d.testing.full_size as fs
    monkeypatch.setattr(fs, "build_random_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(SystemExit) as e:
        fs.main(argv + ["--root", str(tmp_path)])
    assert message in str(e.value) and "\n" not in str(e.value)
