"""Building the CPU kernels never hangs (``adapt3d.models.cpu_kernels``): stale locks from killed builds are removed,
a live builder is waited for only up to a bound (then the PyTorch path is used), and a build happens in a private
folder that is renamed into place, so a kill at any moment leaves nothing that blocks a later process.

Most tests replace the compiler with a fake (``_compile`` writes a placeholder library) so that they take seconds;
``test_a_stale_torch_lock_next_to_a_built_library_does_not_block`` uses the real library built by
``tests/test_cpu_kernels.py`` (it hangs for ever with the old in-place build)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from adapt3d.models import cpu_kernels


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cpu_kernels.CPU_KERNELS_ENV, raising=False)
    saved = dict(cpu_kernels._state)
    cpu_kernels._reset_for_tests()
    yield tmp_path / "cache" / "kernels"
    cpu_kernels._state.update(saved)


@pytest.fixture
def fake_compiler(monkeypatch):
    """A compiler that writes a placeholder library (and records each call); importing it gives a namespace."""
    calls = []

    def compile_(name, build_dir):
        calls.append(build_dir)
        (build_dir / f"{name}.so").write_bytes(b"fake library")
        (build_dir / "lock").write_text("")  # like torch's FileBaton while it builds
        (build_dir / "lock").unlink()
        return types.SimpleNamespace(path=build_dir, fake=True)

    monkeypatch.setattr(cpu_kernels, "_compile", compile_)
    monkeypatch.setattr(cpu_kernels, "_import_library",
                        lambda path, name: types.SimpleNamespace(path=path, fake=True))
    return calls


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _key_paths(root: Path) -> tuple[Path, Path, Path]:
    key = cpu_kernels.build_key()
    return root / f"{key}.lock", root / key, root / key / f"{cpu_kernels._module_name(key)}.so"


def test_a_first_build_lands_in_place_and_leaves_no_lock(cache, fake_compiler):
    lock, final, library = _key_paths(cache)
    assert cpu_kernels.winograd_kernels().fake
    assert library.read_bytes() == b"fake library" and not lock.exists()
    assert sorted(p.name for p in cache.iterdir()) == [final.name]  # no private build folder left
    assert len(fake_compiler) == 1 and cpu_kernels.kernel_status() == "compiled"
    cpu_kernels._reset_for_tests()  # a later process: imports, never compiles again
    assert cpu_kernels.winograd_kernels().fake and len(fake_compiler) == 1


def test_a_stale_lock_of_a_killed_build_is_removed(cache, fake_compiler, caplog):
    lock, final, library = _key_paths(cache)
    pid = _dead_pid()
    cache.mkdir(parents=True)
    lock.write_text(f"{pid} {socket.gethostname()}\n")
    leftover = cache / f".build-{final.name}-{pid}"  # its half-done private folder
    leftover.mkdir()
    (leftover / "winograd_cpu.o").write_bytes(b"partial")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="adapt3d.kernels"):
        assert cpu_kernels.winograd_kernels().fake
    assert time.monotonic() - start < 5
    assert f"left by pid {pid}" in caplog.text and library.is_file()
    assert not lock.exists() and not leftover.exists()


def test_a_live_builder_is_waited_for_only_up_to_the_bound(cache, fake_compiler, monkeypatch, caplog):
    lock, final, library = _key_paths(cache)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cache.mkdir(parents=True)
        lock.write_text(f"{holder.pid} {socket.gethostname()}\n")
        monkeypatch.setenv(cpu_kernels.WAIT_ENV, "1.5")
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="adapt3d.kernels"):
            assert cpu_kernels.winograd_kernels() is None  # the PyTorch path, not a hang
        elapsed = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert 1.4 < elapsed < 6
    assert f"waiting for pid {holder.pid}" in caplog.text and "PyTorch" in caplog.text
    assert "KernelBuildBusy" in cpu_kernels.kernel_status() and fake_compiler == []
    assert lock.exists() and not library.exists()  # the live holder's lock is not ours to remove


def test_a_library_finished_by_another_process_is_used(cache, fake_compiler, monkeypatch):
    lock, final, library = _key_paths(cache)
    cache.mkdir(parents=True)
    lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")  # a live process holds the lock
    monkeypatch.setenv(cpu_kernels.WAIT_ENV, "30")

    def finish():
        time.sleep(0.5)
        final.mkdir()
        library.write_bytes(b"built elsewhere")
        lock.unlink()

    thread = threading.Thread(target=finish)
    thread.start()
    start = time.monotonic()
    module = cpu_kernels.winograd_kernels()
    thread.join()
    assert module.path == library and fake_compiler == [] and time.monotonic() - start < 10


def test_an_old_in_place_build_with_torchs_stale_lock_is_replaced(cache, fake_compiler):
    lock, final, library = _key_paths(cache)
    final.mkdir(parents=True)
    (final / "lock").write_text("")  # torch's FileBaton, left by a build killed with the old layout
    (final / "winograd_cpu.o").write_bytes(b"partial")
    assert cpu_kernels.winograd_kernels().fake
    assert sorted(p.name for p in final.iterdir()) == [library.name]


def test_the_wait_bound_must_be_a_number(cache, monkeypatch):
    monkeypatch.setenv(cpu_kernels.WAIT_ENV, "soon")
    with pytest.raises(ValueError, match="ADAPT3D_CPU_KERNELS_WAIT_S.*'soon'"):
        cpu_kernels._wait_s()


def test_a_stale_torch_lock_next_to_a_built_library_does_not_block(tmp_path):
    """The bug of issue #16: torch's build lock left in the kernels folder made every later render wait for ever."""
    from adapt3d.models.hub import cache_dir

    key = cpu_kernels.build_key()
    real = cache_dir() / "kernels" / key / f"adapt3d_{key.replace('-', '_')}.so"
    if not real.is_file() and cpu_kernels.winograd_kernels() is None:
        pytest.fail(f"the CPU kernels did not build: {cpu_kernels.kernel_status()}")
    folder = tmp_path / "cache" / "kernels" / key
    folder.mkdir(parents=True)
    shutil.copy2(real, folder / real.name)
    (folder / "lock").write_text("")  # as left by SIGTERM during torch's in-place build
    code = ("from adapt3d.models import cpu_kernels\n"
            "print(cpu_kernels.winograd_kernels() is not None, cpu_kernels.kernel_status())")
    env = {**os.environ, "ADAPT3D_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "compiled"]
