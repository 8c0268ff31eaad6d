"""Reading ``.pt`` files that may come from someone else: ``torch.load(weights_only=True)`` on a torch known safe.

adapt3d never unpickles a torch file with the full unpickler; every ``.pt`` it reads (the tensor storages inside
official EG3D pickles, ``training_state.pt``, ``latent.pt``, LPIPS/VGG and KCF weights) goes through
``load_weights_only``. That promise is only as good as torch's weights-only unpickler, which had published
vulnerabilities: code execution through ``weights_only=True`` up to torch 2.5.1 (CVE-2025-32434) and memory
corruption in the unpickler before 2.10. ``pyproject.toml`` therefore asks for ``torch>=2.10``, and on an older
torch (installed by hand) these files are refused with a message saying how to upgrade.
``ADAPT3D_ALLOW_OLD_TORCH=1`` lifts the refusal for files you made yourself (it logs a warning each time).
"""

from __future__ import annotations

import logging
import os
import re
from typing import IO, Any

import torch

__all__ = ["SAFE_TORCH", "ALLOW_OLD_TORCH_ENV", "OldTorchError", "torch_version", "require_safe_torch",
           "load_weights_only"]

#: The oldest torch whose weights-only unpickler has no published vulnerability (major, minor).
SAFE_TORCH = (2, 10)
ALLOW_OLD_TORCH_ENV = "ADAPT3D_ALLOW_OLD_TORCH"
logger = logging.getLogger("adapt3d")


class OldTorchError(RuntimeError):
    """The installed torch is too old to read files from elsewhere safely."""


def torch_version(text: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``torch.__version__`` (or ``text``): '2.5.1+cu121' -> (2, 5)."""
    found = re.match(r"(\d+)\.(\d+)", text if text is not None else str(torch.__version__))
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def require_safe_torch(what: str) -> None:
    """Raise ``OldTorchError`` naming ``what`` when torch is older than ``SAFE_TORCH``."""
    if torch_version() >= SAFE_TORCH:
        return
    need = ".".join(map(str, SAFE_TORCH))
    if os.environ.get(ALLOW_OLD_TORCH_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        logger.warning("adapt3d: reading %s with torch %s (older than %s) because %s is set: do this only for "
                       "files you made yourself", what, torch.__version__, need, ALLOW_OLD_TORCH_ENV)
        return
    raise OldTorchError(
        f"refusing to read {what} with torch {torch.__version__}: torch's weights-only unpickler before {need} has "
        f"published vulnerabilities (code execution up to 2.5.1, CVE-2025-32434; memory corruption before {need}). "
        f"Upgrade torch: pip install 'torch>={need}' (GPU users: the build for your CUDA version). For files you "
        f"made yourself you may set {ALLOW_OLD_TORCH_ENV}=1.")


def load_weights_only(source: str | os.PathLike | IO[bytes], what: str) -> Any:
    """``torch.load(source, map_location='cpu', weights_only=True)`` after ``require_safe_torch(what)``."""
    require_safe_torch(what)
    return torch.load(source, map_location="cpu", weights_only=True)
