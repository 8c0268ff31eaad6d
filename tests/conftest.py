import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    env = os.environ.get("ADAPT3D_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared"


FIXTURES = shared_dir() / "fixtures" / "eg3d"


def pytest_configure(config):
    # Before any fixture: module- and session-scoped fixtures (e.g. a training run shared by a test module) must
    # run with the same thread count and offline settings as the tests that compare against them (a different
    # thread count changes float rounding).
    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["ADAPT3D_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _single_thread_and_offline(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ADAPT3D_OFFLINE", "1")


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"EG3D parity fixture {path} is missing (set ADAPT3D_SHARED_DIR)")
    return path
