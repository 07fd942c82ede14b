"""Shared test fixtures: paths to the official reference data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(os.environ.get("DAT_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine multi-threaded CPU ops stall under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """Directory of the official DAT/DAT++ reference fixtures (``../shared/fixtures/official``)."""
    if not (OFFICIAL / "README.md").is_file():
        pytest.fail(
            f"official reference fixtures not found at {OFFICIAL}; clone the repository next to its "
            "shared/ folder or set DAT_OFFICIAL_FIXTURES to the fixtures directory"
        )
    return OFFICIAL


def tiny_dat_kwargs(generation: str = "v1", num_classes: int = 10, img_size: int = 32) -> dict:
    """Constructor settings of the registered narrow preset ``dat_test`` (v1) or ``dat_pp_test``
    ("pp"), which run fast on a CPU."""
    from dat_lightning.models import TEST_CONFIGS

    name = "dat_test" if generation == "v1" else "dat_pp_test"
    return dict(TEST_CONFIGS[name], num_classes=num_classes, img_size=img_size)


@pytest.fixture
def tiny_dat():
    """Factory: ``tiny_dat("v1" | "pp", **overrides)`` builds a small random-init DAT."""
    from dat_lightning.models import DAT

    def build(generation: str = "v1", **overrides):
        return DAT(**{**tiny_dat_kwargs(generation), **overrides})

    return build
