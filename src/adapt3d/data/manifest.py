"""An append-only JSON-lines manifest that survives being killed at any moment.

Each :meth:`Manifest.append` writes one complete line (``json.dumps(record) + "\\n"``), flushes and fsyncs it. A
process killed mid-write leaves at most one torn last line; :meth:`Manifest.read` ignores a last line that does
not parse (and a reopen for appending first truncates it away), so a manifest never holds a partial record.
:meth:`Manifest.rewrite` replaces the whole file atomically (temp file + rename), e.g. to add final decisions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from adapt3d.utils.io import atomic_write_text

__all__ = ["Manifest", "ManifestError"]


class ManifestError(ValueError):
    """A manifest line other than the last one does not parse: the file was edited or corrupted."""


class Manifest:
    """JSON-lines records in ``path`` (created on the first append)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """All complete records, in file order. A torn (unparsable) LAST line is ignored."""
        if not self.path.is_file():
            return []
        records, lines = [], self.path.read_bytes().split(b"\n")
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                if n == len(lines) - 1:  # torn last line (no newline yet): the writer was killed
                    break
                raise ManifestError(f"{self.path}: line {n + 1} is not valid JSON ({e})") from e
            if not isinstance(rec, dict):
                raise ManifestError(f"{self.path}: line {n + 1} is not a JSON object")
            records.append(rec)
        return records

    def _drop_torn_tail(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (write, flush, fsync)."""
        line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        with open(self.path, "ab") as f:
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Atomically replace the file with ``records``."""
        text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
        atomic_write_text(self.path, text)
