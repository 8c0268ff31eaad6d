"""LPIPS (adapt3d.metrics.lpips): official key layouts load through the real loader, the distance matches an
independent functional implementation and a hand computation, and missing or bad weights fail clearly."""

from __future__ import annotations

import functools
import hashlib
import http.server
import math
import pickle
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adapt3d.metrics.lpips import (
    ALEXNET_TAPS,
    LPIPS,
    LPIPS_SCALE,
    LPIPS_SHIFT,
    VGG16_TAPS,
    AlexNetFeatures,
    LPIPSWeightsNotFoundError,
    VGGFeatures,
    load_lpips,
)
from adapt3d.models import hub
from adapt3d.models.hub import ChecksumMismatchError

# torchvision VGG16 "features" conv indices and widths.
CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
         17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}
WIDTHS = (64, 128, 256, 512, 512)
# torchvision AlexNet "features" conv indices: (in, out, kernel, stride, padding); LPIPS-alex head widths.
ALEX_CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1), 8: (384, 256, 3, 1, 1),
              10: (256, 256, 3, 1, 1)}
ALEX_WIDTHS = (64, 192, 384, 256, 256)


def _write_official_files(folder: Path) -> tuple[Path, Path, dict, dict]:
    """Random weights in torchvision's / LPIPS' key layouts; the VGG file is named like torchvision's
    (<name>-<sha256 prefix>.pth)."""
    g = torch.Generator().manual_seed(1)
    vgg = {}
    for idx, (cin, cout) in CONVS.items():
        vgg[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * math.sqrt(2 / (9 * cin))
        vgg[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    vgg["classifier.6.bias"] = torch.zeros(10)  # torchvision's file also holds the classifier: must be ignored
    tmp = folder / "vgg16-tmp.pth"
    torch.save(vgg, tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    vgg_path = folder / f"vgg16-{prefix}.pth"
    tmp.rename(vgg_path)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(WIDTHS)}
    heads_path = folder / "vgg.pth"
    torch.save(heads, heads_path)
    return vgg_path, heads_path, vgg, heads


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return _write_official_files(tmp_path_factory.mktemp("lpips_weights"))


def _write_official_alex_files(folder: Path) -> tuple[Path, Path, dict, dict]:
    """Random weights in torchvision's AlexNet layout (features + classifier, named alexnet-owt-<sha prefix>.pth)
    and LPIPS' alex.pth layout; the heads file in the legacy (pre-zip) torch format, as the published one."""
    g = torch.Generator().manual_seed(2)
    alex = {}
    for idx, (cin, cout, k, _, _) in ALEX_CONVS.items():
        alex[f"features.{idx}.weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2 / (k * k * cin))
        alex[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    alex["classifier.1.weight"] = torch.zeros(8, 9216)  # torchvision's file also holds the classifier: ignored
    tmp = folder / "alexnet-tmp.pth"
    torch.save(alex, tmp)
    alex_path = folder / f"alexnet-owt-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(alex_path)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(ALEX_WIDTHS)}
    heads_path = folder / "alex.pth"
    torch.save(heads, heads_path, _use_new_zipfile_serialization=False)
    return alex_path, heads_path, alex, heads


@pytest.fixture(scope="module")
def official_alex(tmp_path_factory):
    return _write_official_alex_files(tmp_path_factory.mktemp("lpips_alex_weights"))


def _reference_lpips_alex(x: torch.Tensor, y: torch.Tensor, alex: dict, heads: dict) -> torch.Tensor:
    """An independent LPIPS-alex: functional convs from the state dict, taps after the ReLUs of conv1 ... conv5
    (max-pool 3/2 after relu1 and relu2), written from the lpips package's definition."""
    shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)

    def feats(img):
        h = (img - shift) / scale
        out = []
        for idx, (_, _, _, stride, pad) in ALEX_CONVS.items():
            if idx in (3, 6):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(F.conv2d(h, alex[f"features.{idx}.weight"], alex[f"features.{idx}.bias"], stride=stride,
                                padding=pad))
            out.append(h)
        return [f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in out]

    total = 0
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
        total = total + F.conv2d((a - b) ** 2, heads[f"lin{k}.model.1.weight"]).mean(dim=(1, 2, 3))
    return total


def _reference_lpips(x: torch.Tensor, y: torch.Tensor, vgg: dict, heads: dict) -> torch.Tensor:
    """An independent LPIPS: functional convs straight from the state dict, taps after conv1_2 ... conv5_3."""
    shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)

    def feats(img):
        h = (img - shift) / scale
        out = []
        for stage in ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)):
            if stage[0] != 0:
                h = F.max_pool2d(h, 2)
            for idx in stage:
                h = F.relu(F.conv2d(h, vgg[f"features.{idx}.weight"], vgg[f"features.{idx}.bias"], padding=1))
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = 0
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
        total = total + F.conv2d((a - b) ** 2, heads[f"lin{k}.model.1.weight"]).mean(dim=(1, 2, 3))
    return total


def test_vgg16_layout_matches_torchvision_indices():
    net = VGGFeatures()
    convs = {i: (m.in_channels, m.out_channels) for i, m in enumerate(net.features) if isinstance(m, torch.nn.Conv2d)}
    assert convs == CONVS
    assert net.taps == VGG16_TAPS and net.channels == WIDTHS
    assert all(isinstance(net.features[t], torch.nn.ReLU) for t in VGG16_TAPS)


def test_official_files_load_and_match_reference(official):
    vgg_path, heads_path, vgg, heads = official
    model = load_lpips(vgg_path, heads_path)
    assert not model.random_weights and model.source["vgg16"] == str(vgg_path)
    torch.testing.assert_close(model.backbone.features[28].weight, vgg["features.28.weight"])
    torch.testing.assert_close(model.heads[3], heads["lin3.model.1.weight"])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    d = model(x, y)
    torch.testing.assert_close(d, _reference_lpips(x, y, vgg, heads), rtol=1e-4, atol=1e-6)
    assert torch.equal(model(x, x), torch.zeros(2))  # identical images: exactly 0
    assert torch.equal(d, model(y, x))  # symmetric
    assert (d > 0).all()


def test_alexnet_layout_matches_torchvision_indices():
    net = AlexNetFeatures()
    convs = {i: (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
             for i, m in enumerate(net.features) if isinstance(m, torch.nn.Conv2d)}
    assert convs == ALEX_CONVS
    assert net.taps == ALEXNET_TAPS and net.channels == ALEX_WIDTHS and len(net.features) == 12
    assert all(isinstance(net.features[t], torch.nn.ReLU) for t in ALEXNET_TAPS)
    assert [type(net.features[i]).__name__ for i in (2, 5)] == ["MaxPool2d", "MaxPool2d"]
    classifier = (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert sum(p.numel() for p in net.parameters()) == 61_100_840 - classifier  # torchvision's published count


def test_official_alex_files_load_and_match_reference(official_alex):
    alex_path, heads_path, alex, heads = official_alex
    model = load_lpips(alex_path, heads_path, net="alex")
    assert model.net == "alex" and model.source["alexnet"] == str(alex_path) and model.source["net"] == "alex"
    assert model.source["heads_sha256"] == hashlib.sha256(heads_path.read_bytes()).hexdigest()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 64, 48, generator=g)).clamp(-1, 1)
    d = model(x, y)
    torch.testing.assert_close(d, _reference_lpips_alex(x, y, alex, heads), rtol=1e-4, atol=1e-6)
    assert torch.equal(model(x, x), torch.zeros(2)) and (d > 0).all()
    with pytest.raises(ValueError, match="at least 31 px"):
        model(x[..., :30, :30], y[..., :30, :30])
    # VGG heads with an AlexNet backbone (or the reverse) are refused, naming the option.
    with pytest.raises(ValueError, match="--lpips-net"):
        load_lpips(alex_path, _write_official_files(heads_path.parent)[1], net="alex")
    with pytest.raises(ValueError, match="--lpips-net"):
        load_lpips(alex_path, heads_path, net="squeeze")


def test_missing_alex_weights_name_both_alex_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path / "cache"))
    with pytest.raises(LPIPSWeightsNotFoundError) as e:
        load_lpips(net="alex")
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and "v0.1/alex.pth" in msg and "--lpips-alex-weights" in msg
    assert "vgg16" not in msg


def test_published_heads_checksum_is_enforced(official_alex, tmp_path, monkeypatch):
    """The known heads file in the cache must be the published one (its sha256 is registered)."""
    alex_path, heads_path, _, _ = official_alex
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path))
    cached = tmp_path / "checkpoints" / "lpips_v0.1_alex.pth"
    cached.parent.mkdir()
    cached.write_bytes(heads_path.read_bytes())
    with pytest.raises(ChecksumMismatchError, match="df73285e"):
        load_lpips(alex_path, net="alex")
    with pytest.raises(ChecksumMismatchError, match="expected 1111"):
        load_lpips(alex_path, heads_path, net="alex", heads_sha256="1" * 64)


def test_hand_computed_one_layer_lpips():
    """1 conv (3 -> 2 channels, centre tap picks R and G), ReLU, one head; a 1 x 2 image pair."""
    backbone = VGGFeatures(layers=(2,), taps=(1,))
    with torch.no_grad():
        conv = backbone.features[0]
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # channel 0 <- R
        conv.weight[1, 1, 1, 1] = 1.0  # channel 1 <- G
    w = (0.7, 0.2)
    model = LPIPS(backbone, [torch.tensor(w)])
    x = torch.tensor([[[[0.5, -0.2]], [[0.1, 0.4]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)
    y = torch.tensor([[[[0.2, 0.3]], [[0.6, -0.05]], [[0.9, -0.9]]]])

    def unit(r, g):
        a = ((r - LPIPS_SHIFT[0]) / LPIPS_SCALE[0], (g - LPIPS_SHIFT[1]) / LPIPS_SCALE[1])
        a = (max(a[0], 0.0), max(a[1], 0.0))
        n = math.hypot(*a) + 1e-10
        return a[0] / n, a[1] / n

    expected = 0.0
    for p in range(2):
        ax = unit(float(x[0, 0, 0, p]), float(x[0, 1, 0, p]))
        ay = unit(float(y[0, 0, 0, p]), float(y[0, 1, 0, p]))
        expected += (w[0] * (ax[0] - ay[0]) ** 2 + w[1] * (ax[1] - ay[1]) ** 2) / 2  # spatial mean of 2 pixels
    assert model(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert model(x, y).item() > 0.01


def test_missing_weights_name_both_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path / "cache"))
    with pytest.raises(LPIPSWeightsNotFoundError) as e:
        load_lpips()
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and "vgg.pth" in msg and "--lpips-vgg-weights" in msg
    assert str(tmp_path / "cache") in msg
    with pytest.raises(LPIPSWeightsNotFoundError, match="vgg16-397923af.pth"):
        load_lpips(tmp_path / "nope.pth", tmp_path / "nope2.pth")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_files_are_rejected(official, tmp_path):
    vgg_path, heads_path, vgg, heads = official
    wrong = tmp_path / "vgg16-00000000.pth"  # the name promises a sha256 prefix the content does not have
    wrong.write_bytes(vgg_path.read_bytes())
    with pytest.raises(ChecksumMismatchError, match="00000000"):
        load_lpips(wrong, heads_path)
    evil = tmp_path / "evil.pth"  # a pickle of an arbitrary object: weights_only refuses it, nothing runs
    evil.write_bytes(pickle.dumps(functools.partial(print, "executed")))
    with pytest.raises(ValueError, match="weights-only"):
        load_lpips(vgg_path, evil)
    partial = tmp_path / "heads.pth"
    torch.save({k: v for k, v in heads.items() if "lin4" not in k}, partial)
    with pytest.raises(ValueError, match="lin4"):
        load_lpips(vgg_path, partial)


def test_random_model_is_seeded_and_flagged():
    a, b = LPIPS.random(3), LPIPS.random(3)
    assert a.random_weights and a.source["weights"] == "random"
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(a(x, y), b(x, y))
    with pytest.raises(ValueError, match="`x` and `y`"):
        a(x, y[:, :, :16])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_url_with_sha256_is_downloaded_and_checked(official, tmp_path, monkeypatch):
    vgg_path, heads_path, _, _ = official
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path / "cache"))
    for var in ("ADAPT3D_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # a local server: downloads on
        monkeypatch.delenv(var, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet,
                                                                                directory=str(heads_path.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    known_before = dict(hub.known_checkpoints())
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{heads_path.name}"
        good = hashlib.sha256(heads_path.read_bytes()).hexdigest()
        model = load_lpips(vgg_path, url, heads_sha256=good)
        assert Path(model.source["heads"]).is_file() and str(tmp_path / "cache") in model.source["heads"]
        with pytest.raises(LPIPSWeightsNotFoundError, match="sha256"):
            load_lpips(vgg_path, url + "?again", heads_sha256="0" * 64)
        assert hub.known_checkpoints() == known_before  # lookups leave the generator registry unchanged
    finally:
        server.shutdown()
