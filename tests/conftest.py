"""Shared test fixtures: paths to the official reference data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(os.environ.get("DAT_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """Directory of the official DAT/DAT++ reference fixtures (``../shared/fixtures/official``)."""
    if not (OFFICIAL / "README.md").is_file():
        pytest.fail(
            f"official reference fixtures not found at {OFFICIAL}; clone the repository next to its "
            "shared/ folder or set DAT_OFFICIAL_FIXTURES to the fixtures directory"
        )
    return OFFICIAL
