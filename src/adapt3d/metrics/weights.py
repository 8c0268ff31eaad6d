"""Public weight files of the metrics (LPIPS backbones and heads, the FID Inception): where each comes from, the
download cache, checksums and a weights-only loader. One implementation for every metric; the cache and the
downloads are :mod:`adapt3d.models.hub`'s (``<cache>/checkpoints/<filename>``, cache = ``$ADAPT3D_CACHE`` or
``~/.cache/adapt3d``; nothing is downloaded when ``ADAPT3D_OFFLINE`` or ``HF_HUB_OFFLINE`` is set).

A weights *spec* is one of: None (the metric's default file), a local path, a known name (e.g.
``"inception-2015-12-05"``) or an http(s) URL. Checks, in this order:

* a published sha256 (``WeightFile.sha256``) is enforced on download and on every load of that file;
* an explicit ``sha256`` (e.g. ``--inception-sha256``) is enforced for any spec, URL or path;
* a file named like torchvision's ``<name>-<hex>.pth`` must have a sha256 starting with those hex digits.

Files are read only with ``torch.load(weights_only=True)`` (plain tensors; no code runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from adapt3d.models import hub
from adapt3d.utils.torch_load import OldTorchError, load_weights_only

__all__ = [
    "WeightFile",
    "WeightsNotFoundError",
    "resolve_weight_file",
    "check_weight_file",
    "load_state_dict_file",
]


@dataclass(frozen=True)
class WeightFile:
    """A public weight file: known ``name``, download ``url``, cache ``filename``, published ``sha256`` (None when
    none is published), ``licence`` and a one-line ``description``."""

    name: str
    url: str
    filename: str
    sha256: str | None
    licence: str
    description: str

    @property
    def cache_path(self) -> Path:
        """Where the file lives (or will live) in the cache."""
        return (hub.cache_dir() / "checkpoints" / self.filename).absolute()


class WeightsNotFoundError(FileNotFoundError):
    """A metric's weight file is missing or could not be fetched; the message names it and where to get it."""


@contextlib.contextmanager
def _temporarily_registered(entry: WeightFile):
    """Register ``entry`` with the hub only for one lookup, so the generator-checkpoint registry (and its error
    messages listing known generators) stays unchanged."""
    previous = hub.known_checkpoints().get(entry.name)
    hub.register_checkpoint(entry.name, entry.url, entry.sha256, entry.filename, licence=entry.licence,
                            description=entry.description)
    try:
        yield
    finally:
        if previous is None:
            hub.unregister_checkpoint(entry.name)
        else:
            hub.register_checkpoint(previous.name, previous.url, previous.sha256, previous.filename,
                                    licence=previous.licence, description=previous.description)


def _url_entry(url: str, sha256: str | None) -> WeightFile:
    name = "url-" + hashlib.sha1(url.encode()).hexdigest()[:12]
    filename = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "weights.pth"
    return WeightFile(name, url, f"{name}-{filename}", sha256.lower() if sha256 else None, "",
                      "metric weights by URL")


def resolve_weight_file(spec: str | os.PathLike | None, default: WeightFile,
                        known: Mapping[str, WeightFile] | None = None, *, sha256: str | None = None,
                        error: type[WeightsNotFoundError] = WeightsNotFoundError,
                        explain: Callable[[str], str] | None = None) -> Path:
    """A local file for a weights spec (see the module docstring); downloads a known file or URL into the cache
    when allowed. Raises ``error(explain(detail))`` when the file is not available (``explain`` adds where to get
    it; by default the default file's name, URL and cache path)."""
    known = dict(known or {})
    known.setdefault(default.name, default)
    text = default.name if spec is None else os.fspath(spec)
    if re.match(r"^https?://", text):
        entry: WeightFile | None = _url_entry(text, sha256)
    else:
        entry = known.get(text)
    if explain is None:
        def explain(detail: str) -> str:
            return (f"{detail}. Get `{default.filename}` from {default.url} and put it at {default.cache_path} "
                    "(or pass its path)")
    try:
        if entry is None:
            return hub.resolve_checkpoint(Path(text))
        with _temporarily_registered(entry):
            return hub.resolve_checkpoint(entry.name)
    except hub.CheckpointNotFoundError as e:
        raise error(explain(f"weights {text!r} are not available ({e})")) from e
    except hub.CachedFileChangedError:  # its own message says how to download it again
        raise
    except hub.CheckpointDownloadError as e:
        raise error(explain(f"weights {text!r} could not be fetched ({e})")) from e


def check_weight_file(path: str | os.PathLike, sha256: str | None = None, *, what: str = "weights") -> str:
    """Hash ``path`` and check it against ``sha256`` (when given) and against the sha256 prefix a torchvision-style
    name ``<name>-<hex>.pth`` promises. Returns the file's sha256 (hex)."""
    path = Path(path)
    digest = hub.sha256_file(path)
    if sha256 is not None and digest != sha256.lower():
        raise hub.ChecksumMismatchError(f"{what}: {path} has sha256 {digest}, expected {sha256.lower()}; the file "
                                        "is corrupt or not the published one - delete it or pass the right file")
    match = re.search(r"-([0-9a-f]{8,64})\.pth$", path.name)
    if match and not digest.startswith(match.group(1)):
        raise hub.ChecksumMismatchError(f"{what}: {path}: its sha256 does not start with {match.group(1)} as its "
                                        "name promises; the file is corrupt or not the published one - delete it")
    return digest


def load_state_dict_file(path: str | os.PathLike, what: str) -> dict:
    """``torch.load(path, weights_only=True)`` onto the CPU; the result must be a dict (a state dict)."""
    path = Path(path)
    try:
        obj = load_weights_only(path, f"{what} {path}")
    except OldTorchError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for us
        raise ValueError(f"{what}: cannot read {path} as a weights-only torch file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: {path} holds a {type(obj).__name__}, expected a state dict")
    return obj
