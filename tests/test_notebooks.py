"""The tutorial notebooks run top to bottom without error, fast, and publish with every figure.

Each notebook's source of truth is a jupytext percent-format script, ``notebooks/NN_name.py``, paired with
the committed, output-free ``NN_name.ipynb`` (``notebooks/jupytext.toml``). The two must hold the same cells
(``test_committed_notebooks_match_their_sources``, outputs ignored: a learner who saves in JupyterLab writes
outputs into the working copy, and that must not break ``make test``); after editing one, run
``jupytext --sync notebooks/*.py``. "Committed without outputs" is checked on the committed version (git).

Each notebook is executed from its .py with nbclient in a kernel running this interpreter (so it works in the
fresh virtual environment ``make test`` creates, whatever kernels are installed globally). They share the
session's ``CRAFTLAB_HOME`` (see conftest.py) and run in order, so the fine-tuning runs made by one are
reused by the next, as for a learner. The kernel runs with one intra-op thread (``OMP_NUM_THREADS=1``
unless set). Deselect with ``-m "not notebooks"``.

**Per-cell time.** Every code cell's wall time and the kernel's CPU time are recorded (printed, and written
to ``cell_times.json`` beside the executed copy); a cell fails the test when its kernel CPU time exceeds
:data:`CELL_LIMIT_S` per intra-op thread (CPU time, unlike wall time, does not grow when other processes
load the machine). The embedded default loads precomputed benchmark results where a notebook's study is
long; ``FULL = True`` in a notebook recomputes it.

**Published copies.** The executed notebook (``NN_name.ipynb``) and its HTML export (``nbconvert``, lab
template) are written to ``$CRAFTLAB_NOTEBOOK_OUT`` (``make notebooks-html``: ``build/notebooks``, git-ignored)
or a temporary folder. Every plotly output must carry a PNG (``craftlab.widgets.static_figures``, kaleido with
the system chromium) and the HTML must show one image per plotly output; without kaleido or chromium that
part is skipped (it fails instead when ``CRAFTLAB_REQUIRE_BROWSER`` is set, as in CI).
"""

from __future__ import annotations

import base64
import contextlib
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
CELL_LIMIT_S = float(os.environ.get("CRAFTLAB_NOTEBOOK_CELL_LIMIT", "60"))
"""Most kernel CPU seconds one cell may take, per intra-op thread, on the embedded default."""
OUT_ENV = "CRAFTLAB_NOTEBOOK_OUT"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
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
             "06_last", "07_miet", "08_compose"]
    assert [p.name for p in SOURCES] == [f"{s}.py" for s in stems], SOURCES
    assert [p.name for p in NOTEBOOKS] == [f"{s}.ipynb" for s in stems], f"{NOTEBOOKS}: run `{SYNC}`"
    assert 'formats = "ipynb,py:percent"' in (NOTEBOOK_DIR / "jupytext.toml").read_text()
    for path in SOURCES:
        header = path.read_text(encoding="utf-8").split("# ---", 2)[1]
        assert "formats: ipynb,py:percent" in header and "format_name: percent" in header, \
            f"{path.name}: no jupytext header pairing it as ipynb,py:percent"


def _committed(path: Path) -> str:
    """The committed text of `path` (``git show HEAD:...``), or the working copy outside a git checkout or
    for a file not committed yet."""
    import subprocess

    rel = path.relative_to(NOTEBOOK_DIR.parent).as_posix()
    try:
        res = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=NOTEBOOK_DIR.parent, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return path.read_text(encoding="utf-8")
    return res.stdout if res.returncode == 0 else path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_are_clean(path):
    """The committed .ipynb carry no outputs (checked on the committed version: a learner's JupyterLab save
    writes outputs into the working copy, which is theirs)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.reads(_committed(path), as_version=4)
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


def _publish(nb, out_dir: Path, stem: str):
    """Write the executed notebook and its HTML export for readers without a kernel: where an output holds
    both a widget view and a static figure, the static figure is kept (no kernel redraws the widget there).
    Returns (the published notebook, its HTML)."""
    import copy

    import nbformat
    from nbconvert import HTMLExporter

    pub = copy.deepcopy(nb)
    pub.metadata.pop("widgets", None)
    for cell in pub.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data and (PLOTLY_MIME in data or "image/png" in data):
                del data[WIDGET_MIME]
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(pub, out_dir / f"{stem}.ipynb")
    html, _ = HTMLExporter(template_name="lab").from_notebook_node(pub)
    (out_dir / f"{stem}.html").write_text(html, encoding="utf-8")
    return pub, html


class _CellClock:
    """Wall time and the kernel process's CPU time of every code cell (nbclient's cell hooks + psutil)."""

    def __init__(self, km):
        import psutil

        self.km, self.psutil, self.rows, self._start = km, psutil, [], None

    def _cpu(self) -> float | None:
        """CPU seconds of the kernel and its child processes (finished ones and running ones, e.g. the
        chromium that renders static figures)."""
        try:
            proc = self.psutil.Process(self.km.provisioner.process.pid)
            t = proc.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in proc.children(recursive=True):
                with contextlib.suppress(self.psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
            return total
        except Exception:
            return None

    async def start(self, cell, cell_index):
        self._start = (time.perf_counter(), self._cpu())

    async def executed(self, cell, cell_index, execute_reply):
        wall0, cpu0 = self._start
        cpu1 = self._cpu()
        self.rows.append({"cell": cell_index, "wall_s": round(time.perf_counter() - wall0, 2),
                          "cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2),
                          "first_line": cell.source.splitlines()[0][:80] if cell.source else ""})


@pytest.mark.notebooks
@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_runs(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment. One intra-op thread: as fast as two for these tiny models on an
    # idle machine, and 10x faster than two on a busy one (OpenMP workers spin against other processes).
    threads = os.environ.get("OMP_NUM_THREADS") or "1"
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    monkeypatch.setenv("CRAFTLAB_THREADS", os.environ.get("CRAFTLAB_THREADS") or threads)
    # Waiting OpenMP workers sleep instead of spinning: the kernel's CPU time then counts work (with 2 threads
    # on a loaded machine, spinning tripled one cell's CPU time), and the spinning does not slow other processes.
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY") or "PASSIVE")

    nb = jupytext.read(path)  # the .py source of truth (its paired .ipynb holds the same cells, checked above)
    out_dir = Path(os.environ.get(OUT_ENV) or tmp_path)
    executed = tmp_path / path.with_suffix(".ipynb").name
    km = _kernel_manager()
    clock = _CellClock(km)
    client = nbclient.NotebookClient(nb, km=km, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     allow_errors=False, resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
                                     on_cell_start=clock.start, on_cell_executed=clock.executed)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{path.stem}.cell_times.json").write_text(json.dumps(clock.rows, indent=1))
    slowest = sorted(clock.rows, key=lambda r: -r["wall_s"])[:3]
    print(f"{path.name}: {elapsed:.0f} s wall; slowest cells: "
          + "; ".join(f"#{r['cell']} {r['wall_s']:.0f} s wall / {r['cpu_s']} s CPU ({r['first_line']})"
                      for r in slowest))

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

    # Per-cell time: kernel CPU seconds per intra-op thread (wall time grows with the machine's load).
    limit = CELL_LIMIT_S * max(1, int(threads))
    slow = [r for r in clock.rows if r["cpu_s"] is not None and r["cpu_s"] > limit]
    assert not slow, (f"{path.name}: cells over {limit:.0f} s of kernel CPU on the default (load precomputed "
                      f"results; FULL=True recomputes): {slow}")

    # Published copies: a static PNG beside every plotly figure, and the HTML shows one image per figure.
    pytest.importorskip("nbconvert")
    pub, html = _publish(nb, out_dir, path.stem)
    figs = [o for c in pub.cells if c.cell_type == "code" for o in c.outputs if PLOTLY_MIME in o.get("data", {})]
    without = [o["data"].get("text/plain", "?") for o in figs if "image/png" not in o["data"]]
    if without and not os.environ.get("CRAFTLAB_REQUIRE_BROWSER") and all("image/png" not in o["data"] for o in figs):
        pytest.skip(f"{path.name}: no static figures (kaleido or chromium missing)")
    assert not without, f"{path.name}: plotly outputs without a static PNG: {without}"
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,', html)) >= len(figs), \
        f"{path.name}: the HTML export shows fewer images than the notebook has figures ({len(figs)})"


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
        box = cw.interactive_figure(lambda n: go.Figure(layout_title_text=f"n={n}"), static=False, n=[1, 2])
        box_data = box._repr_mimebundle_()
        box_data = box_data[0] if isinstance(box_data, tuple) else box_data
    finally:
        cw.static_figures(False)
    assert ("image/png" in box_data) == available  # the widget's cell output carries the static copy too
    assert pio.renderers.default == before
    assert data[cw.PLOTLY_MIME]["layout"]["title"]["text"] == "static copy"
    assert "image/png" not in cw.figure_bundle(fig)  # a PNG only where asked for
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
