"""Studio jobs: ``adapt3d <command>`` in its own process group, state in ``RUN/studio_job.json``, progress from tqdm.

``studio_job.json`` (written atomically; by the server when a job starts or is cancelled, by the runner process
when the job ends)::

    format 1, kind "adapt3d studio job", command ["python", "-m", "adapt3d", name, ...], name, argv, cwd,
    folder, log "studio_log.txt", pid (runner = process group), child_pid, status, exit_code, started, ended

``status``: starting -> running -> succeeded | failed | cancelled (cancelling in between). A job whose processes
are gone without a final status (killed together with its runner, machine restart) is marked failed with
``lost: true`` the next time anyone looks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from adapt3d.utils.io import atomic_write_json

__all__ = ["JOB_FILE", "LOG_FILE", "JobError", "JobManager", "Progress", "parse_progress", "log_tail",
           "latest_image", "FINAL", "ACTIVE"]

JOB_FILE = "studio_job.json"
LOG_FILE = "studio_log.txt"
FINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("starting", "running", "cancelling")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# tqdm: "desc:  45%|####5     | 9/20 [00:03<00:04,  2.51it/s]" or, without a total, "desc: 9it [00:03, 2.5it/s]"
_TQDM = re.compile(r"(?:(?P<desc>[^|\r\n]*?):\s*)?(?P<pct>\d{1,3})%\|[^|]*\|\s*"
                   r"(?P<n>[\d.]+[kMG]?)/(?P<total>[\d.]+[kMG]?)\s*\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+)")
_TQDM_NOTOTAL = re.compile(r"(?:(?P<desc>[^|\r\n]*?):\s*)?(?P<n>\d+)(?P<unit>[a-zA-Z/]+) \[(?P<elapsed>[\d:]+),")
_PREFERRED = ("grid", "contact", "sheet", "compare", "sample", "fakes")


class JobError(ValueError):
    """A job request that cannot be carried out (too many jobs, folder busy, unknown job)."""


@dataclass
class Progress:
    """The newest progress bar in a log: stage (tqdm's description), percent (None without a total), ETA."""

    stage: str = ""
    percent: float | None = None
    n: str = ""
    total: str = ""
    elapsed: str = ""
    eta: str = ""


def _segments(text: str) -> list[str]:
    """Printed lines as a terminal would show them: for each line, the text after its last carriage return."""
    text = _ANSI.sub("", text)
    return [ln.rsplit("\r", 1)[-1] if ln.rstrip("\r") else "" for ln in text.split("\n")]


def parse_progress(text: str) -> Progress | None:
    """The last tqdm progress report in ``text`` (a log tail), or None when there is none."""
    for seg in reversed(re.split(r"[\r\n]", _ANSI.sub("", text))):
        m = _TQDM.search(seg)
        if m:
            return Progress(stage=(m.group("desc") or "").strip(), percent=float(m.group("pct")), n=m.group("n"),
                            total=m.group("total"), elapsed=m.group("elapsed"),
                            eta="" if "?" in m.group("eta") else m.group("eta"))
        m = _TQDM_NOTOTAL.search(seg)
        if m:
            return Progress(stage=(m.group("desc") or "").strip(), n=m.group("n"), elapsed=m.group("elapsed"))
    return None


def _tail_bytes(path: Path, size: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, with progress-bar redraws collapsed."""
    if lines <= 0:
        return ""
    segs = _segments(_tail_bytes(path))
    while segs and not segs[-1]:
        segs.pop()
    return "\n".join(segs[-lines:])


def latest_image(folder: Path, max_depth: int = 4) -> Path | None:
    """The newest PNG under ``folder``, preferring sample grids and contact sheets (names with grid, contact,
    sheet, compare, sample, fakes) when there are any. Hidden and temporary files are skipped."""
    best: dict[bool, tuple[float, Path]] = {}
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - base >= max_depth:
            dirs[:] = []
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.lower().endswith(".png") and not name.startswith("."):
                p = Path(root) / name
                try:
                    t = p.stat().st_mtime
                except OSError:
                    continue
                key = any(w in name.lower() for w in _PREFERRED)
                if key not in best or t > best[key][0]:
                    best[key] = (t, p)
    choice = best.get(True) or best.get(False)
    return choice[1] if choice else None


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live studio runner (guards against PID reuse where /proc exists)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace") if Path(f"/proc/{pid}/stat").exists() else ""
        zombie = stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
        return b"adapt3d.studio.runner" in text and not zombie
    return True


def read_job(folder: Path) -> dict | None:
    try:
        job = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return job if isinstance(job, dict) else None


class JobManager:
    """Starts, watches and cancels studio jobs whose run folders lie under ``runs_root``."""

    def __init__(self, runs_root: Path, python: str = sys.executable, max_running: int = 2,
                 cwd: Path | None = None, module: str = "adapt3d"):
        self.root = Path(runs_root).resolve()
        self.python = python
        self.module = module  # jobs run ``python -m <module> <name> ...`` (tests use a stand-in module)
        self.max_running = max_running
        self.cwd = Path(cwd or os.getcwd()).resolve()
        self._procs: dict[Path, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # -- state -------------------------------------------------------------------------------------------------
    def refresh(self, folder: Path) -> dict | None:
        """Read a job's state, recording a final status for a job whose processes are gone without one."""
        folder = Path(folder)
        proc = self._procs.get(folder.resolve())
        if proc is not None and proc.poll() is not None:
            self._procs.pop(folder.resolve(), None)
        job = read_job(folder)
        if job is None or job.get("status") not in ACTIVE:
            return job
        if (proc is not None and proc.poll() is None) or _alive(job.get("pid")):
            return job
        time.sleep(0.05)  # the runner may have written its final status just now
        job = read_job(folder) or job
        if job.get("status") in ACTIVE:
            cancelled = job["status"] == "cancelling"
            job.update(status="cancelled" if cancelled else "failed", ended=job.get("ended") or time.time(),
                       lost=not cancelled)
            atomic_write_json(folder / JOB_FILE, job)
        return job

    def job_folders(self, max_depth: int = 4) -> list[Path]:
        found = []
        for root, dirs, files in os.walk(self.root):
            if len(Path(root).parts) - len(self.root.parts) >= max_depth:
                dirs[:] = []
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if JOB_FILE in files:
                found.append(Path(root))
        return found

    def describe(self, folder: Path, log_lines: int = 40) -> dict | None:
        """State + progress + log tail + newest image (relative to the runs root) of the job in ``folder``."""
        job = self.refresh(folder)
        if job is None:
            return None
        log = Path(folder) / job.get("log", LOG_FILE)
        tail = _tail_bytes(log)
        progress = parse_progress(tail)
        image = latest_image(Path(folder))
        rel = Path(folder).resolve().relative_to(self.root).as_posix()
        line = shlex.join(["adapt3d", job.get("name", "?"), *job.get("argv", [])])
        return {**job, "id": rel, "command_line": line, "progress": asdict(progress) if progress else None,
                "log_tail": log_tail(log, log_lines) if log_lines > 0 else None,
                "image": image.resolve().relative_to(self.root).as_posix() if image else None,
                "image_mtime": image.stat().st_mtime if image else None}

    def list(self, limit: int = 20) -> list[dict]:
        """The newest ``limit`` jobs (by start time) with their state, progress and newest image."""
        found = [(f, self.refresh(f)) for f in self.job_folders()]
        found = sorted(((f, j) for f, j in found if j), key=lambda fj: -float(fj[1].get("started") or 0))
        return [d for f, _ in found[:limit] if (d := self.describe(f, log_lines=0))]

    def running(self) -> list[Path]:
        return [f for f in self.job_folders() if (self.refresh(f) or {}).get("status") in ACTIVE]

    # -- actions -----------------------------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], folder: Path) -> dict:
        """Start ``adapt3d <name> <argv>`` with its run folder ``folder`` (under the runs root)."""
        folder = Path(folder).resolve()
        if not folder.is_relative_to(self.root):
            raise JobError(f"run folder {folder} is outside the runs folder {self.root}")
        with self._lock:
            if (self.refresh(folder) or {}).get("status") in ACTIVE:
                raise JobError(f"a job is already running in {folder.relative_to(self.root)}; cancel it first")
            busy = self.running()
            if len(busy) >= self.max_running:
                raise JobError(f"{len(busy)} jobs are running (the most this studio runs at once is "
                               f"{self.max_running}); wait for one to finish or cancel one")
            folder.mkdir(parents=True, exist_ok=True)
            job = {"format": 1, "kind": "adapt3d studio job", "name": name, "argv": list(argv),
                   "command": [self.python, "-m", self.module, name, *argv], "cwd": str(self.cwd),
                   "folder": str(folder), "log": LOG_FILE, "pid": None, "child_pid": None, "status": "starting",
                   "exit_code": None, "started": time.time(), "ended": None}
            with open(folder / LOG_FILE, "ab") as log:
                log.write(f"$ {shlex.join(['adapt3d', name, *argv])}\n".encode())
            atomic_write_json(folder / JOB_FILE, job)
            log = open(folder / LOG_FILE, "ab")
            try:
                proc = subprocess.Popen([self.python, "-m", "adapt3d.studio.runner", str(folder / JOB_FILE)],
                                        cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            finally:
                log.close()
            self._procs[folder] = proc
            return {**job, "pid": proc.pid}  # the runner records its pid (= process group) itself

    def cancel(self, folder: Path, grace_s: float = 5.0) -> dict:
        """SIGTERM the job's process group, SIGKILL it after ``grace_s``; the job ends as ``cancelled``."""
        folder = Path(folder).resolve()
        job = self.refresh(folder)
        if job is None:
            raise JobError(f"no studio job in {folder}")
        if job.get("status") not in ACTIVE:
            return job
        job["status"] = "cancelling"
        atomic_write_json(folder / JOB_FILE, job)
        proc = self._procs.get(folder)
        pgid = job.get("pid") or (proc.pid if proc is not None else None)
        if pgid:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        threading.Thread(target=self._reap, args=(folder, pgid, grace_s), daemon=True).start()
        return job

    def _reap(self, folder: Path, pgid: int | None, grace_s: float) -> None:
        deadline = time.time() + grace_s
        while time.time() < deadline:
            if (read_job(folder) or {}).get("status") in FINAL:
                break
            time.sleep(0.1)
        else:
            if pgid:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        proc = self._procs.get(folder)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.refresh(folder)
