"""Every notebook in notebooks/ runs end to end, and is committed without outputs.

Each ``notebooks/*.ipynb`` is executed with nbclient on an ipykernel, in the notebooks/
folder, with ``JAXDIFF_TINY=1`` (the notebooks then use tiny models and a few steps; each
should take at most ~20 s of CPU). Any cell that raises fails the test with the cell and
its traceback. New notebooks are picked up by the glob, nothing to register.

Outputs stay out of git so diffs show the lesson, not pictures; to strip a notebook:

    python3 -m tests.test_notebooks notebooks/NN_topic.ipynb
"""

from __future__ import annotations

import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def strip_outputs(notebook: nbformat.NotebookNode) -> bool:
    """Clears outputs and execution counts in place; returns whether anything changed."""
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    return changed


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    assert not strip_outputs(notebook), (
        f"{path.name} has outputs or execution counts; strip them with "
        f"python3 -m tests.test_notebooks notebooks/{path.name}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_tiny_mode(path, monkeypatch):
    # The kernel inherits this environment: tiny sizes, CPU, this checkout importable
    # (as `pip install -e .` makes it) from the notebooks/ folder, and the tests' shared XLA
    # compilation cache (conftest.py).
    monkeypatch.setenv("JAXDIFF_TINY", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    ))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, when any cell fails
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "a lesson without a picture"


if __name__ == "__main__":
    for name in sys.argv[1:] or map(str, NOTEBOOKS):
        nb = nbformat.read(name, as_version=4)
        if strip_outputs(nb):
            nbformat.write(nb, name)
            print(f"stripped {name}")
