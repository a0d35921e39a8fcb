"""The CraftLab app's HTTP API, through gradio_client against the launched app (the service itself is
tested directly in test_app_service.py).

Uses 1-epoch runs of vit-tiny (both arms) fine-tuned once per test session into the session's
CRAFTLAB_HOME, and an Explorer with small curve grids and coarse landscapes, so the module stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest
from conftest import free_port, scaled

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
torch = pytest.importorskip("torch")
pytest.importorskip("gradio_client")

from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from craftlab import cache  # noqa: E402

MODEL = "vit-tiny"
EPOCHS = 1
RAW = dict(model=MODEL, method="magnitude", sparsity=0.5, w_bits=None, a_bits=None)


@pytest.fixture(scope="module")
def explorer(small_explorer):
    before = torch.get_num_threads()
    ex = small_explorer(seeds=(0,))
    torch.set_num_threads(1)  # what launch(threads=1) sets too; restored for the rest of the suite after
    ex.arms(MODEL)  # fine-tunes the two 1-epoch arms once per session (cached on disk afterwards)
    yield ex
    ex.close()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def served(explorer):
    from craftlab_app.ui import launch

    demo = launch(port=free_port(), prevent_thread_lock=True, explorer=explorer, models=[MODEL], threads=1)
    try:
        yield demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served.local_url, verbose=False)


def compress(client, **kw) -> dict:
    return client.predict(**{**RAW, **kw}, api_name="/compress")


def accuracies(answer: dict) -> dict:
    return {k: (v["fp_accuracy"], v["compressed_accuracy"]) for k, v in answer["arms"].items()}


def assert_same_answer(a: dict, b: dict) -> None:
    """Identical answers: accuracies, settings and sizes exactly; losses to 1e-4 relative. Another process or
    explorer sums in another order, and under activation quantization a last-bit difference can move a few
    values across a rounding boundary (seen in CI: 1.4e-5 relative on a W7A7 setting), never an accuracy."""
    assert a.keys() == b.keys() and a["arms"].keys() == b["arms"].keys()
    assert {k: v for k, v in a.items() if k != "arms"} == {k: v for k, v in b.items() if k != "arms"}
    for name in a["arms"]:
        x, y = a["arms"][name], b["arms"][name]
        assert x.keys() == y.keys()
        for k in x:
            if k.endswith("_loss"):
                assert x[k] == pytest.approx(y[k], rel=1e-4), (name, k)
            else:
                assert x[k] == y[k], (name, k)


def figure(payload) -> dict:
    assert payload["type"] == "plotly"
    return json.loads(payload["plot"])


# ----------------------------------------------------------------------------------------------------- /compress

def test_every_event_has_an_api_name(served):
    names = [fn.api_name for fn in served.fns.values()]
    assert names and all(isinstance(n, str) and n for n in names), names
    assert {"compress", "panels", "seeds", "sharpness", "landscape", "landscape_view", "landscape_kind", "refresh",
            "export", "train"} <= set(names)


def test_api_compress_contract(client):
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compress"]
    params = [p["parameter_name"] for p in info["parameters"]]
    assert params == ["model", "method", "sparsity", "w_bits", "a_bits", "granularity", "pattern", "recalibrate_bn",
                      "recipe", "compensation"]
    assert all(p["parameter_has_default"] for p in info["parameters"][5:])
    ans = client.predict(model=MODEL, method="magnitude", sparsity=0.5, w_bits=8, a_bits=None, api_name="/compress")
    assert isinstance(ans, dict) and ans["model"] == MODEL and ans["setting_label"] == "magnitude 50% + W8AFP"
    assert [a["role"] for a in ans["arms"].values()] == ["plain", "craft"]
    for arm in ans["arms"].values():
        assert [k for k in arm if "accuracy" in k] == ["fp_accuracy", "compressed_accuracy", "accuracy_drop"]
        assert 0 <= arm["compressed_accuracy"] <= 1 and 0 <= arm["fp_accuracy"] <= 1
        assert arm["sparsity_measured"] == pytest.approx(0.5, abs=0.01)


def test_api_n_m_patterns_are_labelled_n_kept_of_m(served, client):
    (dropdown,) = [c for c in served.config["components"] if c.get("props", {}).get("elem_id") == "pattern"]
    choices = [tuple(c) for c in dropdown["props"]["choices"]]
    assert {("2:4 (keep 2 of 4)", "2:4"), ("1:4 (keep 1 of 4)", "1:4"), ("4:8 (keep 4 of 8)", "4:8")} <= set(choices)
    for label, value in choices:  # the values sent are what make_setting parses
        n, m = (int(v) for v in value.split(":"))
        ans = compress(client, method="N:M", sparsity=0.0, pattern=value)
        assert ans["setting"]["sparsity"] == pytest.approx(1 - n / m)
        assert ans["setting_text"].endswith(f"(keep {n} of {m})") and value in label
        for arm in ans["arms"].values():
            assert arm["sparsity_measured"] == pytest.approx(1 - n / m, abs=0.01)


def test_api_four_concurrent_clients_get_what_a_lone_client_gets(small_explorer, served, client):
    settings = [dict(method="magnitude", sparsity=0.65, w_bits="6", a_bits=None),
                dict(method="wanda", sparsity=0.4, w_bits=None, a_bits="5"),
                dict(method="N:M", sparsity=0.0, w_bits="7", a_bits="7", granularity="tensor", pattern="1:4"),
                dict(method="magnitude", sparsity=0.2, w_bits="3", a_bits=None)]
    clients = [Client(served.local_url, verbose=False) for _ in settings]
    got: dict[int, dict] = {}

    def ask(i):
        got[i] = clients[i].predict(model=MODEL, **settings[i], api_name="/compress")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(settings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert sorted(got) == [0, 1, 2, 3]
    lone = small_explorer(seeds=(0,), persist=False)  # recomputes from scratch, one request at a time
    try:
        for i, s in enumerate(settings):
            assert_same_answer(got[i], lone.compress(MODEL, **s))
            assert got[i] == client.predict(model=MODEL, **s, api_name="/compress")
    finally:
        lone.close()
    assert len({json.dumps(accuracies(g), sort_keys=True) for g in got.values()}) == 4


def test_api_bad_requests_get_their_message_and_the_app_still_serves(client):
    before = compress(client, method="wanda")
    for kw, msg in [(dict(sparsity=1.0), "sparsity must be in [0, 1)"), (dict(w_bits="9"), "w_bits must be one of"),
                    (dict(a_bits=12), "a_bits must be one of"),
                    (dict(model="no-such-model"), "unknown model 'no-such-model'"),
                    (dict(model="vit-tinny"), "did you mean 'vit-tiny'"),
                    (dict(method="pruning"), "unknown pruning method"),
                    (dict(method="N:M", pattern="4:2"), "impossible N:M pattern")]:
        with pytest.raises(AppError) as err:
            compress(client, **{"method": "wanda", **kw})
        assert msg in str(err.value)
    assert compress(client, method="wanda") == before


def test_api_timm_model_offline_is_a_fast_clear_error(client, monkeypatch):
    from craftlab import models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "HUB", ("127.0.0.1", free_port()))  # nothing listens there (server in this process)
    t0 = time.perf_counter()
    with pytest.raises(AppError, match="resnet18.*Hugging Face Hub.*unreachable"):
        compress(client, model="resnet18")
    with pytest.raises(AppError, match="Hugging Face Hub"):
        client.predict("resnet18", "digits", "adamw", 0.05, False, 1, 0, True, api_name="/train")
    assert time.perf_counter() - t0 < scaled(10)


def test_api_damaged_checkpoint_is_a_clear_error(client, explorer):
    good = compress(client)
    src = cache.home() / "runs" / explorer.arms(MODEL)[0].path.name
    dst = cache.home() / "runs" / "vit-tiny-damaged-api"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    (dst / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    try:
        with pytest.raises(AppError, match="damaged"):
            compress(client, model=dst.name)
    finally:
        shutil.rmtree(dst)
    assert compress(client) == good


# ----------------------------------------------------------------------------------------------------- follow-ups

def test_api_panels_are_of_the_sessions_view(served):
    session = Client(served.local_url, verbose=False)  # one browser tab: one session
    ans = session.predict(**{**RAW, "method": "wanda", "w_bits": "4", "a_bits": "8"}, api_name="/compress")
    out = session.predict(api_name="/panels")
    summary, plain, craft, verdict, guide = out[:5]
    tag = "[vit-tiny · wanda 50% + W4A8]"
    assert "AdamW" in plain and "CrAFT" in craft and "SAM" in craft
    for card, arm in zip((plain, craft), ans["arms"].values()):
        assert f"{100 * arm['compressed_accuracy']:.1f}%" in card and f"{100 * arm['fp_accuracy']:.1f}%" in card
        assert tag in card
    assert tag in summary and "pts" in summary and tag in verdict and "one test image = 0.28 pts" in verdict
    for fig in out[5:7]:
        assert tag in figure(fig)["layout"]["title"]["text"]
    link = session.predict("surface", "linear", api_name="/link")  # the link knows the landscape's kind and scale
    assert "?model=vit-tiny&method=wanda&sparsity=0.5&w=4&a=8" in link and "kind=surface&scale=linear" in link
    session.predict(**{**RAW, "method": "N:M", "pattern": "1:4"}, api_name="/compress")
    assert "(keep 1 of 4)" in session.predict(api_name="/panels")[0]


def test_api_one_validation_per_view_and_every_follow_up_is_of_that_view(served, monkeypatch):
    """/compress validates the raw input once; the follow-ups read the session's view."""
    from craftlab_app.explore import handlers as callbacks

    from craftlab.settings import make_setting

    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return make_setting(*args, **kwargs)

    monkeypatch.setattr(callbacks, "make_setting", counted)
    session = Client(served.local_url, verbose=False)
    session.predict(**{**RAW, "method": "wanda", "sparsity": 0.75}, api_name="/compress")
    deadline = time.time() + 120
    while True:  # the curves fill in from the background (the page polls /refresh)
        fig_s = session.predict(api_name="/panels")[5]
        if "computing" not in figure(fig_s)["layout"]["title"]["text"] or time.time() > deadline:
            break
        time.sleep(0.5)
    path, plain, craft = session.predict("contour", "log10", api_name="/landscape_view")
    again = session.predict("surface", "linear", api_name="/landscape_kind")
    assert len(calls) == 1, calls
    layout = figure(fig_s)["layout"]
    assert "wanda" in layout["title"]["text"] and "computing" not in layout["title"]["text"]
    assert any(shape["x0"] == 0.75 for shape in layout["shapes"])  # the current setting is marked
    for fig in (fig_s, path, plain, again[2]):
        assert "[vit-tiny · wanda 75%]" in figure(fig)["layout"]["title"]["text"]
    assert figure(plain)["data"][0]["type"] == "contour" and figure(again[1])["data"][0]["type"] == "surface"
    assert "log10" in json.dumps(figure(plain)["data"][0]["colorbar"]) and \
        "log10" not in json.dumps(figure(again[1])["data"][0]["colorbar"])  # the linear loss axis
    sharp = session.predict(api_name="/sharpness")
    assert "[vit-tiny · FP weights]" in sharp[0] and "Smaller = flatter" in sharp[2]
    files = session.predict("contour", "log10", api_name="/export")
    files = files["value"] if isinstance(files, dict) else files  # an update that also shows the file box
    paths = sorted((f if isinstance(f, str) else f["path"] for f in files), key=lambda f: f.rsplit(".", 1)[-1])
    assert paths[0].endswith(".html") and paths[1].endswith(".json")
    exported = json.loads(open(paths[1]).read())
    assert exported["setting_label"] == "wanda 75%" and exported["url_query"].startswith("?model=vit-tiny")
    page = open(paths[0]).read()  # the words rendered (no raw markdown), with the cards and the verdict
    body = page.split("<script", 1)[0] + page.rsplit("</script>", 1)[-1]
    assert "**" not in body and "<strong>" in page and "compressed" in page
    assert "AdamW" in page and ("Over " in page or "Seed 0 only" in page or "Measuring the seeds" in page)
    assert "kind=contour&amp;scale=log10" in page or "kind=contour&scale=log10" in page


def test_api_bn_reestimation_is_dropped_for_a_model_without_batchnorm(client):
    ans = client.predict(**{**RAW, "recalibrate_bn": True}, api_name="/compress")
    assert ans["setting_label"] == "magnitude 50%" and not ans["setting"]["recalibrate_bn"]


def test_api_landscape_is_stateless_and_cached(client):
    args = (MODEL, "magnitude", 0.6, "None", "None", "channel", "2:4")
    t0 = time.perf_counter()
    path, plane_plain, plane_craft = client.predict(*args, "contour", api_name="/landscape")
    first = time.perf_counter() - t0
    for p in (path, plane_plain, plane_craft):
        assert figure(p)["layout"]["height"] > 0
    assert "compression direction" in figure(path)["layout"]["title"]["text"]
    t0 = time.perf_counter()
    again = client.predict(*args, "surface", api_name="/landscape")
    assert time.perf_counter() - t0 < max(1.0, first / 2)  # cached: only the figures are rebuilt
    assert figure(again[1])["data"][0]["type"] == "surface"
    path0 = client.predict(MODEL, "magnitude", 0.0, "None", "None", "channel", "2:4", "contour",
                           api_name="/landscape")[0]
    assert "random" in figure(path0)["layout"]["title"]["text"]
    with pytest.raises(AppError, match="wireframe"):
        client.predict(*args, "wireframe", api_name="/landscape")


def test_api_sharpness_status_and_models(client):
    compress(client)
    sp, sc, note, gap, scatter = client.predict(api_name="/sharpness")
    for md in (sp, sc):
        assert "λmax" in md and "trace" in md and "ε-sharpness" in md and "e+0" not in md
    gap, scatter = figure(gap), figure(scatter)
    assert "smaller = flatter" in gap["layout"]["title"]["text"] and len(gap["data"][0]["x"]) == 3
    assert "Accuracy drop vs λmax [vit-tiny · magnitude 50%]" in scatter["layout"]["title"]["text"]
    text, _ = client.predict(api_name="/status")
    assert isinstance(text, str) and text
    values = [v for _, v in client.predict(MODEL, api_name="/models")["choices"]]
    assert "vit-tiny" in values and "resnet-tiny" in values


def test_api_train_streams_history_and_joins_the_model_list(client):
    key = "resnet-tiny-digits-adamw+sam0.2-e1-s0"
    status, fig, picker = client.predict("resnet-tiny", "digits", "adamw", 0.2, False, 1, 0, False,
                                         api_name="/train")[:3]  # (the "Open in Explore" button has no value)
    assert "Done" in status and key in status
    assert fig["type"] == "plotly" and len(figure(fig)["data"]) == 2  # train and val loss of one run
    assert picker["value"] == key and key in [v for _, v in picker["choices"]]
    status = client.predict("resnet-tiny", "digits", "adamw", 0.2, False, 1, 0, False, api_name="/train")[0]
    assert "cached" in status  # the same settings never train twice
    assert "Estimated duration: about" in client.predict("resnet-tiny", "digits", "adamw", 0.2, False, 3, 0, True,
                                                         api_name="/estimate")
    for i, value, msg in [(1, "no-such-data", "unknown dataset"), (0, "resnet-tinyy", "unknown model"),
                          (5, 2.5, "epochs must be a whole number"), (3, -1.0, "rho must be in"),
                          (2, "lion", "unknown optimizer"), (8, -1.0, "lr must be in"),
                          (9, 0, "batch size must be a whole number")]:
        args = ["resnet-tiny", "digits", "adamw", 0.2, False, 1, 0, False, None, None]
        args[i] = value
        with pytest.raises(AppError, match=msg):
            client.predict(*args, api_name="/train")


# ---------------------------------------------------------------------------------------------------- compensation

def test_api_compensation_matches_the_core_and_old_calls_are_unchanged(client, explorer):
    """/compress with a compensation gives what craftlab.compress + evaluate give for the same arm (an independent
    path: the core's pipeline on the checkpoint, not the app's cache); a call without it is the uncompensated one."""
    import craftlab

    plain = compress(client, sparsity=0.0, w_bits=4, a_bits=4)
    comp = compress(client, sparsity=0.0, w_bits=4, a_bits=4, compensation="qwt-v2")
    assert plain["setting_label"] == "W4A4" and comp["setting_label"] == "W4A4 + QwT-v2"
    for name, arm in comp["arms"].items():
        la = next(x for x in explorer.arms(MODEL) if x.arm.name == name)
        model = craftlab.load_checkpoint(la.path)
        data = craftlab.load_data("digits", model=model)
        q = craftlab.compress(model, w_bits=4, a_bits=4, compensation="qwt-v2", calib=data.calib)
        assert arm["compressed_accuracy"] == craftlab.evaluate(q, data.test)["accuracy"]
        assert arm["compressed_accuracy"] != plain["arms"][name]["compressed_accuracy"] or arm["compressed_loss"] != \
            plain["arms"][name]["compressed_loss"]
    repq = compress(client, sparsity=0.0, w_bits=4, a_bits=4, recipe="repq", compensation="qwt")
    assert repq["setting_label"] == "W4A4 repq + QwT"


@pytest.mark.parametrize("kw,message", [
    (dict(sparsity=0.0, compensation="qwt"), "compensat"),
    (dict(w_bits=4, compensation="qwt-v3"), "qwt-v3"),
    (dict(w_bits=4, recipe="repqq"), "repqq"),
])
def test_api_bad_compensation_or_recipe_is_named(client, kw, message):
    with pytest.raises(AppError, match=message):
        compress(client, **kw)


def test_landscape_of_a_setting_without_weight_path_says_why(served, client):
    cb = served.callbacks
    figs = cb.landscape(MODEL, "magnitude", 0.0, 4, 4, recipe="repq")
    texts = [a["text"] for f in figs for a in f.to_dict()["layout"].get("annotations", [])]
    assert len(figs) == 3 and all("RepQ-ViT re-parameterizes" in t and "W4A4 repq" in t for t in texts)
    figs = cb.landscape(MODEL, "magnitude", 0.5, None, None, compensation="qwt-v2")  # folded: a weight path
    assert figs[0].to_dict()["data"], "the folded QwT-v2 model has a compression path"


def test_api_compress_old_positional_call_is_unchanged(client):
    """A client written before recipe and compensation existed (8 positional inputs) gets the same answer."""
    old = client.predict(MODEL, "magnitude", 0.5, 8, None, "channel", "2:4", False, api_name="/compress")
    new = compress(client, w_bits=8, recipe="uniform", compensation="none")
    assert old["setting_label"] == "magnitude 50% + W8AFP" and old["setting"]["compensation"] is None
    assert_same_answer(old, new)


def test_api_pretrain_requests_are_checked_by_name(client):
    assert "`resnet-tiny-mnist5k-adam+expand-lr0.002-e2-s0`" in client.predict(
        "resnet-tiny", "adam", 0.0, "expand", 2, 0, api_name="/pretrain_check")
    assert "did you mean 'expand'" in client.predict("resnet-tiny", "adam", 0.0, "expnd", 2, 0,
                                                     api_name="/pretrain_check")
    for args, msg in [(("vit-tiny", "adam", 0.0, "repvgg", 1, 0), "does not apply to any layer"),
                      (("resnet-tiny", "lion", 0.0, "none", 1, 0), "unknown optimizer 'lion'")]:
        with pytest.raises(AppError, match=msg):
            client.predict(*args, api_name="/pretrain")
    with pytest.raises(AppError, match="unknown pretrained run"):
        client.predict("no-such-run", "digits", 1, 0, 0.05, api_name="/transfer")
