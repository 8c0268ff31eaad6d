"""DATID-3D's cat/fox models: the SuperresolutionHybrid8XDC_afhq head, loaded from an official-format pickle made by
DATID-3D's own code (tests/fixtures/eg3d/README.md), reproduces that code's outputs."""

import lzma
from pathlib import Path

import pytest
import torch

from adapt3d.models.eg3d_convert import (check_superresolution_module, generator_config_from_official,
                                         load_official_pickle)
from adapt3d.models.eg3d_pickle import EG3DCheckpointError, load_eg3d_pickle
from adapt3d.models.superresolution import SuperResolution

FIXTURES = Path(__file__).parent / "fixtures" / "eg3d"
TOL = 1e-4


@pytest.fixture(scope="module")
def cat_pickle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cat") / "cat512_tiny.pkl"
    path.write_bytes(lzma.decompress((FIXTURES / "cat512_tiny.pkl.xz").read_bytes()))
    return path


@pytest.fixture(scope="module")
def official(cat_pickle):
    torch.set_num_threads(1)
    G, D, notes = load_official_pickle(cat_pickle)
    ref = torch.load(FIXTURES / "cat512_tiny.reference.pt", weights_only=True)
    return G, D, ref


def maxdiff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_the_pickle_is_read_with_its_by_reference_sr_class_and_no_filter_buffer(cat_pickle):
    pkl = load_eg3d_pickle(cat_pickle)
    rec = pkl.G_ema
    assert rec.children_classes["superresolution"] == "SuperresolutionHybrid8XDC_afhq"
    assert rec.attributes["rendering_kwargs"]["superresolution_module"] == \
        "training.superresolution.SuperresolutionHybrid8XDC_afhq"
    assert rec.attributes["neural_rendering_resolution"] == 77
    assert "superresolution.resample_filter" not in rec.state_dict  # 8X has it, 8XDC_afhq does not
    assert rec.state_dict["superresolution.block0.conv0.weight"].shape == (128, 32, 3, 3)  # 8X's channels
    assert rec.state_dict["superresolution.block1.conv1.weight"].shape == (64, 64, 3, 3)


def test_loaded_generator_is_the_pickled_one_key_for_key(cat_pickle, official):
    G, _, ref = official
    rec = load_eg3d_pickle(cat_pickle).G_ema
    sd = G.state_dict()
    assert list(sd) == list(rec.state_dict)
    assert all(torch.equal(sd[k], rec.state_dict[k]) for k in sd)
    assert G.rendering.superresolution_module == "SuperresolutionHybrid8XDC_afhq"
    assert G.rendering.avg_camera_pivot == [0, 0, -0.06]
    assert G.neural_rendering_resolution == ref["neural_rendering_resolution"] == 77


@pytest.mark.parametrize("index", [0, 1])
def test_outputs_match_datid3d_code(official, index):
    # Sample 0 renders at the pickle's 77 px (SR resizes to 128 with antialiasing), sample 1 at 128 (no resize).
    G, D, ref = official
    s = ref["samples"][index]
    with torch.no_grad():
        ws = G.mapping(s["z"], s["c_cond"], s["truncation_psi"], s["truncation_cutoff"])
        assert maxdiff(ws, s["w"][:, None].expand_as(ws)) <= TOL
        nrr = None if index == 0 else s["neural_rendering_resolution"]
        out = G.synthesis(ws, s["c"], neural_rendering_resolution=nrr, noise_mode="const", sampling="deterministic")
        logits = D({"image": out.image, "image_raw": out.image_raw}, s["c"])
    assert out.image_raw.shape[-1] == s["neural_rendering_resolution"]
    k, (y0, x0), n = s["image_stride"], s["image_crop_origin"], s["image_crop"].shape[-1]
    assert maxdiff(out.image[..., ::k, ::k], s["image_sub"]) <= TOL
    assert maxdiff(out.image[..., y0:y0 + n, x0:x0 + n], s["image_crop"]) <= TOL
    assert abs(out.image.double().mean().item() - s["image_mean"]) <= 1e-6
    assert abs(out.image.double().std().item() - s["image_std"]) <= 1e-6
    r = s["raw_stride"]
    assert maxdiff(out.image_raw[..., ::r, ::r], s["image_raw_sub"]) <= TOL
    assert maxdiff(out.image_depth[..., ::r, ::r], s["image_depth_sub"]) <= TOL
    assert maxdiff(logits, s["d_logits"]) <= TOL


def test_sr_head_differs_from_8xdc_and_equals_8x_without_its_buffer():
    # Same weights through 8X and 8XDC_afhq give the same image; 8XDC has other channel counts.
    torch.manual_seed(0)
    kw = dict(channels=32, img_resolution=128, sr_num_fp16_res=4, sr_antialias=True, w_dim=16)
    a = SuperResolution("SuperresolutionHybrid8XDC_afhq", **kw).eval()
    b = SuperResolution("SuperresolutionHybrid8X", **kw).eval()
    assert "resample_filter" in b.state_dict() and "resample_filter" not in a.state_dict()
    b.load_state_dict({**a.state_dict(), "resample_filter": b.resample_filter}, strict=True)
    rgb, x, ws = torch.randn(1, 3, 20, 20), torch.randn(1, 32, 20, 20), torch.randn(1, 3, 16)
    with torch.no_grad():
        assert torch.equal(a(rgb, x, ws, noise_mode="none")[0], b(rgb, x, ws, noise_mode="none")[0])
    c = SuperResolution("SuperresolutionHybrid8XDC", **kw)
    assert c.block0.conv0.weight.shape[0] == 256 and a.block0.conv0.weight.shape[0] == 128


@pytest.mark.parametrize("value", ["training.superresolution.SuperresolutionHybrid16X", "SuperresolutionFoo",
                                   "evil.module.SuperresolutionHybrid8X", None])
def test_unknown_superresolution_module_is_refused_naming_argument_and_value(cat_pickle, value):
    rec = load_eg3d_pickle(cat_pickle).G_ema
    attrs = dict(rec.attributes, rendering_kwargs=dict(rec.attributes["rendering_kwargs"],
                                                       superresolution_module=value))
    with pytest.raises(EG3DCheckpointError) as e:
        generator_config_from_official(rec.init_kwargs, attrs, where="x.pkl")
    msg = str(e.value)
    assert "superresolution_module" in msg and repr(value) in msg and "SuperresolutionHybrid8XDC_afhq" in msg


def test_check_superresolution_module_accepts_dotted_and_bare_names():
    assert check_superresolution_module("training.superresolution.SuperresolutionHybrid8XDC_afhq") == \
        "SuperresolutionHybrid8XDC_afhq"
    assert check_superresolution_module("SuperresolutionHybrid2X") == "SuperresolutionHybrid2X"



def test_user_renders_a_datid3d_cat_model_by_its_known_name(cat_pickle, tmp_path, monkeypatch, capsys):
    # As a user: the file in the download cache under its released name, then `adapt3d render --checkpoint NAME`.
    from adapt3d.cli.main import main
    cache = tmp_path / "cache"
    (cache / "checkpoints").mkdir(parents=True)
    (cache / "checkpoints" / "cat-cat_in_Zootopia.pkl").write_bytes(cat_pickle.read_bytes())
    monkeypatch.setenv("ADAPT3D_CACHE", str(cache))
    monkeypatch.setenv("ADAPT3D_CPU_KERNELS", "off")  # a new cache would rebuild the C++ kernels (minutes)
    rc = main(["render", "--checkpoint", "datid3d-cat_in_Zootopia", "--seeds", "0", "--out", str(tmp_path / "r"),
               "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "r" / "seed0000.png").is_file()
    out = capsys.readouterr().out
    assert "differs" not in out and "expected" not in out  # the file is what the name stands for
