"""adapt3d studio without a browser: forms from config dataclasses, validation, job processes and their state,
progress parsing, safe paths, uploads, the HTTP API (traversal, host/origin checks) and live renders."""

from __future__ import annotations

import http.client
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import tyro
from PIL import Image

from adapt3d.pipelines.convert import ConvertConfig
from adapt3d.pipelines.render import RenderConfig, render
from adapt3d.studio.command import StudioConfig, build_server, validate
from adapt3d.studio.files import PathRefused, UploadRefused, resolve_under, save_upload
from adapt3d.studio.forms import FieldError, check_job, find_validator, form_argv, form_fields
from adapt3d.studio.jobs import JOB_FILE, JobManager, latest_image, log_tail, parse_progress, read_job


# ------------------------------------------------------------------------------------------------------ forms
@dataclass
class _ToyConfig:
    """A toy job."""

    src: tyro.conf.Positional[str]
    """Input file."""
    out: Path = Path("runs/toy")
    """Output folder."""
    count: int = 3
    scale: float | None = None
    """Scale (None = auto)."""
    mode: Literal["fast", "good"] = "fast"
    words: tuple[str, ...] = ()
    pair: tuple[float, float] = (0.0, 1.0)
    flag: bool = True


def validate_toy(cfg: _ToyConfig, strict: bool = False) -> None:
    if cfg.count > 10:
        raise ValueError(f"--count: {cfg.count} is more than 10")


def test_form_fields_mirror_the_dataclass():
    fields = {f.name: f for f in form_fields(_ToyConfig)}
    assert list(fields) == ["src", "out", "count", "scale", "mode", "words", "pair", "flag"]
    assert fields["src"].positional and fields["src"].required and fields["src"].flag == "SRC"
    assert fields["src"].help == "Input file."
    assert (fields["count"].kind, fields["count"].default, fields["count"].help) == ("int", 3, "")
    assert fields["scale"].optional and fields["scale"].kind == "float" and fields["scale"].help.startswith("Scale")
    assert fields["mode"].choices == ["fast", "good"]
    assert (fields["words"].kind, fields["pair"].kind, fields["pair"].length) == ("list", "tuple", 2)
    assert fields["out"].default == "runs/toy" and fields["flag"].kind == "bool"
    render_fields = {f.name: f for f in form_fields(RenderConfig)}
    assert render_fields["trunc_cutoff"].flag == "--trunc-cutoff" and render_fields["trunc_cutoff"].optional
    assert render_fields["video"].choices == ["none", "orbit", "yaw"]
    assert render_fields["seeds"].help.startswith("Latent seeds")
    assert [f.name for f in form_fields(ConvertConfig) if f.positional] == ["src", "out"]


def test_form_argv_omits_defaults_and_parses_like_the_cli():
    fields = form_fields(_ToyConfig)
    values = {"src": "a.png", "out": "runs/toy", "count": "5", "scale": "", "mode": "good", "words": "x\ny z\n",
              "pair": "0.5 2", "flag": False}
    argv = form_argv(fields, values)
    assert argv == ["a.png", "--count", "5", "--mode", "good", "--words", "x", "y z", "--pair", "0.5", "2.0",
                    "--no-flag"]
    cfg = tyro.cli(_ToyConfig, args=argv)
    assert cfg == _ToyConfig(src="a.png", count=5, mode="good", words=("x", "y z"), pair=(0.5, 2.0), flag=False)
    assert form_argv(fields, {"src": "b", "scale": "0.25"}) == ["b", "--scale", "0.25"]
    for bad, field_name in [({"src": "a", "count": "three"}, "count"), ({"src": "a", "mode": "slow"}, "mode"),
                            ({"src": "a", "pair": "1"}, "pair"), ({}, "src"), ({"src": "a", "nope": 1}, None)]:
        with pytest.raises(FieldError) as e:
            form_argv(fields, bad)
        assert e.value.field == field_name


def test_check_job_runs_tyro_then_the_pipeline_validation(tmp_path):
    assert find_validator(_ToyConfig, None) is validate_toy
    res = check_job("toy", _ToyConfig, None, {"src": "a", "count": "11"})
    assert not res.ok and res.errors[0].field == "count" and "more than 10" in res.errors[0].message
    assert res.validator.endswith("validate_toy")
    # a real command: render's own validate() is found and names the flag
    res = check_job("render", RenderConfig, render, {"preset": "tiny", "trunc": "5", "out": str(tmp_path / "r")})
    assert res.validator == "adapt3d.pipelines.render.validate"
    assert [(e.field, "--trunc" in e.message) for e in res.errors] == [("trunc", True)]
    res = check_job("render", RenderConfig, render, {"preset": "tiny", "seeds": "0-1", "out": str(tmp_path / "r")})
    assert res.ok and res.argv == ["--seeds", "0-1", "--out", str(tmp_path / "r"), "--preset", "tiny"]  # field order
    assert res.config.seeds == "0-1"
    res = check_job("render", RenderConfig, render, {"out": str(tmp_path / "r")})  # neither preset nor checkpoint
    assert not res.ok and "exactly one of --preset" in res.errors[0].message


@dataclass
class _PlainConfig:
    out: Path = Path("runs/plain")
    preset: str | None = None
    generator: str | None = None
    device: str = "auto"


def test_commands_without_a_validate_function_get_the_basic_checks(tmp_path):
    assert find_validator(_PlainConfig, None) is None
    res = check_job("plain", _PlainConfig, None, {"out": str(tmp_path / "p")})
    assert not res.ok and "exactly one of --preset" in res.errors[0].message and res.validator is None
    res = check_job("plain", _PlainConfig, None, {"out": str(tmp_path / "p"), "preset": "tiny", "device": "tpu"})
    assert not res.ok and res.errors[0].field == "device"
    (tmp_path / "file").write_text("")
    res = check_job("plain", _PlainConfig, None, {"out": str(tmp_path / "file"), "preset": "tiny"})
    assert not res.ok and res.errors[0].field == "out"
    assert check_job("plain", _PlainConfig, None, {"out": str(tmp_path / "p"), "preset": "tiny"}).ok
    assert (tmp_path / "p").is_dir()


# ---------------------------------------------------------------------------------------------- progress, logs
def test_parse_progress_reads_tqdm_lines():
    text = ("$ adapt3d render\nrender:   0%|          | 0/10 [00:00<?, ?batch/s]\r"
            "render:  40%|####      | 4/10 [00:02<00:03,  1.99batch/s]\r")
    p = parse_progress(text)
    assert (p.stage, p.percent, p.n, p.total, p.elapsed, p.eta) == ("render", 40.0, "4", "10", "00:02", "00:03")
    p = parse_progress("x\rtarget 1/2: 100%|██████████| 16/16 [01:02<00:00, 3.1it/s]\nwrote\n")
    assert (p.stage, p.percent, p.eta) == ("target 1/2", 100.0, "00:00")
    assert parse_progress("render: 0%| | 0/3 [00:00<?, ?it/s]").eta == ""
    p = parse_progress("train: 7it [00:05,  1.3it/s]")
    assert (p.stage, p.percent, p.n) == ("train", None, "7")
    assert parse_progress("no bars here\n") is None


def test_log_tail_collapses_redraws_and_latest_image_prefers_grids(tmp_path):
    (tmp_path / "log.txt").write_text("a\nbar 1\rbar 2\rbar 3\nb\n\n")
    assert log_tail(tmp_path / "log.txt") == "a\nbar 3\nb"
    assert log_tail(tmp_path / "log.txt", 1) == "b"
    Image.new("RGB", (4, 4)).save(tmp_path / "grid.png")
    time.sleep(0.02)
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "seed0001.png")
    Image.new("RGB", (4, 4)).save(tmp_path / ".tmp.png")
    assert latest_image(tmp_path) == tmp_path / "grid.png"
    (tmp_path / "grid.png").unlink()
    assert latest_image(tmp_path) == tmp_path / "sub" / "seed0001.png"


# ----------------------------------------------------------------------------------------------- safe paths
def test_resolve_under_refuses_everything_outside_the_root(tmp_path):
    root = tmp_path / "runs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("x")
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path / "secret.txt", root / "link-out")
    os.symlink(root / "a" / "x.txt", root / "link-in")
    assert resolve_under(root, "a/x.txt") == (root / "a" / "x.txt").resolve()
    assert resolve_under(root, "link-in") == (root / "a" / "x.txt").resolve()
    for rel in ["../secret.txt", "a/../../secret.txt", str(tmp_path / "secret.txt"), "link-out", "/etc/passwd",
                "a/\x00"]:
        with pytest.raises(PathRefused):
            resolve_under(root, rel)
    with pytest.raises(FileNotFoundError):
        resolve_under(root, "a/missing.png")


def _png(w, h, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_uploads_are_checked_and_stored_as_png(tmp_path):
    res = save_upload(tmp_path, _png(20, 10), "image/png", 1 << 20, 1000)
    assert (res["width"], res["height"], res["format"]) == (20, 10, "PNG")
    stored = Image.open(tmp_path / res["path"])
    assert stored.size == (20, 10) and stored.format == "PNG" and res["path"].startswith("uploads/")
    assert save_upload(tmp_path, _png(8, 8, "JPEG"), "image/jpeg", 1 << 20, 1000)["format"] == "JPEG"
    cases = [(_png(20, 10), "image/png", 100, 10 ** 6, 413),  # bytes
             (_png(40, 30), "image/png", 1 << 20, 1000, 413),  # pixels
             (b"#!/bin/sh\necho hi\n", "image/png", 1 << 20, 1000, 415),  # not an image
             (_png(4, 4, "GIF"), "image/png", 1 << 20, 1000, 415),  # an image, but not an accepted format
             (_png(4, 4), "text/html", 1 << 20, 1000, 415),  # wrong declared type
             (b"", "image/png", 1 << 20, 1000, 400)]
    for data, ctype, max_bytes, max_pixels, status in cases:
        with pytest.raises(UploadRefused) as e:
            save_upload(tmp_path, data, ctype, max_bytes, max_pixels)
        assert e.value.status == status, (ctype, str(e.value))


# ----------------------------------------------------------------------------------------------------- jobs
FAKE_JOB = '''
import sys, time
name, args = sys.argv[1], sys.argv[2:]
if name == "slow":
    for i in range(600):
        print(f"\\rwork: {i // 6:3d}%|#   | {i}/600 [00:{i // 10:02d}<00:59, 10it/s]", end="", file=sys.stderr,
              flush=True)
        time.sleep(0.1)
print("done", args)
sys.exit(int(args[0]) if args else 0)
'''


@pytest.fixture()
def fake_jobs(tmp_path):
    (tmp_path / "fakejob.py").write_text(FAKE_JOB)
    root = tmp_path / "runs"
    root.mkdir()
    return JobManager(root, cwd=tmp_path, module="fakejob", max_running=2)


def _wait(pred, timeout=20.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_job_exit_codes_are_recorded_by_the_runner_even_with_no_server(fake_jobs):
    root = fake_jobs.root
    fake_jobs.start("quick", ["0"], root / "ok")
    fake_jobs.start("quick", ["3"], root / "bad")
    del fake_jobs  # the "server" is gone; the runners record the outcome themselves
    for name, status, code in [("ok", "succeeded", 0), ("bad", "failed", 3)]:
        job = _wait(lambda: (j := read_job(root / name)) and j["status"] not in ("starting", "running") and j)
        assert (job["status"], job["exit_code"]) == (status, code)
        assert "done" in (root / name / "studio_log.txt").read_text()
    later = JobManager(root)  # a restarted server
    assert {j["id"]: j["status"] for j in later.list()} == {"ok": "succeeded", "bad": "failed"}


def test_cancel_kills_the_process_group_and_progress_is_parsed(fake_jobs):
    folder = fake_jobs.root / "slow"
    job = fake_jobs.start("slow", [], folder)
    desc = _wait(lambda: (d := fake_jobs.describe(folder)) and d["progress"] and d)
    assert desc["progress"]["stage"] == "work" and desc["status"] == "running"
    child = desc["child_pid"]
    with pytest.raises(ValueError, match="already running"):
        fake_jobs.start("slow", [], folder)
    fake_jobs.cancel(folder)
    final = _wait(lambda: (j := read_job(folder)) and j["status"] in ("cancelled", "failed") and j, 15)
    assert final["status"] == "cancelled"
    _wait(lambda: not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2])
    assert job["pid"] == final["pid"]


def test_a_job_that_died_unrecorded_is_reported_failed_and_the_limit_holds(fake_jobs):
    folder = fake_jobs.root / "ghost"
    folder.mkdir()
    (folder / JOB_FILE).write_text(json.dumps({"name": "x", "argv": [], "status": "running", "pid": 2 ** 22 + 7,
                                               "log": "studio_log.txt", "started": 1.0}))
    job = fake_jobs.refresh(folder)
    assert job["status"] == "failed" and job["lost"] is True
    assert read_job(folder)["status"] == "failed"
    a, b = fake_jobs.root / "s1", fake_jobs.root / "s2"
    fake_jobs.start("slow", [], a)
    fake_jobs.start("slow", [], b)
    with pytest.raises(ValueError, match="most this studio runs at once is 2"):
        fake_jobs.start("quick", [], fake_jobs.root / "s3")
    for f in (a, b):
        fake_jobs.cancel(f, grace_s=2)
    for f in (a, b):
        _wait(lambda: read_job(f)["status"] == "cancelled", 15)


# -------------------------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio") / "runs"
    srv = build_server(StudioConfig(preset="tiny", port=0, runs=root, device="cpu"), cwd=root.parent).start()
    yield srv
    srv.shutdown()


def _request(srv, method, path, body=None, headers=None):
    host, port = srv.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})  # the path goes out exactly as written
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, res.getheader("Content-Type"), data


def test_server_refuses_traversal_and_foreign_hosts(server, tmp_path_factory):
    root = server.app.runs_root
    (root / "r").mkdir(exist_ok=True)
    (root / "r" / "a.json").write_text("{}")
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, root / "r" / "link.txt")
    assert _request(server, "GET", "/files/r/a.json")[0] == 200
    for path in ["/files/../../etc/passwd", "/files/..%2f..%2fetc%2fpasswd", "/files/%2e%2e/%2e%2e/etc/passwd",
                 "/files//etc/passwd", "/files/%2Fetc%2Fpasswd", "/files/r/link.txt", "/files/r/..%2f..%2f..",
                 "/api/run?id=..%2F..", "/api/job?id=%2Fetc"]:
        status, _, data = _request(server, "GET", path)
        assert status == 403 and b"secret" not in data and b"root:" not in data, path
    assert _request(server, "GET", "/files/%252e%252e/etc/passwd")[0] == 404
    assert _request(server, "GET", "/static/../command.py")[0] == 404
    assert _request(server, "GET", "/api/info", headers={"Host": "evil.example:80"})[0] == 403
    status, _, _ = _request(server, "POST", "/api/validate", b"{}", {"Content-Type": "application/json",
                                                                     "Origin": "http://evil.example"})
    assert status == 403
    status, _, data = _request(server, "POST", "/api/upload", b"x" * 64, {"Content-Type": "image/png"})
    assert status == 415 and b"not a readable image" in data


def test_server_validates_forms_and_renders_views(server):
    info = json.loads(_request(server, "GET", "/api/info")[2])
    assert "render" in [c["name"] for c in info["commands"]] and "studio" not in info["commands"]
    assert info["slots"]["a"]["arg"] == {"preset": "tiny"} and info["slots"]["b"] is None
    form = json.loads(_request(server, "GET", "/api/forms/render")[2])
    out = {f["name"]: f for f in form["fields"]}["out"]["value"]
    assert out.startswith("runs/render-")
    body = json.dumps({"command": "render", "values": {"preset": "tiny", "out": "/tmp/x-outside"}}).encode()
    res = json.loads(_request(server, "POST", "/api/validate", body, {"Content-Type": "application/json"})[2])
    assert not res["ok"] and res["errors"][0]["field"] == "out" and "outside" in res["errors"][0]["message"]
    pngs = {}
    for yaw in (0, 30):
        status, ctype, data = _request(server, "GET", f"/api/render?slot=a&seed=3&yaw_deg={yaw}")
        assert status == 200 and ctype == "image/png"
        pngs[yaw] = np.asarray(Image.open(io.BytesIO(data)))
    assert pngs[0].shape == (64, 64, 3) and np.abs(pngs[0].astype(int) - pngs[30]).mean() > 0.5
    # the live view equals what `adapt3d render` writes for the same seed and camera
    rendered = render(RenderConfig(preset="tiny", seeds="3", yaw_deg=30, out=server.app.runs_root / "cmp",
                                   progress=False))
    assert np.array_equal(np.asarray(Image.open(rendered.files["images"][0])), pngs[30])
    status, _, data = _request(server, "GET", "/api/render?slot=b")
    assert status == 400 and b"no generator loaded" in data
    assert _request(server, "GET", "/api/render?slot=a&trunc=9")[0] == 400


def test_an_inverted_latent_renders_like_its_seed(server):
    lf = pytest.importorskip("adapt3d.inversion.latent_file")
    import torch

    from adapt3d.pipelines.render import map_seeds
    G = server.app.slots._slots["a"].generator
    ws = map_seeds(G, [5], 0.7, None, torch.device("cpu"))
    lf.save_latent(server.app.runs_root / "inv", lf.LatentCode(ws=ws, camera=torch.zeros(1, 25),
                                                                architecture=lf.architecture_of(G)))
    info = json.loads(_request(server, "GET", "/api/info")[2])
    assert "inv/latent.pt" in info["latents"]
    a = _request(server, "GET", "/api/render?slot=a&seed=5&yaw_deg=10")
    b = _request(server, "GET", "/api/render?slot=a&seed=0&latent=inv%2Flatent.pt&yaw_deg=10")
    assert a[0] == b[0] == 200 and a[2] == b[2]
    assert _request(server, "GET", "/api/render?slot=a&latent=..%2F..%2Fx.pt")[0] == 403
    assert _request(server, "GET", "/api/render?slot=a&latent=nope%2Flatent.pt")[0] == 400


def test_checkpoints_load_through_the_safe_loader_only_from_allowed_places(server, tmp_path):
    try:
        from . import malicious_pickles as mp
    except ImportError:
        import malicious_pickles as mp
    marker = tmp_path / "pwned"
    (server.app.runs_root / "evil.pkl").write_bytes(mp.PAYLOADS["os.system"](marker))
    headers = {"Content-Type": "application/json"}
    status, _, data = _request(server, "POST", "/api/slots/b", json.dumps({"checkpoint": "evil.pkl"}).encode(),
                               headers)
    assert status == 400 and b"cannot load" in data and not marker.exists()
    outside = tmp_path / "elsewhere.pkl"
    outside.write_bytes(b"x")
    status, _, data = _request(server, "POST", "/api/slots/b", json.dumps({"checkpoint": str(outside)}).encode(),
                               headers)
    assert status == 403 and b"outside the runs folder" in data
    assert json.loads(_request(server, "GET", "/api/info")[2])["slots"]["b"] is None


def test_studio_config_validation(tmp_path):
    for cfg, flag in [(StudioConfig(port=70000, runs=tmp_path), "--port"),
                      (StudioConfig(host="example.com", runs=tmp_path), "--host"),
                      (StudioConfig(share=True, host="10.0.0.1", runs=tmp_path), "--share"),
                      (StudioConfig(preset="nope", runs=tmp_path), "--preset"),
                      (StudioConfig(max_upload_mb=0, runs=tmp_path), "--max-upload-mb"),
                      (StudioConfig(runs=tmp_path / "f.txt"), "--runs")]:
        if flag == "--runs":
            (tmp_path / "f.txt").write_text("")
        with pytest.raises(ValueError, match=flag):
            validate(cfg)
    assert StudioConfig().host == "127.0.0.1" and StudioConfig().share is False


def test_real_render_job_through_the_manager(tmp_path):
    root = tmp_path / "runs"
    jobs = JobManager(root, cwd=tmp_path)
    jobs.start("render", ["--preset", "tiny", "--seeds", "0-1", "--out", "runs/r"], root / "r")
    job = _wait(lambda: (j := jobs.describe(root / "r")) and j["status"] not in ("starting", "running") and j, 120)
    assert job["status"] == "succeeded", job["log_tail"]
    assert job["image"] == "r/grid.png" and job["progress"]["stage"] == "render"
    assert json.loads((root / "r" / "render.json").read_text())["seeds"] == [0, 1]
    assert job["command"][1:4] == ["-m", "adapt3d", "render"] and sys.executable == job["command"][0]
