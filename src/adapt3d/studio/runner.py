"""The process that watches one studio job: ``python -m adapt3d.studio.runner RUN/studio_job.json``.

The studio server starts this runner in a new session (its own process group); the runner starts the job's
command (``python -m adapt3d <command> ...``, stdout and stderr appended to the run's log), waits for it and
records the exit code and final status in ``studio_job.json``. Because the runner, not the server, records the
outcome, a job that finishes or crashes while the server is down is still reported correctly after a restart.
Cancelling (the server sets status ``cancelling`` and signals the process group) ends as status ``cancelled``.

Standard library only (plus adapt3d.utils.io), so it starts fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from adapt3d.utils.io import atomic_write_json


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m adapt3d.studio.runner RUN/studio_job.json", file=sys.stderr)
        return 2
    job_file = Path(argv[0]).resolve()
    job = _read(job_file)
    log_path = job_file.parent / job["log"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "ab", buffering=0) as log:
        try:
            child = subprocess.Popen(job["command"], cwd=job["cwd"], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env)
        except OSError as e:
            log.write(f"studio: cannot start {job['command'][:4]}: {e}\n".encode())
            job.update(status="failed", exit_code=None, ended=time.time(), error=str(e))
            atomic_write_json(job_file, job)
            return 1
        terminated = []

        def on_term(signum, frame):  # forward, then record the outcome once the child has gone
            terminated.append(signum)
            child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        job = _read(job_file)
        job.update(pid=os.getpid(), child_pid=child.pid,
                   status="running" if job.get("status") == "starting" else job["status"])
        atomic_write_json(job_file, job)
        code = child.wait()
    job = _read(job_file)
    cancelled = job.get("status") == "cancelling" or bool(terminated)
    job.update(status="cancelled" if cancelled else "succeeded" if code == 0 else "failed", exit_code=code,
               ended=time.time())
    atomic_write_json(job_file, job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
