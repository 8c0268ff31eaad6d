"""Atomic file output: a crash never leaves a half-written file that looks whole; output-folder checks."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

# Messages of write failures that, on a (nearly) full file system, mean "no space left": torch.save's zip writer
# ("unexpected pos", "file write failed"), safetensors' Rust I/O error, plain OSError text.
_WRITE_FAILURE_HINTS = ("no space left", "unexpected pos", "file write failed", "storagefull", "code: 28",
                        "disk quota")
_LOW_SPACE_BYTES = 64 << 20


class NoSpaceError(OSError):
    """A write failed because the file system holding ``filename`` is full (or over quota)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask(0) would race other threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _mount_point(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def no_space_error(exc: BaseException, path: str | os.PathLike) -> NoSpaceError | None:
    """``exc`` as a ``NoSpaceError`` naming ``path`` if it is a disk-full failure, else None.

    ENOSPC/EDQUOT are certain; torch's and safetensors' own write errors count when their text says so or when
    the file system has less than 64 MiB left (call this before deleting the partial file).
    """
    path = Path(path)
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    full = code in (errno.ENOSPC, errno.EDQUOT) or "no space left" in text or "disk quota" in text
    if not full and any(h in text for h in _WRITE_FAILURE_HINTS):
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(_mount_point(path)).free < _LOW_SPACE_BYTES
    if not full:
        return None
    mount = _mount_point(path)
    return NoSpaceError(errno.ENOSPC, f"no space left on {mount} (while writing {path}); free some space there "
                                      "or choose another output folder, then run again", str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temporary file keeps ``path``'s suffix (or ``suffix``) so that writers which pick a format from the
    extension (imageio, trimesh, PIL) still work, and gets the permissions a plain ``open(path, "w")`` would (0666
    less the umask). On any exception the temporary file is removed and ``path`` is left untouched; a write that
    failed because the disk is full is raised as ``NoSpaceError`` ("no space left on <mount point> ...").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets the mode a plain open() would give
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        full = no_space_error(exc, path) if isinstance(exc, Exception) else None  # measured before freeing space
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if full is not None:
            raise full from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_folder(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` onto ``dest``; an existing ``dest`` is moved aside first, then removed."""
    tmp, dest = Path(tmp), Path(dest)
    if dest.exists():
        old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def check_output_folder(out: str | os.PathLike, arg: str = "--out") -> Path:
    """Create ``out`` and prove it is writable, before any model is built; ValueError naming ``arg`` otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{arg}: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".adapt3d-write-test-{os.getpid()}"  # one probe per process: concurrent ranks do not race
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{arg}: cannot write to {out} ({e.strerror or e})") from e
    return out


def to_jsonable(value: Any) -> Any:
    """Plain JSON-friendly values, recursively: paths -> str, mappings -> dicts with str keys, tuples and lists ->
    lists, numpy / torch scalars -> Python numbers; anything else as it is."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):  # an array of several values: left as it is
            pass
    return value


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (memory stays O(chunk_bytes))."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def removed_on_error(folder: str | os.PathLike) -> Iterator[Path]:
    """Remove ``folder`` (a temporary folder being filled) if the block raises; the error propagates."""
    folder = Path(folder)
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def remove_empty_tree(root: str | os.PathLike) -> None:
    """Remove ``root`` and the folders below it that hold no file (bottom up); anything with a file stays."""
    root = Path(root)
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # fails (and is kept) unless empty


@contextlib.contextmanager
def new_folder_removed_if_empty(folder: str | os.PathLike | None) -> Iterator[None]:
    """If ``folder`` does not exist yet, remove it again (and its empty subfolders) when the block fails or leaves
    it empty: a command that fails early leaves no empty output folder behind."""
    existed = folder is None or Path(folder).exists()
    try:
        yield
    except BaseException:
        if not existed:
            remove_empty_tree(folder)
        raise
