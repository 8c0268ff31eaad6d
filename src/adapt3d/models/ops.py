"""Pure-PyTorch versions of the StyleGAN2/EG3D low-level ops.

Every op here computes exactly what the official CUDA kernels' reference paths compute (their semantics are
described in ``shared/docs/eg3d-facts.md`` §4), so official weights reproduce official outputs. They run on CPU
and CUDA, in float32 or under autocast, and are differentiable.

- ``setup_filter``: a normalised 2D FIR filter (outer product of a 1D kernel, sum 1).
- ``upfirdn2d``: upsample by zero insertion, pad (negative = crop), convolve with a FIR filter, downsample.
- ``upsample2d`` / ``downsample2d``: the padding conventions StyleGAN2 uses around ``upfirdn2d``.
- ``bias_act``: bias, activation, gain, clamp (with autograd: a fused node for linear / relu / lrelu that saves
  only its output, or the reference composition, see ``set_bias_act_impl``).
- ``conv2d_resample``: a 2D convolution fused with FIR up/down-sampling.
- ``modulated_conv2d``: StyleGAN2's style-modulated (and optionally demodulated) convolution.
- ``conv3x3_algorithm``: which algorithm inference-time 3x3 modulated convolutions use on the CPU ("auto": Winograd
  F(6x6, 3x3) for large layers, see ``adapt3d.models.winograd``; "direct": always ``F.conv2d``, as the official
  implementation).

Inference on the CPU caches what depends on a layer's weight alone (``_derived``: the demodulation energies, the
Winograd-domain kernel), per weight tensor, recomputed after any change to it (in-place update or new storage).
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .cpu_kernels import winograd_kernels
from .winograd import TransformedWeight, conv3x3_winograd

ACTIVATION_GAINS = {"linear": 1.0, "relu": math.sqrt(2), "lrelu": math.sqrt(2), "sigmoid": 1.0, "tanh": 1.0,
                    "softplus": 1.0}


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1), device: torch.device | None = None) -> torch.Tensor:
    """Outer product of a 1D kernel with itself, normalised to sum 1.  # (K, K)"""
    f = torch.as_tensor(taps, dtype=torch.float32, device=device)
    if f.ndim != 1 or f.numel() == 0:
        raise ValueError(f"taps must be a non-empty 1D sequence, got shape {tuple(f.shape)}")
    f = torch.outer(f, f)
    return f / f.sum()


def _pad4(padding: int | Sequence[int]) -> list[int]:
    if isinstance(padding, int):
        return [padding] * 4
    padding = list(padding)
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]  # (px, py) -> x0, x1, y0, y1
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1), got {padding}")
    return padding


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
              padding: int | Sequence[int] = 0, flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Upsample, FIR-filter and downsample a batch of images.  # (N, C, H, W) -> (N, C, H', W')

    Steps: insert ``up - 1`` zeros after every sample; pad by ``padding = (x0, x1, y0, y1)`` (negative values
    crop); convolve every channel with ``f * gain ** (f.ndim / 2)`` (a true convolution, i.e. the filter is
    flipped unless ``flip_filter``; 'valid' output); keep every ``down``-th sample starting at index 0.
    """
    if f is None:
        f = torch.ones(1, 1, dtype=x.dtype, device=x.device)
    n, c, h, w = x.shape
    x0, x1, y0, y1 = _pad4(padding)
    fh, fw = (f.shape[0], f.shape[0]) if f.ndim == 1 else f.shape
    if up > 1 and down == 1 and x0 - x1 == up - 1 and y0 - y1 == up - 1 and 0 <= x0 < fw and 0 <= y0 < fh:
        # Same result without the zero-inserted intermediate: a depthwise stride-`up` transposed convolution
        # (output index up * i + s - P for input i and tap s, with P = taps - 1 - pad_before on each axis).
        f2 = f if f.ndim == 2 else torch.outer(f, f)
        f2 = (f2 * (gain ** (f.ndim / 2) if f.ndim == 2 else gain)).to(x.dtype)
        if flip_filter:
            f2 = f2.flip([0, 1])
        return F.conv_transpose2d(x, f2[None, None].expand(c, 1, fh, fw), stride=up,
                                  padding=[fh - 1 - y0, fw - 1 - x0], groups=c)
    if up == 1 and x0 == x1 >= 0 and y0 == y1 >= 0 and f.ndim == 2:  # symmetric zero padding: let conv2d pad
        f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
        if not flip_filter:
            f = f.flip([0, 1])
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), padding=[y0, x0], groups=c)
        return x[:, :, ::down, ::down] if down > 1 else x
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:  # separable 1D filter: rows then columns
        x = F.conv2d(x, f[None, None, None, :].expand(c, 1, 1, f.shape[0]), groups=c)
        x = F.conv2d(x, f[None, None, :, None].expand(c, 1, f.shape[0], 1), groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, padding: int = 0, flip_filter: bool = False,
               gain: float = 1.0) -> torch.Tensor:
    """Upsample by ``up`` with the FIR filter ``f``, keeping the image centred.  # (N,C,H,W) -> (N,C,H*up,W*up)"""
    fw = f.shape[-1]
    p = [padding + (fw + up - 1) // 2, padding + (fw - up) // 2] * 2
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2, padding: int = 0, flip_filter: bool = False,
                 gain: float = 1.0) -> torch.Tensor:
    """Downsample by ``down`` after FIR filtering.  # (N,C,H,W) -> (N,C,H/down,W/down)"""
    fw = f.shape[-1]
    p = [padding + (fw - down + 1) // 2, padding + (fw - down) // 2] * 2
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain)


BIAS_ACT_IMPLS = ("fused", "ref")
_bias_act_impl = {"impl": os.environ.get("ADAPT3D_BIAS_ACT", "fused")}  # the environment variable sets the default


def set_bias_act_impl(impl: str) -> str:
    """Choose how ``bias_act`` runs when a gradient is needed; returns the old choice.

    "fused" (default; ``ADAPT3D_BIAS_ACT`` sets it): for linear / relu / lrelu, one autograd node that computes the
    output in place on one fresh tensor and saves only that output (the derivative of a piecewise-linear activation
    is a function of the output's sign and of the clamp mask), like EG3D's CUDA ``bias_act``: a quarter of the
    allocations and half the saved activations of the reference, the same forward values bit for bit, the same
    gradients (except for pre-clamp values exactly equal to the clamp, where the reference passes the gradient and
    this blocks it), and double backward (R1) supported. "ref": the plain composition of PyTorch ops.
    """
    if impl not in BIAS_ACT_IMPLS:
        raise ValueError(f"bias_act impl must be one of {BIAS_ACT_IMPLS}, got {impl!r}")
    old = _bias_act_impl["impl"]
    _bias_act_impl["impl"] = impl
    return old


@contextlib.contextmanager
def bias_act_impl(impl: str) -> Iterator[None]:
    """Context manager form of ``set_bias_act_impl``."""
    old = set_bias_act_impl(impl)
    try:
        yield
    finally:
        set_bias_act_impl(old)


class _FusedBiasAct(torch.autograd.Function):
    """``clamp(act(x + b) * gain)`` for piecewise-linear activations, saving only the output (see
    ``set_bias_act_impl``). The backward is built from differentiable ops on a constant slope mask, so it can be
    differentiated again (R1 penalties)."""

    @staticmethod
    def forward(ctx, x, b, dim: int, slope: float, gain: float, clamp: float | None):
        y = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]) if b is not None else x.clone()
        if slope == 0.0:
            F.relu_(y)
        elif slope != 1.0:
            F.leaky_relu_(y, slope)
        if gain != 1:
            y.mul_(gain)
        if clamp is not None:
            y.clamp_(-clamp, clamp)
        ctx.save_for_backward(y)
        ctx.dim, ctx.slope, ctx.gain, ctx.clamp, ctx.has_bias = dim, slope, gain, clamp, b is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        saved, = ctx.saved_tensors
        y = saved.detach()
        m = None
        if ctx.slope != 1.0:  # (scalars as tensors of dy's dtype: torch.where of Python floats would be float32)
            m = torch.where(y > 0, dy.new_tensor(ctx.gain), dy.new_tensor(ctx.gain * ctx.slope))
        if ctx.clamp is not None:
            inside = (y.abs() < ctx.clamp).to(dy.dtype)
            m = inside * ctx.gain if m is None else m * inside
        dx = dy * m if m is not None else (dy * ctx.gain if ctx.gain != 1 else dy)
        if torch.is_grad_enabled() and saved.requires_grad:
            # create_graph (R1): keep x and b in the graph with their zero second derivative, so that they get
            # zero gradients rather than none, as with the reference (optimisers treat the two differently)
            dx = dx + saved * 0
        db = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            db = dx.sum([i for i in range(dx.ndim) if i != ctx.dim])
        return dx, db, None, None, None, None


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """``act(x + b) * gain``, then clamped to ``[-clamp, clamp]``; ``b`` is broadcast along ``dim``.

    ``gain`` defaults to the activation's standard gain (sqrt(2) for relu/lrelu, else 1); lrelu slope 0.2. With
    autograd on, linear / relu / lrelu use the fused node (``set_bias_act_impl``) unless "ref" is chosen.
    """
    if (_bias_act_impl["impl"] == "fused" and act in ("linear", "relu", "lrelu") and torch.is_grad_enabled()
            and (x.requires_grad or (b is not None and b.requires_grad))):
        slope = {"linear": 1.0, "relu": 0.0}.get(act, 0.2 if alpha is None else float(alpha))
        gain = ACTIVATION_GAINS[act] if gain is None else float(gain)
        clamp = float(clamp) if clamp is not None and clamp >= 0 else None
        return _FusedBiasAct.apply(x, b.to(x.dtype) if b is not None else None, dim % x.ndim, slope, gain, clamp)
    if _bias_act_impl["impl"] not in BIAS_ACT_IMPLS:
        raise ValueError(f"ADAPT3D_BIAS_ACT must be one of {BIAS_ACT_IMPLS}, got {_bias_act_impl['impl']!r}")
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2 if alpha is None else alpha)
    elif act == "relu":
        x = F.relu(x)
    elif act == "sigmoid":
        x = torch.sigmoid(x)
    elif act == "tanh":
        x = torch.tanh(x)
    elif act == "softplus":
        x = F.softplus(x)
    elif act != "linear":
        raise ValueError(f"act must be one of {sorted(ACTIVATION_GAINS)}, got {act!r}")
    gain = ACTIVATION_GAINS[act] if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def _bias_act_(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", alpha: float | None = None,
               gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """``bias_act`` computed in place in ``x`` (for inference on a fresh tensor: no autograd, no extra buffers)."""
    if b is not None:
        x.add_(b.reshape([1, -1] + [1] * (x.ndim - 2)))
    if act == "lrelu":
        F.leaky_relu_(x, 0.2 if alpha is None else alpha)
    elif act == "relu":
        F.relu_(x)
    elif act == "linear":
        pass
    else:
        return bias_act(x, None, act=act, alpha=alpha, gain=gain, clamp=clamp)
    gain = ACTIVATION_GAINS[act] if gain is None else gain
    if gain != 1:
        x.mul_(gain)
    if clamp is not None and clamp >= 0:
        x.clamp_(-clamp, clamp)
    return x


LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
_low_precision = {"dtype": torch.float16}


def set_low_precision_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of EG3D's reduced-precision layers on CUDA (the super-resolution blocks and the discriminator
    blocks at >= 64 px, ``num_fp16_res``): float16 (default, as EG3D) or bfloat16 (same speed on Ampere and later,
    float32's range: no overflow clamping needed, 3 fewer mantissa bits). Returns the old one. CPU runs stay float32
    either way."""
    if dtype not in LOW_PRECISION_DTYPES:
        raise ValueError(f"low precision dtype must be one of {LOW_PRECISION_DTYPES}, got {dtype}")
    old = _low_precision["dtype"]
    _low_precision["dtype"] = dtype
    return old


def low_precision_dtype() -> torch.dtype:
    """See ``set_low_precision_dtype``."""
    return _low_precision["dtype"]

def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int | list[int] = 0, groups: int = 1,
          transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    """conv2d computes a correlation; ``flip_weight=False`` flips the kernel to make it a true convolution."""
    if not flip_weight and (w.shape[-1] > 1 or w.shape[-2] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """2D convolution with optional FIR up/down-sampling, in the order StyleGAN2 performs it.

    x: (N, C_in, H, W); w: (C_out, C_in / groups, kh, kw). ``up=2`` uses a stride-2 transposed convolution followed
    by the FIR filter (gain up**2); ``down=2`` filters first, then a strided convolution.
    """
    c_out, c_in_g, kh, kw = w.shape
    fw = f.shape[-1] if f is not None else 1
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0, py1 = px0, px1
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0, py1 = px0, px1

    if kw == 1 and kh == 1 and down > 1 and up == 1:  # 1x1 down: filter + decimate, then convolve
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:  # 1x1 up: convolve, then upsample
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)
    if down > 1 and up == 1:  # filter, then strided convolution
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:  # transposed strided convolution, then filter
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, c_out // groups, c_in_g, kh, kw).transpose(1, 2)
            w = w.reshape(groups * c_in_g, c_out // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                      flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, f if down > 1 else None, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)


CONV3X3_ALGORITHMS = ("auto", "direct", "winograd")
_conv3x3 = {"algorithm": os.environ.get("ADAPT3D_CONV3X3", "auto")}  # the environment variable sets the default
# "auto" uses Winograd where it measured faster than oneDNN's direct convolution on a 2-core AVX-512 CPU
# (bench/winograd.py: 1.2-2.0x for 128-512 channels at 64^2-512^2 pixels; slower below 64^2 or 128 channels).
_AUTO_MIN_CHANNELS = 128
_AUTO_MIN_PIXELS = 64 * 64


def set_conv3x3_algorithm(algorithm: str) -> str:
    """Choose how inference-time (no autograd) float32 3x3 modulated convolutions run on the CPU; returns the old one.

    The default comes from the environment variable ``ADAPT3D_CONV3X3`` (else "auto"), so any command can be run
    with ``ADAPT3D_CONV3X3=direct`` to compute every convolution as the official implementation does.

    "auto" (default): Winograd F(6x6, 3x3) for layers with >= 128 input channels and >= 64 x 64 pixels, direct
    convolution otherwise; "direct": always ``F.conv2d``; "winograd": Winograd for every eligible layer whatever its
    size (for tests). Outputs of the two
    algorithms differ by rounding only (a few 1e-5 of the activations' scale per layer). Training (autograd),
    CUDA, other dtypes and resampling convolutions always use ``F.conv2d``.
    """
    if algorithm not in CONV3X3_ALGORITHMS:
        raise ValueError(f"conv3x3 algorithm must be one of {CONV3X3_ALGORITHMS}, got {algorithm!r}")
    old = _conv3x3["algorithm"]
    _conv3x3["algorithm"] = algorithm
    return old


def current_conv3x3_algorithm() -> str:
    """The algorithm set by ``set_conv3x3_algorithm`` or ``ADAPT3D_CONV3X3`` ("auto", "direct" or "winograd")."""
    return _conv3x3["algorithm"]


@contextlib.contextmanager
def conv3x3_algorithm(algorithm: str) -> Iterator[None]:
    """Context manager form of ``set_conv3x3_algorithm``."""
    old = set_conv3x3_algorithm(algorithm)
    try:
        yield
    finally:
        set_conv3x3_algorithm(old)


_DERIVED: dict[int, tuple[weakref.ref, dict]] = {}  # id(weight) -> (weak reference, cached values)


def _derived(weight: torch.Tensor, name: str, fn: Callable[[torch.Tensor], object]):
    """``fn(weight)`` computed without autograd and cached per weight tensor until the tensor changes (its version
    counter, storage, shape, dtype or device); the cache entry goes away with the tensor. Inference only."""
    stamp = (weight._version, weight.data_ptr(), tuple(weight.shape), weight.dtype, weight.device)
    key = id(weight)
    held = _DERIVED.get(key)
    if held is None or held[0]() is not weight:  # new tensor (or a dead one's id reused)
        held = (weakref.ref(weight), {"stamp": stamp})
        _DERIVED[key] = held
        weakref.finalize(weight, _forget_derived, key, held[0])
    entry = held[1]
    if entry["stamp"] != stamp:
        entry.clear()
        entry["stamp"] = stamp
    if name not in entry:
        with torch.no_grad():
            entry[name] = fn(weight.detach())
    return entry[name]


def _forget_derived(key: int, ref: weakref.ref) -> None:
    held = _DERIVED.get(key)
    if held is not None and held[0] is ref:
        del _DERIVED[key]


def _use_winograd(x: torch.Tensor, kh: int, kw: int, up: int, padding: int) -> bool:
    algorithm = _conv3x3["algorithm"]
    if algorithm not in CONV3X3_ALGORITHMS:
        raise ValueError(f"ADAPT3D_CONV3X3 must be one of {CONV3X3_ALGORITHMS}, got {algorithm!r}")
    if algorithm == "direct" or kh != 3 or kw != 3 or up != 1 or padding != 1:
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
        return False
    if algorithm == "winograd":
        return True
    return x.shape[1] >= _AUTO_MIN_CHANNELS and x.shape[2] * x.shape[3] >= _AUTO_MIN_PIXELS


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused_modconv: bool = True,
                     epilogue: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """StyleGAN2's modulated convolution.

    x: (N, I, H, W); weight: (O, I, k, k); styles: (N, I); noise broadcastable to the output. The weight is scaled
    per sample by ``styles``; with ``demodulate`` each output channel is rescaled to unit norm
    (rsqrt(sum w'^2 + 1e-8)). ``fused_modconv`` runs it as one grouped convolution (per-sample weights); otherwise
    the activations are scaled before and after a shared-weight convolution (same maths, cheaper backward).
    ``epilogue`` (inference only) is an elementwise in-place function applied to the output after the noise: the
    Winograd path applies it to each block of rows while the block is in cache, the others to the whole output.
    """
    if epilogue is not None and torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, styles)):
        raise ValueError("modulated_conv2d: epilogue works in place and is for inference (no autograd) only")
    x, done = _modulated_conv2d(x, weight, styles, noise, up, padding, resample_filter, demodulate, flip_weight,
                                fused_modconv, epilogue)
    return x if done or epilogue is None else epilogue(x)


def _modulated_conv2d(x, weight, styles, noise, up, padding, resample_filter, demodulate, flip_weight,
                      fused_modconv, epilogue) -> tuple[torch.Tensor, bool]:
    """``modulated_conv2d``; also returns whether ``epilogue`` was already applied."""
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # pre-normalise to avoid fp16 overflow (as the official GPU path)
        weight = weight * (1 / math.sqrt(i * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    no_grad = not torch.is_grad_enabled() or not (weight.requires_grad or styles.requires_grad)
    if fused_modconv and demodulate and no_grad and x.dtype == torch.float32:
        # Inference: the demodulation coefficients from per-(O, I) kernel energies (sum_i s_i^2 sum_k W^2, one
        # small matmul; the energies cached per weight), then a single pass over the weight with the combined
        # (O, I) scale. Same maths as below.
        energy = _derived(weight, "energy", lambda wt: wt.square().sum(dim=[2, 3]))  # (O, I)
        dcoefs = (styles.square().matmul(energy.t()) + 1e-8).rsqrt()  # (N, O)
        if (flip_weight and not x.requires_grad and _use_winograd(x, kh, kw, up, padding)
                and winograd_kernels() is not None):
            # Compiled Winograd: the cached Winograd-domain kernel, styles and demodulation applied as channel
            # scales inside the tile transforms (no per-sample weights at all).
            tw = _derived(weight, "winograd", TransformedWeight)
            return _winograd_with_epilogue(x, tw, noise, epilogue, in_scale=styles, out_scale=dcoefs)
        scale = styles.reshape(n, 1, i) * dcoefs.reshape(n, o, 1)  # (N, O, I)
        w = weight.unsqueeze(0) * scale.reshape(n, o, i, 1, 1)
        demodulate = False  # already applied
    elif demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # (N, O, I, k, k)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # (N, O)
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding,
                            flip_weight=flip_weight)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1)), False
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1), False
        if noise is not None:
            return x + noise.to(x.dtype), False
        return x, False

    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    if _use_winograd(x, kh, kw, up, padding) and not (w.requires_grad or x.requires_grad):
        return _winograd_with_epilogue(x, w if flip_weight else w.flip([3, 4]), noise, epilogue)
    if n > 1:  # (a reshape of a single sample would also reset its strides, losing a channels-last layout)
        x = x.reshape(1, -1, *x.shape[2:])  # (1, N*I, H, W)
    w = w.reshape(-1, i, kh, kw)  # (N*O, I, k, k)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, padding=padding, groups=n,
                        flip_weight=flip_weight)
    if n > 1:
        x = x.reshape(n, -1, *x.shape[2:])  # (N, O, H', W')
    if noise is not None:
        if torch.is_grad_enabled() and (x.requires_grad or noise.requires_grad):
            x = x + noise
        else:
            x = x.add_(noise) if noise.dtype == x.dtype else x + noise  # x is this function's fresh output
    return x, False


def _winograd_with_epilogue(x, weight, noise, epilogue, in_scale=None, out_scale=None) -> tuple[torch.Tensor, bool]:
    """``conv3x3_winograd`` + noise + ``epilogue`` on each finished block of rows; returns (output, epilogue done)."""
    kw = dict(in_scale=in_scale, out_scale=out_scale)
    if noise is None and epilogue is None:
        return conv3x3_winograd(x, weight, **kw), False  # (N, O, H, W), channels-last
    if noise is not None and (noise.dtype != x.dtype or noise.ndim < 2):
        return conv3x3_winograd(x, weight, **kw) + noise, False

    def finish(y: torch.Tensor, s: int, h0: int, h1: int) -> None:  # (1, O, rows, W) block, in place
        if noise is not None:
            nz = noise[s:s + 1] if noise.ndim == 4 and noise.shape[0] > 1 else noise
            y.add_(nz[..., h0:h1, :])
        if epilogue is not None:
            r = epilogue(y)
            if r is not None and r is not y:  # not in place after all: keep its result
                y.copy_(r)

    return conv3x3_winograd(x, weight, epilogue=finish, **kw), True


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) along ``dim``."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
