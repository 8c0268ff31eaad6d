"""Text-conditioned generator: zero gates give the source generator bit for bit, the gates are trainable from zero,
text changes the output, 3D positions of the plane cells, checkpoint round trip and its integrity checks."""

import math

import pytest
import torch

from adapt3d.cameras import camera_label
from adapt3d.metrics.view_consistency import evaluate_view_consistency
from adapt3d.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from adapt3d.models.text_conditioned import (TextConditionedGenerator, TextConditioningConfig, load_text_conditioned,
                                             plane_positions, save_text_conditioned)
from adapt3d.models.triplane import build_generator
from adapt3d.rendering.triplane import project_to_planes

TEXT_DIM = 32


def _model(seed=0, **overrides):
    G = build_generator("tiny", seed=0).eval()
    cfg = TextConditioningConfig.for_generator(G, TEXT_DIM, attn_resolution=16, attn_dim=32, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TextConditionedGenerator(G, cfg).eval()


def _inputs(n=3):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, 64, generator=g)
    yaw = torch.linspace(math.pi / 2 - 0.4, math.pi / 2 + 0.4, n)
    c = camera_label(yaw, torch.full((n,), math.pi / 2), radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837)
    text = torch.randn(n, 77, TEXT_DIM, generator=g)
    return z, c, text


def _render(fn, *args, seed=5, **kw):
    torch.manual_seed(seed)
    return fn(*args, **kw)


def test_zero_gates_are_bit_identical_to_the_source():
    model = _model()
    G = build_generator("tiny", seed=0).eval()
    z, c, text = _inputs()
    assert all(v == 0 for v in model.gates().values())
    with torch.no_grad():
        for kw in ({"noise_mode": "const", "sampling": "deterministic"}, {"noise_mode": "random",
                                                                          "sampling": "stochastic"}):
            a = _render(model, z, c, text, **kw)
            b = _render(G, z, c, **kw)
            for key in ("image", "image_raw", "image_depth", "features"):
                assert torch.equal(a[key], b[key]), key
        ws = model.mapping(z, c, text)
        assert torch.equal(ws, G.mapping(z, c))
        assert torch.equal(model.planes(ws, text, noise_mode="const"), G.planes(ws, noise_mode="const"))


def test_open_gates_make_the_output_depend_on_the_text_but_not_the_unconditional_path():
    model = _model()
    G = build_generator("tiny", seed=0).eval()
    z, c, text = _inputs()
    with torch.no_grad():
        model.adapters.gates.fill_(0.5)
        model.cross_attention.gate.fill_(0.5)
        kw = {"noise_mode": "const", "sampling": "deterministic"}
        src = G(z, c, **kw).image
        a = model(z, c, text, **kw).image
        b = model(z, c, text.flip(0), **kw).image
        assert (a - src).abs().max() > 1e-3 and (a - b).abs().max() > 1e-3
        assert torch.equal(model(z, c, None, **kw).image, src)  # text=None: the source generator
        only_attn = model.synthesis(G.mapping(z, c), c, text, **kw).image  # cross-attention alone changes it
        assert (only_attn - src).abs().max() > 1e-4


def test_gates_receive_gradient_at_zero_and_gated_weights_do_not():
    model = _model().train()
    z, c, text = _inputs(2)
    model(z, c, text, noise_mode="const", sampling="deterministic").image.square().mean().backward()
    assert model.adapters.gates.grad.abs().min() > 0
    assert model.cross_attention.gate.grad.abs() > 0
    assert model.adapters.nets[0][-1].weight.grad.abs().max() == 0  # multiplied by tanh(0) = 0
    assert model.cross_attention.to_out.weight.grad.abs().max() == 0


def test_plane_cell_positions_project_back_to_their_cells():
    r = 4
    pos = plane_positions(r, 2)  # (3 r r, 3 + 12 + 3)
    assert pos.shape == (3 * r * r, 18)
    xyz = pos[:, :3]
    grid = project_to_planes(xyz[None], box_warp=2.0)[0]  # (3, M, 2) grid coordinates on every plane
    cells = (torch.arange(r) + 0.5) / r * 2 - 1
    gy, gx = torch.meshgrid(cells, cells, indexing="ij")
    for k in range(3):
        rows = slice(k * r * r, (k + 1) * r * r)
        torch.testing.assert_close(grid[k, rows], torch.stack([gx.reshape(-1), gy.reshape(-1)], -1))
        assert torch.all(pos[rows, -3:].argmax(1) == k)
    # the off-plane axis is 0: z for plane 0 (x, y), y for plane 1 (x, z), y for plane 2 (z, x)
    assert torch.all(xyz[:16, 2] == 0) and torch.all(xyz[16:32, 1] == 0) and torch.all(xyz[32:, 1] == 0)


def test_checkpoint_round_trip_and_integrity(tmp_path):
    model = _model(seed=3)
    with torch.no_grad():
        model.adapters.gates.fill_(0.3)
        model.cross_attention.gate.fill_(-0.2)
    folder = save_text_conditioned(tmp_path / "ck", model, metadata={"step": 7},
                                   text_encoder={"diffusion": "tiny"})
    loaded, D, meta = load_text_conditioned(folder)
    assert D is None and meta["step"] == 7 and meta["text_conditioning"]["text_encoder"] == {"diffusion": "tiny"}
    assert meta["text_conditioning"]["config"] == model.cond_config.to_dict()
    z, c, text = _inputs(2)
    kw = {"noise_mode": "const", "sampling": "deterministic"}
    with torch.no_grad():
        assert torch.equal(loaded(z, c, text, **kw).image, model(z, c, text, **kw).image)
    plain = load_checkpoint(folder)  # a plain loader still gets the base generator
    assert torch.equal(plain.generator.state_dict()["decoder.net.0.weight"],
                       model.base.state_dict()["decoder.net.0.weight"])
    # a modified conditioning file is detected
    data = bytearray((folder / "conditioning.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "conditioning.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_text_conditioned(folder)
    save_checkpoint(tmp_path / "plain", model.base)
    with pytest.raises(CheckpointError, match="not a text-conditioned checkpoint"):
        load_text_conditioned(tmp_path / "plain")


def test_bound_generator_works_with_metrics_and_checks_text():
    model = _model()
    z, c, text = _inputs(2)
    with torch.no_grad():
        model.cross_attention.gate.fill_(0.5)
        bound = model.bind(text[:1])
        ws = bound.mapping(z, c)
        vc = evaluate_view_consistency(bound, ws, c[:2])
        assert vc.views.shape == (2, 2, 3, 64, 64) and vc.final["valid_fraction"] > 0
        with pytest.raises(ValueError, match="prompt token embeddings"):
            model(z, c, torch.zeros(2, 77, 16))
    with pytest.raises(ValueError, match="attn_heads"):
        TextConditioningConfig(text_dim=8, attn_dim=30, attn_heads=4)
