"""Errors a user can act on, as one line: what ``adapt3d <command>`` prints instead of a traceback.

``user_error_message(exc)`` returns that line, or None for an unexpected error (a bug: the traceback is shown).
``--debug`` (anywhere on the command line) or ``ADAPT3D_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import errno
import os
from typing import Sequence

__all__ = ["DEBUG_FLAG", "DEBUG_ENV", "split_debug_flag", "user_error_message"]

DEBUG_FLAG = "--debug"
DEBUG_ENV = "ADAPT3D_DEBUG"
_OOM_HINTS = ("can't allocate memory", "out of memory", "not enough memory", "bad_alloc")


def split_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(argv without ``--debug``, whether tracebacks were asked for by the flag or ``ADAPT3D_DEBUG``)."""
    args = list(argv)
    debug = DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return [a for a in args if a != DEBUG_FLAG], debug


def _os_error(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        from adapt3d.utils.io import NoSpaceError
        return str(exc) if isinstance(exc, NoSpaceError) else f"no space left on device (writing{where})"
    if exc.strerror:
        return f"{exc.strerror}:{where}" if where else exc.strerror
    return str(exc) or type(exc).__name__


def user_error_message(exc: BaseException) -> str | None:
    """One line for an error the user can fix (bad option, missing or corrupt file, failed download, full disk, too
    little memory, too old torch), or None for an unexpected one."""
    from adapt3d.models.hub import CheckpointDownloadError
    from adapt3d.utils.torch_load import OldTorchError

    # our validation errors name the option already; a failed download or a tampered cached file says what to do
    if isinstance(exc, (ValueError, OldTorchError, CheckpointDownloadError)):
        return str(exc)
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError)
                                        and any(h in str(exc).lower() for h in _OOM_HINTS)):
        return ("out of memory: the job needs more memory than this machine has free; use smaller settings "
                "(--batch-size, resolution, --num-images) or close other programs")
    if type(exc).__name__ == "SafetensorError":
        return f"corrupt or unreadable .safetensors file ({exc})"
    return None
