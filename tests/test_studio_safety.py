"""Studio attacks of issue #16: another site making the studio render (GET /api/render without an Origin check),
job forms that make a job read any file (``--prompt-file /etc/passwd`` would end up served under runs/), and form
checks that leave empty output folders."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from adapt3d.studio.command import StudioConfig, build_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio-safety") / "runs"
    srv = build_server(StudioConfig(preset="tiny", port=0, runs=root, device="cpu"), cwd=root.parent).start()
    yield srv
    srv.shutdown()


def _get(srv, path: str, headers: dict | None = None) -> int:
    host, port = srv.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", path, headers=headers or {})
    res = conn.getresponse()
    res.read()
    conn.close()
    return res.status


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},  # <img src=...>
    {"Sec-Fetch-Site": "same-site"},  # another web app on another localhost port
    {"Origin": "http://evil.example"},
    {"Origin": "http://127.0.0.1:1"},
])
@pytest.mark.parametrize("path", ["/api/render?slot=a&seed=1", "/api/info", "/files/x.png"])
def test_other_sites_cannot_use_the_api(server, headers, path):
    assert _get(server, path, headers) == 403


def test_the_studio_page_itself_still_works(server):
    assert _get(server, "/api/render?slot=a&seed=1", {"Sec-Fetch-Site": "same-origin"}) == 200
    assert _get(server, "/api/render?slot=a&seed=1", {"Sec-Fetch-Site": "none"}) == 200  # typed in the address bar
    assert _get(server, "/api/render?slot=a&seed=1") == 200  # a browser without fetch metadata, or curl
    assert _get(server, "/", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}) == 200  # a link


# ------------------------------------------------------------------------------------------ job inputs
@pytest.fixture
def app(tmp_path):
    root = tmp_path / "runs"
    allowed = tmp_path / "datasets"
    allowed.mkdir()
    srv = build_server(StudioConfig(port=0, runs=root, device="cpu", allow_inputs=(allowed,)), cwd=tmp_path)
    yield srv.app
    srv.httpd.server_close()


def _check(app, command: str, **values) -> dict:
    return app.check({"command": command, "values": values}).to_json()


def _errors(res: dict) -> str:
    return " ".join(e["message"] for e in res["errors"])


_BASE = {"make-dataset": {"preset": "tiny", "prompt": ["a zombie"]}, "render": {"preset": "tiny"},
         "distill": {"preset": "tiny"}, "eval": {"preset": "tiny", "prompt": "a zombie"}}


@pytest.mark.parametrize("command,field,value", [
    ("make-dataset", "prompt_file", "/etc/passwd"),
    ("make-dataset", "prompt_file", "../secret.txt"),
    ("render", "latent", "/etc/passwd"),
    ("render", "checkpoint", "/etc/passwd"),
    ("distill", "prompts", "/etc/passwd"),
    ("eval", "reference", "/etc"),
])
def test_job_inputs_outside_the_allowed_folders_are_refused(app, command, field, value):
    res = _check(app, command, out="runs/job", **{**_BASE[command], field: value})
    assert not res["ok"] and "outside the folders studio jobs may read" in _errors(res), res
    assert res["errors"][0]["field"] == field
    assert not (app.runs_root / "job").exists()


def test_inputs_under_the_runs_folder_or_an_allowed_folder_pass_the_confinement(app, tmp_path):
    inside = app.runs_root / "prompts.txt"
    inside.write_text("a zombie\n")
    extra = tmp_path / "datasets" / "prompts.txt"
    extra.write_text("an elf\n")
    for path in (inside, extra):
        res = _check(app, "make-dataset", preset="tiny", prompt_file=str(path), out="runs/job", num_images=2)
        assert "outside the folders" not in _errors(res), res
    res = _check(app, "render", preset="tiny", checkpoint="ffhq", out="runs/r")  # known names are not paths
    assert "outside the folders" not in _errors(res)


def test_a_form_check_leaves_no_output_folder(app):
    ok = _check(app, "render", preset="tiny", out="runs/checked")
    assert ok["ok"], ok
    bad = _check(app, "render", preset="tiny", out="runs/checked-bad", trunc=9)
    assert not bad["ok"]
    assert not (app.runs_root / "checked").exists() and not (app.runs_root / "checked-bad").exists()


def test_allow_inputs_must_be_folders(tmp_path):
    from adapt3d.studio.command import validate
    with pytest.raises(ValueError, match="--allow-inputs: .*nope is not a folder"):
        validate(StudioConfig(runs=tmp_path / "runs", allow_inputs=(tmp_path / "nope",)))
