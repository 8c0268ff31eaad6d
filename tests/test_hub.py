"""Known checkpoints and the download cache (adapt3d.models.hub), against a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path
from typing import Iterator

import pytest

from adapt3d.models import hub
from adapt3d.utils.env import OFFLINE_VARIABLES
from adapt3d.models.hub import (
    CheckpointDownloadError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    register_checkpoint,
    resolve_checkpoint,
    unregister_checkpoint,
)

_SHARED = os.environ.get("ADAPT3D_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared"
FIXTURES = Path(_SHARED) / "fixtures" / "eg3d"
FIXTURE = FIXTURES / "shapenet128_tiny.pkl"


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/partial/") or self.path.startswith("/nolength/"):
            data = (Path(self.directory) / self.path.rsplit("/", 1)[1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if self.path.startswith("/partial/"):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # then the connection closes mid-way
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, str]:
    served = tmp_path / "served"
    served.mkdir()
    data = FIXTURE.read_bytes() if FIXTURE.is_file() else b"\x80\x04" + bytes(range(256)) * 4096
    (served / "net.pkl").write_bytes(data)
    return served, hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(payload) -> Iterator[tuple[str, http.server.ThreadingHTTPServer]]:
    handler = functools.partial(_Handler, directory=str(payload[0]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ADAPT3D_CACHE", str(cache))
    for var in OFFLINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    yield cache
    for name in ("test-net", "test-bad", "test-partial", "test-nolength", "test-offline"):
        unregister_checkpoint(name)


def _cache_files(cache: Path) -> set[str]:
    return {p.name for p in (cache / "checkpoints").glob("*")} if (cache / "checkpoints").exists() else set()


def test_registry_has_official_and_datid3d_entries() -> None:
    known = hub.known_checkpoints()
    assert known["ffhq"].filename == "ffhqrebalanced512-128.pkl"
    assert known["afhq"].filename == "afhqcats512-128.pkl"
    assert known["shapenet"].url == ("https://api.ngc.nvidia.com/v2/models/nvidia/research/eg3d/versions/1/files/"
                                     "shapenetcars128-64.pkl")
    assert known["datid3d-pixar"].url.endswith("/resolve/main/finetuned_models/ffhq-pixar.pkl")
    assert known["datid3d-cat-in-zootopia"].filename == "cat-cat_in_Zootopia.pkl"
    assert len([k for k in known if k.startswith("datid3d-")]) == 17
    assert all(e.sha256 is None for e in known.values())  # none published: recorded on first download
    assert all("non-commercial" in e.licence for e in known.values())
    assert hub.get_checkpoint("DATID3D-Greek_Statue").filename == "ffhq-greek_statue.pkl"


def test_download_verify_cache_then_offline(env: Path, server, payload, monkeypatch) -> None:
    base, httpd = server
    register_checkpoint("test-net", f"{base}/net.pkl", payload[1], "net.pkl")
    path = resolve_checkpoint("test-net", progress=False)
    assert path == (env / "checkpoints" / "net.pkl").absolute()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == payload[1]
    record = json.loads((path.parent / "net.pkl.json").read_text())
    assert record["sha256"] == payload[1] and record["size"] == path.stat().st_size
    assert _cache_files(env) == {"net.pkl", "net.pkl.json"}
    # server gone + offline: served from the cache
    httpd.shutdown()
    monkeypatch.setenv("ADAPT3D_OFFLINE", "1")
    assert resolve_checkpoint("test-net", progress=False, verify=True) == path
    # an existing path is returned as is
    assert resolve_checkpoint(path) == path and resolve_checkpoint(str(path)) == path


def test_trust_on_first_use_records_checksum(env: Path, server, payload) -> None:
    base, _ = server
    register_checkpoint("test-net", f"{base}/net.pkl", None, "net.pkl")
    path = resolve_checkpoint("test-net", progress=False)
    record = json.loads((path.parent / "net.pkl.json").read_text())
    assert record["sha256"] == payload[1] and record["sha256_source"] == "recorded on first download"
    # a cached file that changed size is reported instead of used
    path.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatchError, match="delete it"):
        resolve_checkpoint("test-net", progress=False)
    # re-downloading must match the checksum recorded the first time
    path.unlink()
    (payload[0] / "net.pkl").write_bytes(b"\x80\x04 a different file")
    with pytest.raises(ChecksumMismatchError):
        resolve_checkpoint("test-net", progress=False)
    assert _cache_files(env) == {"net.pkl.json"}


def test_wrong_sha256_leaves_nothing(env: Path, server) -> None:
    base, _ = server
    register_checkpoint("test-bad", f"{base}/net.pkl", "0" * 64, "bad.pkl")
    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch") as exc:
        resolve_checkpoint("test-bad", progress=False)
    assert "0" * 64 in str(exc.value)
    assert _cache_files(env) == set()


def test_offline_without_cache_says_where_to_put_the_file(env: Path, monkeypatch) -> None:
    register_checkpoint("test-offline", "https://example.invalid/models/offline.pkl", None)
    monkeypatch.setattr(hub, "_download", lambda *a, **k: pytest.fail("downloaded although offline"))
    for var in ("ADAPT3D_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # each alone means offline
        for other in OFFLINE_VARIABLES:
            monkeypatch.delenv(other, raising=False)
        monkeypatch.setenv(var, "1")
        with pytest.raises(CheckpointNotFoundError) as exc:
            resolve_checkpoint("test-offline")
        msg = str(exc.value)
        assert str((env / "checkpoints" / "offline.pkl").absolute()) in msg
        assert "https://example.invalid/models/offline.pkl" in msg
    with pytest.raises(CheckpointNotFoundError, match="ffhqrebalanced512-128.pkl"):
        resolve_checkpoint("ffhq")


@pytest.mark.parametrize("route", ["partial", "nolength"])
def test_interrupted_download_leaves_no_whole_looking_file(env: Path, server, payload, route: str) -> None:
    base, _ = server
    # "partial": Content-Length sent, so the short read is detected even without a checksum;
    # "nolength": no Content-Length, so the known sha256 catches it.
    sha = payload[1] if route == "nolength" else None
    register_checkpoint(f"test-{route}", f"{base}/{route}/net.pkl", sha, "net.pkl")
    with pytest.raises(CheckpointDownloadError) as exc:
        resolve_checkpoint(f"test-{route}", progress=False)
    assert ("sha256 mismatch" if route == "nolength" else "incomplete download") in str(exc.value)
    assert _cache_files(env) == set()


def test_unknown_name_and_missing_path(env: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="Known names: .*ffhq"):
        resolve_checkpoint("no-such-model")
    with pytest.raises(CheckpointNotFoundError, match="file not found"):
        resolve_checkpoint(tmp_path / "missing.pkl")
    with pytest.raises(ValueError):
        register_checkpoint("test-net", "http://x/y.pkl", "abc")
    with pytest.raises(ValueError):
        register_checkpoint("test-net", "http://x/y.pkl", None, "../evil.pkl")


def test_http_error_is_reported(env: Path, server) -> None:
    base, _ = server
    register_checkpoint("test-net", f"{base}/does-not-exist.pkl", None, "net.pkl")
    with pytest.raises(CheckpointDownloadError, match="404"):
        resolve_checkpoint("test-net", progress=False)
    assert _cache_files(env) == set()


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(path, "r+b") as f:  # in place: same size, same inode
        f.write(data)


def test_a_tampered_cached_file_of_the_same_size_is_refused(env: Path, server, payload, monkeypatch) -> None:
    base, _ = server
    register_checkpoint("test-net", f"{base}/net.pkl", None, "net.pkl")
    path = resolve_checkpoint("test-net", progress=False)
    size = path.stat().st_size
    _flip_one_byte(path)
    assert path.stat().st_size == size
    with pytest.raises(ChecksumMismatchError) as exc:
        resolve_checkpoint("test-net", progress=False)
    msg = str(exc.value)
    assert f"rm {path}" in msg and "download it again" in msg and payload[1][:16] in msg


def test_verification_is_cached_by_size_mtime_and_inode(env: Path, server, payload, monkeypatch) -> None:
    base, _ = server
    register_checkpoint("test-net", f"{base}/net.pkl", None, "net.pkl")
    path = resolve_checkpoint("test-net", progress=False)
    calls = []
    real = hub.sha256_file
    monkeypatch.setattr(hub, "sha256_file", lambda p: calls.append(p) or real(p))
    for _ in range(3):  # unchanged since the download: a stat, no hashing
        assert resolve_checkpoint("test-net", progress=False) == path
    assert calls == []
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touched: hashed once again
    resolve_checkpoint("test-net", progress=False)
    resolve_checkpoint("test-net", progress=False)
    assert len(calls) == 1
    resolve_checkpoint("test-net", progress=False, verify=True)  # verify=True always hashes
    assert len(calls) == 2


def test_a_file_placed_by_hand_is_recorded_on_first_use_then_verified(env: Path, payload) -> None:
    register_checkpoint("test-offline", "https://example.invalid/models/net.pkl", None, "net.pkl")
    path = env / "checkpoints" / "net.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes((payload[0] / "net.pkl").read_bytes())
    assert resolve_checkpoint("test-offline", offline=True) == path.absolute()
    record = json.loads((path.parent / "net.pkl.json").read_text())
    assert record["sha256"] == payload[1] and "first use" in record["sha256_source"]
    _flip_one_byte(path)
    with pytest.raises(ChecksumMismatchError, match="changed on disk"):
        resolve_checkpoint("test-offline", offline=True)
