"""The tutorial notebooks run top to bottom without error, and their claim-check cells print numbers.

Each notebook's source of truth is a jupytext percent-format script, ``notebooks/NN_name.py``, paired with
the committed, output-free ``NN_name.ipynb`` (``notebooks/jupytext.toml``). The two must hold the same cells
(``test_committed_notebooks_match_their_sources``); after editing one, run ``jupytext --sync notebooks/*.py``.

Each notebook is executed from its .py with nbclient in a kernel running this interpreter (so it works in the
fresh virtual environment ``make test`` creates, whatever kernels are installed globally). They share the
session's ``CRAFTLAB_HOME`` (see conftest.py) and run in order, so the fine-tuning runs made by one are
reused by the next, as for a learner. The kernel runs with one intra-op thread (``OMP_NUM_THREADS=1``
unless set). Deselect with ``-m "not notebooks"`` (a few minutes on 2 cores).

The committed notebooks carry no outputs (``test_committed_notebooks_are_clean``); the widget helper is
tested on its own without a kernel.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))  # jupytext percent format: the source of truth
SYNC = "jupytext --sync notebooks/*.py"
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
    stems = ["00_quickstart", "01_craft", "02_sharpness_compressibility", "03_qwt", "04_snt", "05_supernet",
             "06_last", "07_miet"]
    assert [p.name for p in SOURCES] == [f"{s}.py" for s in stems], SOURCES
    assert [p.name for p in NOTEBOOKS] == [f"{s}.ipynb" for s in stems], f"{NOTEBOOKS}: run `{SYNC}`"
    assert 'formats = "ipynb,py:percent"' in (NOTEBOOK_DIR / "jupytext.toml").read_text()
    for path in SOURCES:
        header = path.read_text(encoding="utf-8").split("# ---", 2)[1]
        assert "formats: ipynb,py:percent" in header and "format_name: percent" in header, \
            f"{path.name}: no jupytext header pairing it as ipynb,py:percent"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_are_clean(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, \
                f"{path.name}: committed with outputs (jupyter nbconvert --clear-output --inplace {path.name})"
            assert cell.execution_count is None
    assert any("claim-check" in c.metadata.get("tags", []) for c in nb.cells), f"{path.name} has no claim-check cell"


def _cells(nb) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]


@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_committed_notebooks_match_their_sources(path):
    """Each .ipynb holds the cells jupytext makes from its paired .py (types, sources, tags), so that an edit
    of one without the other fails here rather than drifting."""
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), f"{path.name} has no paired {ipynb.name}: run `{SYNC}`"
    want, have = _cells(jupytext.read(path)), _cells(nbformat.read(ipynb, as_version=4))
    for i, (w, h) in enumerate(zip(want, have)):
        assert w == h, (f"{ipynb.name} and {path.name} differ at cell {i} (the .py is the source of truth): "
                        f"run `{SYNC}` (it syncs from whichever file of each pair was saved last)\n"
                        f"  .py:    {w}\n  .ipynb: {h}")
    assert len(want) == len(have), \
        f"{ipynb.name} has {len(have)} cells, {path.name} makes {len(want)}: run `{SYNC}`"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_runs(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment. One intra-op thread: as fast as two for these tiny models on an
    # idle machine, and 10x faster than two on a busy one (OpenMP workers spin against other processes).
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS") or "1")

    nb = jupytext.read(path)  # the .py source of truth (its paired .ipynb holds the same cells, checked above)
    executed = tmp_path / path.with_suffix(".ipynb").name
    km = _kernel_manager()
    client = nbclient.NotebookClient(nb, km=km, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     allow_errors=False, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:  # the message holds the cell and its traceback
        nbformat.write(nb, executed)
        pytest.fail(f"{path.name} failed (executed copy: {executed}):\n{err}")
    finally:  # nbclient leaves a kernel it did not create running: shut it down
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    elapsed = time.perf_counter() - t0
    nbformat.write(nb, executed)

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


def _output_area(box):
    """The Output widget of an interactive_figure box (controls, then a VBox of the busy sign and it)."""
    widgets = pytest.importorskip("ipywidgets")
    area = box.children[-1].children[-1]
    assert isinstance(area, widgets.Output)
    return area


def test_interactive_figure_rerenders_in_place(monkeypatch):
    """The Output widget itself holds the figure's plotly bundle (not an empty bundle while plotly publishes
    the figure elsewhere), and a control change replaces it with the new figure's bundle."""
    widgets = pytest.importorskip("ipywidgets")
    go = pytest.importorskip("plotly.graph_objects")
    from craftlab import widgets as cw

    monkeypatch.delenv(cw.STATIC_ENV, raising=False)
    calls = []

    def make(sparsity, method):
        calls.append((sparsity, method))
        print(f"kept {1 - sparsity:.0%}")
        return go.Figure(go.Bar(x=["a", "b"], y=[sparsity, 1 - sparsity]),
                         layout_title_text=f"{method} at {sparsity:.0%}")

    box = cw.interactive_figure(make, sparsity={"options": [0.3, 0.5, 0.7], "value": 0.5, "format": "{:.0%}"},
                                method=["wanda", "magnitude"])
    assert isinstance(box, widgets.VBox)
    assert calls == [(0.5, "wanda")]
    assert isinstance(box.controls["sparsity"], widgets.SelectionSlider)
    area = _output_area(box)

    def shown():
        kinds = [o["output_type"] for o in area.outputs]
        assert kinds == ["stream", "display_data"], area.outputs  # one setting on screen: text, then figure
        spec = area.outputs[1]["data"][cw.PLOTLY_MIME]
        json.dumps(area.outputs)  # what the widget syncs to the browser must be plain JSON
        return area.outputs[0]["text"], spec["layout"]["title"]["text"], spec["data"][0]["y"]

    assert shown() == ("kept 50%\n", "wanda at 50%", [0.5, 0.5])
    box.controls["sparsity"].value = 0.7
    assert shown()[1:] == ("wanda at 70%", [0.7, pytest.approx(0.3)])
    box.controls["method"].value = "magnitude"
    assert calls[-2:] == [(0.7, "wanda"), (0.7, "magnitude")]
    assert shown()[:2] == ("kept 30%\n", "magnitude at 70%")
    # The cell's own output (what an exported notebook shows) carries the figure on screen as plotly JSON.
    bundle = box._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data[cw.PLOTLY_MIME]["layout"]["title"]["text"] == "magnitude at 70%"


def test_interactive_figure_shows_errors_and_tables_in_the_area(monkeypatch):
    pytest.importorskip("ipywidgets")
    pd = pytest.importorskip("pandas")
    from craftlab import widgets as cw

    monkeypatch.delenv(cw.STATIC_ENV, raising=False)

    def table(n):
        if n == 3:
            raise ValueError("no such run")
        return pd.DataFrame({"n": [n]})

    box = cw.interactive_figure(table, n=[1, 2, 3])
    area = _output_area(box)
    assert "text/html" in area.outputs[-1]["data"] and "<table" in area.outputs[-1]["data"]["text/html"]
    box.controls["n"].value = 3
    assert [o["output_type"] for o in area.outputs] == ["stream"]
    assert "ValueError: no such run" in area.outputs[0]["text"]


def test_static_figures_put_a_png_beside_the_plotly_json(monkeypatch):
    """With kaleido and a chromium, a plotly figure's bundle carries a real PNG of the figure; without them
    the bundle is the plotly JSON alone (and static_figures says so)."""
    go = pytest.importorskip("plotly.graph_objects")
    pio = pytest.importorskip("plotly.io")
    from craftlab import widgets as cw

    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[2, 0, 1]), layout_title_text="static copy")
    before = pio.renderers.default
    try:
        available = cw.static_figures()
        data = fig._repr_mimebundle_()
    finally:
        cw.static_figures(False)
    assert pio.renderers.default == before
    assert data[cw.PLOTLY_MIME]["layout"]["title"]["text"] == "static copy"
    if not available:
        assert "image/png" not in data
        pytest.skip("kaleido or chromium missing: figures carry plotly JSON only")
    png = base64.b64decode(data["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk: the figure's pixel size
    assert (width, height) == (760, 450)
    monkeypatch.setenv(cw.IMAGE_ENV, "0")
    assert cw.static_image(fig) is None


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
