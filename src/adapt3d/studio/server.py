"""The studio's HTTP server (standard library ``ThreadingHTTPServer``): one static page plus a small JSON API.

API (all JSON unless said otherwise; POST bodies are JSON except uploads)::

    GET  /                       the page (static/index.html; studio.js and studio.css under /static/)
    GET  /api/info               commands, presets, known names, checkpoints and latents under the runs folder
    GET  /api/forms/<command>    the job form of a command (fields from its config dataclass)
    POST /api/validate           {command, values} -> {ok, argv, errors: [{field, message}]}; starts nothing
    POST /api/jobs               {command, values} -> validated, then started in its own process
    GET  /api/jobs               jobs found under the runs folder (studio_job.json), newest first
    GET  /api/job?id=RUN         one job: status, progress (stage, percent, ETA), log tail, newest image
    POST /api/job/cancel?id=RUN  SIGTERM (then SIGKILL) the job's process group
    POST /api/slots/<a|b>        {preset} | {checkpoint} | {} -> load (or empty) a generator slot
    GET  /api/render?slot=a&seed=0&trunc=0.7&yaw_deg=0&pitch_deg=0&view=image|depth[&latent=RUN/latent.pt]  PNG
    POST /api/upload             raw image bytes (Content-Type image/png|jpeg|webp|bmp) -> {path, width, height}
    GET  /api/runs, /api/run?id=RUN      run folders and one run's summaries, images, videos, meshes, reports
    GET  /files/<path>           a file under the runs folder (nothing else is ever served)

Requests whose Host header is not this server's address are refused while it listens on loopback (DNS
rebinding), POSTs from another origin are refused (cross-site requests), and so are API and file requests that
the browser marks as coming from another site (``Sec-Fetch-Site: cross-site`` / ``same-site``, or a foreign
``Origin``), so that another page cannot make the studio render for it. Paths in job forms must lie under the
runs folder, an ``--allow-inputs`` folder, or be the studio's own ``--checkpoint``/``--compare``.
"""

from __future__ import annotations

import inspect
import json
import mimetypes
import os
import shutil
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from adapt3d.studio.explore import SLOTS, ExploreError, GeneratorSlots, ViewRequest
from adapt3d.studio.files import (PathRefused, UploadRefused, find_checkpoints, find_latents, list_runs,
                                  resolve_under, run_detail, save_upload)
from adapt3d.studio.forms import FieldError, JobCheck, check_job, confined_candidates, form_fields
from adapt3d.studio.jobs import JobError, JobManager
from adapt3d.utils.io import remove_empty_tree

__all__ = ["StudioApp", "StudioServer", "job_commands"]

STATIC = Path(__file__).parent / "static"
_STATIC_FILES = {"index.html": "text/html; charset=utf-8", "studio.js": "text/javascript; charset=utf-8",
                 "studio.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
_PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self'; style-src 'self'; "
             "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_MAX_JSON = 1 << 20
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def job_commands() -> dict:
    """name -> (ConfigClass, run_fn, help) of every command a studio job may run (the registry's: all but
    ``studio``, and but those with nested subcommands: ``instance candidates|adapt`` has no single form; the
    studio's ``adapt`` form covers ``--select``)."""
    import dataclasses

    from adapt3d.pipelines.registry import COMMANDS  # at run time: importing every pipeline takes seconds
    return {k: v for k, v in COMMANDS.items() if dataclasses.is_dataclass(v[0])}


@dataclass
class StudioApp:
    """The studio's state: runs folder, generator slots, job manager, limits. Independent of HTTP."""

    runs_root: Path
    slots: GeneratorSlots
    jobs: JobManager
    max_upload_bytes: int = 10 << 20
    max_upload_pixels: int = 4096 * 4096
    default_preset: str | None = None
    input_roots: tuple[Path, ...] = ()  # besides runs_root: folders whose files jobs may read (--allow-inputs)

    def relative_root(self) -> str:
        try:
            return os.path.relpath(self.runs_root, self.jobs.cwd)
        except ValueError:
            return str(self.runs_root)

    def info(self) -> dict:
        from adapt3d.models import hub
        from adapt3d.models.triplane import PRESETS
        cmds = job_commands()
        return {"runs_root": str(self.runs_root), "runs_label": self.relative_root(), "commands": [{"name": k, "help": v[2]} for k, v in cmds.items()],
                "presets": sorted(PRESETS), "known": sorted(hub.known_checkpoints()),
                "checkpoints": sorted(set(find_checkpoints(self.runs_root)) | self.slots.allowed),
                "latents": find_latents(self.runs_root), "slots": self.slots.state(),
                "limits": {"max_upload_bytes": self.max_upload_bytes, "max_upload_pixels": self.max_upload_pixels,
                           "max_running_jobs": self.jobs.max_running}}

    def _command(self, name: str):
        cmds = job_commands()
        if name not in cmds:
            raise HttpError(404, f"command: unknown command {name!r}; expected one of {', '.join(cmds)}")
        return cmds[name]

    def form(self, name: str) -> dict:
        cls, _fn, help_text = self._command(name)
        fields = []
        for ff in form_fields(cls):
            d = ff.to_json()
            d["value"] = ff.default
            if ff.name == "out" and ff.kind == "path":
                d["value"] = f"{self.relative_root()}/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            if ff.name == "preset" and ff.default is None and self.default_preset:
                d["value"] = self.default_preset
            fields.append(d)
        return {"command": name, "help": help_text, "doc": inspect.cleandoc(cls.__doc__ or ""), "fields": fields}

    def _out_inside_root(self, cfg, fields) -> None:
        out = getattr(cfg, "out", None)
        if out is None:
            return
        path = (self.jobs.cwd / Path(out)).resolve()
        if not path.is_relative_to(self.runs_root):
            raise FieldError("out", f"--out: {out} is outside the studio's runs folder {self.runs_root}; studio "
                                    "jobs write only there")
        if path == self.runs_root:
            raise FieldError("out", f"--out: give a folder inside the runs folder, not {self.runs_root} itself")

    def _inputs_confined(self, cfg, fields) -> None:
        """Every path a job would read lies under the runs folder, an --allow-inputs folder, or is one of the
        studio's --checkpoint/--compare files: a form cannot make a job read (and publish) /etc/passwd."""
        roots = (self.runs_root, *self.input_roots)
        for ff in fields:
            if ff.name == "out":
                continue
            for value in confined_candidates(getattr(cfg, ff.name, None), self.jobs.cwd):
                path = (self.jobs.cwd / value).expanduser().resolve()
                if any(path.is_relative_to(r) for r in roots) or str(path) in self.slots.allowed:
                    continue
                raise FieldError(ff.name, f"{ff.flag}: {value} is outside the folders studio jobs may read "
                                          f"({', '.join(str(r) for r in roots)}); copy it into the runs folder or "
                                          "start the studio with --allow-inputs <folder>")

    def check(self, body: dict) -> JobCheck:
        name, values = body.get("command"), body.get("values", {})
        if not isinstance(values, dict):
            raise HttpError(400, "values: expected an object {field: value}")
        cls, fn, _ = self._command(str(name))
        new_out: list[Path] = []

        def extra_check(cfg, fields) -> None:
            self._out_inside_root(cfg, fields)
            self._inputs_confined(cfg, fields)
            out = getattr(cfg, "out", None)
            if out is not None and not (self.jobs.cwd / Path(out)).exists():
                new_out.append(self.jobs.cwd / Path(out))

        result = check_job(str(name), cls, fn, values, extra_check=extra_check)
        for folder in new_out:  # a check starts nothing: it leaves no (empty) output folder behind
            remove_empty_tree(folder)
        return result

    def start(self, body: dict) -> dict:
        result = self.check(body)
        if not result.ok:
            return result.to_json()
        out = getattr(result.config, "out", None)
        folder = ((self.jobs.cwd / Path(out)).resolve() if out is not None else
                  self.runs_root / "studio-jobs" / f"{result.command}-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            job = self.jobs.start(result.command, result.argv, folder)
        except JobError as e:
            return {**result.to_json(), "ok": False, "errors": [{"field": None, "message": str(e)}]}
        return {**result.to_json(), "job": folder.relative_to(self.runs_root).as_posix(), "pid": job["pid"]}

    def job_folder(self, rel: str) -> Path:
        folder = resolve_under(self.runs_root, rel)
        if not (folder / "studio_job.json").is_file():
            raise HttpError(404, f"id: no studio job in {rel!r}")
        return folder


class _Handler(BaseHTTPRequestHandler):
    server_version = "adapt3d-studio"
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    # -- responses ---------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", {"Cache-Control": "no-store"})

    def _error(self, status: int, message: str) -> None:
        self._json({"ok": False, "error": message}, status)

    # -- request checks ----------------------------------------------------------------------------------------
    def _check_host(self) -> None:
        host = (self.headers.get("Host") or "").strip().lower()
        if not self.server.loopback_only:
            return
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in _LOOPBACK:
            raise HttpError(403, f"Host {host!r} refused: this studio answers only on loopback addresses")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != (self.headers.get("Host") or "").lower():
            raise HttpError(403, f"cross-origin request from {origin!r} refused")

    def _check_fetch_site(self, path: str) -> None:
        """API calls and files only from the studio's own page (or typed into the address bar): another site's
        <img src=.../api/render> would otherwise make this machine render for it (Fetch Metadata)."""
        if not path.startswith(("/api/", "/files/")):
            return
        site = (self.headers.get("Sec-Fetch-Site") or "").strip().lower()
        if site in ("cross-site", "same-site"):
            raise HttpError(403, f"{site} request refused: the studio's API answers only its own page")
        self._check_origin()

    def _body(self, limit: int) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "Content-Length is not a number") from None
        if length > limit:
            self.close_connection = True
            remaining = min(length, 64 << 20)  # drain (bounded) so the client reads the answer, not a reset
            while remaining > 0 and (chunk := self.rfile.read(min(remaining, 1 << 20))):
                remaining -= len(chunk)
            raise HttpError(413, f"request body of {length} bytes is larger than the limit of {limit} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _json_body(self) -> dict:
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            raise HttpError(415, "send JSON (Content-Type: application/json)")
        try:
            body = json.loads(self._body(_MAX_JSON) or b"{}")
        except ValueError as e:
            raise HttpError(400, f"body is not valid JSON ({e})") from e
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        return body

    # -- dispatch ----------------------------------------------------------------------------------------------
    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_GET(self):  # noqa: N802
        self._dispatch(self._get)

    def do_POST(self):  # noqa: N802
        self._dispatch(self._post)

    def _dispatch(self, fn) -> None:
        try:
            self._check_host()
            url = urlsplit(self.path)
            if self.command == "POST":
                self._check_origin()
            self._check_fetch_site(url.path)
            fn(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})
        except HttpError as e:
            self._error(e.status, e.message)
        except PathRefused as e:
            self._error(403, str(e))
        except FileNotFoundError as e:
            self._error(404, str(e))
        except UploadRefused as e:
            self._error(e.status, str(e))
        except (ExploreError, FieldError, JobError) as e:
            self._error(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - report, keep serving
            self._error(500, f"{type(e).__name__}: {e}")

    def _get(self, path: str, q: dict) -> None:
        app = self.server.app
        if path in ("/", "/index.html"):
            return self._static("index.html")
        if path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path.startswith("/files/"):
            return self._file(unquote(path[len("/files/"):]))
        if path == "/api/info":
            return self._json(app.info())
        if path.startswith("/api/forms/"):
            return self._json(app.form(unquote(path[len("/api/forms/"):])))
        if path == "/api/jobs":
            return self._json({"jobs": app.jobs.list()})
        if path == "/api/job":
            return self._json(app.jobs.describe(app.job_folder(q.get("id", ""))))
        if path == "/api/runs":
            return self._json({"runs": list_runs(app.runs_root)})
        if path == "/api/run":
            return self._json(run_detail(app.runs_root, q.get("id", "")))
        if path == "/api/render":
            return self._render(q)
        raise HttpError(404, f"{path}: no such page")

    def _post(self, path: str, q: dict) -> None:
        app = self.server.app
        if path == "/api/upload":
            data = self._body(app.max_upload_bytes)
            return self._json({"ok": True, **save_upload(app.runs_root, data, self.headers.get("Content-Type", ""),
                                                          app.max_upload_bytes, app.max_upload_pixels)})
        body = self._json_body()
        if path == "/api/validate":
            return self._json(app.check(body).to_json())
        if path == "/api/jobs":
            return self._json(app.start(body))
        if path == "/api/job/cancel":
            return self._json(app.jobs.cancel(app.job_folder(q.get("id", ""))))
        if path.startswith("/api/slots/"):
            slot = path[len("/api/slots/"):]
            if slot not in SLOTS:
                raise HttpError(404, f"slot: {slot!r} is not one of {SLOTS}")
            return self._json({"ok": True, "slots": app.slots.load(slot, body.get("preset") or None,
                                                                   body.get("checkpoint") or None)})
        raise HttpError(404, f"{path}: no such action")

    # -- content -----------------------------------------------------------------------------------------------
    def _static(self, name: str) -> None:
        if name not in _STATIC_FILES:
            raise HttpError(404, f"/static/{name}: no such file")
        headers = {"Cache-Control": "no-cache"}
        if name == "index.html":
            headers["Content-Security-Policy"] = _PAGE_CSP
        self._send(200, (STATIC / name).read_bytes(), _STATIC_FILES[name], headers)

    def _file(self, rel: str) -> None:
        path = resolve_under(self.server.app.runs_root, rel)
        if not path.is_file():
            raise HttpError(404, f"{rel}: not a file")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Cache-Control": "no-cache"}
        if ctype == "text/html":
            headers["Content-Security-Policy"] = "sandbox"  # reports render, but run no script
        elif not ctype.startswith(("image/", "video/", "text/", "application/json")):
            headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
        size = path.stat().st_size
        self.send_response(200)
        for k, v in {"Content-Type": ctype, "Content-Length": str(size), "X-Content-Type-Options": "nosniff",
                     "Referrer-Policy": "no-referrer", **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            with open(path, "rb") as f:  # streamed: checkpoints and videos can be large
                shutil.copyfileobj(f, self.wfile, 1 << 20)

    def _render(self, q: dict) -> None:
        try:
            req = ViewRequest(slot=q.get("slot", "a"), seed=int(q.get("seed", 0)), trunc=float(q.get("trunc", 0.7)),
                              yaw_deg=float(q.get("yaw_deg", 0)), pitch_deg=float(q.get("pitch_deg", 0)),
                              view=q.get("view", "image"), latent=q.get("latent") or None)
        except ValueError as e:
            raise HttpError(400, f"render parameters: {e}") from e
        self._send(200, self.server.app.slots.render(req), "image/png", {"Cache-Control": "no-store"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, app: StudioApp, verbose: bool):
        self.app, self.verbose = app, verbose
        self.loopback_only = address[0] in ("127.0.0.1", "localhost", "::1")
        super().__init__(address, _Handler)


class StudioServer:
    """The studio on ``host:port`` (port 0 = a free port). ``start()`` serves in a thread, ``serve()`` blocks."""

    def __init__(self, app: StudioApp, host: str = "127.0.0.1", port: int = 7860, verbose: bool = False):
        self.app = app
        self.httpd = _Server((host, port), app, verbose)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"

    def start(self) -> "StudioServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="adapt3d-studio", daemon=True)
        self._thread.start()
        return self

    def serve(self) -> None:
        self.httpd.serve_forever()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
