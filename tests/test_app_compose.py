"""The Compose tab (issue 20): the service's numbers against the study's own rows and the core's paired test;
meaningless pipelines named; in a real browser, ticking a step moves every panel to the new pipeline's label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

try:
    from conftest import scaled_ms
except ImportError:  # run from the repository root as a package
    from tests.conftest import scaled_ms

pytest.importorskip("gradio")

from craftlab_app.compose.service import ComposeView  # noqa: E402
from craftlab_app.compose.view import result_text, waterfall  # noqa: E402
from test_app_browser import browser  # noqa: E402,F401  (the real-browser fixture, shared)

from craftlab.studies.compose import Pipeline, read_study  # noqa: E402


def _table() -> pd.DataFrame:
    """The committed study when the checkout has it, else a small synthetic full design (no training)."""
    study = read_study()
    if study is not None:
        sn = read_study(design="supernet")  # the supernet step's own cells, when the checkout has them
        return study if sn is None else pd.concat([study, sn[sn["supernet"]]], ignore_index=True)
    rng, rows = np.random.default_rng(0), []
    for model, setting, bns in (("resnet-tiny", "W4A4", (False, True)), ("vit-tiny", "W3A3 repq", (False,))):
        for seed in range(4):
            for ft in ("adamw", "sam"):
                for bn in bns:
                    for comp in (None, "qwt", "qwt-v2"):
                        p = Pipeline(model, ft, setting, bn, comp)
                        acc = 0.6 + 0.05 * (ft == "sam") + 0.1 * bn + 0.08 * (comp is not None) + rng.normal(0, .01)
                        rows.append({"model": model, "label": p.label, **p.steps, "seed": seed, "accuracy": acc,
                                     "size_mb": 0.1, "bitops": 1e6, "params_added": 0, "train_s": 1.0,
                                     "calib_s": 0.1})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def view():
    return ComposeView(table=_table())


def test_answer_is_the_study_rows_and_the_paired_gain(view):
    from craftlab.analysis.stats import compare_paired

    t = _table()
    t = t[t["model"] == "resnet-tiny"]
    a = view.answer("resnet-tiny", sam=True, bn=False, compensation="QwT-v2")
    mine = t[t["label"] == "SAM ρ=0.05 → W4A4 → QwT-v2"].set_index("seed").sort_index()["accuracy"]
    plain = t[t["label"] == "AdamW → W4A4"].set_index("seed").sort_index()["accuracy"]
    assert a["label"] == "SAM ρ=0.05 → W4A4 → QwT-v2" and a["accuracy"] == pytest.approx(mine.mean())
    assert a["gain"] == pytest.approx(compare_paired(plain, mine).mean_diff)
    wf = a["waterfall"]  # the waterfall ends at the pipeline's own accuracy, through each ticked step in order
    assert list(wf["step"])[1:] == ["SAM", "QwT-v2"] and wf["level"].iloc[-1] == pytest.approx(mine.mean())
    text, fig = result_text(a), waterfall(a)
    assert a["tag"] in text and a["tag"] in fig.layout.title.text
    none = view.answer("resnet-tiny", False, False, "none")
    assert none["accuracy"] == pytest.approx(plain.mean()) and none["waterfall"] is None


def test_supernet_step_is_the_supernet_designs_rows(view):
    from craftlab.analysis.stats import compare_paired

    sn = read_study(design="supernet")
    if sn is None or read_study() is None:
        pytest.skip("no committed composition study in this checkout")
    a = ComposeView().answer("vit-tiny", sam=False, bn=False, compensation="none", supernet=True)  # the files
    mine = sn[sn["label"] == "AdamW → supernet pick ≤ 5%"].set_index("seed")["accuracy"]
    full = read_study()
    plain = full[(full["model"] == "vit-tiny") & (full["label"] == "AdamW → W3A3 repq")].set_index("seed")["accuracy"]
    seeds = mine.index.intersection(plain.index)
    assert a["label"] == "AdamW → supernet pick ≤ 5%" and a["n"] == len(seeds)
    assert a["accuracy"] == pytest.approx(mine[seeds].mean())
    assert a["gain"] == pytest.approx(compare_paired(plain[seeds], mine[seeds]).mean_diff)
    assert list(a["waterfall"]["step"])[1:] == ["supernet"] and a["bitops_total"] < a["bitops"] * 1.2
    assert "with the attention matmuls as they run" in result_text(view.answer("vit-tiny", False, False, "none"))
    with pytest.raises(ValueError, match="the supernet pick is the pipeline's compression"):
        view.answer("vit-tiny", False, False, "QwT-v2", supernet=True)
    with pytest.raises(ValueError, match="CNN subnet"):
        view.answer("resnet-tiny", False, False, "none", supernet=True)


def test_meaningless_pipelines_are_named(view):
    with pytest.raises(ValueError, match="BN re-estimation on vit-tiny"):
        view.answer("vit-tiny", False, True, "none")
    with pytest.raises(ValueError, match="compensation"):
        view.answer("resnet-tiny", False, False, "QwT-v3")
    with pytest.raises(ValueError, match="model"):
        view.answer("resnet18", False, False, "none")


@pytest.fixture(scope="module")
def tab_services(view):
    """`served` (tests/conftest.py) launches the app with this tab's service."""
    return {"compose_service": view}


AGREE = """(tag) => {
    const t = s => (document.querySelector(s) || {}).textContent || "";
    return t("#compose-result").includes(tag) && t("#compose-waterfall").includes(tag);
}"""


def test_browser_ticking_a_step_moves_every_panel(browser, served):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(served.local_url, timeout=scaled_ms(120_000))
        page.get_by_role("tab", name="Compose").click()
        page.wait_for_function("() => ((document.querySelector('#compose-result') || {}).textContent || '')"
                               ".includes('[resnet-tiny · AdamW → W4A4]')", timeout=scaled_ms(120_000), polling=250)
        page.locator("#compose-sam input").check()
        page.wait_for_function(AGREE, arg="[resnet-tiny · SAM ρ=0.05 → W4A4]", timeout=scaled_ms(120_000), polling=250)
        page.locator("#compose-comp label", has_text="QwT-v2").click()
        tag = "[resnet-tiny · SAM ρ=0.05 → W4A4 → QwT-v2]"
        page.wait_for_function(AGREE, arg=tag, timeout=scaled_ms(120_000), polling=250)
        page.locator("#compose-model label", has_text="vit-tiny").click()
        page.locator("#compose-bn input").check()  # a ViT has no BatchNorm: named in the panel, no toast
        page.wait_for_function("() => ((document.querySelector('#compose-result') || {}).textContent || '')"
                               ".includes('a ViT has no BatchNorm')", timeout=scaled_ms(120_000), polling=250)
        assert page.locator(".toast-body").count() == 0
        if read_study(design="supernet") is not None:  # the supernet step replaces the PTQ setting (ViTs)
            page.locator("#compose-bn input").uncheck()
            page.locator("#compose-comp label", has_text="none").click()
            page.locator("#compose-supernet input").check()
            page.wait_for_function(AGREE, arg="[vit-tiny · SAM ρ=0.05 → supernet pick ≤ 5%]",
                                   timeout=scaled_ms(120_000), polling=250)
    finally:
        page.close()
    assert not errors, errors
