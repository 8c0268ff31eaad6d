"""Known pretrained checkpoints and a small download cache.

``resolve_checkpoint("ffhq")`` returns the local path of the official EG3D FFHQ pickle, downloading it once into
the cache (``$ADAPT3D_CACHE`` or ``~/.cache/adapt3d``, file ``<cache>/checkpoints/<filename>``). An existing path is
returned unchanged. With ``ADAPT3D_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) nothing is downloaded and a missing file
raises ``CheckpointNotFoundError`` saying where to put it and where to get it.

Sources (URLs as used by NVlabs/eg3d's visualizer and by DATID-3D's scripts):

* official EG3D weights on NVIDIA NGC: ``https://api.ngc.nvidia.com/v2/models/nvidia/research/eg3d/versions/1/files/
  <filename>`` (model "Pretrained EG3D Models for FFHQ, AFHQ, and Shapenet Cars");
* DATID-3D's fine-tuned generators on Hugging Face: ``https://huggingface.co/gwang-kim/datid3d-finetuned-eg3d-models/
  resolve/main/finetuned_models/<filename>``.

Checksums: no published sha256 is known for any of these files, so entries carry ``sha256=None`` and the checksum
is *recorded on first download* (trust on first use) in ``<filename>.json`` next to the file (a file put into the
cache by hand is hashed and recorded on its first use). Every later use verifies the file against that sha256; the
hash is computed again only when the file's size, mtime or inode changed since the last verification (recorded in
the same JSON), so an unchanged cache costs one ``stat``. A mismatch refuses the file with a message saying how to
download it again. Entries registered with a sha256 are verified on download and a mismatch leaves nothing in the
cache.

Licences: the EG3D weights come with NVIDIA's non-commercial terms (research or evaluation only), and every
official pickle embeds NVIDIA source code: do not redistribute these files. DATID-3D's model card says apache-2.0,
but its models are fine-tuned from the NVIDIA weights and embed the same source, so treat them as non-commercial.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from adapt3d.utils.env import is_offline
from adapt3d.utils.io import atomic_path, atomic_write_json, sha256_file

__all__ = [
    "KnownCheckpoint",
    "CheckpointNotFoundError",
    "CheckpointDownloadError",
    "ChecksumMismatchError",
    "CachedFileChangedError",
    "register_checkpoint",
    "unregister_checkpoint",
    "known_checkpoints",
    "get_checkpoint",
    "cache_dir",
    "cached_checkpoint_path",
    "is_offline",
    "resolve_checkpoint",
    "sha256_file",
]

NGC_URL = "https://api.ngc.nvidia.com/v2/models/nvidia/research/eg3d/versions/1/files/{filename}"
DATID3D_URL = "https://huggingface.co/gwang-kim/datid3d-finetuned-eg3d-models/resolve/main/finetuned_models/{filename}"

NVIDIA_LICENCE = ("NVIDIA Source Code License for EG3D: non-commercial use only (research or evaluation); the pickle "
                  "embeds NVIDIA source code - do not redistribute. See the NGC model page for the weights' terms.")
DATID3D_LICENCE = ("Model card says apache-2.0, but the model is fine-tuned from NVIDIA's EG3D weights and embeds "
                   "NVIDIA source code: treat it as non-commercial (NVIDIA Source Code License for EG3D).")

_CHUNK = 1 << 20


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint is neither on disk nor downloadable (unknown name, offline mode, missing path)."""


class CheckpointDownloadError(RuntimeError):
    """A download failed or was incomplete; nothing was left in the cache."""


class ChecksumMismatchError(CheckpointDownloadError):
    """A downloaded (or cached) file does not have the expected sha256 / size."""


class CachedFileChangedError(ChecksumMismatchError):
    """A file in the cache no longer matches the sha256 it was verified with (corrupted or tampered with)."""


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    filename: str
    url: str
    sha256: str | None  # None: not published; recorded on first download (trust on first use)
    licence: str
    description: str = ""


_REGISTRY: dict[str, KnownCheckpoint] = {}


def checkpoint_key(name: str) -> str:
    """The registry key of a checkpoint name: stripped, lower case, '_' as '-' (``Cat_in_Zootopia`` ->
    ``cat-in-zootopia``)."""
    return name.strip().lower().replace("_", "-")


def register_checkpoint(name: str, url: str, sha256: str | None = None, filename: str | None = None, *,
                        licence: str = "", description: str = "") -> KnownCheckpoint:
    """Add (or replace) a named checkpoint. ``filename`` defaults to the last URL path component."""
    filename = filename or url.rstrip("/").rsplit("/", 1)[-1]
    if not filename or "/" in filename or "\\" in filename or filename in (".", ".."):
        raise ValueError(f"`filename` must be a plain file name, got {filename!r}")
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise ValueError(f"`sha256` must be 64 hex digits or None, got {sha256!r}")
    entry = KnownCheckpoint(checkpoint_key(name), filename, url, sha256.lower() if sha256 else None, licence,
                            description)
    _REGISTRY[entry.name] = entry
    return entry


def unregister_checkpoint(name: str) -> None:
    _REGISTRY.pop(checkpoint_key(name), None)


def known_checkpoints() -> dict[str, KnownCheckpoint]:
    return dict(_REGISTRY)


def get_checkpoint(name: str) -> KnownCheckpoint:
    try:
        return _REGISTRY[checkpoint_key(name)]
    except KeyError:
        raise CheckpointNotFoundError(f"unknown checkpoint {name!r} (not a known name and not an existing file). "
                                      f"Known names: {', '.join(sorted(_REGISTRY))}") from None


for _name, _file, _desc in (
        ("ffhq", "ffhqrebalanced512-128.pkl", "EG3D FFHQ (rebalanced), 512 px, neural rendering 128"),
        ("afhq", "afhqcats512-128.pkl", "EG3D AFHQv2 cats, 512 px, neural rendering 128"),
        ("shapenet", "shapenetcars128-64.pkl", "EG3D ShapeNet cars, 128 px, neural rendering 64")):
    register_checkpoint(_name, NGC_URL.format(filename=_file), None, _file, licence=NVIDIA_LICENCE,
                        description=_desc)
for _file in ("ffhq-elf", "ffhq-greek_statue", "ffhq-hobbit", "ffhq-lego", "ffhq-masquerade", "ffhq-neanderthal",
              "ffhq-orc", "ffhq-pixar", "ffhq-skeleton", "ffhq-stone_golem", "ffhq-super_mario", "ffhq-tekken",
              "ffhq-yoda", "ffhq-zombie", "cat-cat_in_Zootopia", "cat-fox_in_Zootopia", "cat-golden_aluminum_animal"):
    _base, _domain = _file.split("-", 1)
    register_checkpoint(f"datid3d-{_domain}", DATID3D_URL.format(filename=f"{_file}.pkl"), None, f"{_file}.pkl",
                        licence=DATID3D_LICENCE,
                        description=f"DATID-3D fine-tuned EG3D ({'FFHQ' if _base == 'ffhq' else 'AFHQ cats'} "
                                    f"source): {_domain}")


def cache_dir() -> Path:
    """``$ADAPT3D_CACHE`` or ``~/.cache/adapt3d``."""
    env = os.environ.get("ADAPT3D_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adapt3d"


def cached_checkpoint_path(name: str, root: str | Path | None = None) -> Path:
    """Where the named checkpoint lives (or will live) in the cache."""
    base = Path(root) if root is not None else cache_dir()
    return (base / "checkpoints" / get_checkpoint(name).filename).absolute()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_sidecar(path: Path) -> dict:
    try:
        record = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _stamp(path: Path, sha256: str) -> dict:
    """What a verified file looked like: re-hashing is skipped while size, mtime and inode stay the same."""
    st = path.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _save_sidecar(path: Path, record: dict) -> None:
    try:
        atomic_write_json(_sidecar(path), record)
    except OSError:  # a read-only cache: verification still happened, it is just not remembered
        pass


def _check_cached(entry: KnownCheckpoint, path: Path, verify: bool) -> None:
    """Verify a cached file against the known or recorded sha256 (hashed again only when the file changed).

    A file with no record (put there by hand, as the offline message says) is hashed and recorded now: trust on
    first use, like a download.
    """
    record = _read_sidecar(path)
    expected = entry.sha256 or record.get("sha256")
    if not (isinstance(expected, str) and len(expected) == 64):
        record.update(name=entry.name, url=entry.url, sha256=sha256_file(path), size=path.stat().st_size,
                      sha256_source="recorded on first use (file placed in the cache by hand)")
        record["verified"] = _stamp(path, record["sha256"])
        _save_sidecar(path, record)
        return
    if not verify and record.get("verified") == _stamp(path, expected):
        return
    size = record.get("size")
    actual_size = path.stat().st_size
    digest = sha256_file(path) if not (isinstance(size, int) and actual_size != size) else None
    if digest != expected:
        what = (f"has {actual_size} bytes, {size} were downloaded" if digest is None else
                f"has sha256 {digest[:16]}..., not the {expected[:16]}... "
                f"{'published' if entry.sha256 else 'recorded when it was first downloaded'}")
        raise CachedFileChangedError(
            f"cached checkpoint {path} {what}: it changed on disk (corruption or tampering) and is not used. To "
            f"download it again, delete it (rm {path}) and run the command again; the new copy is checked against "
            f"the same sha256. If you replaced it on purpose, delete {_sidecar(path)} too.")
    record["verified"] = _stamp(path, expected)
    _save_sidecar(path, record)


def _recorded_sha256(path: Path) -> str | None:
    try:
        value = json.loads(_sidecar(path).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) == 64 else None


def _download(entry: KnownCheckpoint, dest: Path, progress: bool, timeout: float) -> None:
    from tqdm.auto import tqdm

    # Trust on first use: without a published checksum, a re-download must match the one recorded earlier.
    expected = entry.sha256 or _recorded_sha256(dest)

    request = urllib.request.Request(entry.url, headers={"User-Agent": "adapt3d"})
    h = hashlib.sha256()
    received = 0
    try:
        with atomic_path(dest) as tmp, urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                            desc=entry.filename, disable=not progress, leave=False) as bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            if total is not None and received != total:
                raise CheckpointDownloadError(f"incomplete download of {entry.url}: got {received} of {total} "
                                              "bytes; nothing was written to the cache")
            digest = h.hexdigest()
            if expected is not None and digest != expected:
                raise ChecksumMismatchError(f"sha256 mismatch for {entry.url}: expected {expected}, got {digest}; "
                                            "the download was discarded")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise CheckpointDownloadError(f"could not download {entry.name!r} from {entry.url}: {exc}; nothing was "
                                      f"written to the cache. You can download it yourself and put it at {dest}"
                                      ) from exc
    atomic_write_json(_sidecar(dest), {"name": entry.name, "url": entry.url, "sha256": digest, "size": received,
                                       "sha256_source": "registry" if entry.sha256 else "recorded on first download",
                                       "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       "verified": _stamp(dest, digest)})


def resolve_checkpoint(name_or_path: str | os.PathLike, *, cache: str | Path | None = None,
                       offline: bool | None = None, progress: bool = True, verify: bool = False,
                       timeout: float = 60.0) -> Path:
    """Return a local file for ``name_or_path``: an existing path as is, or a known name from/into the cache.

    ``offline`` defaults to ``is_offline()`` (``ADAPT3D_OFFLINE`` / ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``).
    A cached file is verified against the known or recorded sha256 (re-hashed only when it changed on disk;
    ``verify=True`` always re-hashes).
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    text = os.fspath(name_or_path)
    if checkpoint_key(text) not in _REGISTRY:
        if isinstance(name_or_path, os.PathLike) or os.sep in text or text.endswith((".pkl", ".pt", ".pth")):
            raise CheckpointNotFoundError(f"checkpoint file not found: {candidate.absolute()} (known names: "
                                          f"{', '.join(sorted(_REGISTRY))})")
        get_checkpoint(text)  # raises with the list of known names
    entry = get_checkpoint(text)
    path = cached_checkpoint_path(entry.name, cache)
    if path.is_file():
        _check_cached(entry, path, verify)
        return path
    if offline if offline is not None else is_offline():
        raise CheckpointNotFoundError(
            f"checkpoint {entry.name!r} is not in the cache and downloads are disabled (ADAPT3D_OFFLINE / "
            f"HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE). Put the file at: {path}  -- get it from: {entry.url}  "
            f"(licence: {entry.licence})")
    _download(entry, path, progress, timeout)
    return path
