"""The app's service, called directly (no Gradio, no HTTP): craftlab_app.service.Explorer and its parts
(arms, training, concurrency, stores, figures).

Uses 1-epoch runs of vit-tiny (both arms) fine-tuned once per test session into the session's
CRAFTLAB_HOME, and an Explorer with small curve grids and coarse landscapes, so the module stays fast.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pandas")
pytest.importorskip("plotly")

from craftlab_app import figures as figs  # noqa: E402
from craftlab_app.concurrency import Memo, Scheduler  # noqa: E402
from craftlab_app.service import Explorer, as_setting  # noqa: E402
from craftlab_app.stores import PointStore  # noqa: E402
from craftlab_app.training import make_run_spec  # noqa: E402

import craftlab  # noqa: E402
from craftlab import cache  # noqa: E402
from craftlab.settings import Setting, make_setting  # noqa: E402

MODEL = "vit-tiny"
EPOCHS = 1


def small_explorer(**kw) -> Explorer:
    opts = dict(epochs=EPOCHS, sparsity_grid=(0.25, 0.5, 0.75), bits_grid=(8, 4), landscape_steps=5, path_steps=9,
                probe_size=64)
    opts.update(kw)
    return Explorer(**opts)


@pytest.fixture(scope="module")
def explorer():
    """The app runs torch with one intra-op thread (see craftlab_app.service); the suite's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    ex = small_explorer()
    ex.arms(MODEL)  # fine-tunes the two 1-epoch arms once per session (cached on disk afterwards)
    yield ex
    ex.close()
    torch.set_num_threads(before)


def assert_same_answer(a: dict, b: dict) -> None:
    """Identical answers: accuracies, settings and sizes exactly; losses to 1e-4 relative. Another explorer
    sums in another order, and under activation quantization a last-bit difference can move a few values
    across a rounding boundary (seen in CI: 1.4e-5 relative on a W7A7 setting), never an accuracy."""
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


# ----------------------------------------------------------------------------------------------------- inputs

def test_settings_come_from_craftlab_settings_with_n_kept_of_m():
    nm = make_setting("N:M", 0.9, pattern="1:4")  # N:M = N weights kept of every M: sparsity 1 - 1/4
    assert (nm.method, nm.pattern, nm.sparsity) == ("N:M", "1:4", 0.75)
    assert nm.describe() == "magnitude 1:4 (keep 1 of 4)"
    assert make_setting("2:4") == make_setting("N:M", 0.1, pattern="2:4") == as_setting("magnitude 2:4")
    assert as_setting(method="wanda", sparsity=0.7, w_bits=4, a_bits=4).label() == "wanda 70% + W4A4"
    assert as_setting({"method": "magnitude", "sparsity": 0.5}).label() == "magnitude 50%"
    assert as_setting(None).label() == "FP32"
    s = make_setting("wanda", 0.5)
    assert as_setting(s) is s
    with pytest.raises(TypeError, match="not both"):
        as_setting(s, sparsity=0.3)


@pytest.mark.parametrize("kwargs, words", [
    ({"sparsity": 1.0}, "sparsity"), ({"w_bits": 9}, "w_bits"), ({"method": "lottery"}, "pruning method"),
    ({"method": "N:M", "pattern": "4:2"}, "N:M"), ({"granularity": "row"}, "granularity"),
])
def test_bad_settings_are_refused_before_anything_runs(kwargs, words):
    ex = small_explorer(persist=False)  # never loads a model: the setting is refused first
    try:
        with pytest.raises(ValueError, match=words):
            ex.compress("no-such-model", **{"method": "magnitude", "sparsity": 0.5, **kwargs})
    finally:
        ex.close()


def test_make_run_spec_is_the_one_check_of_a_run():
    spec = make_run_spec(" vit-tiny ", "digits", "adamw", 0.05, False, 3.0, 0.0)  # sliders send floats
    assert (spec.model, spec.epochs, spec.seed, spec.sam_rho) == ("vit-tiny", 3, 0, 0.05)
    for args, msg in [(("vit-tinyy",), "unknown model 'vit-tinyy'.*vit-tiny"),
                      (("vit-tiny", "no-such-data"), "unknown dataset"),
                      (("vit-tiny", "digits", "lion"), "unknown optimizer"),
                      (("vit-tiny", "digits", "adamw", -0.1), "rho must be in"),
                      (("vit-tiny", "digits", "adamw", 0.0, True), "ASAM"),
                      (("vit-tiny", "digits", "adamw", 0.05, False, 2.5), "epochs must be a whole number"),
                      (("vit-tiny", "digits", "adamw", 0.05, False, 0), "epochs"),
                      (("vit-tiny", "digits", "adamw", 0.05, False, 3, 1.5), "seed must be a whole number")]:
        with pytest.raises(ValueError, match=msg):
            make_run_spec(*args)


# ----------------------------------------------------------------------------------------------------- compress

def test_compress_answers_both_arms(explorer):
    ans = explorer.compress(MODEL, make_setting("magnitude", 0.5))
    json.dumps(ans)  # a JSON object
    assert ans["model"] == MODEL and [a["role"] for a in ans["arms"].values()] == ["plain", "craft"]
    assert ans["setting_label"] == "magnitude 50%"
    for arm in ans["arms"].values():
        assert {"fp_accuracy", "compressed_accuracy", "accuracy_drop"} <= set(arm)
        assert 0 <= arm["compressed_accuracy"] <= 1 and 0 <= arm["fp_accuracy"] <= 1
        assert arm["sparsity_measured"] == pytest.approx(0.5, abs=0.01)


def test_n_m_keeps_n_of_m(explorer):
    ans = explorer.compress(MODEL, method="N:M", pattern="1:4")
    assert ans["setting"]["sparsity"] == 0.75 and ans["setting_text"] == "magnitude 1:4 (keep 1 of 4)"
    for arm in ans["arms"].values():
        assert arm["sparsity_measured"] == pytest.approx(0.75, abs=0.01)


def test_compress_matches_the_core_api(explorer):
    """The cached answer is what craftlab.compress_and_evaluate measures on the same checkpoint."""
    ans = explorer.compress(MODEL, method="wanda", sparsity=0.6, w_bits=4, a_bits=8)
    for name, arm in ans["arms"].items():
        path = cache.home() / "runs" / arm["checkpoint"]
        model = craftlab.load_checkpoint(path)
        data = craftlab.load_data("digits", model=model)
        ref = craftlab.compress_and_evaluate(model, data, method="wanda", sparsity=0.6, w_bits=4, a_bits=8)
        assert arm["compressed_accuracy"] == pytest.approx(ref["accuracy"], abs=1.5 / ref["n"]), name
        assert arm["fp_accuracy"] == pytest.approx(ref["fp_accuracy"], abs=1.5 / ref["n"]), name
        meta = craftlab.read_meta(path)
        assert arm["fp_accuracy"] == pytest.approx(meta["metrics"]["test_accuracy"], abs=1.5 / ref["n"])


def test_fp_accuracy_does_not_depend_on_the_setting_and_sparsity_hurts(explorer):
    low = explorer.compress(MODEL, method="magnitude", sparsity=0.1)
    high = explorer.compress(MODEL, method="magnitude", sparsity=0.9)
    for name in low["arms"]:
        assert low["arms"][name]["fp_accuracy"] == high["arms"][name]["fp_accuracy"]
        assert high["arms"][name]["compressed_accuracy"] < low["arms"][name]["compressed_accuracy"]


def test_shared_models_are_never_mutated(explorer, unchanged):
    loaded = explorer.arms(MODEL)
    with unchanged(loaded[0].model), unchanged(loaded[1].model):
        explorer.compress(MODEL, method="wanda", sparsity=0.35, w_bits=3, a_bits=6)
        explorer.compress(MODEL, method="N:M", pattern="2:4", w_bits=5)
        explorer.sharpness(MODEL)
        explorer.landscape(MODEL, make_setting("magnitude", 0.35, 6, None))


def test_concurrent_requests_get_what_a_lone_request_gets(explorer):
    settings = [make_setting("magnitude", 0.45, 6, None), make_setting("wanda", 0.55, None, 6),
                make_setting("N:M", 0, 7, 7, "tensor", "1:4"), make_setting("wanda", 0.15, 5, None, "tensor"),
                make_setting("magnitude", 0.85)]
    out: dict[int, dict] = {}

    def ask(i):
        out[i] = explorer.compress(MODEL, settings[i % len(settings)])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    lone = small_explorer(persist=False)  # a fresh explorer: nothing cached in memory
    try:
        for i, ans in out.items():
            assert_same_answer(ans, lone.compress(MODEL, settings[i % len(settings)]))
    finally:
        lone.close()
    assert len(out) == 10


# ----------------------------------------------------------------------------------------------------- models

def test_timm_model_offline_is_a_fast_clear_error(explorer, monkeypatch):
    import socket as socket_mod

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket_mod, "create_connection", unreachable)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="resnet18.*Hugging Face Hub.*unreachable"):
        explorer.compress("resnet18", method="magnitude", sparsity=0.5)
    with pytest.raises(RuntimeError, match="Hugging Face Hub"):
        list(explorer.train_stream(make_run_spec("resnet18", "digits", "adamw", 0.05, False, 1, 0)))
    assert time.perf_counter() - t0 < 10


def damaged_copy(explorer, name: str, what: str = "weights") -> str:
    """Copy the plain run under a new key and damage its weights or its sidecar."""
    src = cache.home() / "runs" / explorer.arms(MODEL)[0].path.name
    dst = cache.home() / "runs" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    if what == "weights":
        (dst / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    else:
        (dst / "craftlab.json").write_text("{ not json")
    return name


def test_damaged_checkpoint_is_a_clear_error(explorer):
    good = explorer.compress(MODEL, method="magnitude", sparsity=0.5)
    for name, what in (("vit-tiny-damaged-weights", "weights"), ("vit-tiny-damaged-sidecar", "sidecar")):
        damaged_copy(explorer, name, what)
        with pytest.raises(ValueError, match="damaged"):
            explorer.compress(name, method="magnitude", sparsity=0.5)
        shutil.rmtree(cache.home() / "runs" / name)
    assert explorer.compress(MODEL, method="magnitude", sparsity=0.5) == good


def test_a_checkpoint_changed_on_disk_is_reloaded(explorer):
    """Caches are keyed by the checkpoint's content, not its name."""
    name = "vit-tiny-swapped"
    src_plain, src_craft = (cache.home() / "runs" / la.path.name for la in explorer.arms(MODEL))
    dst = cache.home() / "runs" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src_plain, dst)
    a = explorer.compress(name, method="magnitude", sparsity=0.5)
    time.sleep(0.01)
    shutil.copy(src_craft / "model.safetensors", dst / "model.safetensors")  # now holds the SAM weights
    b = explorer.compress(name, method="magnitude", sparsity=0.5)
    key = next(k for k, v in a["arms"].items() if v["checkpoint"] == name)
    craft_key = next(k for k, v in a["arms"].items() if v["checkpoint"] != name)
    assert b["arms"][key]["compressed_accuracy"] == a["arms"][craft_key]["compressed_accuracy"]
    shutil.rmtree(dst)


def test_a_cached_run_key_selects_the_run_and_its_twin(explorer):
    by_zoo = explorer.compress(MODEL, method="magnitude", sparsity=0.5)
    craft_key = next(v["checkpoint"] for v in by_zoo["arms"].values() if v["role"] == "craft")
    by_key = explorer.compress(craft_key, method="magnitude", sparsity=0.5)
    assert by_key["arms"] == by_zoo["arms"]
    assert craft_key in [v for _, v in explorer.model_choices()]
    with pytest.raises(ValueError, match="unknown model 'vit-tinny'.*vit-tiny"):
        explorer.resolve("vit-tinny")


# ----------------------------------------------------------------------------------------------------- curves

def wait_for_curves(explorer, model=MODEL, granularity="channel", timeout=120):
    deadline = time.time() + timeout
    while True:
        c = explorer.curves(model, granularity=granularity)
        if c["complete"] or time.time() > deadline:
            return c
        time.sleep(0.3)


def test_curves_come_from_cached_sweeps(explorer):
    c = wait_for_curves(explorer)
    assert c["complete"], c
    s, b = c["sparsity"], c["bits"]
    assert set(s["method"]) == {"magnitude", "wanda"} and set(s["sparsity"]) == {0.0, 0.25, 0.5, 0.75}
    assert set(b["mode"]) == {"W-only", "W=A"} and set(b["bits"]) == {8.0, 4.0}
    assert len(s) == 2 * 2 * 4 and len(b) == 2 * 2 * 2
    # a grid point of the curve is the same number /compress gives
    setting = make_setting("wanda", 0.75)
    ans = explorer.compress(MODEL, setting)
    for arm_name, arm in ans["arms"].items():
        row = s[(s["arm"] == arm_name) & (s["method"] == "wanda") & (s["sparsity"] == 0.75)]
        assert row["accuracy"].item() == arm["compressed_accuracy"]
    fig_s, fig_b = figs.sparsity_curve_figure(c, setting, ans), figs.bits_curve_figure(c, setting, ans)
    assert fig_s.layout.height > 0 and fig_b.layout.height > 0
    assert any(shape.x0 == 0.75 for shape in fig_s.layout.shapes)  # the current setting is marked
    assert len([tr for tr in fig_s.data if getattr(tr.marker, "symbol", None) == "star"]) == 2
    assert "wanda" in fig_s.layout.title.text


def test_curve_points_persist_across_explorers(explorer):
    wait_for_curves(explorer)
    explorer.flush()
    fresh = small_explorer()
    try:
        c = fresh.curves(MODEL, schedule=False)
        assert c["complete"], (c["done"], c["total"])
    finally:
        fresh.close()


# ----------------------------------------------------------------------------------------------------- probes

def test_sharpness(explorer):
    res = explorer.sharpness(MODEL)
    assert [r["role"] for r in res.values()] == ["plain", "craft"]
    for r in res.values():
        assert r["lambda_max"] > 0 and r["trace"] > 0 and r["n_examples"] == 64 and r["rho"] == 0.05


def test_landscape_reuses_the_model_compress_made(explorer, monkeypatch):
    from craftlab.compression import pipeline

    calls = []
    real = pipeline.compress
    monkeypatch.setattr(pipeline, "compress", lambda *a, **k: calls.append(1) or real(*a, **k))
    setting = make_setting("magnitude", 0.7, 5, None)  # asked nowhere else: nothing cached, nor on disk
    explorer.compress(MODEL, setting)
    t0 = time.perf_counter()
    lands = explorer.landscape(MODEL, setting)
    first = time.perf_counter() - t0
    assert len(calls) == 2  # one compression per arm, for the point and the landscape together
    assert explorer.has_landscape(MODEL, setting)
    t0 = time.perf_counter()
    assert explorer.landscape(MODEL, setting) == lands
    assert time.perf_counter() - t0 < max(0.5, first / 3)  # cached
    for arm in lands.values():
        assert arm["path"].meta["kind"] == "compression_path" and arm["setting_label"] == "magnitude 70% + W5AFP"
        assert arm["plane"].meta["kind"] == "compression_plane"
    path = figs.path_figure(lands)
    assert path.layout.height > 0 and "compression direction" in path.layout.title.text
    stars = [tr for tr in path.data if tr.marker.symbol == "star"]
    assert [tr.marker.color for tr in stars] == [figs.ROLE_COLORS["plain"], figs.ROLE_COLORS["craft"]]
    planes = figs.plane_figures(lands, kind="contour")
    assert planes[0].data[0].zmin == planes[1].data[0].zmin  # both arms on one colour scale
    for fig in planes:  # the compressed point (alpha=1, beta=0) is marked
        marks = [tr for tr in fig.data if tr.type == "scatter" and list(tr.x) == [1.0]]
        assert marks and marks[0].marker.symbol == "star"
    assert figs.plane_figures(lands, kind="surface")[0].data[0].type == "surface"
    with pytest.raises(ValueError, match="kind"):
        figs.plane_figures(lands, kind="wireframe")


def test_no_compression_probes_random_directions(explorer):
    lands = explorer.landscape(MODEL, Setting())
    assert "random" in figs.path_figure(lands).layout.title.text


# ----------------------------------------------------------------------------------------------------- training

def test_train_stream_reports_history_and_caches(explorer):
    spec = make_run_spec("resnet-tiny", "digits", "adamw", 0.1, False, 1, 0)
    states = list(explorer.train_stream(spec, twin=False, poll=0.2))
    last = states[-1]
    assert last["done"] and last["key"] == "resnet-tiny-digits-adamw+sam0.1-e1-s0"
    (run,) = last["runs"]
    assert (run["label"], run["role"]) == ("SAM ρ=0.1", "craft")  # craftlab.train.runs.arm_label
    assert len(run["history"]) == 1 and not run["cached"]
    assert figs.training_figure(last).layout.height > 0
    again = list(explorer.train_stream(spec, twin=False))
    assert len(again) == 1 and again[0]["runs"][0]["cached"]
    assert "resnet-tiny-digits-adamw+sam0.1-e1-s0" in [v for _, v in explorer.model_choices()]


def test_status(explorer):
    st = explorer.status()
    assert {"stage", "runs", "pending", "error"} <= set(st)


# ----------------------------------------------------------------------------------------------------- plumbing

def test_memo_is_single_flight_and_bounded():
    memo, calls, gate = Memo(maxsize=2), [], threading.Event()

    def slow():
        calls.append(1)
        gate.wait(5)
        return 42

    threads = [threading.Thread(target=memo.get_or_compute, args=("k", slow)) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert calls == [1] and memo.get("k") == 42
    memo.put("a", 1)
    memo.put("b", 2)
    assert "k" not in memo and len(memo) == 2
    assert memo.get_or_compute("c", lambda: 3, store=False) == 3 and "c" not in memo


def test_a_foreground_caller_never_waits_for_a_background_leader():
    """The background worker runs niced and may be starved: a request computes the value itself."""
    memo, started, release = Memo(maxsize=4), threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(5)
        return "background"

    bg = threading.Thread(target=memo.get_or_compute, args=("k", slow), kwargs={"background": True})
    bg.start()
    assert started.wait(5)
    t0 = time.perf_counter()
    assert memo.get_or_compute("k", lambda: "foreground") == "foreground"
    assert time.perf_counter() - t0 < 1 and memo.get("k") == "foreground"
    release.set()
    bg.join(5)
    assert memo.get("k") == "background"  # the values must not depend on who computes them: last one kept


def test_background_jobs_wait_for_foreground_requests():
    done = []
    sched = Scheduler(workers=2)
    try:
        with sched.foreground():
            sched.enqueue(0, "job", done.append, 1)
            sched.enqueue(0, "job", done.append, 2)  # same key: queued once
            time.sleep(0.3)
            assert done == [] and sched.pending() == 1
        deadline = time.time() + 5
        while sched.pending() and time.time() < deadline:
            time.sleep(0.05)
        assert done == [1]
        assert sched.map(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]
    finally:
        sched.close()


def test_point_store_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path))
    store = PointStore()
    prefix = ("f" * 40, "ctx")
    store.mark_dirty(prefix)
    assert store.take_dirty() == {prefix} and store.take_dirty() == set()
    store.write(prefix, {"k": {"accuracy": 0.5}}, {"lambda_max": 1.0})
    assert PointStore().load_once(prefix) == ({"k": {"accuracy": 0.5}}, {"lambda_max": 1.0})
    assert PointStore(enabled=False).load_once(prefix) == ({}, None)
