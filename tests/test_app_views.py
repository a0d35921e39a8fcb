"""The app's paper views: the Supernet tab (issue 12: a BitOPs budget -> the best searched subnet, its per-layer
bits and its place on the Pareto front) and the Adapt tab (issue 13: adaptation methods side by side). Their
services are checked against independent paths (the exported subnet evaluated by the core, a direct
``adapt_model`` run); one real-browser test per tab drives them as a user does (keyboard on the budget slider,
ticking methods and pressing the button)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")
torch = pytest.importorskip("torch")

from craftlab_app.adapt_service import AdaptView  # noqa: E402
from craftlab_app.supernet_service import SupernetView  # noqa: E402
from test_app_browser import browser, free_port  # noqa: E402,F401  (the real-browser fixture, shared)

import craftlab  # noqa: E402


@pytest.fixture(scope="module")
def supernet():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    sv = SupernetView()
    sv.prepare()  # trains the study's main supernet once per CRAFTLAB_HOME (~1 min on 2 cores), then searches
    yield sv
    torch.set_num_threads(before)


def test_a_budget_picks_the_most_accurate_subnet_that_fits(supernet):
    fp32 = supernet.refs["FP32"]
    for pct in (3.5, 5.0, 8.0, 100.0):
        pick = supernet.choose(pct)
        fits = [p for p in supernet.report.points + supernet.uniform if p["bitops"] <= pct / 100 * fp32]
        assert pick["bitops"] <= pct / 100 * fp32
        assert pick["val_accuracy"] == max(p["accuracy"] for p in fits)  # brute force over every evaluated subnet
        assert len(pick["w_bits"]) == len(pick["a_bits"]) == len(pick["layers"]) == len(supernet.sn.space.layers)
        assert pick["pct_fp32"] == pytest.approx(100 * supernet.sn.bitops(pick["config"]) / fp32)


def test_the_chosen_subnet_exported_as_a_plain_model_has_the_shown_test_accuracy(supernet):
    pick = supernet.choose(5.0)
    plain = supernet.sn.export(pick["config"])  # QuantLinear layers: no supernet code on this path
    assert pick["test_accuracy"] == pytest.approx(craftlab.evaluate(plain, supernet.data.test)["accuracy"], abs=1e-9)


@pytest.mark.parametrize("budget,message", [(1.0, r"below every searched subnet: the smallest needs \d"),
                                            (0, "must be > 0"), ("lots", "must be a number")])
def test_bad_budgets_are_named(supernet, budget, message):
    with pytest.raises(ValueError, match=message):
        supernet.choose(budget)


def test_figures_carry_the_budget_tag(supernet):
    from craftlab_app.supernet_view import bits_figure, pareto_figure

    pick = supernet.choose(4.0)
    tag = "[budget 4% of FP32]"
    heat = bits_figure(pick, tag).to_dict()
    assert tag in heat["layout"]["title"]["text"] and heat["data"][0]["z"] == [pick["w_bits"], pick["a_bits"]]
    pareto = pareto_figure(supernet, pick, tag).to_dict()
    star = [t for t in pareto["data"] if t.get("name") == "chosen"][0]
    assert list(star["x"]) == [pytest.approx(pick["pct_fp32"])] and tag in pareto["layout"]["title"]["text"]


# ------------------------------------------------------------------------------------------------------ Adapt

def test_adapt_live_row_equals_a_direct_run_and_is_cached(tmp_path):
    av = AdaptView()
    (row,) = av.run(["linear probe"], epochs=2, seeds=(0,))
    data = craftlab.load_data("digits")
    model = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    direct = craftlab.adapt_model(model, data, "linear", epochs=2, seed=0, cache="memory")
    assert row["test_accuracy"] == direct.metrics["test_accuracy"]
    assert row["trainable_params"] == direct.trainable_params and row["source"] == "live run (cached)"
    assert av.run(["linear probe"], epochs=2, seeds=(0,)) == [row]  # from the cache, not retrained
    table = av.summary([row, *av.reference()])
    assert table.iloc[0]["method"] == "linear probe" and table.iloc[0]["seeds"] == 1


@pytest.mark.parametrize("args,message", [((["LAST", "adapters"], 2, [0]), "unknown method 'adapters'"),
                                          (([], 2, [0]), "at least one method"),
                                          ((["LAST"], 0, [0]), "epochs must be a whole number"),
                                          ((["LAST"], 2.5, [0]), "epochs must be a whole number")])
def test_adapt_bad_requests_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        AdaptView.check(*args)


# ------------------------------------------------------------------------------------------------------ browser

@pytest.fixture(scope="module")
def served(supernet):
    from craftlab_app.service import Explorer
    from craftlab_app.ui import launch

    ex = Explorer(epochs=1, seeds=(0,), sparsity_grid=(0.5,), bits_grid=(4,), landscape_steps=5, path_steps=9,
                  coarse_steps=None, probe_size=64)
    demo = launch(port=free_port(), prevent_thread_lock=True, explorer=ex, models=["vit-tiny"], threads=1,
                  warm=False, supernet_service=supernet)
    try:
        yield demo
    finally:
        demo.close()
        ex.close()


@pytest.fixture
def page(browser, served):  # noqa: F811  (the fixture imported above)
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(served.local_url, timeout=120_000)
    yield pg
    pg.close()
    assert not errors, errors


def test_browser_budget_slider_keys_move_every_supernet_panel(page, supernet):
    page.get_by_role("tab", name="Supernet").click()
    page.wait_for_selector("#supernet-result >> text=/budget 5% of FP32/", timeout=120_000)
    track = page.locator("#supernet-budget input[type=range]")
    track.focus()
    for _ in range(4):
        track.press("ArrowLeft")  # 5 -> 3
    want = supernet.choose(3.0)
    page.wait_for_function("""(label) => {
        const t = s => (document.querySelector(s) || {}).textContent || "";
        return t("#supernet-result").includes("[budget 3% of FP32]") && t("#supernet-result").includes(label)
            && t("#supernet-bits").includes("[budget 3% of FP32]") && t("#supernet-pareto").includes("[budget 3%");
    }""", arg=want["label"], timeout=60_000, polling=250)
    assert f"{want['test_accuracy']:.1%}" in page.inner_text("#supernet-result")
    for _ in range(2):
        track.press("ArrowLeft")  # 2 %: below the smallest subnet
    page.wait_for_selector("[data-testid='toast-body'] >> text=/smallest needs/", timeout=60_000)


def test_browser_adapt_tab_trains_the_ticked_methods(page):
    page.get_by_role("tab", name="Adapt").click()
    page.wait_for_function("() => (document.querySelector('#adapt-table') || {}).textContent.includes('benchmark')",
                           timeout=60_000, polling=250)
    for name in ("LAST", "MIET"):
        page.locator("#adapt-methods label", has_text=name).click()  # untick: the linear probe only
    box = page.locator("#adapt-epochs input[type=number]")
    box.fill("2")
    box.press("Enter")
    page.locator("#adapt-run").click()
    page.wait_for_function("""() => {
        const t = s => (document.querySelector(s) || {}).textContent || "";
        return t("#adapt-status").includes("[linear probe · 2 epochs · 1 seed")
            && t("#adapt-table").includes("live run");
    }""", timeout=120_000, polling=250)
