"""Winograd minimal filtering for 3x3 convolutions: a CPU inference fast path.

A 3x3 'same' convolution computes, for every output pixel and every (input, output) channel pair, 9 multiply-adds.
Winograd's F(m x m, 3 x 3) algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
computes an m x m output tile from an (m + 2) x (m + 2) input tile with (m + 2)^2 multiplications per channel pair
instead of 9 m^2: for m = 6 that is 64 / 36 = 1.78 instead of 9 per output, 5x less dense work. The price is three
linear transforms (of the input tiles, the weights and the products), which cost memory traffic but no channel
mixing, and larger rounding errors than a direct convolution (float32, unit-variance outputs: max abs error about
1e-4 instead of 1e-5, i.e. a few 1e-5 of the largest output; ``tests/test_winograd.py`` and ``bench/winograd.py``
measure it against a float64 reference). F(8x8, 3x3) would save more work but its error is about 1e-2: not used.

For one tile and one channel pair, with ``d`` the input tile and ``g`` the 3x3 kernel (cross-correlation, as
``torch.nn.functional.conv2d``)::

    Y = A^T [ (G g G^T) * (B^T d B) ] A        # * is elementwise; Y is the m x m output tile

The matrices come from Toom-Cook interpolation at the points 0, +-1, +-2, +-1/2, ... and infinity; they are built
here with exact rational arithmetic (``winograd_matrices``) instead of being typed in. The elementwise products of
all channels become ``(m + 2)^2`` independent matrix products ``(tiles, C_in) @ (C_in, C_out)``, which is where
the time goes. Tiles are processed a few tile rows at a time so the transformed data stays in cache and the
extra memory is a few megabytes.

Two implementations of the tile loop: ``_winograd_torch``, the reference in plain PyTorch (gather into a padded copy,
transforms as small matrix products), and ``_winograd_compiled``, which uses the fused gather/transform kernels of
``adapt3d.models.cpu_kernels`` (compiled once per machine; about 10-25 % faster per layer) whenever they are
available, for F(6x6, 3x3) on float32 CPU tensors. They differ by float rounding only.

This is an inference path: it is used (see ``adapt3d.models.ops.conv3x3_algorithm``) only without autograd, in
float32, on the CPU, for layers large enough to gain; training and CUDA always use ``F.conv2d`` (cuDNN picks its own
algorithms, Winograd among them).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Callable

import torch
import torch.nn.functional as F

from adapt3d.models.cpu_kernels import kernel_status, winograd_kernels

_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 3, -3, Fraction(1, 3), Fraction(-1, 3))
_CHUNK_TILES = 172  # tiles per chunk (measured best for 128-512 channels; 5.6 MB of transformed input at C = 128)
_GROUPED_MIN_TILES = 1024  # compiled path: layers with this many tiles use the grouped convolution ...
_GROUPED_CHUNK_TILES = 688  # ... on chunks this large (its weight reorder is paid once per chunk)


@functools.lru_cache(maxsize=None)
def winograd_matrices(tile: int, kernel: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The F(tile, kernel) transforms ``(A^T (m, n), G (n, r), B^T (n, n))`` in float64, n = tile + kernel - 1.

    A^T and G are the Toom-Cook evaluation/interpolation matrices at ``n - 1`` finite points plus infinity; B^T is
    the unique matrix that makes ``A^T [(G g) * (B^T d)]`` the 'valid' correlation of ``d`` (length n) with ``g``
    (length r), solved exactly in rationals.
    """
    m, r = int(tile), int(kernel)
    if m < 1 or r < 1:
        raise ValueError(f"tile and kernel must be >= 1, got tile={tile}, kernel={kernel}")
    n = m + r - 1
    if n - 1 > len(_POINTS):
        raise ValueError(f"tile={tile} needs {n - 1} interpolation points; at most {len(_POINTS)} are defined")
    p = [Fraction(v) for v in _POINTS[: n - 1]]
    at = [[Fraction(0)] * n for _ in range(m)]
    g = [[Fraction(0)] * r for _ in range(n)]
    for j, pj in enumerate(p):
        den = Fraction(1)
        for q in p:
            if q != pj:
                den *= pj - q
        for i in range(m):
            at[i][j] = pj ** i
        for k in range(r):
            g[j][k] = pj ** k / den
    at[m - 1][n - 1] = Fraction(1)
    g[n - 1][r - 1] = Fraction(1)
    # For every output i, kernel tap k and input position t: sum_j AT[i,j] G[j,k] BT[j,t] = [t == i + k].
    # For fixed t the unknowns BT[:, t] satisfy a square system in (i, k) pairs; solve it by Gauss-Jordan.
    bt = [[Fraction(0)] * n for _ in range(n)]
    rows = [[at[i][j] * g[j][k] for j in range(n)] for i in range(m) for k in range(r)]
    for t in range(n):
        rhs = [Fraction(int(t == i + k)) for i in range(m) for k in range(r)]
        sol = _solve_exact(rows, rhs, n)
        for j in range(n):
            bt[j][t] = sol[j]

    def f64(mat):
        return torch.tensor([[float(v) for v in row] for row in mat], dtype=torch.float64)

    return f64(at), f64(g), f64(bt)


def _solve_exact(rows: list[list[Fraction]], rhs: list[Fraction], n: int) -> list[Fraction]:
    """Solve an over-determined but consistent rational system for n unknowns (Gauss-Jordan elimination)."""
    aug = [row[:] + [b] for row, b in zip(rows, rhs)]
    pivots = []
    r = 0
    for col in range(n):
        piv = next((i for i in range(r, len(aug)) if aug[i][col] != 0), None)
        if piv is None:
            continue
        aug[r], aug[piv] = aug[piv], aug[r]
        inv = 1 / aug[r][col]
        aug[r] = [v * inv for v in aug[r]]
        for i in range(len(aug)):
            if i != r and aug[i][col] != 0:
                fac = aug[i][col]
                aug[i] = [a - fac * b for a, b in zip(aug[i], aug[r])]
        pivots.append(col)
        r += 1
    if r != n or any(row[n] != 0 for row in aug[r:]):
        raise ArithmeticError("the Winograd transform system has no unique solution")  # not reachable for F(m, r)
    sol = [Fraction(0)] * n
    for i, col in enumerate(pivots):
        sol[col] = aug[i][n]
    return sol


def transform_weight(weight: torch.Tensor, tile: int = 6) -> torch.Tensor:
    """Winograd-domain weights ``G g G^T`` of 3x3 kernels.  # (..., O, C, 3, 3) -> (..., n*n, C, O)

    One matrix product with ``G kron G`` ((n*n, 9), built in float64) over the kernels laid out (9, C*O): an
    einsum over the two sides separately is several times slower for 256-512 channels.
    """
    _, g, _ = winograd_matrices(tile, 3)
    kron = torch.kron(g, g).to(device=weight.device, dtype=weight.dtype)  # (n*n, 9): [a*n+b, i*3+j] = G[a,i] G[b,j]
    *lead, o, c = weight.shape[:-2]
    flat = weight.reshape(-1, o, c, 9).permute(0, 3, 2, 1).reshape(-1, 9, c * o)  # (B, 9, C*O)
    u = torch.matmul(kron, flat)  # (B, n*n, C*O)
    return u.reshape(*lead, kron.shape[0], c, o)


class TransformedWeight:
    """Winograd-domain form of one shared (O, C, 3, 3) kernel, for the compiled path, to be computed once and reused
    (``adapt3d.models.ops`` caches it per weight tensor): ``u`` (64, C, O) for the batched matmul and, made on first
    use, its (64*O, C, 1, 1) layout for the grouped convolution."""

    def __init__(self, weight: torch.Tensor):
        if weight.ndim != 4 or weight.shape[-2:] != (3, 3):
            raise ValueError(f"TransformedWeight needs an (O, C, 3, 3) kernel, got {tuple(weight.shape)}")
        self.out_channels, self.in_channels = weight.shape[:2]
        self.u = transform_weight(weight, 6)  # (64, C, O)
        self._grouped: torch.Tensor | None = None

    def grouped(self) -> torch.Tensor:
        if self._grouped is None:
            o, c = self.out_channels, self.in_channels
            self._grouped = self.u.permute(0, 2, 1).reshape(64 * o, c, 1, 1)
        return self._grouped


def conv3x3_winograd(x: torch.Tensor, weight: torch.Tensor | TransformedWeight, tile: int = 6,
                     epilogue: Callable[[torch.Tensor, int, int, int], None] | None = None,
                     compiled: bool | None = None, in_scale: torch.Tensor | None = None,
                     out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """'Same' 3x3 correlation (``F.conv2d(x, weight, padding=1)``) by Winograd F(tile x tile, 3 x 3).

    x: (N, C, H, W) float32; weight: (O, C, 3, 3) shared by the batch, or (N, O, C, 3, 3) per sample (StyleGAN2's
    modulated weights), or a ``TransformedWeight`` (compiled path only). Returns (N, O, H, W) in channels-last memory
    format. Every sample goes through the same sequence of operations, so a sample's output does not depend on the
    rest of its batch. No autograd.

    ``in_scale`` (N, C) / ``out_scale`` (N, O), if given, scale the input channels before and the output channels
    after the convolution: a StyleGAN2 modulated, demodulated convolution with a shared kernel (applied inside the
    compiled transforms, or folded into per-sample weights on the PyTorch path).

    ``epilogue(y, sample, row0, row1)``, if given, is called on every finished block of output rows while it is
    still in cache, with ``y`` the (1, O, row1 - row0, W) view of ``output[sample:sample + 1, :, row0:row1]``; it
    must work in place (noise, bias, activation, clamping of a StyleGAN2 layer), elementwise, so the result equals
    applying it to the whole output afterwards, bit for bit.

    ``compiled``: use the compiled tile transforms of ``adapt3d.models.cpu_kernels`` (F(6x6, 3x3) on the CPU only).
    None (default) uses them when they are available, False never, True requires them (RuntimeError otherwise).
    """
    prepared = isinstance(weight, TransformedWeight)
    wshape = (weight.out_channels, weight.in_channels, 3, 3) if prepared else tuple(weight.shape)
    if x.ndim != 4 or wshape[-2:] != (3, 3) or len(wshape) not in (4, 5):
        raise ValueError(f"expected x (N, C, H, W) and weight (O, C, 3, 3) or (N, O, C, 3, 3), got "
                         f"{tuple(x.shape)} and {wshape}")
    n_batch, c, h, w = x.shape
    per_sample = len(wshape) == 5
    if wshape[-3] != c or (per_sample and wshape[0] != n_batch):
        raise ValueError(f"weight {wshape} does not match input {tuple(x.shape)}")
    for name, scale, size in (("in_scale", in_scale, c), ("out_scale", out_scale, wshape[-4])):
        if scale is not None and tuple(scale.shape) != (n_batch, size):
            raise ValueError(f"{name} must have shape {(n_batch, size)}, got {tuple(scale.shape)}")
    ext = None
    if compiled is not False and tile == 6 and x.device.type == "cpu" and x.dtype == torch.float32:
        ext = winograd_kernels()
    if (compiled or prepared) and ext is None:
        need = " (a TransformedWeight needs them)" if prepared else ""
        raise RuntimeError(f"conv3x3_winograd: the compiled kernels are unavailable{need}: {kernel_status()}; they "
                           f"serve float32 CPU tensors with tile=6")
    if ext is not None:
        u = weight if prepared else transform_weight(weight.to(x.dtype), tile)  # ([N], 64, C, O)
        return _winograd_compiled(ext, x, u, per_sample, epilogue, in_scale, out_scale)
    weight = weight.to(x.dtype)
    if in_scale is not None or out_scale is not None:  # fold the scales into per-sample kernels
        o = wshape[-4]
        si = in_scale.reshape(n_batch, 1, c, 1, 1) if in_scale is not None else x.new_ones(n_batch, 1, c, 1, 1)
        so = out_scale.reshape(n_batch, o, 1, 1, 1) if out_scale is not None else x.new_ones(n_batch, o, 1, 1, 1)
        weight = (weight if per_sample else weight.unsqueeze(0)) * si * so
        per_sample = True
    return _winograd_torch(x, transform_weight(weight, tile), per_sample, tile, epilogue)


def _winograd_torch(x, u, per_sample, tile, epilogue) -> torch.Tensor:
    """The reference: tiles gathered from a zero-padded copy, transforms as small matrix products."""
    n_batch, c, h, w = x.shape
    o = u.shape[-1]
    m, k = tile, tile + 2
    at64, _, bt64 = winograd_matrices(tile, 3)
    at = at64.to(device=x.device, dtype=x.dtype)
    bt = bt64.to(device=x.device, dtype=x.dtype)
    th, tw = math.ceil(h / m), math.ceil(w / m)
    rows_per_chunk = max(1, round(_CHUNK_TILES / tw))
    out = x.new_empty(n_batch, h, w, o)  # channels-last storage
    xp = x.new_zeros(th * m + 2, tw * m + 2, c)  # zero-padded input, (H', W', C); the border stays zero
    for s in range(n_batch):
        xp[1: h + 1, 1: w + 1] = x[s].permute(1, 2, 0)
        us = u[s] if per_sample else u
        for r0 in range(0, th, rows_per_chunk):
            nr = min(rows_per_chunk, th - r0)
            src = xp[m * r0: m * (r0 + nr) + 2]  # (m*nr + 2, W', C)
            s0, s1, s2 = src.stride()
            tiles = src.as_strided((k, k, nr, tw, c), (s0, s1, m * s0, m * s1, s2))  # (i, j, tile row, col, C)
            d = tiles.contiguous().view(k, -1)  # (k, k*T*C)
            d = torch.matmul(bt, d).view(k, k, -1)  # B^T along i        (k, k, T*C)
            v = torch.matmul(bt, d).view(k * k, nr * tw, c)  # along j  (k*k, T, C)
            prod = torch.bmm(v, us)  # (k*k, T, O)
            y = torch.matmul(at, prod.view(k, -1)).view(m, k, -1)  # A^T along a   (m, k, T*O)
            y = torch.matmul(at, y).view(m, m, nr, tw, o)  # along b              (m, m, nr, tw, O)
            y = y.permute(2, 0, 3, 1, 4).reshape(nr * m, tw * m, o)
            h0, h1 = m * r0, min(h, m * (r0 + nr))
            out[s, h0:h1] = y[: h1 - h0, :w]
            if epilogue is not None:
                epilogue(out[s:s + 1, h0:h1].permute(0, 3, 1, 2), s, h0, h1)
    return out.permute(0, 3, 1, 2)


def _winograd_compiled(ext, x, u, per_sample, epilogue, in_scale=None, out_scale=None) -> torch.Tensor:
    """F(6x6, 3x3) with the compiled gather/transform kernels; the products by a batched matmul, or for layers of
    many tiles by a 64-group 1x1 convolution (oneDNN), which measured 10-20 % faster there with larger chunks."""
    n_batch, c, h, w = x.shape
    prepared = isinstance(u, TransformedWeight)
    o = u.out_channels if prepared else u.shape[-1]
    at64, _, bt64 = winograd_matrices(6, 3)
    at, bt = at64.to(torch.float32), bt64.to(torch.float32)
    th, tw = math.ceil(h / 6), math.ceil(w / 6)
    grouped = th * tw >= _GROUPED_MIN_TILES
    rows_per_chunk = max(1, round((_GROUPED_CHUNK_TILES if grouped else _CHUNK_TILES) / tw))
    out = x.new_empty(n_batch, h, w, o)  # channels-last storage
    for s in range(n_batch):
        xs = x[s].permute(1, 2, 0)  # (H, W, C)
        if xs.stride(-1) != 1:
            xs = xs.contiguous()
        us = u.u if prepared else u[s] if per_sample else u  # (64, C, O)
        if grouped:  # (64*O, C, 1, 1)
            wg = u.grouped() if prepared else us.permute(0, 2, 1).reshape(64 * o, c, 1, 1)
        si = in_scale[s].to(torch.float32).contiguous() if in_scale is not None else None
        so = out_scale[s].to(torch.float32).contiguous() if out_scale is not None else None
        for r0 in range(0, th, rows_per_chunk):
            nr = min(rows_per_chunk, th - r0)
            t = nr * tw
            v = ext.input_transform(xs, r0, nr, tw, bt, si)  # (64, T, C), stored tile-major (T, 64, C)
            if grouped:
                vin = v.permute(1, 0, 2).reshape(1, t, 1, 64 * c).permute(0, 3, 1, 2)  # (1, 64*C, T, 1) NHWC
                prod = F.conv2d(vin, wg, groups=64).permute(0, 2, 3, 1).reshape(t, 64, o).permute(1, 0, 2)
            else:
                prod = torch.bmm(v, us)  # (64, T, O)
            ext.output_transform(prod, at, out[s], r0, tw, so)
            if epilogue is not None:
                h0, h1 = 6 * r0, min(h, 6 * (r0 + nr))
                epilogue(out[s:s + 1, h0:h1].permute(0, 3, 1, 2), s, h0, h1)
    return out.permute(0, 3, 1, 2)
