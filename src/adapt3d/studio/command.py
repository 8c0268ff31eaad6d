"""``adapt3d studio``: a local web studio to explore generators and run and watch jobs in the browser.

Python API mirroring the command::

    from adapt3d.studio.command import StudioConfig, build_server, run
    run(StudioConfig(preset="tiny", port=7860))                      # blocks; Ctrl-C stops
    server = build_server(StudioConfig(preset="tiny", port=0)).start()  # in a thread; server.url, server.shutdown()

The server is the standard library's ThreadingHTTPServer serving one static page (no CDN, works offline); see
:mod:`adapt3d.studio.server` for the JSON API. It listens on 127.0.0.1 unless --host (or --share) says otherwise,
serves files from the runs folder only, and runs each job as ``python -m adapt3d <command> ...`` in its own
process group (see :mod:`adapt3d.studio.jobs`).

This is the one command that does not live in ``adapt3d.pipelines``: it serves the studio, which sits above the
pipelines (its job forms come from :mod:`adapt3d.pipelines.registry`); the command line adds it to the registry's
commands (:mod:`adapt3d.cli.main`).
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from adapt3d.utils.io import check_output_folder
from adapt3d.utils.parsing import check_at_least, resolve_device

__all__ = ["StudioConfig", "StudioResult", "validate", "build_server", "run"]


@dataclass
class StudioConfig:
    """Serve the adapt3d web studio: explore generators side by side, start and watch jobs, browse run folders."""

    port: int = 7860
    """TCP port (0 = any free port)."""
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback exposes the studio (which has no login) to your network."""
    share: bool = False
    """Listen on all interfaces (0.0.0.0) so other machines on a trusted network can open the studio; never the
    default. There is no authentication: anyone who can reach the port can start jobs."""
    runs: Path = Path("runs")
    """Runs folder: jobs write here, and it is the only folder whose files the studio serves."""
    allow_inputs: tuple[Path, ...] = ()
    """More folders whose files studio jobs may read (datasets, meshes, model folders). Job inputs must lie under
    --runs, one of these, or be the --checkpoint/--compare files; any other path in a job form is refused."""
    preset: str | None = None
    """Generator loaded into slot A at start: a built-in preset (tiny is the offline demo)."""
    checkpoint: str | None = None
    """Generator loaded into slot A at start: adapt3d checkpoint folder, official EG3D .pkl or known name."""
    compare: str | None = None
    """Generator loaded into slot B (e.g. the adapted one): a preset name, checkpoint folder, .pkl or known name."""
    device: str = "auto"
    """Device of the live renders: 'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    max_jobs: int = 2
    """Most jobs running at once."""
    max_upload_mb: float = 10.0
    """Largest accepted upload, megabytes."""
    max_upload_pixels: int = 4096 * 4096
    """Largest accepted upload, width x height pixels."""
    open_browser: bool = False
    """Open the studio in the default web browser once it is up."""
    verbose: bool = False
    """Log every HTTP request to stderr."""


@dataclass
class StudioResult:
    out: Path
    url: str = ""
    notes: list[str] = field(default_factory=list)


def _host(cfg: StudioConfig) -> str:
    return "0.0.0.0" if cfg.share and cfg.host == "127.0.0.1" else cfg.host


def validate(cfg: StudioConfig) -> None:
    """Check every option (and create the runs folder) before anything loads. ValueError names the flag."""
    from adapt3d.models.loading import check_generator_source
    from adapt3d.models.triplane import PRESETS
    if not 0 <= cfg.port <= 65535:
        raise ValueError(f"--port: {cfg.port} is not a TCP port in [0, 65535] (0 = any free port)")
    host = _host(cfg)
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"--host: {cfg.host!r} is not an IP address (e.g. 127.0.0.1, 0.0.0.0) or "
                             "'localhost'") from None
    if cfg.share and cfg.host != "127.0.0.1":
        raise ValueError(f"--share listens on 0.0.0.0; leave out --host {cfg.host} (or leave out --share)")
    check_at_least(cfg, ("max_jobs", "max_upload_pixels"))
    if not cfg.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb: must be > 0, got {cfg.max_upload_mb}")
    if cfg.preset is not None or cfg.checkpoint is not None:
        check_generator_source(cfg.preset, cfg.checkpoint)
    if cfg.compare is not None and cfg.compare not in PRESETS:
        check_generator_source(None, cfg.compare, flag="--compare")
    for folder in cfg.allow_inputs:
        if not Path(folder).expanduser().is_dir():
            raise ValueError(f"--allow-inputs: {folder} is not a folder")
    resolve_device(cfg.device)
    check_output_folder(cfg.runs, arg="--runs")


def build_server(cfg: StudioConfig, cwd: Path | None = None):
    """Validate ``cfg``, load its generators and bind the server (not yet serving)."""
    from adapt3d.models.triplane import PRESETS
    from adapt3d.studio.explore import GeneratorSlots
    from adapt3d.studio.jobs import JobManager
    from adapt3d.studio.server import StudioApp, StudioServer
    validate(cfg)
    root = Path(cfg.runs).resolve()
    allowed = tuple(str(Path(c).expanduser().resolve()) if Path(c).expanduser().exists() else c
                    for c in (cfg.checkpoint, cfg.compare) if c is not None and c not in PRESETS)
    slots = GeneratorSlots(root, cfg.device, allowed=allowed)
    if cfg.preset is not None or cfg.checkpoint is not None:
        slots.load("a", preset=cfg.preset, checkpoint=allowed[0] if cfg.checkpoint else None)
    if cfg.compare is not None:
        slots.load("b", preset=cfg.compare if cfg.compare in PRESETS else None,
                   checkpoint=None if cfg.compare in PRESETS else allowed[-1])
    jobs = JobManager(root, max_running=cfg.max_jobs, cwd=cwd)
    app = StudioApp(root, slots, jobs, max_upload_bytes=int(cfg.max_upload_mb * (1 << 20)),
                    max_upload_pixels=cfg.max_upload_pixels, default_preset=cfg.preset,
                    input_roots=tuple(Path(f).expanduser().resolve() for f in cfg.allow_inputs))
    return StudioServer(app, _host(cfg), cfg.port, verbose=cfg.verbose)


def run(cfg: StudioConfig) -> StudioResult:
    """Serve until interrupted (Ctrl-C); returns the runs folder and the URL."""
    server = build_server(cfg)
    url = server.url
    print(f"adapt3d studio: serving {url} (runs folder {server.app.runs_root}); Ctrl-C stops", file=sys.stderr)
    if _host(cfg) not in ("127.0.0.1", "localhost", "::1"):
        print(f"adapt3d studio: WARNING listening on {_host(cfg)}: anyone who can reach port "
              f"{server.httpd.server_address[1]} can start jobs (no login)", file=sys.stderr)
    if cfg.open_browser:
        import webbrowser
        webbrowser.open(url)
    def _stop(signum, frame):  # SIGTERM stops like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return StudioResult(out=server.app.runs_root, url=url, notes=["jobs started from the studio keep running "
                                                                  "after it stops; restart it to see them"])
