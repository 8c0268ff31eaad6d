"""What the studio may read: files under the runs folder only, run folders and their summaries, uploads.

Every path that comes from the browser goes through :func:`resolve_under`: the relative path is joined to the
runs root, resolved (symlinks followed, ``..`` collapsed) and must still lie inside the resolved root. Uploads
are checked by size, decoded with PIL (PNG, JPEG, WebP, BMP only), limited in pixels, and stored re-encoded as
PNG under ``RUNS/uploads/`` named by their content hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

from adapt3d.utils.io import atomic_write_bytes

__all__ = ["PathRefused", "UploadRefused", "resolve_under", "list_runs", "run_detail", "find_checkpoints",
           "find_latents", "save_upload", "UPLOAD_FORMATS", "walk"]

UPLOAD_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "BMP": "image/bmp"}
_IMAGE = (".png", ".jpg", ".jpeg", ".webp", ".gif")
_VIDEO = (".mp4", ".webm", ".gif")
_MESH = (".ply", ".obj", ".glb")
_REPORT = (".html",)
_SUMMARY_BYTES = 20000


class PathRefused(PermissionError):
    """A browser-supplied path that leaves the runs folder (HTTP 403)."""


class UploadRefused(ValueError):
    """An upload that is too large, not an image, or has too many pixels (HTTP 400/413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def resolve_under(root: Path, rel: str, must_exist: bool = True) -> Path:
    """``root / rel`` resolved; PathRefused unless it lies inside ``root`` (after following symlinks)."""
    root = Path(root).resolve()
    if "\x00" in rel:
        raise PathRefused("path contains a NUL byte")
    candidate = (root / rel.lstrip("/")) if not os.path.isabs(rel) else Path(rel)
    try:
        resolved = candidate.resolve()  # where it points, existing or not: refuse escapes before anything else
    except (OSError, RuntimeError) as e:  # symlink loops and the like
        raise PathRefused(f"{rel}: cannot be resolved ({e})") from e
    if not resolved.is_relative_to(root):
        raise PathRefused(f"{rel}: outside the runs folder")
    if must_exist and not resolved.exists():
        raise FileNotFoundError(f"{rel}: not found under the runs folder")
    return resolved


def walk(root: Path, max_depth: int):
    """os.walk limited to ``max_depth`` levels below ``root``, skipping hidden folders, sorted."""
    base = len(root.parts)
    for folder, dirs, files in os.walk(root):
        if len(Path(folder).parts) - base >= max_depth:
            dirs[:] = []
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(folder), dirs, sorted(f for f in files if not f.startswith("."))


def _is_run(files: list[str]) -> bool:
    return any(f.endswith(".json") for f in files)


def list_runs(root: Path, max_depth: int = 3) -> list[dict]:
    """Run folders under ``root``: folders (up to ``max_depth`` deep) holding a JSON summary (``*.json``, e.g.
    options.json, render.json, studio_job.json). Sub-folders of a run are part of it, not runs of their own."""
    root = Path(root).resolve()
    runs = []
    for folder, dirs, files in walk(root, max_depth):
        if folder == root or not _is_run(files):
            continue
        dirs[:] = []
        job = _read_json(folder / "studio_job.json")
        runs.append({"id": folder.relative_to(root).as_posix(), "modified": _mtime(folder, files),
                     "summaries": [f for f in files if f.endswith(".json")],
                     "status": job.get("status") if isinstance(job, dict) else None,
                     "command": job.get("name") if isinstance(job, dict) else None})
    return sorted(runs, key=lambda r: -r["modified"])


def _mtime(folder: Path, files: list[str]) -> float:
    times = [folder.stat().st_mtime]
    for f in files:
        try:
            times.append((folder / f).stat().st_mtime)
        except OSError:
            pass
    return max(times)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_detail(root: Path, rel: str, max_files: int = 200) -> dict:
    """Summaries (JSON text, shortened), images, videos, meshes, reports and checkpoints of one run folder."""
    root = Path(root).resolve()
    folder = resolve_under(root, rel)
    if not folder.is_dir():
        raise FileNotFoundError(f"{rel}: not a run folder")
    out = {"id": folder.relative_to(root).as_posix(), "summaries": {}, "images": [], "videos": [], "meshes": [],
           "reports": [], "checkpoints": [], "latents": [], "other": []}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json") and (folder / name).is_file():
            text = (folder / name).read_text(encoding="utf-8", errors="replace")
            out["summaries"][name] = text if len(text) <= _SUMMARY_BYTES else text[:_SUMMARY_BYTES] + "\n..."
    count = 0
    for sub, dirs, files in walk(folder, 4):
        if "checkpoint.json" in files:
            out["checkpoints"].append(sub.relative_to(root).as_posix())
        for name in files:
            path = sub / name
            relp = path.relative_to(root).as_posix()
            low = name.lower()
            kind = ("images" if low.endswith(_IMAGE) and not low.endswith(".gif") else
                    "videos" if low.endswith(_VIDEO) else "meshes" if low.endswith(_MESH) else
                    "reports" if low.endswith(_REPORT) else "latents" if name == "latent.pt" else None)
            if kind is None:
                continue
            count += 1
            if count > max_files:
                out["truncated"] = True
                break
            try:
                out[kind].append({"path": relp, "mtime": path.stat().st_mtime, "bytes": path.stat().st_size})
            except OSError:
                continue
    out["images"].sort(key=lambda f: -f["mtime"])
    return out


def find_checkpoints(root: Path, max_depth: int = 5) -> list[str]:
    """adapt3d checkpoint folders (checkpoint.json) and EG3D pickles under the runs root, relative paths."""
    root = Path(root).resolve()
    found = []
    for folder, _dirs, files in walk(root, max_depth):
        if "checkpoint.json" in files:
            found.append(folder.relative_to(root).as_posix())
        found += [(folder / f).relative_to(root).as_posix() for f in files if f.endswith(".pkl")]
    return found


def find_latents(root: Path, max_depth: int = 5) -> list[str]:
    """Inverted latents (``latent.pt`` written by ``adapt3d invert``) under the runs root, relative paths."""
    root = Path(root).resolve()
    return [(folder / "latent.pt").relative_to(root).as_posix()
            for folder, _d, files in walk(root, max_depth) if "latent.pt" in files]


def save_upload(root: Path, data: bytes, content_type: str, max_bytes: int, max_pixels: int) -> dict:
    """Check and store an uploaded image; returns its path (relative to ``root``), size and format."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise UploadRefused(f"upload of {len(data)} bytes is larger than the limit of {max_bytes} bytes", 413)
    if not data:
        raise UploadRefused("empty upload; send the image file's bytes")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in UPLOAD_FORMATS.values():
        raise UploadRefused(f"Content-Type {ctype or '(none)'!r} is not an accepted image type "
                            f"({', '.join(UPLOAD_FORMATS.values())})", 415)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in UPLOAD_FORMATS:
                raise UploadRefused(f"the file is {im.format}, not one of {', '.join(UPLOAD_FORMATS)}", 415)
            width, height = im.size
            if width * height > max_pixels:
                raise UploadRefused(f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
                                    f"{max_pixels} pixels", 413)
            im.load()
            rgb = im.convert("RGB")
            fmt = im.format
    except UploadRefused:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UploadRefused(f"the file is not a readable image ({type(e).__name__}: {e})", 415) from e
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = Path(root).resolve() / "uploads" / f"{digest}.png"
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(
        {"kind": "adapt3d studio upload", "format": fmt, "width": width, "height": height, "bytes": len(data),
         "sha256": hashlib.sha256(data).hexdigest(), "uploaded": time.time()}, indent=2).encode())
    return {"path": path.relative_to(Path(root).resolve()).as_posix(), "width": width, "height": height,
            "format": fmt}
