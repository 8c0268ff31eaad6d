"""Tests skip only for a missing GPU or real weights; missing shared fixtures or a missing browser skip with a
one-line reason that says how to get them, and under CI (CI=true) fail instead."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, SHARED_FILES

PROBE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import fixture_path, require_browser, shared_path

    def test_fixture():
        fixture_path("ffhq512_tiny.pkl")

    def test_facts():
        shared_path("docs/eg3d-facts.md", "EG3D facts")

    def test_browser():
        require_browser()
""")


def _pytest(tmp_path: Path, ci: str | None, shared: Path) -> subprocess.CompletedProcess:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE.format(tests=str(REPO / "tests")))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ADAPT3D_CHROMIUM", "ADAPT3D_CHROMEDRIVER")}
    env.update(ADAPT3D_SHARED_DIR=str(shared), PYTHONPATH=str(REPO / "src"),
               PATH=str(Path(sys.executable).parent))  # no chromium / chromedriver on this PATH
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsfE", "-p", "no:cacheprovider", str(probe)],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_fixtures_and_browser_skip_outside_ci_and_say_how_to_get_them(tmp_path, ci):
    proc = _pytest(tmp_path, ci, tmp_path / "no-shared")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "3 skipped" in proc.stdout
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 3
    assert sum("ADAPT3D_SHARED_DIR" in s and "no-shared" in s for s in skips) == 2
    assert sum("apt-get install -y chromium chromium-driver" in s for s in skips) == 1


def test_missing_fixtures_and_browser_fail_under_ci(tmp_path):
    proc = _pytest(tmp_path, "true", tmp_path / "no-shared")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "3 failed" in proc.stdout and "skipped" not in proc.stdout
    assert proc.stdout.count("CI=true: failing instead of skipping") >= 3


def test_ci_script_checks_the_shared_files_first(tmp_path):
    """`python tests/conftest.py` (run by .ci/run before pytest) exits 1 naming each missing file."""
    env = {**os.environ, "ADAPT3D_SHARED_DIR": str(tmp_path / "empty"), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "conftest.py")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 1
    assert all(str(tmp_path / "empty" / rel) in proc.stderr for rel in SHARED_FILES)
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("tests/conftest.py") < ci.index("\npytest") and "CI=true" in ci
