"""FID Inception (adapt3d.metrics.inception) against golden pool3 features of the reference implementations.

``tests/fixtures/inception_golden.npz`` was made by ``tests/fixtures/make_inception_golden.py`` from torch-fidelity's
and pytorch-fid's own code (not ours) on weights in the published file's key layout, drawn by the deterministic
generator below (so the 95 MB file is rebuilt here instead of stored). The test rebuilds the same weights and
images, runs our implementation and compares (fp32, rtol 1e-4 / atol 1e-4 * max |feature|).
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adapt3d.metrics.inception import (
    INCEPTION_WEIGHTS,
    FIDInceptionV3,
    InceptionFeatures,
    InceptionWeightsNotFoundError,
    load_inception,
    resize_bilinear_tf1,
    to_uint8_images,
)
from adapt3d.models.hub import ChecksumMismatchError

GOLDEN = Path(__file__).parent / "fixtures" / "inception_golden.npz"
# (images, height, width) of the golden image groups: upsampled, non-square, native 299, downsampled non-square.
GOLDEN_IMAGE_SIZES = ((1, 64, 64), (1, 48, 80), (1, 299, 299), (1, 512, 384))
# Groups checked in the pytorch-fid mode (its network is the same; this checks its resize and scaling).
PYTORCH_FID_GROUPS = (1, 3)
# (input H, W) -> (output H, W) of the golden TF1-resize cases.
GOLDEN_RESIZES = (((5, 7), (11, 3)), ((13, 17), (6, 9)), ((3, 2), (8, 8)))


def golden_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic float32 values for one state-dict entry: NumPy's legacy RandomState (whose stream NumPy keeps
    fixed) seeded by crc32(key), uniform in ranges that keep activations O(1) through the network."""
    rs = np.random.RandomState(zlib.crc32(key.encode()))
    if key.endswith("conv.weight"):
        bound = math.sqrt(6 / math.prod(shape[1:]))  # He-uniform
        v = rs.uniform(-bound, bound, shape)
    elif key.endswith("bn.weight"):
        v = rs.uniform(0.8, 1.2, shape)
    elif key.endswith(("bn.bias", "running_mean")):
        v = rs.uniform(-0.2, 0.2, shape)
    elif key.endswith("running_var"):
        v = rs.uniform(0.5, 1.5, shape)
    elif key == "fc.weight":
        v = rs.uniform(-1 / math.sqrt(shape[1]), 1 / math.sqrt(shape[1]), shape)
    elif key == "fc.bias":
        v = rs.uniform(-0.1, 0.1, shape)
    else:
        raise KeyError(key)
    return v.astype(np.float32)


def golden_state_dict(layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(golden_value(k, tuple(s))) for k, s in layout}


def golden_images(index: int) -> torch.Tensor:
    """uint8 images (N, 3, H, W) of group ``index``: an integer ramp pattern plus seeded noise (integer maths only,
    so every platform builds the same pixels)."""
    n, h, w = GOLDEN_IMAGE_SIZES[index]
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (3 + c) + yy * (5 - c) + 60 * c) % 192 for c in range(3)])  # (3, H, W) in [0, 191]
    noise = np.random.RandomState(1000 + index).randint(0, 64, size=(n, 3, h, w))
    return torch.from_numpy((base[None] + noise).astype(np.uint8))


def golden_resize_input(index: int) -> torch.Tensor:
    (h, w), _ = GOLDEN_RESIZES[index]
    return torch.from_numpy(np.random.RandomState(2000 + index).randint(0, 256, (1, 2, h, w)).astype(np.float32))


# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    data["layout"] = [(k, tuple(s)) for k, s in json.loads(str(data["layout"]))]
    return data


@pytest.fixture(scope="module")
def weights_file(golden, tmp_path_factory):
    """The golden weights saved like the published file (a plain dict of tensors, no num_batches_tracked)."""
    state = golden_state_dict(golden["layout"])
    total = sum(float(v.double().sum()) for v in state.values())
    assert total == pytest.approx(float(golden["weights_sum"]), rel=1e-12), "weight generator drifted"
    path = tmp_path_factory.mktemp("inception") / "pt_inception-golden.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def model(weights_file):
    return load_inception(weights_file)


def test_layout_and_parameter_count_match_the_reference(golden):
    """Keys and shapes = torch-fidelity's module (recorded in the fixture); parameter count = torchvision's
    published 27,161,264 for inception_v3 minus its AuxLogits head (3,326,696) plus 8 more classes (8 x 2049)."""
    with torch.device("meta"):
        net = FIDInceptionV3()
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert sorted(ours) == sorted(golden["layout"])
    assert len(ours) == 472  # 94 conv+BN units x 5 tensors + fc weight and bias
    aux = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - aux + 8 * 2049 == 23_850_960


@pytest.mark.parametrize("preprocess", ["tensorflow", "pytorch-fid"])
def test_pool3_matches_reference_implementations(golden, model, preprocess):
    """torch-fidelity (tensorflow mode) and pytorch-fid (pytorch-fid mode) features of the same images with the
    same weights: upsampled, non-square, native 299 and downsampled inputs."""
    assert model.source["published_weights"] is False and len(model.source["sha256"]) == 64
    features = InceptionFeatures(model.network, preprocess)
    for i in range(len(GOLDEN_IMAGE_SIZES)) if preprocess == "tensorflow" else PYTORCH_FID_GROUPS:
        expected = torch.from_numpy(golden[f"pool3_{preprocess}_{i}"])
        got = features(golden_images(i))
        assert got.shape == expected.shape == (GOLDEN_IMAGE_SIZES[i][0], 2048) and got.dtype == torch.float32
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)
        assert (expected > 0).float().mean() > 0.5  # the random network is not degenerate


def test_modes_and_architecture_details_matter(golden, model, monkeypatch):
    """The tolerance above is far tighter than the effect of each plausible mistake: the other mode's resize and
    scaling, counting the padding in the average pools, or an average pool in Mixed_7c."""
    import adapt3d.metrics.inception as inception_mod

    expected = torch.from_numpy(golden["pool3_tensorflow_0"])
    scale = float(expected.abs().max())

    def error(features):
        return float((features - expected).abs().max()) / scale

    assert error(torch.from_numpy(golden["pool3_pytorch-fid_0"])) > 1e-3
    images = golden_images(0)
    try:
        model.network.Mixed_7c.pool = "avg"
        assert error(model(images)) > 1e-3
    finally:
        model.network.Mixed_7c.pool = "max"
    monkeypatch.setattr(inception_mod, "_avg_pool_3x3",
                        lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True))
    assert error(model(images)) > 1e-3


def _tf1_resize_loops(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow 1.x resize_bilinear (align_corners=False) written as plain loops from its definition."""
    _, _, h, w = x.shape
    out = np.zeros(x.shape[:2] + (out_h, out_w), dtype=np.float64)
    for i in range(out_h):
        sy = i * (h / out_h)
        y0 = int(math.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = j * (w / out_w)
            x0 = int(math.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = x[:, :, y0, x0] * (1 - fx) + x[:, :, y0, x1] * fx
            bottom = x[:, :, y1, x0] * (1 - fx) + x[:, :, y1, x1] * fx
            out[:, :, i, j] = top * (1 - fy) + bottom * fy
    return out


def test_tf1_resize_matches_reference_and_definition(golden):
    for i, (_, (oh, ow)) in enumerate(GOLDEN_RESIZES):
        x = golden_resize_input(i)
        got = resize_bilinear_tf1(x, (oh, ow))
        torch.testing.assert_close(got, torch.from_numpy(golden[f"resize_{i}"]), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(got.double().numpy(), _tf1_resize_loops(x.double().numpy(), oh, ow), atol=1e-3)
    ramp = torch.arange(4.0).reshape(1, 1, 1, 4)  # 4 -> 8: samples at 0, .5, 1, ..., 3.5 (the last clamps)
    assert resize_bilinear_tf1(ramp, (1, 8)).flatten().tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3]
    same = torch.rand(1, 3, 299, 299) * 255  # the same size is not resampled (both modes)
    assert torch.equal(resize_bilinear_tf1(same, (299, 299)), same)


def test_preprocessing_of_each_mode(model):
    model = InceptionFeatures(model.network)
    img = golden_images(1)  # (1, 3, 48, 80)
    x = model.normalize(img)
    assert x.shape == (1, 3, 299, 299)
    torch.testing.assert_close(x, (resize_bilinear_tf1(img.float(), (299, 299)) - 128) / 128)
    assert float(model.normalize(torch.full((1, 3, 299, 299), 128, dtype=torch.uint8)).abs().max()) == 0.0
    model.preprocess = "pytorch-fid"
    x = model.normalize(img)
    # pytorch-fid: half-pixel bilinear of x / 255, then 2x - 1: output row i samples (i + .5) * 48 / 299 - .5
    sy = (torch.arange(299) + 0.5) * 48 / 299 - 0.5
    y0 = sy.floor().clamp(0, 47).long()
    fy = (sy - y0).clamp(0, 1)
    col0 = (img[0, :, :, 0].float() / 255)  # first output column samples input column 0 exactly (clamped)
    expected = (col0[:, y0] * (1 - fy) + col0[:, (y0 + 1).clamp(max=47)] * fy) * 2 - 1
    torch.testing.assert_close(x[0, :, :, 0], expected, rtol=1e-5, atol=1e-5)
    assert float(model.normalize(torch.zeros(1, 3, 299, 299, dtype=torch.uint8)).min()) == -1.0


def test_float_images_are_quantised_like_stylegan(model):
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.2]).reshape(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert to_uint8_images(x)[0, 0, 0].tolist() == [0, 0, 128, 191, 255, 255]  # (x * 127.5 + 128) truncated
    with pytest.raises(ValueError, match="uint8"):
        to_uint8_images(torch.zeros(1, 3, 2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_weights_file_checks(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InceptionWeightsNotFoundError) as e:
        load_inception()
    msg = str(e.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and "github.com/mseitzer/pytorch-fid" in msg
    assert str(tmp_path / "cache") in msg and "--inception-weights" in msg and "--fid-feature clip" in msg
    # The known file in the cache must be the published one (sha256).
    cached = tmp_path / "cache" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(weights_file)
    with pytest.raises(ChecksumMismatchError, match="6726825d0af5f729"):
        load_inception(INCEPTION_WEIGHTS)
    with pytest.raises(ChecksumMismatchError, match="expected 0000"):
        load_inception(weights_file, sha256="0" * 64)
    state = torch.load(weights_file, weights_only=True)
    del state["Mixed_7c.branch_pool.bn.running_var"]
    state["AuxLogits.fc.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="missing.*Mixed_7c.branch_pool.bn.running_var.*AuxLogits"):
        load_inception(bad)
    with pytest.raises(ValueError, match="preprocess"):
        load_inception(weights_file, preprocess="clean")


@pytest.mark.skipif(not (Path.home() / ".cache" / "adapt3d" / "checkpoints" /
                         "pt_inception-2015-12-05-6726825d.pth").is_file(), reason="real Inception weights absent")
def test_published_weights_load():
    path = Path.home() / ".cache" / "adapt3d" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    model = load_inception(path)
    assert model.source["published_weights"] is True
    f = model(golden_images(0))
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()
