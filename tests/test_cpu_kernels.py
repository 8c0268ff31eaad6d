"""The compiled Winograd tile transforms (``adapt3d.models.cpu_kernels``): built here with the machine's compiler,
checked against the PyTorch reference path and float64 convolutions, plus the on/off switch and the fallback when a
build fails. Without a C++ compiler or ninja the tests that need the built extension skip with a one-line reason,
and fail under CI (CI=true), where the fast path must really be exercised.
"""

import logging
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from adapt3d.models import cpu_kernels, winograd
from adapt3d.models.winograd import conv3x3_winograd, winograd_matrices
from conftest import skip_or_fail_in_ci


@pytest.fixture(scope="module")
def ext():
    missing = [name for name, found in (("a C++ compiler (Debian: apt-get install -y g++)",
                                         os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")),
                                        ("ninja (pip install -e '.[dev]')", shutil.which("ninja"))) if not found]
    if missing:
        skip_or_fail_in_ci(f"building the compiled CPU kernels needs {' and '.join(missing)}")
    module = cpu_kernels.winograd_kernels()
    assert module is not None, f"the CPU kernels did not build: {cpu_kernels.kernel_status()}"
    return module


def _reference_input_transform(x_hwc, r0, nr, tw):
    """The PyTorch path's gather + B^T d B for tile rows [r0, r0 + nr): (64, nr * tw, C), in float64."""
    h, w, c = x_hwc.shape
    th = math.ceil(h / 6)
    xp = x_hwc.new_zeros(th * 6 + 2, tw * 6 + 2, c, dtype=torch.float64)
    xp[1:h + 1, 1:w + 1] = x_hwc
    _, _, bt = winograd_matrices(6)
    tiles = torch.stack([torch.stack([xp[6 * r:6 * r + 8, 6 * q:6 * q + 8] for q in range(tw)])
                         for r in range(r0, r0 + nr)]).reshape(nr * tw, 8, 8, c)  # (T, i, j, C)
    v = torch.einsum("ai,tijc,bj->abtc", bt, tiles, bt)
    return v.reshape(64, nr * tw, c)


@pytest.mark.parametrize("h,w,c", [(13, 17, 20), (12, 12, 16), (5, 30, 3)])
def test_input_transform_equals_the_reference(ext, h, w, c):
    gen = torch.Generator().manual_seed(h + w + c)
    x = torch.randn(h, w, c, generator=gen)
    _, _, bt = winograd_matrices(6)
    tw, th = math.ceil(w / 6), math.ceil(h / 6)
    for r0, nr in [(0, th), (th - 1, 1)]:
        v = ext.input_transform(x, r0, nr, tw, bt.float())
        assert v.shape == (64, nr * tw, c) and v.stride() == (c, 64 * c, 1)  # tile-major storage
        ref = _reference_input_transform(x.double(), r0, nr, tw)
        assert torch.allclose(v.double(), ref, atol=1e-5 * ref.abs().max().item())


def test_output_transform_crops_and_writes_nothing_outside(ext):
    gen = torch.Generator().manual_seed(0)
    h, w, o, tw = 10, 9, 20, 2
    prod = torch.randn(64, 2 * tw, o, generator=gen)  # tile rows 0-1, 2 tiles each: 12 x 12 before cropping
    big = torch.full((h + 3, w + 4, o), float("nan"))
    out = big[:h, :w]  # a strided view: the kernel must use its strides and stay inside it
    at, _, _ = winograd_matrices(6)
    ext.output_transform(prod, at.float(), out, 0, tw)
    y = torch.einsum("pa,abtc,sb->tpsc", at, prod.double().reshape(8, 8, 2 * tw, o), at)  # (T, 6, 6, O)
    full = y.reshape(2, tw, 6, 6, o).permute(0, 2, 1, 3, 4).reshape(12, 6 * tw, o)
    assert torch.allclose(out.double(), full[:h, :w], atol=1e-4)
    assert big[h:].isnan().all() and big[:, w:].isnan().all()


def test_kernels_refuse_bad_arguments(ext):
    bt = winograd_matrices(6)[2].float()
    with pytest.raises(RuntimeError, match="float32"):
        ext.input_transform(torch.zeros(6, 6, 4, dtype=torch.float64), 0, 1, 1, bt)
    with pytest.raises(RuntimeError, match="unit channel stride"):
        ext.input_transform(torch.zeros(4, 6, 6).permute(1, 2, 0).contiguous().transpose(0, 2), 0, 1, 1, bt)
    with pytest.raises(RuntimeError, match="tile range"):
        ext.input_transform(torch.zeros(6, 6, 4), 1, 1, 1, bt)  # tile row 1 starts below the image
    with pytest.raises(RuntimeError, match="BT"):
        ext.input_transform(torch.zeros(6, 6, 4), 0, 1, 1, bt[:6])


@pytest.mark.parametrize("shape", [(2, 20, 13, 17, 24), (1, 16, 200, 190, 8)])  # the second: grouped-conv GEMM
@pytest.mark.parametrize("per_sample", [False, True])
def test_compiled_and_pytorch_paths_agree_with_float64(ext, shape, per_sample):
    n, c, h, w, o = shape
    gen = torch.Generator().manual_seed(h)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(*((n,) if per_sample else ()), o, c, 3, 3, generator=gen) / math.sqrt(9 * c)
    if per_sample:
        ref = F.conv2d(x.double().reshape(1, n * c, h, w), weight.double().reshape(n * o, c, 3, 3), padding=1,
                       groups=n).reshape(n, o, h, w)
    else:
        ref = F.conv2d(x.double(), weight.double(), padding=1)
    fast = conv3x3_winograd(x, weight, compiled=True)
    slow = conv3x3_winograd(x, weight, compiled=False)
    assert fast.shape == slow.shape == (n, o, h, w) and fast.is_contiguous(memory_format=torch.channels_last)
    assert (fast - ref).abs().max() < 2e-4 and (slow - ref).abs().max() < 2e-4  # unit-variance outputs
    assert (fast - slow).abs().max() < 1e-4
    if h == 200:  # this layer is large enough for the grouped-convolution products
        assert math.ceil(h / 6) * math.ceil(w / 6) >= winograd._GROUPED_MIN_TILES


def test_compiled_path_keeps_samples_independent_and_runs_the_epilogue(ext):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 8, 31, 14, generator=gen)
    weight = torch.randn(3, 8, 8, 3, 3, generator=gen)
    full = conv3x3_winograd(x, weight, compiled=True)
    for s in range(3):
        assert torch.equal(full[s:s + 1], conv3x3_winograd(x[s:s + 1], weight[s:s + 1], compiled=True))
    seen = []

    def epilogue(blk, s, h0, h1):
        seen.append((s, h0, h1))
        blk.clamp_(max=0.5)

    y = conv3x3_winograd(x, weight, epilogue=epilogue, compiled=True)
    assert torch.equal(y, full.clamp(max=0.5))
    assert sorted(r for s, h0, h1 in seen if s == 1 for r in range(h0, h1)) == list(range(31))


def test_off_switch_and_bad_value(monkeypatch):
    monkeypatch.setenv(cpu_kernels.CPU_KERNELS_ENV, "off")
    assert cpu_kernels.winograd_kernels() is None and cpu_kernels.kernel_status() == "pytorch (off)"
    x, weight = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3)
    assert torch.allclose(conv3x3_winograd(x, weight), F.conv2d(x, weight, padding=1), atol=1e-4)
    with pytest.raises(RuntimeError, match="unavailable"):
        conv3x3_winograd(x, weight, compiled=True)
    monkeypatch.setenv(cpu_kernels.CPU_KERNELS_ENV, "fastest")
    with pytest.raises(ValueError, match="ADAPT3D_CPU_KERNELS.*'fastest'"):
        cpu_kernels.winograd_kernels()


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, caplog):
    saved = dict(cpu_kernels._state)
    calls = []

    def broken_build():
        calls.append(1)
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(cpu_kernels, "_build", broken_build)
    cpu_kernels._reset_for_tests()
    try:
        with caplog.at_level(logging.WARNING, logger="adapt3d.kernels"):
            x, weight = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3)
            y = conv3x3_winograd(x, weight)
            conv3x3_winograd(x, weight)
        assert torch.allclose(y, F.conv2d(x, weight, padding=1), atol=1e-4)
        assert calls == [1]  # tried once per process
        assert "no C++ compiler found" in cpu_kernels.kernel_status()
        assert sum("could not build" in r.message for r in caplog.records) == 1
    finally:
        cpu_kernels._state.update(saved)


def test_build_key_changes_with_the_source(monkeypatch, tmp_path):
    key = cpu_kernels.build_key()
    changed = tmp_path / "winograd_cpu.cpp"
    changed.write_text(cpu_kernels._SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(cpu_kernels, "_SOURCE", changed)
    assert cpu_kernels.build_key() != key and cpu_kernels.build_key().startswith("winograd_cpu-")


def test_a_new_process_reuses_the_build(ext):
    # The first build happened above; a fresh interpreter must load it from the cache, not compile again.
    code = ("import time, logging; logging.basicConfig(level=logging.INFO); t = time.time()\n"
            "from adapt3d.models import cpu_kernels\n"
            "assert cpu_kernels.winograd_kernels() is not None, cpu_kernels.kernel_status()\n"
            "print(cpu_kernels.kernel_status(), round(time.time() - t, 1))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("compiled") and "building" not in done.stderr


@pytest.mark.parametrize("compiled,prepared", [(True, False), (True, True), (False, False)])  # prepared: compiled only
def test_channel_scales_equal_a_modulated_demodulated_convolution(ext, compiled, prepared):
    gen = torch.Generator().manual_seed(7)
    n, c, o, h, w = 2, 20, 12, 15, 11
    x = torch.randn(n, c, h, w, generator=gen)
    weight = torch.randn(o, c, 3, 3, generator=gen) / math.sqrt(9 * c)
    s_in, s_out = torch.rand(n, c, generator=gen) + 0.5, torch.rand(n, o, generator=gen) + 0.5
    per_sample = weight.double()[None] * s_in.double()[:, None, :, None, None] * s_out.double()[:, :, None, None, None]
    ref = F.conv2d(x.double().reshape(1, n * c, h, w), per_sample.reshape(n * o, c, 3, 3), padding=1,
                   groups=n).reshape(n, o, h, w)
    kernel = winograd.TransformedWeight(weight) if prepared else weight
    y = conv3x3_winograd(x, kernel, compiled=compiled, in_scale=s_in, out_scale=s_out)
    assert (y - ref).abs().max() < 1e-4
    with pytest.raises(ValueError, match="in_scale must have shape"):
        conv3x3_winograd(x, kernel, compiled=compiled, in_scale=s_in[:1])


def test_transformed_weight_needs_the_compiled_kernels(monkeypatch):
    kernel = winograd.TransformedWeight(torch.randn(4, 3, 3, 3))
    assert kernel.u.shape == (64, 3, 4) and kernel.grouped().shape == (256, 3, 1, 1)
    monkeypatch.setenv(cpu_kernels.CPU_KERNELS_ENV, "off")
    with pytest.raises(RuntimeError, match="TransformedWeight"):
        conv3x3_winograd(torch.randn(1, 3, 8, 8), kernel)
    with pytest.raises(ValueError, match="O, C, 3, 3"):
        winograd.TransformedWeight(torch.randn(4, 3, 1, 1))


def test_weight_derived_values_are_cached_until_the_weight_changes():
    from adapt3d.models import ops

    weight = torch.randn(4, 3, 3, 3)
    calls = []

    def energy(w):
        calls.append(1)
        return w.square().sum(dim=[2, 3])

    first = ops._derived(weight, "energy", energy)
    assert ops._derived(weight, "energy", energy) is first and len(calls) == 1
    with torch.no_grad():
        weight.mul_(2)  # in place: the version counter moves, the cached value must not be reused
    again = ops._derived(weight, "energy", energy)
    assert len(calls) == 2 and torch.allclose(again, 4 * first)
    key = id(weight)
    del weight, first, again
    import gc
    gc.collect()
    assert key not in ops._DERIVED  # the entry went away with the tensor


def test_modulated_conv2d_compiled_winograd_matches_direct_and_uses_the_cache(ext):
    from adapt3d.models import ops

    gen = torch.Generator().manual_seed(8)
    n, i, o, h = 2, 16, 12, 14
    x, weight = torch.randn(n, i, h, h, generator=gen), torch.randn(o, i, 3, 3, generator=gen)
    styles, noise = torch.randn(n, i, generator=gen) + 1, torch.randn(n, 1, h, h, generator=gen)
    with torch.no_grad():
        with ops.conv3x3_algorithm("direct"):
            ref = ops.modulated_conv2d(x, weight, styles, noise=noise, padding=1)
        with ops.conv3x3_algorithm("winograd"):
            y = ops.modulated_conv2d(x, weight, styles, noise=noise, padding=1)
            cached = ops._DERIVED[id(weight)][1]
            assert isinstance(cached["winograd"], winograd.TransformedWeight) and "energy" in cached
            y2 = ops.modulated_conv2d(x, weight, styles, noise=noise, padding=1)
    assert (y - ref).abs().max() < 1e-4 * ref.abs().max() and torch.equal(y, y2)
