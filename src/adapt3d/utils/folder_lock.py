"""One writer per output folder, and the sweep of temporary files that killed writers left behind.

:class:`FolderLock` is the lock every adapt3d job takes on its output folder before writing anything there::

    with FolderLock(out, job="finetune", flag="--out"):
        ...  # the only writer of ``out``

It is the file ``<folder>/.adapt3d.lock``, held with an exclusive ``flock`` and holding the holder's pid, host name,
job and start time (JSON). A second writer fails at once with ``FolderLockedError`` naming the holder ("... is being
written by adapt3d finetune, pid 1234 on host-a since ..."). A holder that died (kill -9, power loss) holds no
``flock`` any more, so the next job takes the lock over (the stale lock is recovered, whatever its pid file says).
On file systems without ``flock`` (some network mounts) the pid file decides: a lock of a live pid on this host is
respected, one of a dead pid is taken over; a lock from another host is respected (it cannot be checked).
The lock file is removed when the holder finishes, so a finished folder holds no lock.

Temporary files of adapt3d's writers carry the writer's pid (``.tmp-<name>-<pid>``, ``.old-<name>-<pid>``, and the
atomic writes' ``.<stem>.<pid>.<random><suffix>``); :func:`sweep_stale_temps` removes those whose pid is no longer
alive, so a live concurrent writer's temporaries are never touched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

__all__ = ["FolderLock", "FolderLockedError", "LOCK_NAME", "pid_alive", "sweep_stale_temps", "folder_lock",
           "job_folder", "temp_writer_pid", "writes_folder"]

LOCK_NAME = ".adapt3d.lock"


class FolderLockedError(ValueError):
    """Another live process writes the folder."""


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this machine (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    return True


def _holder_text(info: dict) -> str:
    started = info.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) \
        else ""
    return f"adapt3d {info.get('job', '?')}, pid {info.get('pid', '?')} on {info.get('host', '?')}{since}"


class FolderLock:
    """Exclusive writer lock of ``folder`` (see the module docstring). Re-entrant within one process."""

    _held: dict[str, "FolderLock"] = {}

    def __init__(self, folder: str | os.PathLike, job: str, flag: str = "--out", lock_name: str = LOCK_NAME):
        self.folder, self.job, self.flag = Path(folder), job, flag
        self.path = self.folder / lock_name
        self._fd: int | None = None
        self._outer: FolderLock | None = None
        self.recovered: dict | None = None  # the stale holder this lock took over, if any

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, info: dict) -> None:
        raise FolderLockedError(f"{self.flag}: {self.folder} is being written by {_holder_text(info)}; wait for it to "
                                f"finish or use another {self.flag} (if that process is gone, remove {self.path})")

    def acquire(self) -> "FolderLock":
        key = str(self.path.resolve())
        if key in FolderLock._held:  # this process already holds it (a job calling a job on the same folder)
            self._outer = FolderLock._held[key]
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            if locked is False:
                os.close(fd)
                self._refuse(self._read())
            previous = self._read()
            if locked is None and previous.get("pid") and previous.get("pid") != os.getpid():
                # no flock on this file system: the pid file decides
                if previous.get("host") != socket.gethostname() or pid_alive(int(previous["pid"])):
                    os.close(fd)
                    self._refuse(previous)
            try:  # the file we locked must still be the lock file (a finishing holder unlinks it)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.recovered = previous
        info = {"pid": os.getpid(), "host": socket.gethostname(), "job": self.job, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        FolderLock._held[key] = self
        return self

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True if locked, False if another process holds it, None if the file system has no flock."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise

    def release(self) -> None:
        if self._outer is not None or self._fd is None:
            self._outer = None
            return
        FolderLock._held.pop(str(self.path.resolve()), None)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # before unlocking: a waiting writer then finds no lock (or its own new one)
        os.close(self._fd)  # releases the flock
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, job: str, flag: str = "--out", enabled: bool = True,
                lock_name: str = LOCK_NAME):
    """``with folder_lock(out, "synth"):`` - :class:`FolderLock` (a no-op when not ``enabled``, e.g. rank > 0)."""
    if not enabled:
        yield None
        return
    lock = FolderLock(folder, job, flag, lock_name)
    with lock:
        yield lock


# -- temporary files of dead writers --------------------------------------------------------------------------------
# .tmp-<name>-<pid> / .old-<name>-<pid> (folders and files written then renamed), and the atomic writes'
# .<stem>.<pid>.<random><suffix> (see adapt3d.utils.io.atomic_path).
_TEMP_PATTERNS = (re.compile(r"^\.(?:tmp|old)-.+-(\d+)$"), re.compile(r"^\..+\.(\d+)\.tmp[A-Za-z0-9_]+(\..*)?$"))


def temp_writer_pid(name: str) -> int | None:
    """The writer pid a temporary file's name carries, or None if ``name`` is not an adapt3d temporary."""
    for pattern in _TEMP_PATTERNS:
        m = pattern.match(name)
        if m:
            return int(m.group(1))
    return None


def sweep_stale_temps(folder: str | os.PathLike, max_depth: int = 4) -> list[Path]:
    """Remove the temporary files and folders under ``folder`` (to ``max_depth`` levels) whose writer pid is dead
    on this host; returns what was removed. Temporaries of live processes (concurrent writers) stay."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed

    def walk(d: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        for e in entries:
            pid = temp_writer_pid(e.name)
            if pid is not None and pid != os.getpid() and not pid_alive(pid):
                p = Path(e.path)
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
                removed.append(p)
            elif depth > 0 and e.is_dir(follow_symlinks=False) and not e.name.startswith(".tmp-"):
                walk(Path(e.path), depth - 1)

    walk(folder, max_depth)
    return removed


@contextlib.contextmanager
def job_folder(out: str | os.PathLike, job: str, flag: str = "--out", enabled: bool = True,
               lock_name: str = LOCK_NAME):
    """What every job does around its work on ``out``: create it (checked writable), take its writer lock, sweep
    the temporaries of dead writers; a job that fails before writing anything leaves no folder behind.
    ``enabled=False`` (ranks > 0 of a multi-process run) only creates the folder."""
    from adapt3d.utils.io import check_output_folder, new_folder_removed_if_empty

    with new_folder_removed_if_empty(out):
        check_output_folder(out, flag)
        with folder_lock(out, job, flag, enabled=enabled, lock_name=lock_name) as lock:
            if enabled:
                sweep_stale_temps(out)
            yield lock


def writes_folder(job: str, folder_of=None, flag: str = "--out"):
    """Decorator of a command's ``run(cfg, ...)``: the command holds :func:`job_folder` on ``folder_of(cfg)``
    (default ``cfg.out``; None: no folder to lock) while it runs. Under torchrun only rank 0 takes the lock (the ranks share the folder)."""
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(cfg, *args, **kwargs):
            folder = folder_of(cfg) if folder_of is not None else cfg.out
            if folder is None:  # nothing to write to yet (e.g. a missing input folder): the job reports it
                return fn(cfg, *args, **kwargs)
            rank0 = int(os.environ.get("RANK", "0") or 0) == 0
            with job_folder(folder, job, flag, enabled=rank0):
                return fn(cfg, *args, **kwargs)
        return wrapper
    return deco
