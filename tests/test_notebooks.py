"""The tutorial notebooks run top to bottom without error, and their claim-check cells print numbers.

Each notebook is executed with nbclient in a kernel running this interpreter (so it works in the fresh
virtual environment ``make test`` creates, whatever kernels are installed globally). They share the
session's ``CRAFTLAB_HOME`` (see conftest.py) and run in order, so the fine-tuning runs made by one are
reused by the next, as for a learner. The kernel runs with one intra-op thread (``OMP_NUM_THREADS=1``
unless set). Deselect with ``-m "not notebooks"`` (a few minutes on 2 cores).

The committed notebooks carry no outputs (``test_committed_notebooks_are_clean``); the widget helper is
tested on its own without a kernel.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = int(os.environ.get("CRAFTLAB_NOTEBOOK_CELL_TIMEOUT", "900"))
NUMBER = re.compile(r"[-+]?\d+\.\d+")


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _kernel_manager():
    """A kernel manager whose "python3" kernel is this interpreter (not whatever python3 spec is installed)."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisInterpreter(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name=f"Python {sys.version_info.major} (this environment)",
                              language="python", resource_dir=str(NOTEBOOK_DIR))

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter())


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["00_quickstart.ipynb", "01_craft.ipynb", "02_sharpness_compressibility.ipynb"], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_are_clean(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: committed with outputs (regenerate with notebooks/_generate.py)"
            assert cell.execution_count is None
    assert any("claim-check" in c.metadata.get("tags", []) for c in nb.cells), f"{path.name} has no claim-check cell"


def test_committed_notebooks_match_their_generator():
    """The .ipynb files are what notebooks/_generate.py writes (edit the generator, then regenerate)."""
    import importlib.util

    pytest.importorskip("nbformat")
    spec = importlib.util.spec_from_file_location("_generate_notebooks", NOTEBOOK_DIR / "_generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    import nbformat

    assert sorted(gen.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    for name, cells in gen.NOTEBOOKS.items():
        want = gen.build(name, cells)
        have = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        assert [(c.cell_type, c.source, c.metadata.get("tags")) for c in have.cells] == \
            [(c.cell_type, c.source, c.metadata.get("tags")) for c in want.cells], \
            f"{name} differs from notebooks/_generate.py: run `python notebooks/_generate.py`"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment. One intra-op thread: as fast as two for these tiny models on an
    # idle machine, and 10x faster than two on a busy one (OpenMP workers spin against other processes).
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS") or "1")

    nb = nbformat.read(path, as_version=4)
    km = _kernel_manager()
    client = nbclient.NotebookClient(nb, km=km, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     allow_errors=False, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:  # the message holds the cell and its traceback
        nbformat.write(nb, tmp_path / path.name)
        pytest.fail(f"{path.name} failed (executed copy: {tmp_path / path.name}):\n{err}")
    finally:  # nbclient leaves a kernel it did not create running: shut it down
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    elapsed = time.perf_counter() - t0
    nbformat.write(nb, tmp_path / path.name)

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    checks = [c for c in nb.cells if "claim-check" in c.metadata.get("tags", [])]
    assert checks
    for cell in checks:
        text = _stdout(cell)
        assert "CLAIM CHECK" in text, f"{path.name}: a claim-check cell printed no CLAIM CHECK header:\n{text}"
        assert len(NUMBER.findall(text)) >= 3, f"{path.name}: a claim-check cell printed no measured numbers:\n{text}"
        assert not re.search(r"\bnan\b", text, re.IGNORECASE), f"{path.name}: NaN in a claim check:\n{text}"
        assert "verdict" in text.lower() or "->" in text, f"{path.name}: no verdict in a claim check:\n{text}"
    print(f"{path.name}: {elapsed:.0f} s")


# ------------------------------------------------------------------------------------------ widget helper


def test_interactive_figure_rerenders_in_place(monkeypatch):
    widgets = pytest.importorskip("ipywidgets")
    from craftlab import widgets as cw

    monkeypatch.delenv(cw.STATIC_ENV, raising=False)
    calls = []

    def make(sparsity, method):
        calls.append((sparsity, method))
        return f"{method}@{sparsity}"

    box = cw.interactive_figure(make, sparsity={"options": [0.3, 0.5, 0.7], "value": 0.5, "format": "{:.0%}"},
                                method=["wanda", "magnitude"])
    assert isinstance(box, widgets.VBox)
    assert calls == [(0.5, "wanda")]
    assert isinstance(box.controls["sparsity"], widgets.SelectionSlider)
    box.controls["sparsity"].value = 0.7
    box.controls["method"].value = "magnitude"
    assert calls[-2:] == [(0.7, "wanda"), (0.7, "magnitude")]
    assert box.children[-1] is not None and len(box.children) == 3


def test_interactive_figure_static_fallback(monkeypatch):
    from craftlab import widgets as cw

    monkeypatch.delenv(cw.STATIC_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # as if not installed (the dev extras lack it)
    assert not cw.have_widgets()
    monkeypatch.undo()
    monkeypatch.setenv(cw.STATIC_ENV, "1")
    assert not cw.have_widgets()
    out = cw.interactive_figure(lambda bits: {"bits": bits}, bits=["W8A8", "W4A4"])
    assert out == {"bits": "W8A8"}
    with pytest.raises(ValueError):
        cw.interactive_figure(lambda bits: bits, bits={"options": ["W8A8"], "value": "W4A4"})
