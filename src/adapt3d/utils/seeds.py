"""Seeds derived from other seeds, identical in every process, run and machine. Two schemes, for two jobs:

- :func:`derive_seed` (training): a 63-bit seed from any printable parts, e.g. ``(seed, step, "Gmain", micro_batch)``;
  every random draw of a training step comes from it, so a resumed run continues exactly like an uninterrupted one.
- :func:`stream_seed` (dataset plans): a uint32 seed for item ``index`` of stream ``stream`` of a job seeded
  ``seed`` (numpy's ``SeedSequence``), independent across indices and streams; the per-image pose and diffusion
  seeds of make-dataset and instance adaptation.

Both are part of the reproducibility contract of existing run folders and datasets: changing either changes what
a resumed job produces.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["derive_seed", "stream_seed"]


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts (blake2b of their ``repr``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def stream_seed(seed: int, index: int, stream: int) -> int:
    """A uint32 seed for (job seed, index, stream): ``SeedSequence([seed mod 2**32, index, stream])``."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), int(stream)]).generate_state(1)[0])
