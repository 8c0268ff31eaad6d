"""Shared test helpers. Tests skip only for a missing GPU or real weights; a missing shared fixture or browser
skips with a one-line reason saying how to get it, and fails under CI (``CI=true``). Importing this file does not
import torch (``python tests/conftest.py`` is .ci/run's quick check of the shared files)."""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The project's shared folder (EG3D parity fixtures, facts): $ADAPT3D_SHARED_DIR or ../shared."""
    env = os.environ.get("ADAPT3D_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared"


FIXTURES = shared_dir() / "fixtures" / "eg3d"
# Files of the shared folder the suite reads; .ci/run checks them (missing_shared_files) before pytest.
SHARED_FILES = (
    "fixtures/eg3d/ffhq512_tiny.pkl", "fixtures/eg3d/ffhq512_tiny.reference.pt",
    "fixtures/eg3d/shapenet128_tiny.pkl", "fixtures/eg3d/shapenet128_tiny.reference.pt",
    "docs/eg3d-facts.md",
)
HOW_TO_GET_SHARED = ("it is not in the repository but in the project's shared folder: put that folder next to the "
                     "checkout as ../shared or set ADAPT3D_SHARED_DIR=/path/to/shared (docs/testing.md)")


def in_ci() -> bool:
    """True under CI (CI=true/1/yes), where a test that cannot run is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail_in_ci(message: str):
    """Skip with ``message``; under CI fail with it instead (nothing may be skipped silently there)."""
    if in_ci():
        pytest.fail(f"{message} [CI=true: failing instead of skipping]", pytrace=False)
    pytest.skip(message)


def missing_shared_files() -> list[Path]:
    return [shared_dir() / rel for rel in SHARED_FILES if not (shared_dir() / rel).is_file()]


def shared_path(relpath: str, what: str = "shared test file") -> Path:
    """``shared_dir() / relpath``; when missing, skip saying how to get it (fail under CI)."""
    path = shared_dir() / relpath
    if not path.is_file():
        skip_or_fail_in_ci(f"{what} {path} is missing: {HOW_TO_GET_SHARED}")
    return path


def pytest_configure(config):
    # Before any fixture: module- and session-scoped fixtures (e.g. a training run shared by a test module) must
    # run with the same thread count and offline settings as the tests that compare against them (a different
    # thread count changes float rounding).
    import torch

    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["ADAPT3D_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _single_thread_and_offline(monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ADAPT3D_OFFLINE", "1")


def require_browser() -> tuple[str, str]:
    """Paths of Chromium and chromedriver for the Selenium browser tests (``ADAPT3D_CHROMIUM`` /
    ``ADAPT3D_CHROMEDRIVER`` or on PATH); when one is missing (or selenium), skip (fail under CI)."""
    chromium = os.environ.get("ADAPT3D_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("ADAPT3D_CHROMEDRIVER") or shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
        missing = [n for n, v in (("chromium", chromium), ("chromedriver", driver)) if not v]
    except ImportError:
        missing = ["selenium (pip install -e '.[dev]')"]
    if missing:
        skip_or_fail_in_ci(f"browser tests need {', '.join(missing)} (Debian: apt-get install -y chromium "
                           "chromium-driver)")
    return chromium, driver


def fixture_path(name: str) -> Path:
    """An EG3D parity fixture (``fixtures/eg3d/<name>`` of the shared folder); see :func:`shared_path`."""
    return shared_path(f"fixtures/eg3d/{name}", "EG3D parity fixture")


if __name__ == "__main__":  # python tests/conftest.py: exit 1 naming the missing shared files (used by .ci/run)
    import sys

    missing = missing_shared_files()
    for path in missing:
        print(f"missing shared test file {path}", file=sys.stderr)
    if missing:
        print(f"the tests need them: {HOW_TO_GET_SHARED}", file=sys.stderr)
    sys.exit(1 if missing else 0)
