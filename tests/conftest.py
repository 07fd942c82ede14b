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
    """Constructor settings of a narrow DAT (v1) or DAT++ ("pp") that runs fast on a CPU."""
    common = dict(img_size=img_size, num_classes=num_classes, dim_stem=16, dims=[16, 32, 64, 128],
                  depths=[2, 2, 2, 2], heads=[1, 2, 4, 8], generation=generation)
    if generation == "v1":
        return dict(common, stage_spec=[["L", "S"], ["L", "D"], ["L", "D"], ["L", "D"]],
                    window_sizes=[4, 4, 2, 1], groups=[-1, 1, 2, 4],
                    use_pes=[False, True, True, True], strides=[-1, 1, 1, 1],
                    offset_range_factor=[-1, -1, 2, 2])
    return dict(common, stage_spec=[["N", "D"], ["N", "D"], ["N", "D"], ["D", "D"]],
                groups=[1, 1, 2, 4], use_pes=[True] * 4, strides=[4, 2, 1, 1],
                offset_range_factor=[-1] * 4, use_dwc_mlps=[True] * 4, use_lpus=[True] * 4,
                use_conv_patches=True, ksizes=[5, 3, 3, 3], nat_ksizes=[3, 3, 3, 3])


@pytest.fixture
def tiny_dat():
    """Factory: ``tiny_dat("v1" | "pp", **overrides)`` builds a small random-init DAT."""
    from dat_lightning.models import DAT

    def build(generation: str = "v1", **overrides):
        return DAT(**{**tiny_dat_kwargs(generation), **overrides})

    return build
