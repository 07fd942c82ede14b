"""Import the project's top-level ``datamodules`` package even where a user's own package shadows it.

``datamodules`` is a common name: run from a project that has its own ``datamodules`` package
(``python -m`` puts the current folder first on ``sys.path``), ``import datamodules`` would find
that one, and recipes' ``class_path: datamodules.CIFAR10DataModule`` would break. The command line
loads the package installed next to :mod:`dat_lightning` by its location instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

__all__ = ["import_datamodules"]

#: Where the project's ``datamodules`` package is installed: next to ``dat_lightning``.
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "datamodules"


def _is_ours(origin: str | None) -> bool:
    return origin is not None and Path(origin).resolve().parent == PACKAGE_DIR


def import_datamodules() -> ModuleType:
    """The project's ``datamodules`` package (imported once; later imports by name get it too).

    Raises:
        ImportError: another package named ``datamodules`` was imported first in this process.
    """
    loaded = sys.modules.get("datamodules")
    if loaded is not None:
        if not _is_ours(getattr(loaded, "__file__", None)):
            raise ImportError(
                f"a different package named 'datamodules' ({getattr(loaded, '__file__', loaded)}) is "
                f"already imported, so dat-lightning's ({PACKAGE_DIR}) cannot be; rename your package"
            )
        return loaded
    found = importlib.util.find_spec("datamodules")
    if found is not None and _is_ours(found.origin):
        return importlib.import_module("datamodules")
    if found is not None:
        warnings.warn(
            f"your package {found.origin} is also named 'datamodules'; dat-lightning uses its own "
            f"({PACKAGE_DIR}) for recipes' class_path 'datamodules.*', so yours cannot be named there: "
            "rename it (e.g. 'my_datamodules') to use its classes in a recipe",
            stacklevel=2,
        )
    spec = importlib.util.spec_from_file_location(
        "datamodules", PACKAGE_DIR / "__init__.py", submodule_search_locations=[str(PACKAGE_DIR)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"dat-lightning's datamodules package is missing from {PACKAGE_DIR}; reinstall")
    module = importlib.util.module_from_spec(spec)
    sys.modules["datamodules"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["datamodules"]
        raise
    return module
