"""Environment switches read by several layers, each read in one place."""

from __future__ import annotations

import os

__all__ = ["OFFLINE_VARIABLES", "is_offline"]

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ADAPT3D_OFFLINE")
"""Any of these set to 1 / true / yes / on turns every download off (Hugging Face weights and known checkpoints)."""


def is_offline() -> bool:
    """True when any of :data:`OFFLINE_VARIABLES` is set to a true value (1, true, yes, on; any case)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)
