"""Job identity: what a job's outputs depend on, recorded in its folder and compared when it is run again.

Every job that writes a folder records an *identity*: the options that change its outputs (options that do not,
such as ``--num-workers``, ``--progress``, ``--device`` or the ones that only extend the work, are left out by the
job) plus content digests of its inputs (a dataset's files, a mesh list, a checkpoint). On a rerun the job compares
the recorded identity with the new one and then resumes exactly, redoes the stale part, or refuses with
:func:`identity_error`, which names every changed option with its old and new value. Nothing is ever mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["content_digest", "identity_changes", "identity_error", "check_identity", "input_digests"]


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative paths and bytes, sorted; hidden files such as
    temporaries and locks are left out). ``"missing"`` when ``path`` does not exist."""
    path = Path(path)
    if path.is_file():
        from adapt3d.utils.io import sha256_file
        return sha256_file(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            p = Path(root) / name
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:28] + "..." + text[-28:]


def identity_changes(old: dict, new: dict) -> list[str]:
    """The keys whose values differ between two identities, sorted."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))  # compare as they are stored (JSON)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def identity_error(folder: str | os.PathLike, job: str, old: dict, new: dict, flag: str = "--out",
                   what: str | None = None) -> ValueError:
    """The refusal of a rerun with changed options: names each changed option with its old and new value."""
    keys = identity_changes(old, new)
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    changes = "; ".join(f"{k}: {_short(old.get(k, '(not set)'))} now {_short(new.get(k, '(not set)'))}"
                        for k in keys)
    return ValueError(f"{flag}: {folder} holds {what or f'an adapt3d {job} run'} with other options (differences: "
                      f"{', '.join(keys)}): {changes}. Rerun with the same options to resume it, or use a new {flag}")


def check_identity(folder: str | os.PathLike, job: str, old: dict | None, new: dict, flag: str = "--out") -> None:
    """Raise :func:`identity_error` when a recorded identity ``old`` differs from ``new`` (None: nothing recorded)."""
    if old is not None and identity_changes(old, new):
        raise identity_error(folder, job, old, new, flag)


def input_digests(**inputs: str | os.PathLike | None) -> dict[str, str]:
    """``{"<name>_sha256": digest}`` for each input that is a local path: a checkpoint folder by its checkpoint.json
    (which records the sha256 of every weight file), any other folder or file by :func:`content_digest`. Inputs that
    are not local paths (None, a known model name, a hub id) are left out: their name is already an option."""
    out = {}
    for name, value in inputs.items():
        if value is None:
            continue
        path = Path(value).expanduser()
        if not path.exists():
            continue
        if path.is_dir() and (path / "checkpoint.json").is_file():
            path = path / "checkpoint.json"
        out[f"{name}_sha256"] = content_digest(path)
    return out
