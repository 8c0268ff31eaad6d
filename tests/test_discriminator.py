"""Tests for adapt3d.models.discriminator (EG3D's DualDiscriminator)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adapt3d.models.discriminator import (
    DiscriminatorBlock,
    DualDiscriminator,
    DualDiscriminatorConfig,
    MinibatchStdLayer,
    build_discriminator,
    discriminator_config_from_official,
    filtered_resizing,
)
from conftest import fixture_path


SMALL = dict(c_dim=25, img_resolution=64, img_channels=3, channel_base=1024, channel_max=64)


def _inputs(n: int = 4, res: int = 64, raw: int = 32, c_dim: int = 25, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = {"image": torch.randn(n, 3, res, res, generator=g), "image_raw": torch.randn(n, 3, raw, raw, generator=g)}
    return img, torch.randn(n, c_dim, generator=g)


# ---------------------------------------------------------------------------------------------------------------
# 1. Exactness against the official implementation (outputs computed by NVlabs/eg3d on CPU, float32).


@pytest.mark.parametrize("name", ["ffhq512_tiny", "shapenet128_tiny"])
def test_matches_official_outputs(name: str) -> None:
    pkl, ref_path = fixture_path(f"{name}.pkl"), fixture_path(f"{name}.reference.pt")
    from adapt3d.models.eg3d_pickle import load_eg3d_pickle

    rec = load_eg3d_pickle(pkl).D
    assert rec.class_name == "DualDiscriminator"
    assert rec.init_kwargs["img_channels"] == 3  # the official kwargs hold the un-doubled value
    config = discriminator_config_from_official(rec.init_kwargs, tuple(rec.init_args))
    assert config.conversion_warnings == []
    D = build_discriminator(config)
    assert D.img_channels == 6
    missing_unexpected = D.load_state_dict(rec.state_dict, strict=True)
    assert not missing_unexpected.missing_keys and not missing_unexpected.unexpected_keys
    assert list(D.state_dict().keys()) == list(rec.state_dict.keys())  # same names, same order
    D.eval()

    ref = torch.load(ref_path, weights_only=True)
    assert len(ref["samples"]) >= 1
    worst = 0.0
    for sample in ref["samples"]:
        with torch.no_grad():
            logits = D({"image": sample["image"], "image_raw": sample["image_raw"]}, sample["c"])
        assert logits.shape == sample["d_logits"].shape == (1, 1)
        worst = max(worst, (logits - sample["d_logits"]).abs().max().item())
    print(f"{name}: max |D - official| = {worst:.3g}")
    assert worst <= 1e-4, f"{name}: max abs diff to the official logits {worst}"


# ---------------------------------------------------------------------------------------------------------------
# 2. Shapes, gradients, R1 double backward.


def test_shapes_and_structure() -> None:
    D = DualDiscriminator(**SMALL)
    assert D.block_resolutions == [64, 32, 16, 8]
    assert D.cmap_dim == 64 and D.img_channels == 6
    sd = D.state_dict()
    assert sd["b64.fromrgb.weight"].shape == (16, 6, 1, 1)
    assert sd["b64.conv1.weight"].shape == (32, 16, 3, 3)
    assert sd["b64.skip.weight"].shape == (32, 16, 1, 1) and "b64.skip.bias" not in sd
    assert "b32.fromrgb.weight" not in sd
    assert sd["b4.conv.weight"].shape == (64, 65, 3, 3)
    assert sd["b4.fc.weight"].shape == (64, 64 * 16)
    assert sd["mapping.embed.weight"].shape == (64, 25) and "mapping.fc7.weight" in sd
    assert "resample_filter" in sd and "mapping.w_avg" not in sd
    img, c = _inputs()
    assert D(img, c).shape == (4, 1)
    # raw image at full resolution, larger batch (2 groups of 4)
    img8, c8 = _inputs(n=8, raw=64)
    assert D(img8, c8).shape == (8, 1)


def test_gradients_and_r1_double_backward() -> None:
    torch.manual_seed(0)
    D = DualDiscriminator(**SMALL)
    img, c = _inputs()
    image = img["image"].requires_grad_(True)
    raw = img["image_raw"].requires_grad_(True)
    logits = D({"image": image, "image_raw": raw}, c)
    logits.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert raw.grad is not None and raw.grad.abs().sum() > 0
    for name, p in D.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name

    D.zero_grad(set_to_none=True)
    image = img["image"].detach().requires_grad_(True)
    raw = img["image_raw"].detach().requires_grad_(True)
    logits = D({"image": image, "image_raw": raw}, c)
    g_img, g_raw = torch.autograd.grad(logits.sum(), [image, raw], create_graph=True)
    penalty = g_img.square().sum(dim=[1, 2, 3]) + g_raw.square().sum(dim=[1, 2, 3])
    assert penalty.shape == (4,) and torch.isfinite(penalty).all() and (penalty > 0).all()
    penalty.mean().backward()
    conv_grads = [p.grad for n, p in D.named_parameters() if n.startswith("b") and n.endswith("weight")]
    assert conv_grads and all(g is not None and torch.isfinite(g).all() for g in conv_grads)
    assert D.b64.conv0.weight.grad.abs().sum() > 0


def test_eval_is_deterministic_and_batch_independent_of_order() -> None:
    D = DualDiscriminator(**SMALL).eval()
    img, c = _inputs()
    a = D(img, c)
    assert torch.equal(a, D(img, c))
    # fp16 is CUDA-only: on CPU force_fp32 changes nothing
    assert torch.equal(a, D(img, c, force_fp32=True))


# ---------------------------------------------------------------------------------------------------------------
# Minibatch std.


def test_minibatch_std_matches_definition() -> None:
    x = torch.randn(8, 6, 3, 3)
    layer = MinibatchStdLayer(group_size=4, num_channels=2)
    y = layer(x)
    assert y.shape == (8, 8, 3, 3)
    assert torch.equal(y[:, :6], x)
    # groups: the batch is read as (G=4, n=2): sample i is in group i % 2
    for i in range(8):
        members = x[i % 2::2]  # (4, 6, 3, 3)
        std = (members.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (6, 3, 3)
        expected = std.reshape(2, 3, 3, 3).mean(dim=[1, 2, 3])  # per channel slice
        torch.testing.assert_close(y[i, 6:, 0, 0], expected)
        assert torch.equal(y[i, 6:], y[i, 6:, :1, :1].expand(2, 3, 3))


def test_minibatch_std_batch_one_and_errors() -> None:
    layer = MinibatchStdLayer(group_size=4)
    y = layer(torch.randn(1, 4, 2, 2))  # group = min(4, 1) = 1: std of a single sample
    torch.testing.assert_close(y[:, 4:], torch.full((1, 1, 2, 2), 1e-4))
    with pytest.raises(ValueError, match="not divisible by the group size"):
        layer(torch.randn(6, 4, 2, 2))
    with pytest.raises(ValueError, match="num_channels"):
        MinibatchStdLayer(group_size=4, num_channels=3)(torch.randn(4, 4, 2, 2))


# ---------------------------------------------------------------------------------------------------------------
# 3. freeze_layers.


def test_freeze_layers_makes_buffers() -> None:
    D = DualDiscriminator(**SMALL, block_kwargs={"freeze_layers": 5})
    params = dict(D.named_parameters())
    buffers = dict(D.named_buffers())
    # layer order: b64.fromrgb(0) conv0(1) conv1(2) skip(3), b32.conv0(4) | b32.conv1(5) b32.skip(6), b16...
    frozen = ["b64.fromrgb.weight", "b64.fromrgb.bias", "b64.conv0.weight", "b64.conv1.weight",
              "b64.skip.weight", "b32.conv0.weight", "b32.conv0.bias"]
    for name in frozen:
        assert name in buffers and name not in params, name
    for name in ["b32.conv1.weight", "b32.skip.weight", "b16.conv0.weight", "b4.conv.weight", "mapping.fc0.weight"]:
        assert name in params and name not in buffers, name
    assert [D.b64.first_layer_idx, D.b32.first_layer_idx, D.b16.first_layer_idx] == [0, 4, 7]
    # same state-dict names (buffers are listed after parameters, so only the order may differ)
    D0 = DualDiscriminator(**SMALL)
    assert sorted(D0.state_dict().keys()) == sorted(D.state_dict().keys())
    D.load_state_dict(D0.state_dict(), strict=True)
    img, c = _inputs()
    D.eval()
    D0.eval()
    assert torch.equal(D(img, c), D0(img, c))
    D(img, c).sum().backward()
    assert D.b32.conv1.weight.grad is not None


def test_block_layer_count() -> None:
    first = DiscriminatorBlock(0, 8, 16, resolution=16, img_channels=6, first_layer_idx=0, freeze_layers=2)
    assert first.num_layers == 4
    assert not isinstance(first.conv0.weight, torch.nn.Parameter)
    assert isinstance(first.conv1.weight, torch.nn.Parameter)
    other = DiscriminatorBlock(8, 8, 16, resolution=16, img_channels=6, first_layer_idx=4)
    assert other.num_layers == 3 and not hasattr(other, "fromrgb")


# ---------------------------------------------------------------------------------------------------------------
# 4. Errors for bad inputs and arguments.


def test_bad_inputs() -> None:
    D = DualDiscriminator(**SMALL)
    img, c = _inputs()
    with pytest.raises(TypeError, match="dict"):
        D(img["image"], c)
    with pytest.raises(KeyError, match="image_raw"):
        D({"image": img["image"]}, c)
    with pytest.raises(ValueError, match=r"img\['image'\] must have shape"):
        D({"image": torch.randn(4, 3, 32, 32), "image_raw": img["image_raw"]}, c)
    with pytest.raises(ValueError, match=r"img\['image'\] must have shape"):
        D({"image": torch.randn(4, 4, 64, 64), "image_raw": img["image_raw"]}, c)
    with pytest.raises(ValueError, match=r"img\['image_raw'\] must have shape"):
        D({"image": img["image"], "image_raw": torch.randn(2, 3, 32, 32)}, c)
    with pytest.raises(ValueError, match=r"img\['image_raw'\] must have shape"):
        D({"image": img["image"], "image_raw": torch.randn(4, 1, 32, 32)}, c)
    with pytest.raises(ValueError, match="c must have shape"):
        D(img, c[:, :16])
    with pytest.raises(ValueError, match="c must have shape"):
        D(img, c[:2])
    with pytest.raises(ValueError, match="c must have shape"):
        D(img, None)
    with pytest.raises(ValueError, match="not divisible by the group size"):
        img6, c6 = _inputs(n=6)
        D(img6, c6)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="power of two"):
        DualDiscriminator(**{**SMALL, "img_resolution": 96})
    with pytest.raises(ValueError, match="resnet"):
        DualDiscriminator(**SMALL, architecture="skip")
    with pytest.raises(ValueError, match="unknown block_kwargs"):
        DualDiscriminator(**SMALL, block_kwargs={"freez_layers": 1})
    with pytest.raises(ValueError, match="resize_mode"):
        DualDiscriminator(**SMALL, resize_mode="classic")


# ---------------------------------------------------------------------------------------------------------------
# Label noise, resizing, unconditional use.


def test_disc_c_noise_only_in_training() -> None:
    D = DualDiscriminator(**SMALL, disc_c_noise=1.0)
    img, c = _inputs()
    c_before = c.clone()
    D.eval()
    assert torch.equal(D(img, c), D(img, c))
    D.train()
    torch.manual_seed(1)
    a = D(img, c)
    torch.manual_seed(2)
    b = D(img, c)
    assert not torch.equal(a, b)
    assert torch.equal(c, c_before)  # the caller's labels are not modified
    img1, c1 = _inputs(n=1)
    with pytest.raises(ValueError, match="at least 2"):
        D(img1, c1)


def test_filtered_resizing_modes() -> None:
    x = torch.randn(2, 3, 32, 32)
    aa = filtered_resizing(x, 16)
    plain = filtered_resizing(x, 16, mode="none")
    assert aa.shape == plain.shape == (2, 3, 16, 16)
    assert not torch.allclose(aa, plain)
    # antialiased 2x downsampling of bilinear type = 4x4 tent filter [1,3,3,1]/8 per axis
    k = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x.reshape(6, 1, 32, 32), [1, 1, 1, 1], mode="replicate"),
                                     torch.outer(k, k)[None, None], stride=2).reshape(2, 3, 16, 16)
    torch.testing.assert_close(aa[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])
    torch.testing.assert_close(filtered_resizing(x, 32), x)
    with pytest.raises(ValueError, match="classic"):
        filtered_resizing(x, 16, mode="classic")


def test_discriminator_resizes_raw_image_antialiased() -> None:
    D = DualDiscriminator(**SMALL).eval()
    Dn = DualDiscriminator(**SMALL, resize_mode="none").eval()
    Dn.load_state_dict(D.state_dict())
    for raw_res in (32, 128):  # EG3D upsamples image_raw; downsampling is where the modes differ
        img, c = _inputs(raw=raw_res)
        out = D(img, c)
        aa = {"image": img["image"], "image_raw": filtered_resizing(img["image_raw"], 64)}
        plain = {"image": img["image"], "image_raw": filtered_resizing(img["image_raw"], 64, mode="none")}
        assert torch.equal(out, D(aa, c))
        assert torch.equal(Dn(img, c), D(plain, c))
        if raw_res > 64:
            assert not torch.allclose(out, Dn(img, c), rtol=0, atol=1e-6)
        else:  # bilinear upsampling has nothing to anti-alias
            torch.testing.assert_close(out, Dn(img, c), rtol=0, atol=1e-5)


def test_unconditional() -> None:
    D = DualDiscriminator(**{**SMALL, "c_dim": 0})
    assert D.cmap_dim == 0 and not hasattr(D, "mapping")
    img, _ = _inputs()
    assert D(img, None).shape == (4, 1)


# ---------------------------------------------------------------------------------------------------------------
# Config.


def test_config_roundtrip_and_build() -> None:
    cfg = DualDiscriminatorConfig(**SMALL, cmap_dim=32,
                                  block_kwargs={"freeze_layers": 2, "resample_filter": (1, 3, 3, 1)},
                                  mapping_kwargs={"num_layers": 2}, epilogue_kwargs={"mbstd_group_size": 2})
    d = cfg.to_dict()
    assert "conversion_warnings" not in d
    back = DualDiscriminatorConfig.from_dict(json.loads(json.dumps(d)))
    assert back == DualDiscriminatorConfig.from_dict(d)
    assert back.to_dict() == d
    D = build_discriminator(back)
    assert D.cmap_dim == 32 and D.mapping.num_layers == 2 and D.b4.mbstd.group_size == 2
    assert isinstance(build_discriminator(d), DualDiscriminator)
    with pytest.raises(ValueError, match="unknown DualDiscriminatorConfig keys"):
        DualDiscriminatorConfig.from_dict({**d, "bogus": 1})


def test_config_from_official_kwargs() -> None:
    official = {"block_kwargs": {"freeze_layers": 0}, "mapping_kwargs": {}, "epilogue_kwargs": {"mbstd_group_size": 4},
                "channel_base": 1024, "channel_max": 32, "disc_c_noise": 0, "num_fp16_res": 4, "conv_clamp": 256,
                "c_dim": 25, "img_resolution": 128, "img_channels": 3}
    cfg = discriminator_config_from_official(official)
    assert cfg.conversion_warnings == []
    assert cfg.img_channels == 3 and cfg.img_resolution == 128 and cfg.cmap_dim is None
    json.dumps(cfg.to_dict())
    D = build_discriminator(cfg)
    assert D.img_channels == 6 and D.cmap_dim == 32 and D.b128.use_fp16 and not D.b8.use_fp16
    assert math.isclose(D.b128.conv1.weight_gain, 1 / math.sqrt(8 * 9))

    with pytest.warns(UserWarning) as record:
        cfg2 = discriminator_config_from_official({**official, "sr_antialias": True,
                                                   "block_kwargs": {"freeze_layers": 0, "mystery": 1}})
    assert len(cfg2.conversion_warnings) == 2 and len(record) == 2
    assert "sr_antialias" in cfg2.conversion_warnings[0] and "mystery" in cfg2.conversion_warnings[1]
    assert cfg2.block_kwargs == {"freeze_layers": 0}
    with pytest.raises(ValueError, match="lack required keys"):
        discriminator_config_from_official({"c_dim": 25})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_blocks_close_to_fp32() -> None:
    D = DualDiscriminator(**{**SMALL, "num_fp16_res": 2}).cuda().eval()
    assert D.b64.use_fp16 and D.b32.use_fp16 and not D.b16.use_fp16
    img, c = _inputs()
    img = {k: v.cuda() for k, v in img.items()}
    c = c.cuda()
    out16 = D(img, c)
    out32 = D(img, c, force_fp32=True)
    assert out16.dtype == out32.dtype == torch.float32
    torch.testing.assert_close(out16, out32, rtol=0, atol=2e-2)
    out16.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())
