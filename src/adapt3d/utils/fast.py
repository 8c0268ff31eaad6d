"""Opt-in speed settings for GPU runs, each with the reference behaviour kept as the default.

- :func:`configure_backends`: TF32 for float32 matrix products and convolutions (Ampere and later: about 8x the
  float32 rate, 10-bit mantissa inputs, float32 accumulation) and cuDNN autotuning. The official EG3D training loop
  turns TF32 *off* (``allow_tf32 = False`` for both) and autotuning on; adapt3d's defaults are PyTorch's.
- :func:`compile_module`: ``torch.compile`` of one module's ``forward`` in place (parameter names, state dicts and
  ``copy.deepcopy`` unchanged), falling back to the eager ``forward`` with a warning when compilation fails.

Both are used by ``bench/full_size.py --fast --compile`` and available to any script; the tests check that the
compiled and eager modules compute the same outputs and gradients.
"""

from __future__ import annotations

import types
import warnings

import torch

__all__ = ["configure_backends", "backend_settings", "compile_module", "compile_status"]


def backend_settings() -> dict:
    """The current TF32 and cuDNN settings."""
    return {"matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def configure_backends(tf32: bool = True, cudnn_benchmark: bool = True) -> dict:
    """Set TF32 (matrix products and cuDNN convolutions) and cuDNN autotuning; returns the settings now in force.
    No effect on CPU computations."""
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    return backend_settings()


def compile_status(module: torch.nn.Module) -> str | None:
    """None if ``module`` was not compiled by :func:`compile_module`; else 'compiled', 'pending' (not called yet)
    or 'eager: <why>' after a fallback."""
    status = module.__dict__.get("_adapt3d_compile")
    if status is None:
        return None
    return status["state"]


def compile_module(module: torch.nn.Module, **options) -> torch.nn.Module:
    """Compile ``module.forward`` with ``torch.compile(**options)``, in place; returns ``module``.

    The compiled function is bound as an instance method, so the module keeps its parameter names and a
    ``copy.deepcopy`` of it runs its own weights. On the first call, an exception from the compiled function is
    retried eagerly: if eager succeeds the module stays eager from then on (a warning names the error; see
    :func:`compile_status`), if eager fails too its error is raised. Compilation of the backward pass happens at
    the first backward; a failure there is not caught.
    """
    eager = type(module).forward
    compiled = torch.compile(eager, **options)

    def forward(self, *args, **kwargs):
        status = self.__dict__["_adapt3d_compile"]
        if status["state"].startswith("eager"):
            return eager(self, *args, **kwargs)
        try:
            out = compiled(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - decided below by running eagerly
            if status["state"] == "compiled":
                raise
            out = eager(self, *args, **kwargs)  # raises if the input itself is bad
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            status["state"] = f"eager: {type(error).__name__}: {first}"[:300]
            warnings.warn(f"torch.compile of {type(self).__name__} failed ({status['state'][7:]}); running it eagerly",
                          RuntimeWarning, stacklevel=2)
            return out
        status["state"] = "compiled"
        return out

    module.__dict__["_adapt3d_compile"] = {"state": "pending"}
    module.forward = types.MethodType(forward, module)
    return module
