"""pytest fixtures for everyone's tests. Import the ones you need into a test module::

    from adapt3d.testing.fixtures import tiny_models  # noqa: F401  (registers the fixture)

    def test_x(tiny_models):
        sd = tiny_models["stable-diffusion"]   # a folder for StableDiffusionImg2ImgPipeline.from_pretrained

``tiny_models`` builds the tiny SD / ControlNet / CLIP folders once per test session under pytest's base temp
folder (the marker cache makes every later request, from any module, a no-op).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapt3d.diffusion.tiny_models import ensure_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """name -> folder for 'stable-diffusion', 'controlnet', 'clip' (random weights, built locally)."""
    return ensure_tiny_models(tmp_path_factory.getbasetemp() / "tiny-models")
