"""Shared test fixtures: paths to the golden fixtures and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Fixture modules that test modules also import from: rewrite their asserts before that import.
pytest.register_assert_rewrite(
    "tests.db_fixtures", "tests.webui_support", "tests.api_support", "tests.s3_support"
)

import torch  # noqa: E402 - after the rewrite registration, as pytest requires

# Two cores are shared by the test processes, servers and workers: keep torch from oversubscribing.
torch.set_num_threads(int(os.environ.get("RAMDEX_TEST_THREADS", "2")))

GOLDEN = Path(__file__).parent / "fixtures" / "golden_tiny"
GOLDEN_IMAGES = ["openset_example.jpg", "synthetic_rgba.png", "synthetic_gray.jpg"]


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Upstream's golden tiny model, inputs and outputs (copied from shared/reference)."""
    return GOLDEN


@pytest.fixture(scope="session")
def golden_model():
    """The golden tiny checkpoint, loaded once through the public loader."""
    from ram_pp.factory import load_model

    return load_model(GOLDEN / "checkpoint.pth")


@pytest.fixture()
def test_output_dir() -> Path:
    """Folder for artefacts a person may want to review (screenshots, reports)."""
    out = Path(__file__).parent.parent / "test-output"
    out.mkdir(exist_ok=True)
    return out
