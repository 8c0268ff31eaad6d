"""adapt3d checkpoint folders: exact round trips, integrity checks, architecture checks, atomic writes."""

import json
import math
import os

import pytest
import torch

from adapt3d.cameras import camera_label
from adapt3d.models import checkpoint as ckpt
from adapt3d.models.checkpoint import CheckpointError, is_checkpoint_folder, load_checkpoint, save_checkpoint
from adapt3d.models.discriminator import DualDiscriminatorConfig, build_discriminator
from adapt3d.models.triplane import build_generator, preset_config

D_SMALL = dict(img_resolution=64, channel_base=1024, channel_max=32)


def _generator(seed=7):
    G = build_generator("tiny", seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # make the buffers non-default so that saving them is really checked
        G.backbone.mapping.w_avg.copy_(torch.randn(G.w_dim, generator=g))
        G.dataset_label_std.copy_(torch.rand(25, generator=g) + 0.5)
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    return G


def _render(G):
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0))
    c = camera_label(torch.tensor([math.pi / 2 + 0.2]), torch.tensor([math.pi / 2]), radius=2.7, pivot=[0, 0, 0.2],
                     fov_deg=18.837)
    with torch.no_grad():
        return G(z, c, noise_mode="const", sampling="deterministic", truncation_psi=0.7)


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sb[k].dtype == sa[k].dtype and sb[k].device.type == "cpu", k
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny generator + small discriminator (shared, read-only: tests that tamper copy it first)."""
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    G = _generator()
    D = build_discriminator(DualDiscriminatorConfig(**D_SMALL))
    save_checkpoint(folder, G, D, metadata={"note": "unit test", "kimg": 12})
    return folder, G, D


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_folder_layout(saved):
    folder, _, _ = saved
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "discriminator.safetensors",
                                                        "generator.safetensors"]
    doc = json.loads((folder / "checkpoint.json").read_text())
    assert doc["format"] == "adapt3d-checkpoint" and doc["version"] == 1
    assert len(doc["generator"]["sha256"]) == 64 and len(doc["discriminator"]["sha256"]) == 64
    assert doc["metadata"] == {"note": "unit test", "kimg": 12}
    assert is_checkpoint_folder(folder) and is_checkpoint_folder(folder / "checkpoint.json")
    assert not is_checkpoint_folder(folder.parent)


def test_generator_round_trip_is_exact(saved):
    folder, G, _ = saved
    ck = load_checkpoint(folder)
    G2 = ck.generator
    assert not G2.training
    assert G2.config == G.config
    assert G2.config.to_dict() == G.config.to_dict()
    _assert_same_state(G, G2)
    assert ck.metadata == {"note": "unit test", "kimg": 12}
    assert ck.path == folder
    a, b = _render(G), _render(G2)
    for k in ("image", "image_raw", "image_depth", "features"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    # loading through checkpoint.json itself works too
    assert load_checkpoint(folder / "checkpoint.json").generator.config == G.config


def test_discriminator_round_trip_is_exact(saved):
    folder, _, D = saved
    ck = load_checkpoint(folder)
    D2 = ck.discriminator
    assert D2 is not None and not D2.training
    assert D2.config == D.config
    _assert_same_state(D, D2)
    g = torch.Generator().manual_seed(1)
    img = {"image": torch.randn(2, 3, 64, 64, generator=g), "image_raw": torch.randn(2, 3, 32, 32, generator=g)}
    c = torch.randn(2, 25, generator=g)
    with torch.no_grad():
        assert torch.equal(D.eval()(img, c), D2(img, c))
    assert load_checkpoint(folder, load_discriminator=False).discriminator is None


def test_neural_rendering_resolution_is_saved(tmp_path):
    G = build_generator("tiny", seed=0)
    G.neural_rendering_resolution = 24
    save_checkpoint(tmp_path / "m", G)
    G2 = load_checkpoint(tmp_path / "m").generator
    assert G2.neural_rendering_resolution == 24 and G2.config.neural_rendering_resolution == 24
    assert load_checkpoint(tmp_path / "m").discriminator is None
    assert not (tmp_path / "m" / "discriminator.safetensors").exists()


def test_tampered_weights_are_refused(saved, tmp_path):
    folder = _copy(saved[0], tmp_path / "tampered")
    path = folder / "generator.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one byte of tensor data; the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(folder)
    # a swapped discriminator file is caught as well
    folder2 = _copy(saved[0], tmp_path / "swapped")
    (folder2 / "discriminator.safetensors").write_bytes((folder2 / "generator.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(folder2)
    assert load_checkpoint(folder2, load_discriminator=False).generator is not None


def test_missing_weights_file(saved, tmp_path):
    folder = _copy(saved[0], tmp_path / "missing")
    (folder / "generator.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="checkpoint.json"):
        load_checkpoint(tmp_path / "nowhere")


def _edit_json(folder, fn):
    p = folder / "checkpoint.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


def test_format_tag_version_and_json_errors(saved, tmp_path):
    folder = _copy(saved[0], tmp_path / "fmt")
    _edit_json(folder, lambda d: d.__setitem__("format", "eg3d-pickle"))
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(folder)
    folder = _copy(saved[0], tmp_path / "ver")
    _edit_json(folder, lambda d: d.__setitem__("version", 99))
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(folder)
    folder = _copy(saved[0], tmp_path / "json")
    (folder / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(folder)
    folder = _copy(saved[0], tmp_path / "nogen")
    _edit_json(folder, lambda d: d.pop("generator"))
    with pytest.raises(CheckpointError, match="generator"):
        load_checkpoint(folder)
    folder = _copy(saved[0], tmp_path / "badcfg")
    _edit_json(folder, lambda d: d["generator"]["config"].__setitem__("bogus", 1))
    with pytest.raises(CheckpointError, match="unsupported generator config"):
        load_checkpoint(folder)


def test_other_architecture_lists_mismatched_shapes(saved, tmp_path):
    folder = _copy(saved[0], tmp_path / "arch")
    _edit_json(folder, lambda d: d["generator"]["config"].__setitem__("channel_max", 16))
    with pytest.raises(CheckpointError, match="other shapes") as e:
        load_checkpoint(folder)
    msg = str(e.value)
    assert "generator" in msg and "backbone.synthesis" in msg
    assert "(32, " in msg and "(16, " in msg  # file shape vs model shape
    # different number of tensors (another mapping depth) -> missing / unexpected names
    folder = _copy(saved[0], tmp_path / "layers")
    _edit_json(folder, lambda d: d["generator"]["config"]["mapping_kwargs"].__setitem__("num_layers", 3))
    with pytest.raises(CheckpointError, match="missing") as e:
        load_checkpoint(folder)
    assert "backbone.mapping.fc2" in str(e.value)
    # discriminator too
    folder = _copy(saved[0], tmp_path / "darch")
    _edit_json(folder, lambda d: d["discriminator"]["config"].__setitem__("channel_max", 16))
    with pytest.raises(CheckpointError, match="discriminator"):
        load_checkpoint(folder)


def _half_writing_save_file(real):
    """A save_file that writes the first half of the real file, then dies (a crash mid-write)."""

    def broken(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = open(filename, "rb").read()
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    return broken


def test_interrupted_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "save_file", _half_writing_save_file(ckpt.save_file))
    folder = tmp_path / "crash"
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(folder, build_generator("tiny", seed=0))
    assert list(folder.iterdir()) == []  # no checkpoint.json, no (half) weights file, no temp file left behind
    assert not is_checkpoint_folder(folder)
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)


def test_interrupted_overwrite_is_detected(tmp_path, monkeypatch):
    folder = tmp_path / "over"
    save_checkpoint(folder, build_generator("tiny", seed=0))
    old_json = (folder / "checkpoint.json").read_bytes()
    real = ckpt.save_file
    calls = []

    def fail_on_discriminator(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # generator written, discriminator write crashes half-way
            return _half_writing_save_file(real)(tensors, filename, metadata)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", fail_on_discriminator)
    D = build_discriminator(DualDiscriminatorConfig(**D_SMALL))
    with pytest.raises(OSError):
        save_checkpoint(folder, build_generator("tiny", seed=1), D)
    assert (folder / "checkpoint.json").read_bytes() == old_json  # the json (written last) is the old one
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "generator.safetensors"]
    # the new generator file does not match the old json: refused, not loaded as a hybrid
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(folder)


def test_save_load_on_generator_with_other_config(tmp_path):
    cfg = preset_config("tiny")
    cfg.channel_max = 16
    cfg.rendering.white_back = True
    cfg.rendering.ray_start, cfg.rendering.ray_end = "auto", "auto"
    G = build_generator(cfg, seed=2)
    save_checkpoint(tmp_path / "m", G)
    G2 = load_checkpoint(tmp_path / "m").generator
    assert G2.config == cfg and G2.config.rendering.ray_start == "auto"
    _assert_same_state(G, G2)
    assert os.path.getsize(tmp_path / "m" / "generator.safetensors") > 0
