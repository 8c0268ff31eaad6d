"""adapt3d export: a plain state dict with exactly the official G_ema's names, values and buffers, loadable the way
DATID-3D's gen_samples.py / gen_videos.py --model_is_state_dict do (load_state_dict(torch.load(f), strict=False)
into the base model's G_ema)."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest
import torch

from adapt3d.cameras import frontal_label
from adapt3d.cli.main import main
from adapt3d.export.state_dict import base_for, check_against_base
from adapt3d.models.checkpoint import save_checkpoint
from adapt3d.models.eg3d_pickle import load_eg3d_pickle
from adapt3d.models.known_models import known_model_config
from adapt3d.models.triplane import TriPlaneGenerator, build_generator, preset_config
from adapt3d.pipelines.export import ExportConfig, _commands, run
from conftest import fixture_path

LOCAL = Path(__file__).parent / "fixtures" / "eg3d"


def _pickle(name: str, tmp_path: Path) -> Path:
    if name == "cat512_tiny":
        path = tmp_path / "cat512_tiny.pkl"
        path.write_bytes(lzma.decompress((LOCAL / "cat512_tiny.pkl.xz").read_bytes()))
        return path
    return fixture_path(f"{name}.pkl")


@pytest.mark.parametrize("name", ["ffhq512_tiny", "shapenet128_tiny", "cat512_tiny"])
def test_export_is_the_official_g_ema_state_dict_key_for_key_and_value_for_value(name, tmp_path):
    pkl = _pickle(name, tmp_path)
    result = run(ExportConfig(checkpoint=str(pkl), out=tmp_path / "g.pt", base="none", progress=False))
    exported = torch.load(result.out, weights_only=True)  # plain tensors only: loads without unpickling code
    reference = load_eg3d_pickle(pkl).G_ema.state_dict  # read from the official-format pickle, as data
    assert list(exported) == list(reference)  # same names, same order, nothing missing or extra
    for key, value in reference.items():
        assert type(exported[key]) is torch.Tensor and exported[key].dtype == torch.float32, key
        assert torch.equal(exported[key], value), key
    for buffer in ("dataset_label_std", "backbone.mapping.w_avg", "backbone.synthesis.b4.conv1.noise_const",
                   "backbone.synthesis.b8.resample_filter"):
        assert buffer in exported
    meta = json.loads((tmp_path / "g.pt.json").read_text())
    assert meta["num_tensors"] == len(reference) == result.num_tensors


def test_scripts_load_the_file_into_the_base_g_ema_and_get_the_adapted_generator(tmp_path):
    # DATID-3D: G = base pickle's G_ema; G.load_state_dict(torch.load(file), strict=False). Emulated with our own
    # module for the base (same names), an "adapted" generator with other weights, and --base none (tiny sizes).
    base = build_generator("tiny", seed=0).eval()
    adapted = build_generator("tiny", seed=1).eval()
    adapted.backbone.mapping.w_avg.normal_()
    adapted.dataset_label_std.uniform_(0.5, 1.0)
    folder = save_checkpoint(tmp_path / "adapted", adapted)
    out = run(ExportConfig(checkpoint=str(folder), out=tmp_path / "a.pt", base="none", progress=False)).out
    keys = base.load_state_dict(torch.load(out), strict=False)
    assert keys.missing_keys == [] and keys.unexpected_keys == []
    z, c = torch.randn(1, base.z_dim), frontal_label(2.7, [0, 0, 0.2], 18.837, batch_size=1)
    with torch.no_grad():
        a = adapted(z, c, noise_mode="const", sampling="deterministic")
        b = base(z, c, noise_mode="const", sampling="deterministic")
    assert torch.equal(a.image, b.image)
    for k, v in adapted.state_dict().items():
        assert torch.equal(base.state_dict()[k], v), k


def _meta(config) -> TriPlaneGenerator:
    with torch.device("meta"):
        return TriPlaneGenerator(config)


def test_base_check_accepts_full_size_models_and_refuses_what_strict_false_would_hide():
    ffhq = _meta(preset_config("ffhq512")).state_dict()
    assert check_against_base(ffhq, "ffhq") == ([], [])
    cat = _meta(known_model_config("datid3d-cat_in_Zootopia").generator_config()).state_dict()
    errors, notes = check_against_base(cat, "afhq")  # 8XDC_afhq into afhqcats512-128.pkl (8X)
    assert errors == [] and len(notes) == 1 and "superresolution.resample_filter" in notes[0]
    errors, _ = check_against_base(cat, "ffhq")  # a cat model into the FFHQ pickle: other SR channels
    assert len(errors) == 1 and "other shapes" in errors[0] and "superresolution.block0" in errors[0]
    renamed = {("renamed." + k if k.startswith("decoder.") else k): v for k, v in ffhq.items()}
    errors, _ = check_against_base(renamed, "ffhq")
    assert any("would be ignored" in e for e in errors) and any("keep the base model's values" in e for e in errors)
    errors, _ = check_against_base(_meta(preset_config("tiny")).state_dict(), "ffhq")
    assert any("other shapes" in e for e in errors)


def test_base_and_commands_for_cat_and_ffhq_models(tmp_path):
    assert base_for(_meta(known_model_config("datid3d-fox_in_Zootopia").generator_config())) == "afhq"
    assert base_for(_meta(preset_config("ffhq512"))) == "ffhq"
    assert base_for(_meta(preset_config("shapenet128"))) == "shapenet"
    cmds = _commands(tmp_path / "fox.pt", "cat", "afhq", 77)
    assert "afhqcats512-128.pkl" in cmds[0]
    assert all("--model_is_state_dict True --generator_type cat" in c for c in cmds[1:])
    assert "gen_samples.py" in cmds[1] and "gen_videos.py" in cmds[2] and "--nrr 77" in cmds[2]


def test_cli_export_checks_inputs_and_names_the_option(tmp_path, capsys):
    folder = save_checkpoint(tmp_path / "tiny", build_generator("tiny", seed=0))
    out = tmp_path / "t.pt"
    assert main(["export", "--checkpoint", str(folder), "--out", str(out)]) == 2  # tiny is not an EG3D model size
    err = capsys.readouterr().err
    assert "ffhqrebalanced512-128.pkl" in err and "--base none" in err and not out.exists()
    assert main(["export", "--checkpoint", str(folder), "--out", str(out), "--base", "none"]) == 0
    assert out.is_file() and (tmp_path / "t.pt.json").is_file()
    assert main(["export", "--checkpoint", str(folder), "--out", str(out), "--base", "none"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(folder), "--out", str(tmp_path / "t.pkl"), "--base", "none"]) == 2
    assert "state dict, not a network pickle" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
