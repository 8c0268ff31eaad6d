"""Reading official EG3D network pickles as data (adapt3d.models.eg3d_pickle)."""

from __future__ import annotations

import hashlib
import pickle
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adapt3d.models.eg3d_pickle import (
    EG3DCheckpointError,
    EG3DPickle,
    NetworkRecord,
    UnsafePickleError,
    describe,
    is_forbidden_module,
    load_eg3d_pickle,
)
from conftest import fixture_path

try:
    from . import malicious_pickles as mp
except ImportError:
    import malicious_pickles as mp

@pytest.fixture(scope="module")
def ffhq() -> EG3DPickle:
    return load_eg3d_pickle(fixture_path("ffhq512_tiny.pkl"))


@pytest.fixture(scope="module")
def shapenet() -> EG3DPickle:
    return load_eg3d_pickle(fixture_path("shapenet128_tiny.pkl"))


# --------------------------------------------------------------------------- expected names (facts, Appendix A/B)
def _layer(p: str) -> list[str]:
    return [f"{p}.{n}" for n in ("weight", "noise_strength", "bias", "resample_filter", "noise_const",
                                 "affine.weight", "affine.bias")]


def _torgb(p: str) -> list[str]:
    return [f"{p}.{n}" for n in ("weight", "bias", "affine.weight", "affine.bias")]


def expected_generator_names(sr_resample_filter: bool) -> list[str]:
    names = ["dataset_label_std"]
    for res in (4, 8, 16, 32, 64, 128, 256):
        b = f"backbone.synthesis.b{res}"
        names += [f"{b}.const", f"{b}.resample_filter"] if res == 4 else [f"{b}.resample_filter", *_layer(f"{b}.conv0")]
        names += _layer(f"{b}.conv1") + _torgb(f"{b}.torgb")
    names += ["backbone.mapping.w_avg"] + [f"backbone.mapping.{n}.{w}" for n in ("embed", "fc0", "fc1")
                                           for w in ("weight", "bias")]
    names += ["superresolution.resample_filter"] if sr_resample_filter else []
    for blk in ("block0", "block1"):
        p = f"superresolution.{blk}"
        names += [f"{p}.resample_filter"] + _layer(f"{p}.conv0") + _layer(f"{p}.conv1") + _torgb(f"{p}.torgb")
    return names + [f"decoder.net.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")]


def expected_discriminator_names(img_resolution: int) -> list[str]:
    names = ["resample_filter"]
    res = img_resolution
    while res >= 8:
        b = f"b{res}"
        names.append(f"{b}.resample_filter")
        if res == img_resolution:
            names += [f"{b}.fromrgb.{n}" for n in ("weight", "bias", "resample_filter")]
        for conv in ("conv0", "conv1"):
            names += [f"{b}.{conv}.{n}" for n in ("weight", "bias", "resample_filter")]
        names += [f"{b}.skip.weight", f"{b}.skip.resample_filter"]
        res //= 2
    names += [f"mapping.{n}.{w}" for n in ["embed"] + [f"fc{i}" for i in range(8)] for w in ("weight", "bias")]
    return names + ["b4.conv.weight", "b4.conv.bias", "b4.conv.resample_filter", "b4.fc.weight", "b4.fc.bias",
                    "b4.out.weight", "b4.out.bias"]


def _walk(value):
    yield value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(k)
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)


def _assert_plain(value) -> None:
    for v in _walk(value):
        assert type(v) in (dict, list, tuple, str, int, float, bool, type(None)), type(v)


# ------------------------------------------------------------------------------------------------ fixtures
def test_ffhq_fixture_structure(ffhq: EG3DPickle) -> None:
    assert ffhq.path == fixture_path("ffhq512_tiny.pkl") and ffhq.augment_pipe is None and ffhq.notes == []
    for key in ("G", "G_ema"):
        rec = getattr(ffhq, key)
        assert isinstance(rec, NetworkRecord) and rec.class_name == "TriPlaneGenerator"
        assert list(rec.state_dict) == expected_generator_names(sr_resample_filter=False)
        assert rec.num_tensors == 177
        assert rec.state_dict["dataset_label_std"].shape == (25,)
        assert all(t.dtype == torch.float32 and not t.requires_grad for t in rec.state_dict.values())
        assert rec.init_args == ()
        assert rec.attributes["neural_rendering_resolution"] == 128
        assert rec.attributes["rendering_kwargs"]["superresolution_module"].endswith("SuperresolutionHybrid8XDC")
        assert rec.children_classes["superresolution"] == "SuperresolutionHybrid8XDC"
        assert rec.children_classes["decoder.net.1"] == "Softplus"
        assert rec.children_classes["renderer.ray_marcher"] == "MipRayMarcher2"
        assert rec.module_src_sha256 == hashlib.sha256(
            b"# module source removed from this fixture: adapt3d never executes embedded source.\n").hexdigest()
    kw = ffhq.G_ema.init_kwargs
    assert kw["mapping_kwargs"] == {"num_layers": 2} and type(kw["mapping_kwargs"]) is dict
    assert (kw["z_dim"], kw["w_dim"], kw["c_dim"], kw["img_resolution"]) == (512, 512, 25, 512)
    assert (kw["channel_base"], kw["channel_max"]) == (1024, 32)
    assert ffhq.D.class_name == "DualDiscriminator"
    assert list(ffhq.D.state_dict) == expected_discriminator_names(512) and ffhq.D.num_tensors == 92
    assert ffhq.D.attributes["img_channels"] == 6
    assert ffhq.training_set_kwargs["class_name"] == "training.dataset.ImageFolderDataset"
    # G and G_ema differ (noise added to every parameter), and shapes agree.
    assert not torch.equal(ffhq.G.state_dict["backbone.mapping.fc0.weight"],
                           ffhq.G_ema.state_dict["backbone.mapping.fc0.weight"])
    assert all(ffhq.G.state_dict[k].shape == v.shape for k, v in ffhq.G_ema.state_dict.items())


def test_shapenet_fixture_structure(shapenet: EG3DPickle) -> None:
    g = shapenet.G_ema
    assert list(g.state_dict) == expected_generator_names(sr_resample_filter=True) and g.num_tensors == 178
    assert g.attributes["neural_rendering_resolution"] == 64
    rk = g.attributes["rendering_kwargs"]
    assert rk["white_back"] is True and rk["box_warp"] == 1.6 and rk["c_gen_conditioning_zero"] is True
    assert g.children_classes["superresolution.block0"] == "SynthesisBlockNoUp"
    assert list(shapenet.D.state_dict) == expected_discriminator_names(128) and shapenet.D.num_tensors == 74
    aug = shapenet.augment_pipe
    assert aug.class_name == "AugmentPipe" and list(aug.state_dict) == ["p", "Hz_geom", "Hz_fbank"]
    assert float(aug.state_dict["p"]) == pytest.approx(0.123)
    assert any("augment_pipe" in n and "ignored" in n for n in shapenet.notes)


@pytest.mark.parametrize("which", ["ffhq", "shapenet"])
def test_values_are_plain_python(which: str, request) -> None:
    pkl = request.getfixturevalue(which)
    for rec in (pkl.G, pkl.G_ema, pkl.D, pkl.augment_pipe):
        if rec is not None:
            _assert_plain(rec.init_kwargs)
            _assert_plain(rec.attributes)
            _assert_plain(rec.init_args)
    _assert_plain(pkl.training_set_kwargs)
    text = describe(pkl)
    assert "TriPlaneGenerator" in text and "DualDiscriminator" in text and str(pkl.path) in text


def test_loading_imports_nothing_from_the_pickle(ffhq: EG3DPickle) -> None:
    load_eg3d_pickle(fixture_path("shapenet128_tiny.pkl"))
    assert [m for m in sys.modules if is_forbidden_module(m)] == []


# ------------------------------------------------------------------------ flattening equals nn.Module.state_dict
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(o, i))
        self.bias = torch.nn.Parameter(torch.randn(o))
        self.register_parameter("unused", None)
        self.register_buffer("scratch", torch.ones(3), persistent=False)
        self.register_buffer("filt", torch.arange(4.0))
        self.weight_gain = np.float64(0.25)


class TriPlaneGenerator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("dataset_label_std", torch.rand(25))
        self.head = FullyConnectedLayer(4, 3)
        self.net = torch.nn.Sequential(FullyConnectedLayer(3, 5), torch.nn.Softplus(), FullyConnectedLayer(5, 2))
        self.register_module("missing", None)
        self.neural_rendering_resolution = 16
        self.scale = np.float32(1.5)


def test_flattening_matches_module_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TriPlaneGenerator()
    by_ref = {torch.nn.Sequential: "torch.nn.modules.container.Sequential",
              torch.nn.Softplus: "torch.nn.modules.activation.Softplus"}
    g = mp.persist_tree(model, by_ref)
    g.args[0]["state"]["_init_kwargs"] = {"z_dim": 4, "mapping_kwargs": mp.EasyDictRef(num_layers=2),
                                          "gain": np.float64(2.0)}
    g.args[0]["state"]["_init_args"] = (np.int64(3), "x")
    path = tmp_path / "net.pkl"
    path.write_bytes(mp.dumps(mp.snapshot(G=g, G_ema=g, D=None)))
    pkl = load_eg3d_pickle(path)
    expected = model.state_dict()
    rec = pkl.G_ema
    assert list(rec.state_dict) == list(expected)
    assert all(torch.equal(rec.state_dict[k], v) for k, v in expected.items())
    assert "head.scratch" not in rec.state_dict and "head.unused" not in rec.state_dict
    assert rec.init_kwargs == {"z_dim": 4, "mapping_kwargs": {"num_layers": 2}, "gain": 2.0}
    assert type(rec.init_kwargs["mapping_kwargs"]) is dict and type(rec.init_kwargs["gain"]) is float
    assert rec.init_args == (3, "x") and type(rec.init_args[0]) is int
    assert rec.attributes["neural_rendering_resolution"] == 16
    assert rec.attributes["scale"] == 1.5 and type(rec.attributes["scale"]) is float
    assert rec.children_classes == {"head": "FullyConnectedLayer", "net": "Sequential",
                                    "net.0": "FullyConnectedLayer", "net.1": "Softplus",
                                    "net.2": "FullyConnectedLayer"}
    assert any("no D" in n for n in pkl.notes)


def test_numpy1_scalar_name_is_accepted(tmp_path: Path) -> None:
    scalar = mp.Call(mp.GlobalRef("numpy.core.multiarray", "scalar"), (np.dtype("float64"), struct.pack("<d", 0.25)))
    state = mp.tiny_module_state(weight_gain=scalar)
    path = tmp_path / "np1.pkl"
    path.write_bytes(mp.dumps(mp.snapshot(G_ema=mp.persistent("TriPlaneGenerator", state))))
    assert load_eg3d_pickle(path).G_ema.attributes["weight_gain"] == 0.25


def test_module_file_hint_from_source(tmp_path: Path) -> None:
    src = '"""Tri-plane generator."""\nclass TriPlaneGenerator(torch.nn.Module):\n    pass\n'
    other = '"""Ported from https://github.com/x/y/blob/master/training/networks.py"""\nclass Foo:\n    pass\n'
    g = mp.persistent("TriPlaneGenerator", mp.tiny_module_state(), src)
    d = mp.persistent("Foo", mp.tiny_module_state(), other)
    path = tmp_path / "hint.pkl"
    path.write_bytes(mp.dumps(mp.snapshot(G_ema=g, D=d)))
    pkl = load_eg3d_pickle(path)
    assert pkl.G_ema.module_file_hint == "training/triplane.py"
    assert pkl.D.module_file_hint.endswith("training/networks.py")
    assert pkl.G is None and not any("no G_ema" in n for n in pkl.notes)


# ---------------------------------------------------------------------------------------- classification
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EG3DCheckpointError, match="not found"):
        load_eg3d_pickle(tmp_path / "nope.pkl")
    with pytest.raises(EG3DCheckpointError, match="not a file"):
        load_eg3d_pickle(tmp_path)


def test_truncated_file(tmp_path: Path) -> None:
    data = fixture_path("ffhq512_tiny.pkl").read_bytes()
    path = tmp_path / "half.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EG3DCheckpointError, match="truncated") as exc:
        load_eg3d_pickle(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("head", [b"", b"\x80\x04"])
def test_random_bytes(tmp_path: Path, head: bytes) -> None:
    rng = random.Random(1234)
    data = bytes([0x42]) + bytes(rng.randrange(256) for _ in range(4096))
    path = tmp_path / "noise.pkl"
    path.write_bytes(head + data)
    with pytest.raises(EG3DCheckpointError) as exc:
        load_eg3d_pickle(path)
    assert str(path) in str(exc.value)
    if not head:
        assert "not a pickle" in str(exc.value)


def test_torch_zip_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    torch.save({"G_ema": {"w": torch.zeros(1)}}, path)
    with pytest.raises(EG3DCheckpointError, match="zip archive"):
        load_eg3d_pickle(path)


def test_plain_dict_is_not_eg3d(tmp_path: Path) -> None:
    path = tmp_path / "dict.pkl"
    path.write_bytes(pickle.dumps({"b": 1, "a": [1, 2]}, protocol=4))
    with pytest.raises(EG3DCheckpointError, match=r"not an EG3D network pickle: .*found keys \['a', 'b'\]"):
        load_eg3d_pickle(path)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(EG3DCheckpointError, match="holds a list"):
        load_eg3d_pickle(path)


def test_stylegan2d_generator_is_rejected(tmp_path: Path) -> None:
    g = mp.persistent("Generator", mp.tiny_module_state())
    d = mp.persistent("Discriminator", mp.tiny_module_state())
    path = tmp_path / "stylegan2.pkl"
    path.write_bytes(mp.dumps(mp.snapshot(G=g, D=d, G_ema=g, augment_pipe=None)))
    with pytest.raises(EG3DCheckpointError, match="2D StyleGAN generator, not EG3D"):
        load_eg3d_pickle(path)


def test_generator_only_pickle_loads_with_notes(tmp_path: Path) -> None:
    path = tmp_path / "g_only.pkl"
    path.write_bytes(mp.dumps({"G": mp.persistent("TriPlaneGenerator", mp.tiny_module_state()), "extra": 1}))
    pkl = load_eg3d_pickle(path)
    assert pkl.G_ema is None and pkl.D is None and pkl.generator is pkl.G
    assert list(pkl.G.state_dict) == ["w"]
    joined = " | ".join(pkl.notes)
    assert "no G_ema" in joined and "no D" in joined and "extra" in joined
    assert "no G_ema" in describe(pkl)


def test_unsafe_error_is_a_checkpoint_and_unpickling_error() -> None:
    assert issubclass(UnsafePickleError, EG3DCheckpointError)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)
    assert issubclass(EG3DCheckpointError, ValueError)
