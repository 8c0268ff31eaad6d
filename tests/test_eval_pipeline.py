"""``adapt3d eval`` (adapt3d.pipelines.evaluate) end to end on tiny models, offline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.metrics.inception import InceptionWeightsNotFoundError
from adapt3d.metrics.lpips import LPIPSWeightsNotFoundError
from adapt3d.models.hub import ChecksumMismatchError
from adapt3d.pipelines.evaluate import EvalConfig, run
from adapt3d.testing.fixtures import tiny_models  # noqa: F401  (session fixture)
from test_metrics_lpips import _write_official_alex_files, _write_official_files
from test_metrics_report import parse_refs

SMALL = dict(num_samples=6, view_num_samples=1, grid_samples=2, kid_subsets=5, batch_size=6, progress=False)


@pytest.fixture
def cache(tiny_models, tmp_path_factory, monkeypatch):  # noqa: F811
    """ADAPT3D_CACHE whose tiny-models/ is the session's tiny models (so --clip-model tiny needs no rebuild) and
    whose checkpoints/ holds no LPIPS weights."""
    root = Path(tiny_models["clip"]).parent.parent
    monkeypatch.setenv("ADAPT3D_CACHE", str(root))
    assert not (root / "checkpoints" / "vgg16-397923af.pth").exists()
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from adapt3d.models.checkpoint import save_checkpoint
    from adapt3d.models.triplane import build_generator

    root = tmp_path_factory.mktemp("eval_ckpt")
    src = save_checkpoint(root / "source", build_generator("tiny", seed=0), metadata={"name": "source"})
    ad = save_checkpoint(root / "adapted", build_generator("tiny", seed=1), metadata={"name": "adapted"})
    ref = root / "reference"
    ref.mkdir()
    g = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(g.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(ref / f"{i:03d}.png")
    vgg, heads, _, _ = _write_official_files(root)
    alex, alex_heads, _, _ = _write_official_alex_files(root)
    return {"source": src, "adapted": ad, "reference": ref, "vgg": vgg, "heads": heads, "alex": alex,
            "alex_heads": alex_heads}


def _load(path: Path) -> dict:
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=reject)


def _check_report(out: Path) -> None:
    refs = parse_refs(out / "report.html")
    images = [r for r in refs.refs if r.endswith(".png")]
    assert len(images) >= 4 and refs.svgs >= 3
    assert all((out / r).is_file() for r in refs.refs)


def test_demo_writes_report_and_reruns_identically(cache, tmp_path):
    out = tmp_path / "demo"
    res = run(EvalConfig(preset="tiny", out=out, **SMALL))
    m = _load(out / "metrics.json")
    assert res.metrics_path == out / "metrics.json" and res.report_path == out / "report.html"
    _check_report(out)
    assert m["models"]["lpips_random_weights"] is True and m["models"]["clip"] == "tiny"
    assert any("LPIPS uses RANDOM weights" in w and "MEANINGLESS" in w for w in m["warnings"])
    assert "MEANINGLESS" in (out / "report.html").read_text()
    assert m["seeds"] == list(range(6)) and m["versions"]["torch"]
    mm = m["metrics"]
    assert set(mm) == {"clip_score", "directional_clip", "diversity", "view_consistency", "fid"}
    d = mm["directional_clip"]  # the demo compares the tiny generator with itself
    assert d["mean"] == 0.0 and d["num_undefined"] == 6
    assert mm["fid"]["adapted"]["fid"] < 1e-6 and mm["fid"]["reference"] == "source samples"
    assert -1 <= mm["clip_score"]["adapted"]["mean"] <= 1
    assert mm["view_consistency"]["adapted"]["raw"]["mean_abs"] >= 0
    assert mm["diversity"]["adapted"]["intra_cluster_lpips"]["mean"] >= 0

    again = run(EvalConfig(preset="tiny", out=tmp_path / "demo2", **SMALL))  # fresh renders, same seeds
    assert again.metrics["metrics"] == mm == _load(tmp_path / "demo2" / "metrics.json")["metrics"]
    png = out / "samples" / "adapted" / "seed000000.png"
    stamp = png.stat().st_mtime_ns
    resumed = run(EvalConfig(preset="tiny", out=out, **SMALL))  # reuses the cached renders
    assert png.stat().st_mtime_ns == stamp and resumed.metrics["metrics"] == mm


def test_real_run_with_checkpoints_reference_and_weight_files(cache, checkpoints, tiny_models, tmp_path):  # noqa
    out = tmp_path / "real"
    res = run(EvalConfig(generator=str(checkpoints["adapted"]), source=str(checkpoints["source"]),
                         prompt="a zombie face", clip_model=str(tiny_models["clip"]),
                         lpips_net="vgg", lpips_vgg_weights=str(checkpoints["vgg"]),
                         lpips_heads_weights=str(checkpoints["heads"]), fid_feature="clip",
                         reference=str(checkpoints["reference"]), out=out, **SMALL))
    m = _load(out / "metrics.json")
    assert m["models"]["lpips_random_weights"] is False and m["models"]["lpips"]["weights"] == "pretrained"
    assert m["models"]["adapted"]["metadata"]["name"] == "adapted"
    assert not any("LPIPS uses RANDOM" in w for w in m["warnings"])
    mm = m["metrics"]
    assert mm["directional_clip"]["num_undefined"] == 0 and mm["directional_clip"]["std"] > 0
    assert mm["fid"]["reference"] == str(checkpoints["reference"])
    assert mm["fid"]["adapted"]["num_real"] == 5 and mm["fid"]["adapted"]["fid"] > 0
    assert mm["fid"]["source"]["fid"] != mm["fid"]["adapted"]["fid"]
    div = mm["diversity"]
    assert div["source"]["intra_cluster_lpips"]["mean"] != div["adapted"]["intra_cluster_lpips"]["mean"]
    assert (out / "samples" / "source" / "seed000005.png").is_file()
    _check_report(out)
    assert res.seconds > 0


def test_errors_name_the_flag_before_any_model_is_built(cache, checkpoints, tiny_models, tmp_path):  # noqa: F811
    out = tmp_path / "err"
    ck = str(checkpoints["source"])
    cases = [
        (EvalConfig(out=out), "--generator"),
        (EvalConfig(generator=ck, source=ck, out=out), "--prompt"),
        (EvalConfig(generator="no/such/folder", source=ck, prompt="x", out=out), "--generator"),
        (EvalConfig(preset="tiny", metrics=("clip", "bogus"), out=out), "--metrics"),
        (EvalConfig(preset="tiny", reference=str(tmp_path / "missing"), out=out), "--reference"),
        (EvalConfig(preset="tiny", lpips_vgg_weights="vgg16.pth", out=out), "--lpips-vgg-weights.*--lpips-net"),
        (EvalConfig(preset="tiny", lpips_net="vgg", lpips_alex_sha256="0" * 64, out=out), "--lpips-alex-sha256"),
        (EvalConfig(preset="tiny", lpips_resolution=24, out=out), "--lpips-resolution"),
        (EvalConfig(preset="tiny", inception_sha256="abc", out=out), "--inception-sha256"),
        (EvalConfig(preset="tiny", fid_feature="clip", inception_weights="x.pth", out=out), "--inception-weights"),
        (EvalConfig(preset="tiny", fid_inception_preprocess="pytorch-fid", out=out), "--fid-inception-preprocess"),
        (EvalConfig(preset="tiny", view_yaws_deg=(0.0,), out=out), "--view-yaws-deg"),
        (EvalConfig(preset="tiny", num_samples=1, out=out), "--num-samples"),
        (EvalConfig(preset="nope", out=out), "--preset"),
    ]
    for cfg, flag in cases:
        with pytest.raises(ValueError, match=flag):
            run(cfg)
    # A real run never falls back to random LPIPS weights: the error names both files of --lpips-net (alex).
    real = dict(generator=ck, source=ck, prompt="x", clip_model=str(tiny_models["clip"]), out=out)
    with pytest.raises(LPIPSWeightsNotFoundError, match="alexnet-owt-7be5be79.pth") as e:
        run(EvalConfig(metrics=("clip", "diversity"), **real))
    assert "alex.pth" in str(e.value)
    with pytest.raises(LPIPSWeightsNotFoundError, match="vgg16-397923af.pth"):
        run(EvalConfig(metrics=("diversity",), lpips_net="vgg", **real))
    # FID defaults to Inception features: a missing file is named, with the way out.
    with pytest.raises(InceptionWeightsNotFoundError, match="pt_inception-2015-12-05-6726825d.pth.*--fid-feature "
                                                           "clip"):
        run(EvalConfig(metrics=("fid",), **real))
    with pytest.raises(InceptionWeightsNotFoundError, match="pt_inception"):  # also when asked for in a demo
        run(EvalConfig(preset="tiny", fid_feature="inception", out=out))
    with pytest.raises(ChecksumMismatchError, match="expected 0000"):  # a wrong file fails before rendering
        run(EvalConfig(metrics=("fid",), inception_weights=str(checkpoints["heads"]), inception_sha256="0" * 64,
                       **real))
    assert not (out / "metrics.json").exists() and not (out / "samples").exists()


def test_inception_fid_and_alex_lpips_in_eval(cache, checkpoints, tmp_path, monkeypatch):
    """The defaults of a real run: FID/KID on Inception features (recorded with the weights' sha256) and
    LPIPS-alex; the numbers equal the library computed directly on the same images. (The network input is shrunk
    to 96 px to keep this wiring test fast; test_metrics_inception checks the real 299 px pipeline.)"""
    from adapt3d.metrics import fid, inception
    from test_metrics_inception import GOLDEN, golden_state_dict

    monkeypatch.setattr(inception, "INCEPTION_SIZE", 96)

    with np.load(GOLDEN, allow_pickle=False) as f:
        layout = [(k, tuple(s)) for k, s in json.loads(str(f["layout"]))]
    weights = tmp_path / "pt_inception-test.pth"
    torch.save(golden_state_dict(layout), weights)
    out = tmp_path / "inc"
    run(EvalConfig(generator=str(checkpoints["adapted"]), source=str(checkpoints["source"]), prompt="a zombie",
                   clip_model="tiny", metrics=("fid", "diversity"), inception_weights=str(weights),
                   lpips_alex_weights=str(checkpoints["alex"]), lpips_heads_weights=str(checkpoints["alex_heads"]),
                   reference=str(checkpoints["reference"]), max_reference_images=2, out=out,
                   **{**SMALL, "num_samples": 2, "kid_subsets": 3}))
    m = _load(out / "metrics.json")
    fd = m["metrics"]["fid"]
    assert fd["feature"] == "inception" and fd["adapted"]["feature"] == "inception"
    assert fd["extractor"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert fd["extractor"]["published_weights"] is False and fd["extractor"]["preprocess"] == "tensorflow"
    assert any("not the published file" in n for n in m["notes"])
    assert m["models"]["lpips"]["net"] == "alex" and m["models"]["lpips"]["alexnet"] == str(checkpoints["alex"])
    samples = torch.stack([torch.from_numpy(np.array(Image.open(out / "samples" / "adapted" / f"seed{i:06d}.png")
                                                     )).permute(2, 0, 1) for i in range(2)])
    ref = torch.cat(list(fid.load_reference_images(checkpoints["reference"], samples.shape[-1], 2)))
    direct = fid.compute_fid_kid(inception.load_inception(weights), ref, samples, kid_subsets=3, kid_subset_size=1000)
    assert fd["adapted"]["fid"] == pytest.approx(direct.fid, rel=1e-6) and fd["adapted"]["num_real"] == 2
    assert fd["adapted"]["kid_mean"] == pytest.approx(direct.kid_mean, rel=1e-6)
    assert "FD (inception)" in (out / "report.html").read_text()


def test_cli_flags_parse(tmp_path):
    import tyro

    cfg = tyro.cli(EvalConfig, args=["--preset", "tiny", "--out", str(tmp_path), "--view-yaws-deg", "-10", "0",
                                     "10", "--metrics", "clip", "view", "--num-samples", "4"])
    assert cfg.view_yaws_deg == (-10.0, 0.0, 10.0) and cfg.metrics == ("clip", "view") and cfg.num_samples == 4
    assert isinstance(cfg.out, Path) and torch.is_tensor(torch.tensor(cfg.view_yaws_deg))
    assert cfg.fid_feature is None and cfg.lpips_net == "alex" and cfg.fid_inception_preprocess == "tensorflow"
    cfg = tyro.cli(EvalConfig, args=["--out", str(tmp_path), "--fid-feature", "inception", "--inception-weights",
                                     "w.pth", "--fid-inception-preprocess", "pytorch-fid", "--lpips-net", "vgg"])
    assert (cfg.fid_feature, cfg.inception_weights, cfg.fid_inception_preprocess, cfg.lpips_net) == (
        "inception", "w.pth", "pytorch-fid", "vgg")
