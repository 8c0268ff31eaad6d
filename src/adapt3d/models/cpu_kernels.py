"""Optional compiled CPU kernels (built once per machine), each with a pure-PyTorch reference that is always kept.

EG3D ships its custom ops the same way: C++/CUDA sources compiled on first use with a plain-PyTorch fallback. Here
there is one extension, ``csrc/winograd_cpu.cpp``: the tile gather + input transform and the output transform +
crop of ``adapt3d.models.winograd``, each fused into one pass over memory instead of several small matrix
products. It is built with ``torch.utils.cpp_extension`` (needs a C++ compiler and ninja; about 30 s) and ends up
in ``<cache>/kernels/<key>`` (``$ADAPT3D_CACHE`` or ``~/.cache/adapt3d``), where ``<key>`` changes with the source,
torch, Python and the CPU's instruction set (the code is compiled for the machine that builds it); every later
process imports the finished library from there directly (no compiler, no lock).

Building is safe against interruption and concurrency: one process at a time builds, holding
``kernels/<key>.lock`` (which records its pid), in a private folder ``kernels/.build-<key>-<pid>`` that is renamed
into place only when the library has built and loaded, so a build killed at any moment (``kill -9``, the studio's
Cancel) leaves no half-built folder and no lock that blocks anyone: a lock whose process is gone (or that is older
than ``STALE_LOCK_S``) is removed by the next process, with a warning. A process that finds another one building
warns after ``WARN_AFTER_S`` seconds and, if the library is not there after ``$ADAPT3D_CPU_KERNELS_WAIT_S``
seconds (default 60), uses the PyTorch implementation for the rest of its run instead of waiting. A build that is
still running after ``WARN_AFTER_S`` says so once.

``ADAPT3D_CPU_KERNELS`` chooses: ``auto`` (default: build on first use; if that fails, log one warning and use the
PyTorch code) or ``off`` (never build; PyTorch code only). ``kernel_status()`` says which is in use and is recorded
in ``render.json`` and in the benchmark's JSON. Results of the two differ by float rounding only (the order of some
sums); ``tests/test_cpu_kernels.py`` checks them against each other and against float64 references.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch

from adapt3d.models.hub import cache_dir

logger = logging.getLogger("adapt3d.kernels")

CPU_KERNELS_ENV = "ADAPT3D_CPU_KERNELS"
CPU_KERNEL_MODES = ("auto", "off")
WAIT_ENV = "ADAPT3D_CPU_KERNELS_WAIT_S"
DEFAULT_WAIT_S = 60.0  # longest wait for another process's build before using the PyTorch path
WARN_AFTER_S = 5.0  # a wait or a build that takes longer than this is announced (once)
STALE_LOCK_S = 1800.0  # a lock this old is stale even if its pid is alive (pid reuse, another host)
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


class KernelBuildBusy(RuntimeError):
    """Another process is building the kernels and did not finish within the wait bound."""


def _wait_s() -> float:
    text = os.environ.get(WAIT_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_WAIT_S
    except ValueError:
        raise ValueError(f"{WAIT_ENV} must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"{WAIT_ENV} must be >= 0 seconds, got {text!r}")
    return value


def _module_name(key: str) -> str:
    return f"adapt3d_{key.replace('-', '_')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _lock_owner(lock: Path) -> tuple[int, str] | None:
    """(pid, host) written in a lock file, or None when it is empty or unreadable."""
    try:
        pid_text, _, host = lock.read_text().strip().partition(" ")
        return int(pid_text), host
    except (OSError, ValueError):
        return None


def _is_stale(lock: Path) -> bool:
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False  # gone already: just try again
    owner = _lock_owner(lock)
    if age > STALE_LOCK_S:
        return True
    if owner is None:
        return age > 10.0  # a writer killed between creating the file and writing its pid
    pid, host = owner
    return host == socket.gethostname() and not _pid_alive(pid)


def _announce_after(seconds: float, message: str, *args: object) -> threading.Timer:
    timer = threading.Timer(seconds, logger.warning, (message, *args))
    timer.daemon = True
    timer.start()
    return timer


@contextlib.contextmanager
def _build_lock(lock: Path, library: Path) -> Iterator[bool]:
    """Hold ``lock`` (yields True) or, when ``library`` appears while another process holds it, yield False.

    Stale locks are removed; a live holder is waited for at most ``_wait_s()`` seconds (a warning after
    ``WARN_AFTER_S``), then ``KernelBuildBusy`` is raised.
    """
    wait_s, start, warned = _wait_s(), time.monotonic(), False
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if library.is_file():
                yield False
                return
            if _is_stale(lock):
                owner = _lock_owner(lock)
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                logger.warning("adapt3d: removed a stale CPU-kernel build lock %s (left by pid %s, which is gone)",
                               lock, owner[0] if owner else "?")
                continue
            waited = time.monotonic() - start
            owner = _lock_owner(lock)
            if waited >= wait_s:
                raise KernelBuildBusy(f"another process (pid {owner[0] if owner else '?'}) has been building them "
                                      f"for more than {wait_s:g} s (lock {lock}; {WAIT_ENV} sets the wait)")
            if not warned and waited >= min(WARN_AFTER_S, wait_s / 2):
                logger.warning("adapt3d: waiting for pid %s, which is building the Winograd CPU kernels (%s); "
                               "after %g s this process uses the PyTorch implementation instead",
                               owner[0] if owner else "?", lock.parent / lock.stem, wait_s)
                warned = True
            time.sleep(min(0.2, max(wait_s / 10, 0.01)))
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        break
    try:
        yield True
    finally:
        if _lock_owner(lock) == (os.getpid(), socket.gethostname()):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _import_library(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(name: str, build_dir: Path) -> ModuleType:
    """Compile and import the extension in ``build_dir`` (a folder no other process uses)."""
    from torch.utils import cpp_extension  # imported lazily: it pulls in setuptools

    return cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=_compile_flags(),
                              extra_ldflags=["-fopenmp"], build_directory=str(build_dir), verbose=False)


def _sweep_dead_builds(root: Path, key: str) -> None:
    """Remove private build folders of this key whose process is gone (killed during a build)."""
    for folder in root.glob(f".build-{key}-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _build() -> ModuleType:
    key = build_key()
    name = _module_name(key)
    root = cache_dir() / "kernels"
    final = root / key
    library = final / f"{name}.so"
    broken = False
    if library.is_file():
        try:
            return _import_library(library, name)
        except ImportError as exc:  # e.g. truncated by a kill during an old-style in-place build: build again
            logger.warning("adapt3d: the cached CPU kernels %s do not load (%s); building them again", library, exc)
            broken = True
    with _build_lock(root / f"{key}.lock", library) as holder:
        if not holder or (library.is_file() and not broken):  # another process built them meanwhile
            return _import_library(library, name)
        _sweep_dead_builds(root, key)
        tmp = root / f".build-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        logger.info("building adapt3d's Winograd CPU kernels in %s (once per machine, about 30 s)", final)
        timer = _announce_after(WARN_AFTER_S, "adapt3d: building the Winograd CPU kernels (once per machine, about "
                                "30-60 s; %s=off skips them)", CPU_KERNELS_ENV)
        try:
            module = _compile(name, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            timer.cancel()
        if final.exists():  # an old in-place build (maybe with torch's stale 'lock' file): replace it
            old = root / f".old-{key}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        return module


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
