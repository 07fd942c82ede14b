"""The notebooks in notebooks/: committed without outputs, and each one runs from top to bottom in a
real Jupyter kernel (on the CPU, in a temporary working directory) and draws its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

#: The least number of figures (``image/png`` outputs) each notebook shows.
EXPECTED_FIGURES = {
    "01_finetune_quickstart.ipynb": 4,  # batch preview, learning curves, predictions, confusion matrix
    "02_custom_dataset.ipynb": 2,  # batch preview, predictions
    "03_offsets.ipynb": 4,  # offset curves, two sampling-point figures, the guarded run
    "04_segmentation_detection.ipynb": 3,  # mask preview, predicted masks, predicted boxes
}


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def png_outputs(nb) -> int:
    return sum("image/png" in output.get("data", {})
               for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs)


def test_every_notebook_has_an_expected_figure_count() -> None:
    assert sorted(p.name for p in notebook_paths()) == sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; strip them"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_runs_and_draws_its_figures(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on any error
    assert png_outputs(nb) >= EXPECTED_FIGURES[path.name], (
        f"{path.name} showed {png_outputs(nb)} figures, expected at least {EXPECTED_FIGURES[path.name]}")
