"""Which generator layers to train: StyleGAN-NADA's adaptive layer selection on the tri-plane generator, and fixed
part sets.

Each style layer of the generator reads one row of ``ws`` (N, num_ws, w_dim) through its affine map. In the
tri-plane backbone, block ``b4`` reads rows 0 (conv1) and 1 (torgb); every later block ``bR`` reads rows ``i``
(conv0), ``i + 1`` (conv1) and ``i + 2`` (torgb, shared with the next block's conv0), ``i`` advancing by 2 per
block. The super-resolution head reads the last row only (all its layers). :func:`w_layer_map` lists, per row,
the layers (parameter-name prefixes) that read it.

Adaptive selection (NADA's ``determine_opt_layers``)::

    ws0            latents of a few samples (W+, one row per layer), detached
    optimise       ws <- ws - lr * grad objective(ws)   for ``iters`` SGD steps, the generator fixed
    score_i        mean over samples and w_dim of |ws_i - ws0_i|   (how much the objective wants row i to move)
    chosen         the top-k rows; the layers reading them are trained, every other layer stays fixed

In NADA the objective is the global CLIP loss of the renders; any differentiable ``objective(ws) -> scalar``
works here. Layers without a w input (the mapping network, the 4x4 constant, the tri-plane decoder) are never
chosen, as in NADA (which never picks its mapping network, constant or most toRGB layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from adapt3d.training.freeze import freeze_prefixes

__all__ = ["w_layer_map", "LayerScores", "score_w_layers", "select_w_layers", "layers_for_rows",
           "prefixes_for_parts", "set_trainable", "candidate_rows"]


def w_layer_map(G: nn.Module) -> list[list[str]]:
    """Per w row (num_ws), the parameter-name prefixes (``'backbone.synthesis.b8.conv0.'``) of the layers reading
    it."""
    synthesis = G.backbone.synthesis
    rows: list[list[str]] = [[] for _ in range(G.num_ws)]
    w_idx = 0
    for res in synthesis.block_resolutions:
        block = getattr(synthesis, f"b{res}")
        names = (["conv0"] if hasattr(block, "conv0") else []) + ["conv1", "torgb"]
        for k, name in enumerate(names):
            rows[w_idx + k].append(f"backbone.synthesis.b{res}.{name}.")
        w_idx += block.num_conv
    sr = getattr(G, "superresolution", None)
    if sr is not None:
        for block_name in ("block0", "block1"):
            block = getattr(sr, block_name, None)
            if block is None:
                continue
            names = (["conv0"] if hasattr(block, "conv0") else []) + ["conv1", "torgb"]
            rows[-1] += [f"superresolution.{block_name}.{n}." for n in names]
    return rows


@dataclass
class LayerScores:
    """``scores`` (num_ws,): mean |change| of each w row; ``chosen``: the top-k rows (descending score)."""

    scores: torch.Tensor
    chosen: list[int]


def score_w_layers(ws: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor], iters: int = 1,
                   lr: float = 0.01) -> torch.Tensor:
    """Mean |ws_after - ws| per row (num_ws,) after ``iters`` SGD steps on ``objective(ws) -> scalar`` (ws is
    (N, num_ws, w_dim); the generator's parameters receive no gradient here)."""
    if ws.ndim != 3:
        raise ValueError(f"ws: expected (N, num_ws, w_dim), got {tuple(ws.shape)}")
    if iters < 1 or not lr > 0:
        raise ValueError(f"--auto-layer-iters must be >= 1 and --auto-layer-lr > 0, got {iters} and {lr}")
    start = ws.detach().clone()
    codes = start.clone().requires_grad_(True)
    opt = torch.optim.SGD([codes], lr=lr)
    for _ in range(iters):
        loss = objective(codes)
        (grad,) = torch.autograd.grad(loss, [codes])
        codes.grad = grad
        opt.step()
    return (codes.detach() - start).abs().mean(-1).mean(0)  # (num_ws,)


def select_w_layers(ws: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor], k: int, iters: int = 1,
                    lr: float = 0.01, candidates: Sequence[int] | None = None) -> LayerScores:
    """The ``k`` rows whose codes move most (see the module docstring), among ``candidates`` (default all)."""
    scores = score_w_layers(ws, objective, iters, lr)
    pool = list(range(len(scores))) if candidates is None else sorted(set(candidates))
    if not pool:
        raise ValueError("--auto-layer-k: no w layer feeds a trainable part (check --train-parts)")
    if k < 1:
        raise ValueError(f"--auto-layer-k: must be >= 1, got {k}")
    order = sorted(pool, key=lambda i: (-float(scores[i]), i))
    return LayerScores(scores=scores, chosen=order[:min(k, len(pool))])


def prefixes_for_parts(G: nn.Module, parts: Sequence[str]) -> list[str]:
    """Parameter-name prefixes of named parts (mapping, backbone, b4 ... b256, decoder, superresolution); ValueError
    naming ``--train-parts`` for an unknown part."""
    try:
        return freeze_prefixes(G, parts)
    except ValueError as e:
        raise ValueError(str(e).replace("--freeze", "--train-parts")) from None


def layers_for_rows(G: nn.Module, rows: Sequence[int], allowed: Sequence[str] | None = None) -> list[str]:
    """Prefixes of the layers reading the given w rows, restricted to parameters under ``allowed`` prefixes."""
    table = w_layer_map(G)
    out = []
    for i in rows:
        if not 0 <= i < len(table):
            raise ValueError(f"w row {i} is outside [0, {len(table)})")
        out += [p for p in table[i] if allowed is None or any(p.startswith(a) for a in allowed)]
    return sorted(set(out))


def set_trainable(G: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """requires_grad True exactly for the parameters under ``prefixes`` (False elsewhere); returns their names."""
    names = []
    for name, p in G.named_parameters():
        on = any(name.startswith(pre) for pre in prefixes)
        p.requires_grad_(on)
        if on:
            names.append(name)
    return names


def candidate_rows(G: nn.Module, allowed: Sequence[str]) -> list[int]:
    """The w rows read by at least one layer under the ``allowed`` prefixes."""
    return [i for i, layers in enumerate(w_layer_map(G)) if any(p.startswith(a) for p in layers for a in allowed)]
