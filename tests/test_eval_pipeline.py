"""``adapt3d eval`` (adapt3d.pipelines.evaluate) end to end on tiny models, offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.metrics.lpips import LPIPSWeightsNotFoundError
from adapt3d.pipelines.evaluate import EvalConfig, run
from adapt3d.testing.fixtures import tiny_models  # noqa: F401  (session fixture)
from test_metrics_lpips import _write_official_files
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
    return {"source": src, "adapted": ad, "reference": ref, "vgg": vgg, "heads": heads}


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
                         lpips_vgg_weights=str(checkpoints["vgg"]), lpips_heads_weights=str(checkpoints["heads"]),
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
        (EvalConfig(preset="tiny", fid_feature="inception", out=out), "torch-fidelity"),
        (EvalConfig(preset="tiny", view_yaws_deg=(0.0,), out=out), "--view-yaws-deg"),
        (EvalConfig(preset="tiny", num_samples=1, out=out), "--num-samples"),
        (EvalConfig(preset="nope", out=out), "--preset"),
    ]
    for cfg, flag in cases:
        if flag == "torch-fidelity" and __import__("importlib").util.find_spec("torch_fidelity"):
            continue
        with pytest.raises(ValueError, match=flag):
            run(cfg)
    # A real run never falls back to random LPIPS weights: the error names both files.
    with pytest.raises(LPIPSWeightsNotFoundError, match="vgg16-397923af.pth") as e:
        run(EvalConfig(generator=ck, source=ck, prompt="x", clip_model=str(tiny_models["clip"]), out=out))
    assert "vgg.pth" in str(e.value)
    assert not (out / "metrics.json").exists() and not (out / "samples").exists()


def test_cli_flags_parse(tmp_path):
    import tyro

    cfg = tyro.cli(EvalConfig, args=["--preset", "tiny", "--out", str(tmp_path), "--view-yaws-deg", "-10", "0",
                                     "10", "--metrics", "clip", "view", "--num-samples", "4"])
    assert cfg.view_yaws_deg == (-10.0, 0.0, 10.0) and cfg.metrics == ("clip", "view") and cfg.num_samples == 4
    assert isinstance(cfg.out, Path) and torch.is_tensor(torch.tensor(cfg.view_yaws_deg))
