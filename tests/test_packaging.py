"""Packaging: the Apache-2.0 LICENSE is the unmodified licence text and ships in the wheel."""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (identical to Debian's /usr/share/common-licenses/
# Apache-2.0, 202 lines, 11358 bytes).
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_license_is_the_unmodified_apache_2_0_text():
    data = (REPO / "LICENSE").read_bytes()
    assert len(data) == 11358 and hashlib.sha256(data).hexdigest() == APACHE_2_0_SHA256


def _setuptools_at_least(major: int) -> bool:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= major
    except importlib.metadata.PackageNotFoundError:
        return False


def test_wheel_ships_the_license_and_declares_it(tmp_path):
    src = tmp_path / "src-tree"  # a copy: building in the checkout would write build/ and *.egg-info there
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src" / "adapt3d", src / "src" / "adapt3d",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)]
    if _setuptools_at_least(77):  # PEP 639 license-files; otherwise pip fetches a new enough one to build
        cmd.insert(4, "--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    (wheel,) = (tmp_path / "dist").glob("adapt3d-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licence, names
        assert hashlib.sha256(z.read(licence[0])).hexdigest() == APACHE_2_0_SHA256
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
        assert "adapt3d/studio/static/index.html" in names  # package data travels too
