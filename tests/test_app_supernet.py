"""The app's Supernet tab (issues 12 and 25): a typed BitOPs budget -> the subnet the core's search picks at that
budget (a lookup when the budget was searched, a live search otherwise), its bits, its accuracy, its point on the
front; out-of-range budgets refused with one message.

The service is checked against independent paths: the core's own search results at the studied budgets and a direct
``evolutionary_search`` at a budget outside them, the chosen subnet exported as a plain model and evaluated by
``craftlab.evaluate``, a second service that must come from the cache. The browser test types budgets and waits
until the words, the bits heatmap and the Pareto plot all show the new budget, and that no toast appears."""

from __future__ import annotations

import os
import time

import pytest

try:
    from conftest import scaled_ms
except ImportError:  # run from the repository root as a package
    from tests.conftest import scaled_ms

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")
torch = pytest.importorskip("torch")

from craftlab_app.supernet.service import SupernetView  # noqa: E402
from test_app_browser import browser  # noqa: E402,F401  (the real-browser fixture, shared)

import craftlab  # noqa: E402

BUDGETS = (3.0, 3.5, 4.0, 5.0, 8.0, 100.0)


@pytest.fixture(scope="module")
def supernet():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    sv = SupernetView("vit-tiny")
    sv.prepare()  # fine-tunes the base, trains the main supernet and searches once per CRAFTLAB_HOME (minutes cold)
    yield sv
    torch.set_num_threads(before)


def test_a_studied_budget_is_a_lookup_of_the_cores_search(supernet):
    from craftlab.studies import supernet as study

    fp32 = supernet.refs["FP32"]
    for r, text in zip(supernet.report.results, study.QUICK["budgets"]):
        pick = supernet.choose(text)  # "4%": parse_budget's own syntax
        assert pick["how"] == "searched during preparation" and pick["search_s"] is None
        assert pick["config"] == r.best["config"] and pick["val_accuracy"] == r.best["accuracy"]
        assert pick["bitops"] <= r.budget == pytest.approx(float(text.rstrip("%")) / 100 * fp32)
        assert pick["bitops"] == supernet.sn.bitops(pick["config"])  # attention matmuls included
        assert pick["pct_fp32"] == pytest.approx(100 * pick["bitops"] / fp32)
        assert (tuple(pick["w_bits"]), tuple(pick["a_bits"])) == (pick["config"].w_bits, pick["config"].a_bits)
        assert supernet.choose(float(text.rstrip("%")))["config"] == pick["config"]  # a bare number is % of FP32


@pytest.mark.parametrize("pct", [50.0, 7.0])
def test_a_budget_outside_the_studied_range_is_searched_at_that_budget(supernet, pct):
    from craftlab.studies import supernet as study
    from craftlab.supernet.search import evolutionary_search

    if pct < supernet.minimum_pct():
        pytest.skip("below the smallest subnet of this supernet")
    assert not supernet.searched(pct)
    pick = supernet.choose(pct)
    budget = pct / 100 * supernet.refs["FP32"]
    assert pick["how"] == "searched live" and pick["search_s"] > 0 and pick["bitops"] <= budget
    direct = evolutionary_search(supernet.sn, supernet.data, budget, seed=supernet.seed, **study.QUICK["search"])
    assert (pick["config"], pick["val_accuracy"]) == (direct.best["config"], direct.best["accuracy"])
    assert supernet.searched(pct) and supernet.choose(pct)["config"] == pick["config"]  # cached per budget


def test_the_chosen_subnets_test_accuracy_is_the_exported_models(supernet):
    for pct in (3.0, 4.0):
        pick = supernet.choose(pct)
        plain = supernet.sn.export(pick["config"])  # QuantLinear layers: no supernet code on this path
        assert pick["test_accuracy"] == pytest.approx(craftlab.evaluate(plain, supernet.data.test)["accuracy"],
                                                      abs=1e-9)


def test_a_budget_in_percent_of_w8a8_is_the_same_bitops(supernet):
    ratio = supernet.refs["W8A8"] / supernet.refs["FP32"]
    a, b = supernet.choose(50.0, "W8A8"), supernet.choose(50.0 * ratio)
    assert a["config"] == b["config"] and a["reference"] == "W8A8"
    assert a["pct_w8a8"] == pytest.approx(100 * a["bitops"] / supernet.refs["W8A8"])


def test_uniform_ptq_and_uniform_subnets_are_drawn_with_comparable_bitops(supernet):
    ptq = {p["label"]: p for p in supernet.ptq}
    uni = {p["label"]: p for p in supernet.uniform}
    assert ptq["FP32"]["bitops"] == pytest.approx(supernet.refs["FP32"])
    cost = supernet.sn.cost(supernet.sn.space.uniform(8, 8))
    # craftlab.quantize vs the supernet: the same Conv/Linear BitOPs; PTQ's attention matmuls stay float (32x32)
    assert ptq["W8A8"]["bitops"] == pytest.approx(uni["W8A8"]["bitops"] - cost["bitops_attention"]
                                                  + cost["macs_attention"] * 32 * 32)
    assert cost["bitops_attention"] == cost["macs_attention"] * 8 * 8 > 0
    assert supernet.minimum_pct() == pytest.approx(100 * supernet.sn.bitops(supernet.sn.space.smallest())
                                                   / supernet.refs["FP32"])


def test_a_second_view_comes_from_the_cache_with_the_same_answers(supernet):
    t0 = time.perf_counter()
    again = SupernetView("vit-tiny")
    again.prepare()
    took = time.perf_counter() - t0
    for pct in BUDGETS:
        a, b = supernet.choose(pct), again.choose(pct)
        assert (a["config"], a["val_accuracy"], a["test_accuracy"]) == (b["config"], b["val_accuracy"],
                                                                         b["test_accuracy"])
    assert took < 60 * max(1.0, os.getloadavg()[0] / 2), f"a cached supernet took {took:.0f} s to prepare"
    again.choose(4.5)  # a live search once ...
    t0 = time.perf_counter()
    for _ in range(100):
        again.choose(4.5)  # ... then a lookup
    assert (time.perf_counter() - t0) / 100 < 0.01 * max(1.0, os.getloadavg()[0] / 2)


@pytest.mark.parametrize("budget,reference,message", [
    (1.0, "FP32", r"below the smallest subnet: it needs \d\.\d\d% of FP32 \(W2A4\); choose at least"),
    (0, "FP32", "is not a budget"), (-5, "FP32", "is not a budget"), ("lots", "FP32", "is not a budget"),
    (150, "FP32", "more than the FP32 model's BitOPs: choose at most 100% of FP32"),
    (5.0, "INT8", "reference must be one of FP32, W8A8")])
def test_bad_budgets_are_refused_with_one_message(supernet, budget, reference, message):
    with pytest.raises(ValueError, match=message):
        supernet.choose(budget, reference)


def test_not_ready_and_failed_states_say_so():
    sv = SupernetView("vit-tiny")
    assert "Open this tab" in sv.status()
    with pytest.raises(RuntimeError, match="not ready"):
        sv.choose(5.0)
    broken = SupernetView("no-such-model")
    broken.start()
    for _ in range(200):
        if broken.error:
            break
        time.sleep(0.05)
    assert "failed" in broken.status() and "no-such-model" in broken.status()


def test_figures_carry_the_budget_tag(supernet):
    from craftlab_app.supernet.view import bits_figure, pareto_figure, result_text

    pick = supernet.choose(4.0)
    tag = "[vit-tiny · budget 4% of FP32]"
    assert result_text(pick).startswith(f"**{tag}**") and pick["label"] in result_text(pick)
    heat = bits_figure(pick).to_dict()
    assert tag in heat["layout"]["title"]["text"] and heat["data"][0]["z"] == [pick["w_bits"], pick["a_bits"]]
    pareto = pareto_figure(supernet, pick, tag).to_dict()
    names = {t.get("name") for t in pareto["data"]}
    assert {"Pareto front", "uniform subnets", "uniform PTQ (base model; float attention)", "chosen"} <= names
    star = [t for t in pareto["data"] if t.get("name") == "chosen"][0]
    assert list(star["x"]) == [pytest.approx(pick["pct_fp32"])] and tag in pareto["layout"]["title"]["text"]


# ------------------------------------------------------------------------------------------------------ browser

@pytest.fixture(scope="module")
def tab_services(supernet):
    """`served` (tests/conftest.py) launches the app with this tab's service."""
    return {"supernet_service": supernet}


@pytest.fixture
def page(browser, served):  # noqa: F811  (the fixture imported above)
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(served.local_url, timeout=scaled_ms(120_000))
    yield pg
    pg.close()
    assert not errors, errors


AGREE = """([tag, label]) => {
    const t = s => (document.querySelector(s) || {}).textContent || "";
    return t("#supernet-result").includes(tag) && t("#supernet-result").includes(label)
        && t("#supernet-bits").includes(tag) && t("#supernet-bits").includes(label)
        && t("#supernet-pareto").includes(tag);
}"""


def test_browser_typed_budgets_move_every_supernet_panel(page, supernet):
    page.get_by_role("tab", name="Supernet").click()
    first = supernet.choose(5.0)
    page.wait_for_function(AGREE, arg=["[vit-tiny · budget 5% of FP32]", first["label"]], timeout=scaled_ms(120_000),
                           polling=250)
    assert "ready" in page.inner_text("#supernet-status")
    box = page.locator("#supernet-budget textarea, #supernet-budget input").first
    t0 = time.perf_counter()
    box.fill("3")
    box.press("Enter")
    want = supernet.choose(3.0)
    page.wait_for_function(AGREE, arg=["[vit-tiny · budget 3% of FP32]", want["label"]], timeout=scaled_ms(60_000),
                           polling=100)
    print(f"budget -> every panel redrawn in the browser: {time.perf_counter() - t0:.2f} s")
    shown = page.inner_text("#supernet-result")
    assert f"{want['val_accuracy']:.1%}" in shown and f"{want['test_accuracy']:.1%}" in shown
    star = page.evaluate("""() => { const el = document.querySelector('#supernet-pareto .js-plotly-plot');
        const t = el._fullData.find(t => t.name === 'chosen'); return [t.x[0], t.y[0]]; }""")
    assert star == [pytest.approx(want["pct_fp32"]), pytest.approx(100 * want["val_accuracy"])]
    box.fill("0.5")  # below the smallest subnet: one message in the panel (no Gradio min-value toast)
    box.press("Enter")
    low = f"{supernet.minimum_pct():.2f}%"
    page.wait_for_function("""(low) => {
        const t = s => (document.querySelector(s) || {}).textContent || "";
        return t("#supernet-result").includes("[vit-tiny · budget 0.5]")
            && t("#supernet-result").includes("below the smallest subnet") && t("#supernet-result").includes(low)
            && t("#supernet-bits").includes("no subnet for this budget");
    }""", arg=low, timeout=scaled_ms(60_000), polling=250)
    assert page.locator(".toast-body").count() == 0


def test_the_tab_offers_both_zoo_models_and_the_cnn_gets_per_subnet_batchnorm():
    from craftlab_app.supernet.service import MODELS

    assert MODELS == ("vit-tiny", "resnet-tiny")
    cnn, vit = SupernetView("resnet-tiny").spec(), SupernetView("vit-tiny").spec()
    assert cnn.lora == "none" and vit.lora == "per-bit" and cnn.model == "resnet-tiny"
