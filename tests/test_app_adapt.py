"""The app's Adapt tab (issue 13): adaptation methods side by side — live runs (cached, with their source and
command) beside the benchmark's reference rows.

A live row is checked against a direct ``craftlab.adapt_model`` run with the same seed and against the command
line the table shows for it; the cache is checked by reading rows back; the table's arithmetic on made-up rows;
one real-browser test ticks a method and presses the button."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

try:
    from conftest import scaled_ms
except ImportError:  # run from the repository root as a package
    from tests.conftest import scaled_ms

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")
torch = pytest.importorskip("torch")

from craftlab_app.adapt import service as adapt_service  # noqa: E402
from craftlab_app.adapt.service import AdaptView, command  # noqa: E402
from test_app_browser import browser  # noqa: E402,F401  (the real-browser fixture, shared)

import craftlab  # noqa: E402

EPOCHS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def view():
    return AdaptView()


@pytest.mark.parametrize("arm,method,kw", [("linear probe", "linear", {"cache": "memory"}),
                                           ("MIET (k=4, 4-bit)", "miet", {"cache": "memory", "bits": 4})])
def test_a_live_row_equals_a_direct_adapt_model_run_and_is_cached(view, digits, arm, method, kw):
    (row,) = view.run([arm], epochs=EPOCHS, seeds=(0,))
    model = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    direct = craftlab.adapt_model(model, digits, method, epochs=EPOCHS, seed=0, **kw)
    assert row["test_accuracy"] == direct.metrics["test_accuracy"]
    assert row["trainable_params"] == direct.trainable_params
    assert row["source"] in ("live run (now)", "live run (cached)") and row["arm"] == arm
    again = view.run([arm], epochs=EPOCHS, seeds=(0,))  # from the cache, not retrained
    assert again[0]["source"] == "live run (cached)"
    assert {k: v for k, v in again[0].items() if k != "source"} == {k: v for k, v in row.items() if k != "source"}
    assert any(r["arm"] == arm and r["epochs"] == EPOCHS for r in view.cached_rows())


def test_the_shown_command_reproduces_the_live_row(view):
    (row,) = view.run(["linear probe"], epochs=EPOCHS, seeds=(0,))
    cmd = command("linear probe", EPOCHS, 0)
    assert row["command"] == cmd
    from craftlab import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(cmd.split()[1:] + ["--json"]) == 0
    printed = json.loads(out.getvalue())
    assert printed["test_accuracy"] == row["test_accuracy"]
    assert printed["trainable_params"] == row["trainable_params"]


def test_the_edge_variants_send_fewer_bytes(view):
    rows = {r["arm"]: r for r in view.run(["MIET (k=4)", "MIET (k=4, 4-bit)"], epochs=1, seeds=(0,))}
    assert rows["MIET (k=4, 4-bit)"]["bytes_per_image"] < rows["MIET (k=4)"]["bytes_per_image"]
    assert rows["MIET (k=4, 4-bit)"]["command"].endswith("--transfer-bits 4")


def test_the_table_marks_sources_and_averages_seeds():
    rows = [{"arm": "LAST (g=1, m=4)", "method": "last", "seed": s, "epochs": 2, "test_accuracy": acc,
             "trainable_params": 10,
             "time_per_epoch_s": 1.0, "memory_bytes": 2e6, "bytes_per_image": 100, "source": src,
             "command": command("LAST (g=1, m=4)", 2, s)}
            for s, acc, src in ((0, 0.8, "live run (now)"), (1, 0.9, "live run (cached)"))]
    ref = {**rows[0], "seed": 0, "epochs": 8, "source": "benchmark (reference)", "command": "python -m x"}
    table = AdaptView.summary([*rows, ref])
    live, bench = table.iloc[0], table.iloc[1]
    assert live["source"] == "live run (1 trained now, 1 cached)" and live["seeds"] == 2
    assert live["test accuracy (%)"] == 85.0 and live["± sd"] == pytest.approx(7.1)
    assert live["training memory (MB)"] == 2.0 and "--seed S" in live["command"] and "(S = 0, 1)" in live["command"]
    assert bench["source"] == "benchmark (reference)" and bench["epochs"] == 8 and bench["command"] == "python -m x"
    assert list(AdaptView.summary([]).columns) == list(table.columns)


def test_the_benchmark_reference_is_labelled_and_optional(monkeypatch, tmp_path):
    if adapt_service.reference_path() is not None:
        ref = AdaptView.reference()
        assert ref and all(r["source"] == "benchmark (reference)" and r["epochs"] == 8 for r in ref)
    monkeypatch.setattr(adapt_service, "REFERENCE", "absent-adapt.csv")  # an installed wheel has no CSV
    assert AdaptView.reference() == []


@pytest.mark.parametrize("args,message", [((["LAST (g=1, m=4)", "adapters"], 2, [0]), "unknown method 'adapters'"),
                                          (([], 2, [0]), "at least one method"),
                                          ((["LAST (g=1, m=4)"], 0, [0]), "epochs must be a whole number"),
                                          ((["LAST (g=1, m=4)"], 2.5, [0]), "epochs must be a whole number"),
                                          ((["LAST (g=1, m=4)"], 2, [-1]), "seeds must be non-negative")])
def test_bad_requests_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        AdaptView.check(*args)


def test_stop_ends_a_request_after_its_current_run_and_busy_says_what_runs(view):
    import threading

    for s in (5, 6):
        view._path("linear probe", 1, s).unlink(missing_ok=True)
    seen: list[str] = []
    out: list[list] = []
    t = threading.Thread(target=lambda: out.append(view.run(["linear probe"], 1, (5, 6), tag="[t]")))
    t.start()
    while t.is_alive() and view.busy is None:
        threading.Event().wait(0.01)
    seen.append(str(view.busy))
    assert view.stop()
    t.join()
    assert view.stopping
    view.busy = None
    view.clear_stop()
    assert not view.stopping
    assert "[t] training linear probe, seed 5 (1 epoch), run 1 of 2" in seen[0]
    assert len(out[0]) == 1 and out[0][0]["seed"] == 5  # the second run never started
    assert not view.stop()  # idle: nothing to stop


def test_the_estimate_comes_from_measured_times_and_skips_what_is_cached(view):
    (row,) = view.run(["linear probe"], epochs=EPOCHS, seeds=(0,))
    assert view.estimate(["linear probe"], EPOCHS, [0]).startswith("Everything asked is cached")
    text = view.estimate(["linear probe"], 7, [0, 1])
    live = [r["time_per_epoch_s"] for r in view.cached_rows() if r["arm"] == "linear probe"]
    assert f"about {max(1, round(live[-1] * 7 * 2))} s for 2 run(s)" in text, (text, live)
    assert "minutes" not in text and view.estimate([], 2, [0]).startswith("⚠")


def test_tab_switch_keeps_the_running_status_and_a_second_click_is_answered(view):
    import gradio as gr
    from craftlab_app.adapt import view as adapt_view

    with gr.Blocks() as demo, gr.Tabs():
        adapt_view.build_tab(view)
    fns = {f.api_name: f.fn for f in demo.fns.values()}
    view.busy = "[LoRA · 2 epochs · 1 seed] training LoRA, seed 0 (2 epochs), run 1 of 1"
    try:
        assert fns["adapt_open"]()[0].startswith("**Running:** [LoRA")  # not "press the button to train more"
        first = next(iter(fns["adapt"](["linear probe"], 1, 1)))
        assert first[0].startswith("**Busy:** [LoRA") and "press again when it is done" in first[0]
        assert fns["adapt_estimate"](["linear probe"], 2, 5) == "⚠ seeds must be a whole number from 1 to 3, got 5"
        assert fns["adapt_estimate"](["linear probe"], 50, 1).startswith("⚠ epochs must be a whole number")
    finally:
        view.busy = None


# ------------------------------------------------------------------------------------------------------ browser

@pytest.fixture(scope="module")
def tab_services(view):
    """`served` (tests/conftest.py) launches the app with this tab's service."""
    return {"adapt_service": view}


def test_browser_adapt_tab_trains_the_ticked_method(browser, served, view):  # noqa: F811
    view.run(["MIET (k=4)"], epochs=1, seeds=(0,))  # a cached row, whichever tests of the module ran (-m browser)
    view._path("linear probe", 1, 0).unlink(missing_ok=True)  # so that the button trains it (a re-run too)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served.local_url, timeout=scaled_ms(120_000))
    page.get_by_role("tab", name="Adapt").click()
    page.wait_for_function("() => (document.querySelector('#adapt-table') || {}).textContent.includes('cached')",
                           timeout=scaled_ms(60_000), polling=250)  # earlier runs of this module, read from the cache
    for name in ("LAST (g=1, m=4)", "MIET (k=4)"):
        page.locator("#adapt-methods label", has_text=name).first.click()  # untick: the linear probe only
    box = page.locator("#adapt-epochs input[type=number]")
    box.fill("1")
    box.press("Enter")
    page.locator("#adapt-run").click()
    page.wait_for_function("""() => {
        const t = s => (document.querySelector(s) || {}).textContent || "";
        return t("#adapt-status").includes("[linear probe · 1 epoch · 1 seed]")
            && t("#adapt-status").includes("1 trained now") && t("#adapt-table").includes("--epochs 1 --seed 0")
            && t("#adapt-memory").includes("linear probe (1 ep)");
    }""", timeout=scaled_ms(120_000), polling=250)
    (row,) = view.run(["linear probe"], epochs=1, seeds=(0,))  # what the button trained, now cached
    assert f"{100 * row['test_accuracy']:.1f}" in page.inner_text("#adapt-table")
    page.close()
    assert not errors, errors


def test_live_and_reference_rows_share_every_label():
    """One table of arms (craftlab.adapt.methods.ARMS): every method the tab offers has reference rows under the
    same label in the benchmark's table, and the benchmark, the curves and the ledger use those labels too."""
    import pandas as pd
    from craftlab_app.adapt.service import METHODS, reference_path

    from benchmarks import bench_adapt
    from craftlab.adapt.methods import ARMS
    from craftlab.analysis.ledger import CLAIMS
    from craftlab.studies.adapt import CURVE_ARMS

    reference = set(pd.read_csv(reference_path())["arm"])
    assert set(METHODS) == reference == set(ARMS)
    assert bench_adapt.ARMS is ARMS and set(CURVE_ARMS) <= reference
    for claim in CLAIMS:
        if claim.paper in ("LAST", "MIET"):
            assert {claim.baseline, claim.treatment} <= reference, claim.id
