"""Optional compiled CPU kernels (built once per machine), each with a pure-PyTorch reference that is always kept.

EG3D ships its custom ops the same way: C++/CUDA sources compiled on first use with a plain-PyTorch fallback. Here
there is one extension, ``csrc/winograd_cpu.cpp``: the tile gather + input transform and the output transform +
crop of ``adapt3d.models.winograd``, each fused into one pass over memory instead of several small matrix
products. It is built with ``torch.utils.cpp_extension`` (needs a C++ compiler and ninja; about 30 s) into
``<cache>/kernels/<key>`` (``$ADAPT3D_CACHE`` or ``~/.cache/adapt3d``), where ``<key>`` changes with the source,
torch, Python and the CPU's instruction set (the code is compiled for the machine that builds it), and is reused by
every later process.

``ADAPT3D_CPU_KERNELS`` chooses: ``auto`` (default: build on first use; if that fails, log one warning and use the
PyTorch code) or ``off`` (never build; PyTorch code only). ``kernel_status()`` says which is in use and is recorded
in ``render.json`` and in the benchmark's JSON. Results of the two differ by float rounding only (the order of some
sums); ``tests/test_cpu_kernels.py`` checks them against each other and against float64 references.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from adapt3d.models.hub import cache_dir

logger = logging.getLogger("adapt3d.kernels")

CPU_KERNELS_ENV = "ADAPT3D_CPU_KERNELS"
CPU_KERNEL_MODES = ("auto", "off")
_SOURCE = Path(__file__).with_name("csrc") / "winograd_cpu.cpp"
_state: dict = {"module": None, "tried": False, "error": None}
_lock = threading.Lock()


def _mode() -> str:
    mode = os.environ.get(CPU_KERNELS_ENV, "auto").strip().lower() or "auto"
    if mode not in CPU_KERNEL_MODES:
        raise ValueError(f"{CPU_KERNELS_ENV} must be one of {CPU_KERNEL_MODES}, got {mode!r}")
    return mode


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so that a shared cache never hands one machine another's -march=native."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compile_flags() -> list[str]:
    flags = ["-O3", "-fopenmp"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags += ["-march=native", "-mprefer-vector-width=512"]  # 16 floats per register where the CPU has them
    else:
        flags += ["-mcpu=native"]
    return flags


def build_key() -> str:
    """Directory name of this build: source, flags, torch, Python and CPU features hashed together."""
    h = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), " ".join(_compile_flags()).encode(), torch.__version__.encode(),
                 sys.version.encode(), _cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    return f"winograd_cpu-{h.hexdigest()[:16]}"


def _build() -> ModuleType:
    from torch.utils import cpp_extension  # imported lazily: it pulls in setuptools

    key = build_key()
    build_dir = cache_dir() / "kernels" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (build_dir / f"adapt3d_{key.replace('-', '_')}.so").exists():
        logger.info("building adapt3d's Winograd CPU kernels in %s (once per machine, about 30 s)", build_dir)
    return cpp_extension.load(name=f"adapt3d_{key.replace('-', '_')}", sources=[str(_SOURCE)],
                              extra_cflags=_compile_flags(), extra_ldflags=["-fopenmp"],
                              build_directory=str(build_dir), verbose=False)


def winograd_kernels() -> ModuleType | None:
    """The compiled Winograd transforms, or None (``ADAPT3D_CPU_KERNELS=off``, or the build failed: warned once)."""
    if _mode() == "off":
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _state["module"] = _build()
                except Exception as exc:  # no compiler, no ninja, read-only cache, ...: keep the PyTorch code
                    lines = str(exc).strip().splitlines()
                    _state["error"] = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
                    logger.warning("adapt3d: could not build the Winograd CPU kernels (%s); using the PyTorch "
                                   "implementation (same results, slower). Set %s=off to skip the attempt.",
                                   _state["error"], CPU_KERNELS_ENV)
                _state["tried"] = True
    return _state["module"]


def kernel_status() -> str:
    """'compiled', 'pytorch (off)', 'pytorch (build failed: ...)' or 'not built yet' (nothing has needed them)."""
    if _mode() == "off":
        return "pytorch (off)"
    if not _state["tried"]:
        return "not built yet"
    return "compiled" if _state["module"] is not None else f"pytorch (build failed: {_state['error']})"


def _reset_for_tests() -> None:
    """Forget the loaded module and any failure (tests only)."""
    _state.update(module=None, tried=False, error=None)
