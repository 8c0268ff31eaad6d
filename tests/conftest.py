import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    env = os.environ.get("ADAPT3D_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared"


FIXTURES = shared_dir() / "fixtures" / "eg3d"


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
