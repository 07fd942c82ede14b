"""Shared test fixtures: the reference data in ``tests/fixtures``, small models, and a guard that
fails any test reading a file outside the repository (see :mod:`read_guard`)."""

from __future__ import annotations

import os
import site
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from read_guard import ReadGuard, ReadGuardPlugin

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
_OVERRIDE = os.environ.get("DAT_OFFICIAL_FIXTURES")
OFFICIAL = Path(_OVERRIDE) if _OVERRIDE else FIXTURES / "official"


def pytest_configure(config: pytest.Config) -> None:
    """Watch the repository's parent folder: a test may read inside the repository, the Python
    installation, temporary folders and ``DAT_OFFICIAL_FIXTURES``, nothing beside them."""
    allowed = [Path(sys.prefix), Path(sys.base_prefix), Path(tempfile.gettempdir()),
               *map(Path, site.getsitepackages()), Path(site.getusersitepackages())]
    if _OVERRIDE:
        allowed.append(OFFICIAL)
    guard = ReadGuard(REPO, REPO.parent, allowed)
    config.pluginmanager.register(ReadGuardPlugin(guard), "dat_read_guard")


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine multi-threaded CPU ops stall under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fixture_dir(path: Path, what: str) -> Path:
    if not (path / "README.md").is_file():
        pytest.fail(f"{what} fixtures not found at {path}: they are part of the repository "
                    "(tests/fixtures); restore them with `git checkout -- tests/fixtures`")
    return path


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """Official DAT/DAT++ classification fixtures (``tests/fixtures/official``; the environment
    variable ``DAT_OFFICIAL_FIXTURES`` points elsewhere)."""
    return _fixture_dir(OFFICIAL, "official reference")


@pytest.fixture(scope="session")
def dense_dir() -> Path:
    """Official dense-prediction (DAT-Detection / DAT-Segmentation) backbone fixtures."""
    return _fixture_dir(FIXTURES / "dense", "dense-backbone")


@pytest.fixture(scope="session")
def grads_dir() -> Path:
    """Official train-mode gradient fixtures."""
    return _fixture_dir(FIXTURES / "grads", "gradient")


def assert_close(got: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> None:
    """The fixtures' tolerance: ``|got - exp| <= 1e-4 * scale + 1e-4 * |exp|``, ``scale``
    defaulting to ``max|exp|`` (sampling positions use ``max(1, max|exp|)``)."""
    assert got.shape == expected.shape, f"shape {tuple(got.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item() if scale is None else scale
    excess = (got - expected).abs() - (1e-4 * scale + 1e-4 * expected.abs())
    assert excess.max().item() <= 0, f"max abs error {(got - expected).abs().max().item():.3g}"


def position_scale(expected: torch.Tensor) -> float:
    """Tolerance scale of sampling positions (normalised coordinates): ``max(1, max|exp|)``."""
    return max(1.0, expected.abs().max().item())


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
