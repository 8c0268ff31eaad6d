"""Inversion inputs without optimisation: images of any size / aspect / colour mode (documented centre crop +
resize), unreadable files, camera files, the latent file format and the architecture check."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.cameras import camera_label
from adapt3d.inversion.camera_io import load_camera_file
from adapt3d.inversion.images import ImageReadError, center_crop_resize, load_target_image, read_image
from adapt3d.inversion.latent_file import (LatentCode, LatentFileError, LatentMismatchError, architecture_of,
                                           check_architecture, load_latent, save_latent)
from adapt3d.models.triplane import build_generator, preset_config


def test_centre_crop_of_a_wide_image_keeps_the_middle_square(tmp_path):
    a = np.zeros((40, 100, 3), np.uint8)
    a[:, :] = (0, 0, 255)
    a[:, 30:70] = (255, 0, 0)  # the centred 40 x 40 square is red, the sides blue
    Image.fromarray(a).save(tmp_path / "wide.png")
    target, u8, hw = load_target_image(tmp_path / "wide.png", 16)
    assert hw == (40, 100) and target.shape == (1, 3, 16, 16) and u8.shape == (16, 16, 3)
    assert (u8 == (255, 0, 0)).all()
    assert target.min() >= -1 and target.max() <= 1 and float(target[0, 0].mean()) == 1.0
    tall = np.zeros((90, 30, 3), np.uint8)
    tall[30:60] = 200
    assert (center_crop_resize(tall, 30) == 200).all()  # no resize: the same pixels


def test_colour_modes_rgba_grey_16bit_palette(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, :10, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (20, 20, 3) and (img[:, :10] == (10, 20, 30)).all() and (img[:, 10:] == 255).all()
    assert (read_image(tmp_path / "a.png", background="black")[:, 10:] == 0).all()

    Image.fromarray(np.full((8, 12), 77, np.uint8), "L").save(tmp_path / "g.png")
    g = read_image(tmp_path / "g.png")
    assert g.shape == (8, 12, 3) and (g == 77).all()

    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(tmp_path / "g16.png")
    assert (read_image(tmp_path / "g16.png") == 255).all()

    pal = Image.new("P", (6, 6), 1)
    pal.putpalette([0, 0, 0, 5, 150, 250] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert (read_image(tmp_path / "p.png") == (5, 150, 250)).all()
    pal.save(tmp_path / "pt.png", transparency=1)  # palette index 1 transparent -> background
    assert (read_image(tmp_path / "pt.png") == 255).all()

    Image.fromarray(np.full((30, 50, 3), 128, np.uint8)).save(tmp_path / "j.jpg", quality=95)
    t, _, hw = load_target_image(tmp_path / "j.jpg", 64)  # upscaled
    assert hw == (30, 50) and t.shape == (1, 3, 64, 64) and abs(float(t.mean())) < 0.02


def test_unreadable_and_missing_images_raise_clear_errors(tmp_path):
    (tmp_path / "photo.png").write_text("this is not an image")
    with pytest.raises(ImageReadError, match=r"image: cannot read .*photo\.png as an image"):
        read_image(tmp_path / "photo.png")
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])  # truncated
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(tmp_path / "cut.png")


def test_invert_command_rejects_unreadable_image_before_loading_anything(tmp_path):
    from adapt3d.pipelines.invert import InvertConfig, run
    (tmp_path / "photo.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match="photo.png"):
        run(InvertConfig(image=tmp_path / "photo.png", preset="tiny", out=tmp_path / "out", progress=False))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="exactly one of --preset"):
        run(InvertConfig(image=tmp_path / "photo.png", out=tmp_path / "out", progress=False))


def _label(yaw=0.2, pitch=-0.1):
    return camera_label(math.pi / 2 + yaw, math.pi / 2 + pitch, radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837)


def test_camera_files_json_npy_dataset_and_errors(tmp_path):
    label = _label()
    (tmp_path / "c.json").write_text(json.dumps(label[0].tolist()))
    assert torch.allclose(load_camera_file(tmp_path / "c.json", 18.837), label)
    (tmp_path / "d.json").write_text(json.dumps({"label": [label[0].tolist()]}))
    assert torch.allclose(load_camera_file(tmp_path / "d.json", 18.837), label)
    other = _label(-0.3, 0.0)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["a/x.png", other[0].tolist()],
                                                                  ["a/me.png", label[0].tolist()]]}))
    assert torch.allclose(load_camera_file(tmp_path / "dataset.json", 18.837, image_name="me.png"), label)
    with pytest.raises(ValueError, match="none is named"):
        load_camera_file(tmp_path / "dataset.json", 18.837, image_name="zz.png")
    np.save(tmp_path / "c2w.npy", label[0, :16].reshape(4, 4).numpy())  # cam2world only: fov from the generator
    assert torch.allclose(load_camera_file(tmp_path / "c2w.npy", 18.837), label, atol=1e-6)
    (tmp_path / "bad.json").write_text(json.dumps([1.0] * 7))
    with pytest.raises(ValueError, match="holds 7 numbers"):
        load_camera_file(tmp_path / "bad.json", 18.837)
    skew = label.clone()
    skew[0, 0] = 3.0  # not a rotation
    (tmp_path / "skew.json").write_text(json.dumps(skew[0].tolist()))
    with pytest.raises(ValueError, match="not an EG3D camera"):
        load_camera_file(tmp_path / "skew.json", 18.837)
    with pytest.raises(FileNotFoundError, match="--camera"):
        load_camera_file(tmp_path / "missing.json", 18.837)


def test_latent_file_round_trip_weights_only_and_architecture_check(tmp_path):
    G = build_generator("tiny")
    ws = torch.randn(1, G.num_ws, G.w_dim)
    code = LatentCode(ws=ws, camera=_label(), space="w+", architecture=architecture_of(G),
                      generator=G.config.to_dict(), source={"preset": "tiny"}, yaw=1.7, pitch=1.5, loss=0.1,
                      psnr=25.0, noise={"backbone.synthesis.b4.conv1": torch.randn(4, 4)}, input_image="input.png")
    path = save_latent(tmp_path / "me", code)
    raw = torch.load(path, weights_only=True)  # plain tensors / str / numbers only
    assert raw["format"] == "adapt3d-latent" and isinstance(raw["architecture"], str)
    assert json.loads(raw["architecture"])["w_dim"] == G.w_dim
    back = load_latent(tmp_path / "me")
    assert torch.equal(back.ws, ws) and torch.allclose(back.camera, code.camera) and back.space == "w+"
    assert back.architecture == architecture_of(G) and set(back.noise) == {"backbone.synthesis.b4.conv1"}
    summary = json.loads((tmp_path / "me" / "latent.json").read_text())
    assert summary["ws_shape"] == [1, G.num_ws, G.w_dim] and summary["psnr"] == 25.0
    check_architecture(G, back)  # same architecture: fine

    cfg = preset_config("tiny")
    cfg.w_dim = 32
    with pytest.raises(LatentMismatchError, match=r"--latent .*w_dim: latent 64 vs generator 32"):
        check_architecture(build_generator(cfg), back)
    torch.save({"format": "something-else"}, tmp_path / "x.pt")
    with pytest.raises(LatentFileError, match="not an adapt3d latent"):
        load_latent(tmp_path / "x.pt")
    with pytest.raises(LatentFileError, match="does not exist"):
        load_latent(tmp_path / "none" / "latent.pt")


def test_losses_lpips_term_and_the_stated_fallback(tmp_path, monkeypatch):
    from adapt3d.inversion.losses import ReconstructionLoss, make_reconstruction_loss, psnr
    from adapt3d.metrics.lpips import LPIPS, LPIPSWeightsNotFoundError
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path / "cache"))  # no weight files there
    choice = make_reconstruction_loss("auto", resolution=64)
    assert choice.kind == "mse" and "falls back to mse" in choice.notes[0]
    assert "LPIPS weights not found" in choice.notes[0]
    with pytest.raises(LPIPSWeightsNotFoundError):
        make_reconstruction_loss("lpips", resolution=64)
    with pytest.raises(ValueError, match="needs a CLIP model"):
        make_reconstruction_loss("mse+clip", resolution=64)
    lp = LPIPS.random(0, layers=(8, "M", 16), taps=(1, 4))
    loss = ReconstructionLoss(lpips=lp, mse_weight=0.5)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    value = loss(x, y)
    assert torch.allclose(value, lp(x, y) + 0.5 * (x - y).pow(2).flatten(1).mean(1), atol=1e-6)
    value.sum().backward()
    assert x.grad.abs().sum() > 0 and loss(y, y).abs().max() < 1e-6
    assert loss.describe() == "lpips (random weights) + 0.5 * mse"
    # PSNR over [-1, 1]: a uniform error of 2/255 (one 8-bit level) is 20 log10(255) = 48.13 dB
    assert float(psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 2 / 255))[0]) == pytest.approx(48.13, abs=0.01)


def test_invert_command_rejects_a_bad_camera_file_before_loading_anything(tmp_path):
    from adapt3d.pipelines.invert import InvertConfig, run
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "cam.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="--camera: .*holds 3 numbers"):
        run(InvertConfig(image=tmp_path / "photo.png", preset="tiny", camera=tmp_path / "cam.json",
                         out=tmp_path / "out", progress=False))
    assert not (tmp_path / "out").exists()
