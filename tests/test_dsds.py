"""adapt --method dsds: HSC / PatchNCE and the latent mask against hand computations, the teacher fed the source
generator's own depth, the masked SDS gradient, resume, NaN guard, end to end and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adapt3d.models.triplane import build_generator
from adapt3d.testing.fixtures import tiny_models  # noqa: F401
from adapt3d.training.dsds import (DSDSTrainer, hierarchical_spatial_consistency, latent_mask, load_depth_teacher,
                                   patch_nce)
from adapt3d.training.dsds_config import DSDSConfig, validate_dsds
from adapt3d.training.loop import TrainingDiverged
from adapt3d.training.run_folder import RunFolder

FAST = dict(preset="tiny", prompt="zombie", source_text="photo", progress=False, neural_rendering_resolution=16,
            seeds="0", guidance_scale=7.5)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path_factory.getbasetemp()))


def test_patch_nce_hand_computation():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2): two orthonormal patches, keys the same
    tau = 0.5
    expected = math.log(1 + math.exp(-1 / tau))  # -log(e^{1/tau} / (e^{1/tau} + e^0))
    assert patch_nce(q, q.clone(), tau).item() == pytest.approx(expected, rel=1e-6)
    swapped = q.flip(1)  # positives now orthogonal, negatives aligned
    assert patch_nce(q, swapped, tau).item() == pytest.approx(math.log(1 + math.exp(1 / tau)), rel=1e-6)


def test_hierarchical_spatial_consistency_hand_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 3, 4, 4, generator=g)
    s = torch.randn(1, 3, 4, 4, generator=g)
    tau = 0.1

    def by_hand(grid):
        k = 4 // grid
        cells = lambda x: torch.stack([x[0, :, i * k:(i + 1) * k, j * k:(j + 1) * k].mean((1, 2))  # noqa: E731
                                       for i in range(grid) for j in range(grid)])
        qa, qs = [torch.nn.functional.normalize(c, dim=1) for c in (cells(a), cells(s))]
        logits = qa @ qs.T / tau
        return float(sum(-torch.log_softmax(logits[i], 0)[i] for i in range(grid * grid)) / (grid * grid))

    got = hierarchical_spatial_consistency(a, s, grids=(1, 2, 8), temperature=tau).item()
    # grid 1: one patch, loss 0; grid 8 is capped at the 4 px map: every pixel a cell
    assert got == pytest.approx((0.0 + by_hand(2) + by_hand(4)) / 3, rel=1e-5)
    a.requires_grad_(True)
    hierarchical_spatial_consistency(a, s, grids=(2,)).backward()
    assert a.grad.abs().sum() > 0


def test_latent_mask_area_average():
    m = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]
    m[0, 0, 0, 0] = 0.0  # block (0, 0) averages to 0.75
    torch.testing.assert_close(latent_mask(m, 2), torch.tensor([[[[0.75, 0.0], [0.5, 0.5]]]]))


@pytest.fixture(scope="module")
def depth_sds(tiny_models):  # noqa: F811
    return load_depth_teacher(str(tiny_models["stable-diffusion-depth"]), None, "cpu")


def _renders(G, n=2):
    from adapt3d.models.latents import default_cameras
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(1))
    cams = default_cameras(G, torch.tensor([1.4, 1.7])[:n], torch.tensor([1.57, 1.5])[:n])
    ws = G.mapping(z, cams)
    return ws, cams


def test_teacher_sees_the_source_generators_depth_and_the_gradient_is_masked(depth_sds):
    from adapt3d.training.dsds import dsds_step
    G_src, G = build_generator("tiny").eval(), build_generator("tiny").eval()
    ws, cams = _renders(G_src)
    seen = []
    hook = depth_sds.unet.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 4:].clone()))
    emb, neg = depth_sds.encode_prompt(["zombie"]), depth_sds.encode_prompt([""])
    try:
        loss, rec = dsds_step(G, G_src, ws, ws, cams, depth_sds, emb, neg, generator=torch.Generator().manual_seed(2),
                              guidance_scale=7.5, t_range=(0.02, 0.98), neural_rendering_resolution=16)
    finally:
        hook.remove()
    src = G_src.synthesis(ws, cams, noise_mode="const", sampling="deterministic", neural_rendering_resolution=16)
    # hand computation: disparity of the source's own depth over its foreground (opacity >= 0.5), [-1, 1], then
    # enlarged from 16 px to the 32 px latent (bilinear); CFG doubles the batch
    disp = 1 / src.image_depth
    fg = src.weights >= 0.5
    lo = torch.where(fg, disp, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
    hi = torch.where(fg, disp, -torch.inf).amax(dim=(1, 2, 3), keepdim=True)
    t = torch.where(fg, (disp - lo) / (hi - lo), torch.zeros_like(disp)) if bool(fg.any()) else torch.zeros_like(disp)
    t = torch.nn.functional.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], torch.cat([2 * t - 1] * 2), atol=1e-5, rtol=0)
    assert rec["loss/total"] == pytest.approx(rec["loss/dsds"] + rec["loss/hsc"], rel=1e-5)
    # the mask multiplies the SDS gradient: a zero mask gives a zero gradient, a half mask half of it
    img = src.image
    kw = dict(prompt_embeds=emb, negative_prompt_embeds=neg, guidance_scale=7.5)
    full = depth_sds(img, generator=torch.Generator().manual_seed(3), **kw).grad
    half = depth_sds(img, generator=torch.Generator().manual_seed(3), grad_mask=torch.full((2, 1, 32, 32), 0.5),
                     **kw).grad
    torch.testing.assert_close(half, full / 2)


def test_controlnet_teacher_gets_the_depth_control_image(tiny_models):  # noqa: F811
    sds = load_depth_teacher(str(tiny_models["stable-diffusion"]), str(tiny_models["controlnet"]), "cpu")
    assert sds.unet.kind == "controlnet-depth"
    depth = 1 + torch.rand(2, 1, 16, 16)
    cond = sds.unet.set_depth(depth, None)
    t = (1 / depth - (1 / depth).amin((1, 2, 3), keepdim=True))
    t = t / t.amax((1, 2, 3), keepdim=True)
    t = torch.nn.functional.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(cond, t.expand(-1, 3, -1, -1), atol=1e-5, rtol=0)
    seen = []
    hook = sds.unet.controlnet.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["controlnet_cond"]), with_kwargs=True)
    try:
        sds(torch.rand(2, 3, 64, 64) * 2 - 1, prompt_embeds=sds.encode_prompt(["x"]), guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    torch.testing.assert_close(seen[0], cond)


def _trainer(cfg, depth_sds, **kw):
    return DSDSTrainer(cfg, build_generator("tiny"), None, depth_sds, **kw)


def test_resume_continues_exactly(tmp_path, depth_sds):
    cfg = DSDSConfig(steps=3, snapshot_steps=2, lr=0.01, **FAST)
    straight = _trainer(cfg, depth_sds)
    straight.run_training()
    first = _trainer(DSDSConfig(**{**cfg.__dict__, "steps": 2}), depth_sds, run_folder=RunFolder(tmp_path))
    first.run_training()
    snap = RunFolder(tmp_path).latest_snapshot()
    resumed = _trainer(cfg, depth_sds, run_folder=RunFolder(tmp_path), resume_from=snap)
    resumed.run_training()
    assert resumed.step == 3
    for k, v in straight.G.state_dict().items():
        torch.testing.assert_close(resumed.G.state_dict()[k], v, rtol=0, atol=1e-6)
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 3] and all("loss/dsds" in s and "loss/hsc" in s for s in stats)
    changed = [k for k, v in straight.G.state_dict().items() if not torch.equal(v, straight.G_frozen.state_dict()[k])]
    assert changed and all(k.startswith(("backbone.synthesis", "superresolution")) for k in changed)


def test_nan_stops_the_run_naming_the_last_snapshot(tmp_path, depth_sds):
    tr = _trainer(DSDSConfig(steps=2, **FAST), depth_sds, run_folder=RunFolder(tmp_path))
    with torch.no_grad():
        next(tr.G.superresolution.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="step 0.*NaN.*no snapshot"):
        tr.run_training()
    assert "ERROR" in (tmp_path / "log.txt").read_text()


def test_dsds_end_to_end_and_adapt_dispatch(tmp_path, tiny_models):  # noqa: F811
    from adapt3d.models.checkpoint import load_checkpoint
    from adapt3d.pipelines.adapt import AdaptConfig, run as run_adapt
    out = tmp_path / "dsds"
    cfg = AdaptConfig(preset="tiny", prompt=("a zombie",), method="dsds", out=out, steps=2, seeds="0",
                      video_frames=2, mesh="none", progress=False)
    result = run_adapt(cfg)
    assert result.stages["train"]["steps"] == 2
    assert load_checkpoint(out / "train" / "final").metadata["method"] == "dsds"
    options = json.loads((out / "train" / "options.json").read_text())
    assert options["resolved"]["teacher"] == {"diffusion": "tiny", "controlnet": None}
    summary = json.loads((out / "dsds.json").read_text())
    assert summary["method"] == "dsds" and "eval" in summary["stages"]
    assert all(s.get("skipped") == "up to date" for s in run_adapt(cfg).stages.values())


def test_bad_input(tmp_path, monkeypatch, tiny_models):  # noqa: F811
    with pytest.raises(ValueError, match="--image-prompt.*does not exist"):
        validate_dsds(DSDSConfig(image_prompt=tmp_path / "x.png", **FAST))
    with pytest.raises(ValueError, match="--lambda-dsds and --lambda-hsc"):
        validate_dsds(DSDSConfig(lambda_dsds=0.0, lambda_hsc=0.0, **FAST))
    with pytest.raises(ValueError, match="--hsc-temperature"):
        validate_dsds(DSDSConfig(hsc_temperature=0.0, **FAST))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(FileNotFoundError, match="dsds needs a depth-conditioned teacher.*--diffusion.*download"):
        validate_dsds(DSDSConfig(**{**FAST, "preset": None, "generator": "ffhq"}))
    with pytest.raises(FileNotFoundError, match="--controlnet.*download"):
        validate_dsds(DSDSConfig(controlnet="someorg/depth-cn", diffusion=str(tiny_models["stable-diffusion"]),
                                 **FAST))
    with pytest.raises(ValueError, match="not an SD 2 depth model"):
        load_depth_teacher(str(tiny_models["stable-diffusion"]), None, "cpu")


def test_image_prompt_through_a_tiny_ip_adapter(tmp_path, tiny_models):  # noqa: F811
    """Image-guided mode: the IP-Adapter (real layout, tiny random weights) is installed through diffusers' loader,
    the teacher's conditional branch gets the image embedding and the unconditional one zeros, and the image prompt
    changes the SDS gradient."""
    from PIL import Image

    from adapt3d.diffusion.ip_adapter import save_tiny_ip_adapter
    sds = load_depth_teacher(str(tiny_models["stable-diffusion-depth"]), None, "cpu")
    folder = save_tiny_ip_adapter(tmp_path / "ip", sds.unet.unet)
    kw = dict(prompt_embeds=sds.encode_prompt(["x"]), negative_prompt_embeds=sds.encode_prompt([""]),
              guidance_scale=7.5)
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    depth = 1 + torch.rand(2, 1, 16, 16)
    sds.unet.set_depth(depth, None)
    plain = sds(img, generator=torch.Generator().manual_seed(0), **kw).grad
    ip_sds = load_depth_teacher(str(tiny_models["stable-diffusion-depth"]), None, "cpu", ip_adapter=folder)
    ref = tmp_path / "ref.png"
    Image.fromarray((torch.rand(48, 48, 3) * 255).byte().numpy()).save(ref)
    from adapt3d.training.dsds import read_image_prompt
    ip_sds.unet.image_embeds = ip_sds.unet.image_prompt.embed(read_image_prompt(ref))
    assert ip_sds.unet.image_embeds.shape == (1, 1, 16)
    seen = []
    proj = ip_sds.unet.unet.encoder_hid_proj
    hook = proj.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].clone()))
    ip_sds.unet.set_depth(depth, None)
    try:
        guided = ip_sds(img, generator=torch.Generator().manual_seed(0), **kw).grad
    finally:
        hook.remove()
    e = ip_sds.unet.image_embeds
    torch.testing.assert_close(seen[0], torch.cat([e, e, torch.zeros_like(e), torch.zeros_like(e)]))
    assert (guided - plain).abs().max() > 1e-6
    with pytest.raises(FileNotFoundError, match="--ip-adapter.*h94/IP-Adapter"):
        validate_dsds(DSDSConfig(image_prompt=ref, ip_adapter=str(tmp_path), **FAST))
    with pytest.raises(ValueError, match="--ip-adapter.*only with --image-prompt"):
        validate_dsds(DSDSConfig(ip_adapter=str(folder), **FAST))
    with pytest.raises(ValueError, match="--image-prompt: give --ip-adapter"):
        validate_dsds(DSDSConfig(image_prompt=ref, **{**FAST, "preset": None, "generator": "ffhq"}))
