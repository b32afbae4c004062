"""docs/tutorial.ipynb runs from top to bottom on a local kernel, offline, and every picture it
promises is there, in the run and in the committed copy."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIAL = Path(__file__).parents[1] / "docs" / "tutorial.ipynb"
PICTURES = ("image/png", "image/jpeg", "text/html")


def pictures(notebook) -> list[int]:
    """The indices of the code cells that show a picture or a table."""
    return [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        and any(kind in output.get("data", {}) for output in cell.outputs for kind in PICTURES)
    ]


@pytest.mark.slow
def test_the_tutorial_runs_and_shows_its_pictures(trained_default, tmp_path):
    committed = nbformat.read(TUTORIAL, as_version=4)
    notebook = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    shown = pictures(notebook)
    assert (
        len(shown) >= 9
    )  # filters, maps, methods, occlusion, scan, top-9, class models, t-SNE, resnet
    assert shown == pictures(committed), "re-run docs/tutorial.ipynb and commit its outputs"
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("name") != "stderr", output.get("text")  # no warnings in a cell
