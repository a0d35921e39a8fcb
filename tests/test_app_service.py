"""The app's service, called directly (no Gradio, no HTTP): craftlab_app.explore.service.Explorer and its parts
(arms, training, concurrency, stores, figures).

Uses 1-epoch runs of vit-tiny (both arms) fine-tuned once per test session into the session's
CRAFTLAB_HOME, and an Explorer with small curve grids and coarse landscapes, so the module stays fast.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time

import pytest
from conftest import scaled

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
pytest.importorskip("pandas")
pytest.importorskip("plotly")

from craftlab_app.common.concurrency import Cancelled, Memo, Scheduler, memo_call  # noqa: E402
from craftlab_app.common.stores import PointStore  # noqa: E402
from craftlab_app.explore import figures as figs  # noqa: E402
from craftlab_app.explore import panels  # noqa: E402
from craftlab_app.explore.service import as_setting  # noqa: E402
from craftlab_app.explore.session import Views  # noqa: E402
from craftlab_app.train.figures import training_figure  # noqa: E402
from craftlab_app.train.service import TrainService, make_run_spec  # noqa: E402

import craftlab  # noqa: E402
from craftlab import cache  # noqa: E402
from craftlab.settings import Setting, make_setting  # noqa: E402

MODEL = "vit-tiny"
EPOCHS = 1


@pytest.fixture(scope="module")
def explorer(small_explorer):
    """The app runs torch with one intra-op thread (see craftlab_app.explore.service); the suite's setting is
    restored."""
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
def test_bad_settings_are_refused_before_anything_runs(small_explorer, kwargs, words):
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


def test_concurrent_requests_get_what_a_lone_request_gets(small_explorer, explorer):
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
        list(TrainService(explorer).train_stream(make_run_spec("resnet18", "digits", "adamw", 0.05, False, 1, 0)))
    assert time.perf_counter() - t0 < scaled(10)


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

def wait_for_curves(explorer, setting=None, model=MODEL, timeout=180):
    deadline = time.time() + timeout
    while True:
        c = explorer.curves(model, setting)
        if c["complete"] or time.time() > deadline:
            return c
        time.sleep(0.3)


def test_curves_are_drawn_at_the_other_current_settings(explorer):
    setting = make_setting("wanda", 0.75, 4, 8)
    c = wait_for_curves(explorer, setting)
    assert c["complete"], c
    s, b = c["sparsity"], c["bits"]
    assert set(s["method"]) == {"wanda"} and set(s["sparsity"]) == {0.0, 0.25, 0.5, 0.75}
    assert set(b["bits"]) == {8.0, 4.0, 9.0, 10.0}  # the grid, then 16 (x = 9) and float weights (x = 10)
    n = len(c["seeds"])  # seed 0, and the extra seeds already fine-tuned when CRAFTLAB_HOME is reused
    assert c["seeds"][0] == 0 and len(s) == 2 * 4 * n and len(b) == 2 * 4 * n
    # the curves hold the current setting itself: the sparsity curve at W4A8, the bits curve at wanda 75% + A8
    ans = explorer.compress(MODEL, setting)
    for arm_name, arm in ans["arms"].items():
        row = s[(s["arm"] == arm_name) & (s["sparsity"] == 0.75) & (s["seed"] == 0)]
        assert row["accuracy"].item() == arm["compressed_accuracy"]
        row = b[(b["arm"] == arm_name) & (b["bits"] == 4.0) & (b["seed"] == 0)]
        assert row["accuracy"].item() == arm["compressed_accuracy"]
    tag = "[vit-tiny · wanda 75% + W4A8]"
    fig_s = figs.sparsity_curve_figure(c, setting, ans, tag)
    fig_b = figs.bits_curve_figure(c, setting, ans, tag)
    assert fig_s.layout.height > 0 and fig_b.layout.height > 0
    assert any(shape.x0 == 0.75 for shape in fig_s.layout.shapes)  # the current setting is marked
    for fig, x in ((fig_s, 0.75), (fig_b, 4.0)):
        stars = [tr for tr in fig.data if getattr(tr.marker, "symbol", None) == "star"]
        assert len(stars) == 2 and tag in fig.layout.title.text
        for star in stars:  # on its curve: a point of a drawn line
            assert star.x[0] == x
            assert any(tr.mode and "lines" in tr.mode and tr.fill != "toself" and
                       any(abs(xv - x) < 1e-9 and abs(yv - star.y[0]) < 1e-9 for xv, yv in zip(tr.x, tr.y))
                       for tr in fig.data)
    w16 = make_setting("magnitude", 0.5, 16, None)
    fig16 = figs.bits_curve_figure(wait_for_curves(explorer, w16), w16, explorer.compress(MODEL, w16))
    assert [tr.x[0] for tr in fig16.data if getattr(tr.marker, "symbol", None) == "star"] == [9.0, 9.0]
    assert list(fig16.layout.xaxis.ticktext)[-2:] == ["16", "FP"]


def test_n_m_curves_mark_the_patterns(explorer):
    setting = make_setting("N:M", 0, pattern="1:4")
    c = wait_for_curves(explorer, setting)
    assert set(c["nm"]["pattern"]) == {"1:2", "2:4", "4:8", "1:4"}
    fig = figs.sparsity_curve_figure(c, setting, explorer.compress(MODEL, setting))
    assert [tr.x[0] for tr in fig.data if getattr(tr.marker, "symbol", None) == "star"] == [0.75, 0.75]


def test_curve_points_persist_across_explorers(small_explorer, explorer):
    setting = make_setting("magnitude", 0.5)
    wait_for_curves(explorer, setting)
    explorer.flush()
    fresh = small_explorer()
    try:
        c = fresh.curves(MODEL, setting, schedule=False)
        assert c["complete"], (c["done"], c["total"])
    finally:
        fresh.close()


def test_seeds_give_mean_sd_and_the_paired_verdict_of_the_shared_statistics(explorer):
    from craftlab.analysis.stats import claim_verdict, compare_arms

    seed_one = [s for s in explorer.missing_seed_runs(MODEL) if s.seed == 1]
    TrainService(explorer).train_specs(seed_one)  # seed 1's arms (1 epoch)
    setting = make_setting("magnitude", 0.6)
    v = explorer.verdict(MODEL, setting, compute=True)
    n = len(v["seeds"])  # 2; 3 when a reused CRAFTLAB_HOME already holds seed 2's runs
    assert v["seeds"][:2] == [0, 1] and v["expected_seeds"] == 3 and v["point_pts"] == pytest.approx(100 / 359)
    df = explorer.seed_points(MODEL, setting, compute=False)
    assert sorted(df["seed"].unique().tolist()) == v["seeds"] and len(df) == 2 * n
    for role in ("plain", "craft"):
        acc = df[df["role"] == role]["accuracy"]
        assert v["arms"][role]["mean"] == pytest.approx(acc.mean())
        assert v["arms"][role]["sd"] == pytest.approx(acc.std(ddof=1))
    table = compare_arms(df.assign(setting=setting.label()), "plain", "craft", by="setting", pair="seed", arm="role")
    assert v["comparison"]["p_adjusted"] == table["p_adjusted"].item()
    assert v["comparison"]["mean_diff"] == pytest.approx(table["mean_diff"].item())
    assert v["status"] == claim_verdict(table).status
    text = panels.interpretation(v, MODEL, setting.label())
    assert f"Over {n} seeds" in text and "0.28 pts" in text and "[vit-tiny · magnitude 60%]" in text
    c = wait_for_curves(explorer, setting)
    assert c["seeds"] == v["seeds"] and set(c["sparsity"]["seed"]) == set(v["seeds"])


# ----------------------------------------------------------------------------------------------------- probes

def test_sharpness(explorer):
    res = explorer.sharpness(MODEL)
    assert [r["role"] for r in res.values()] == ["plain", "craft"]
    for r in res.values():
        assert r["lambda_max"] > 0 and r["trace"] > 0 and r["n_examples"] == 64 and r["rho"] == 0.05


@pytest.fixture
def fresh(small_explorer, explorer):
    """An explorer that reads and writes nothing under $CRAFTLAB_HOME/explore (so a reused CRAFTLAB_HOME, where an
    earlier session stored this test's points and landscapes, changes nothing)."""
    ex = small_explorer(persist=False)
    yield ex
    ex.close()


def test_landscape_reuses_the_model_compress_made(fresh, monkeypatch):
    from craftlab.compression import pipeline

    explorer = fresh
    calls = []
    real = pipeline.compress
    monkeypatch.setattr(pipeline, "compress", lambda *a, **k: calls.append(1) or real(*a, **k))
    setting = make_setting("magnitude", 0.7, 5, None)  # asked nowhere else: nothing cached
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
    from craftlab.train.runs import run_dir

    spec = make_run_spec("resnet-tiny", "digits", "adamw", 0.1, False, 1, 0)
    shutil.rmtree(run_dir(spec), ignore_errors=True)  # a reused CRAFTLAB_HOME may hold it
    states = list(TrainService(explorer).train_stream(spec, twin=False, poll=0.2))
    last = states[-1]
    assert last["done"] and last["key"] == "resnet-tiny-digits-adamw+sam0.1-e1-s0"
    (run,) = last["runs"]
    assert (run["label"], run["role"]) == ("SAM ρ=0.1", "craft")  # craftlab.train.runs.arm_label
    assert len(run["history"]) == 1 and not run["cached"]
    assert training_figure(last).layout.height > 0
    again = list(TrainService(explorer).train_stream(spec, twin=False))
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
    assert time.perf_counter() - t0 < scaled(1) and memo.get("k") == "foreground"
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


# ----------------------------------------------------------------------------------------------------- issue 15

def test_a_quick_landscape_is_coarse_then_the_fine_one_follows(small_explorer, explorer):
    ex = small_explorer(landscape_steps=9, path_steps=13, coarse_steps=(5, 9), persist=False)
    try:
        setting = make_setting("magnitude", 0.45)
        assert ex.levels == ((5, 9), (9, 13)) and ex.landscape_level(MODEL, setting) is None
        quick = ex.landscape(MODEL, setting, quick=True)
        for arm in quick.values():
            assert arm["resolution"] == {"plane_steps": 5, "path_steps": 9, "distance": 1.5, "final": False}
            assert len(arm["plane"].betas) == 5 and 1.0 in arm["plane"].alphas  # the compressed point is on the grid
            path = arm["path"]  # the 2nd-order prediction, its terms computed under HVP_LOCK
            assert np.isfinite(path.predicted).all() and "predicted_jump" in path.meta
            assert path.predicted[path.index_original] == path.loss[path.index_original]
        deadline = time.time() + 120
        while ex.landscape_level(MODEL, setting) != 1 and time.time() < deadline:  # the fine level, in the background
            time.sleep(0.3)
        fine = ex.landscape(MODEL, setting, quick=True)  # now answers with the fine level at once
        for name, arm in fine.items():
            assert arm["resolution"]["final"] and len(arm["plane"].betas) == 9
            coarse = quick[name]["plane"]  # both grids hold the compressed point: the same number there
            i, j = list(arm["plane"].alphas).index(1.0), list(arm["plane"].betas).index(0.0)
            k, m = list(coarse.alphas).index(1.0), list(coarse.betas).index(0.0)
            assert arm["plane"].loss[i, j] == pytest.approx(coarse.loss[k, m], rel=1e-6)
        assert "finer grid follows" in figs.path_figure(quick).layout.title.text
    finally:
        ex.close()


def test_the_fine_level_reuses_the_quick_one_and_equals_the_probes(small_explorer, explorer):
    """The fine level after the quick one: path and plane in one pass, the quick level's points (and its
    second-order terms) not computed again, and the values those of a direct compression_path /
    compression_plane (a random line / plane with no compression) to 1e-6."""
    from craftlab.probes import landscape as L

    ex = small_explorer(landscape_steps=9, path_steps=13, coarse_steps=(5, 9), persist=False)
    try:
        for setting in (make_setting("magnitude", 0.55, 6, None), Setting()):
            ex.compress(MODEL, setting)
            quick = ex.landscape(MODEL, setting, level=0)
            fine = ex.landscape(MODEL, setting, level=1)
            for la in ex.arms(MODEL):
                arm, probe = fine[la.arm.name], la.ctx.probe
                if setting.is_identity:
                    path = L.line(la.model, probe, steps=13, distance=1.0, seed=0)
                    plane = L.plane(la.model, probe, steps=9, distance=1.0, seed=0)
                else:
                    comp = ex.points.compressed_model(la, setting)
                    path = L.compression_path(la.model, comp, probe, steps=13, buffers=True)
                    plane = L.compression_plane(la.model, comp, probe, steps=9, distance=1.5, seed=0, buffers=True)
                    np.testing.assert_allclose(arm["path"].predicted, path.predicted, rtol=1e-6, atol=1e-6)
                    assert arm["path"].meta["loss_original"] == pytest.approx(path.meta["loss_original"], abs=1e-6)
                np.testing.assert_allclose(arm["path"].loss, path.loss, rtol=0, atol=1e-6)
                np.testing.assert_allclose(arm["plane"].loss, plane.loss, rtol=0, atol=1e-6)
                np.testing.assert_array_equal(arm["plane"].accuracy, plane.accuracy)
                assert np.ptp(plane.loss) > 1e-3
                timing = arm["plane"].meta["timing"]
                assert timing["reused"] >= quick[la.arm.name]["plane"].loss.size  # the quick plane lies on the fine one
                n_line = len(path.t) if hasattr(path, "t") else len(path.alphas)
                assert timing["points"] + timing["reused"] < plane.loss.size + n_line  # the path's points on the plane
    finally:
        ex.close()


def test_a_replaced_request_gives_up_and_does_not_poison_the_cache(fresh):
    explorer = fresh
    setting = make_setting("wanda", 0.45, 6, None)
    calls = []

    def cancel_after_a_few() -> bool:
        calls.append(1)
        return len(calls) > 5  # replaced after a few forward passes

    with pytest.raises(Cancelled):
        explorer.landscape(MODEL, setting, cancelled=cancel_after_a_few)
    assert not explorer.has_landscape(MODEL, setting)
    lands = explorer.landscape(MODEL, setting)  # the next request computes it
    assert all(np.isfinite(a["plane"].loss).all() for a in lands.values())
    with pytest.raises(Cancelled):
        memo_call(Memo(2), "k", lambda: (_ for _ in ()).throw(Cancelled()), cancelled=lambda: True)


def test_views_replace_each_other_per_session():
    views = Views()
    a = views.open("s1", MODEL, make_setting("magnitude", 0.3))
    other = views.open("s2", MODEL, make_setting("magnitude", 0.3))
    cancelled = views.cancelled(a)
    assert views.current(a) and not cancelled()
    b = views.open("s1", MODEL, make_setting("magnitude", 0.7))
    assert not views.current(a) and cancelled() and views.current(b) and views.current(other)
    assert b.tag == "[vit-tiny · magnitude 70%]"


def test_scheduler_moves_a_job_up_and_drops_unwanted_ones():
    order = []
    sched = Scheduler(workers=1)
    try:
        with sched.foreground():
            sched.enqueue(5, "a", order.append, "a")
            sched.enqueue(4, "b", order.append, "b")
            sched.enqueue(1, "a", order.append, "a")  # moved up
            sched.enqueue(0, "c", order.append, "c", wanted=lambda: False)  # its view was replaced
            assert sched.pending() == 3
        deadline = time.time() + 5
        while sched.pending() and time.time() < deadline:
            time.sleep(0.05)
        assert order == ["a", "b"]
    finally:
        sched.close()


def test_a_job_moved_up_while_the_worker_holds_it_runs_once():
    """The worker may take a job, then wait for the foreground; a request moving the job up meanwhile queues a
    better entry: the job runs once (the held, stale entry is dropped), not twice (seen under load)."""
    order = []
    sched = Scheduler(workers=1)
    try:
        with sched.foreground():
            sched.enqueue(5, "a", order.append, "a")
            time.sleep(0.3)  # the worker took it and waits for the foreground to finish
            sched.enqueue(1, "a", order.append, "a")
        deadline = time.time() + scaled(5)
        while sched.pending() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert order == ["a"]
    finally:
        sched.close()


def test_panel_texts():
    assert panels.one_line("could not load 'x':\n <urlopen error [Errno -2]>") == \
        "could not load 'x': ‹urlopen error [Errno -2]›"
    assert [panels.fmt_num(v) for v in (6910.4, 123.4, 12.34, 1.234, 0.01234, 0)] == \
        ["6,910", "123", "12.3", "1.23", "0.0123", "0"]
    text = panels.sharpness_text({"lambda_max": 6910.0, "trace": 12345.6, "trace_stderr": 234.5,
                                  "eps_sharpness": 0.0123, "rho": 0.05, "n_examples": 64}, MODEL)
    assert "6,910" in text and "e+0" not in text and "[vit-tiny · FP weights]" in text
    assert "Smaller = flatter" in panels.SHARPNESS_NOTE and "across architectures" in panels.SHARPNESS_NOTE
    s = make_setting("N:M", 0, 4, None, pattern="1:4")
    q = panels.query_of(MODEL, s)
    assert q == "?model=vit-tiny&method=N%3AM&sparsity=0.75&w=4&a=None&g=channel&nm=1%3A4&kind=contour&scale=log10"
    for p in panels.PRESETS:
        assert panels.preset_of(p.model, p.setting()) is p
    assert [p.setting().label() for p in panels.PRESETS] == ["W4AFP", "magnitude 50%", "wanda 85%"]


def test_restore_reads_the_url_query():
    from urllib.parse import parse_qsl

    from craftlab_app.explore.handlers import Callbacks

    q = panels.query_of(MODEL, make_setting("wanda", 0.7, 4, 8), kind="surface")

    class Request:
        query_params = dict(parse_qsl(q[1:]))

    out = Callbacks.restore(Request())  # model, method, sparsity, w, a, g, nm, bn, recipe, comp, kind, scale
    assert out[:6] == ("vit-tiny", "wanda", 0.7, "4", "8", "channel") and out[10] == "surface"
    Request.query_params = dict(parse_qsl(panels.query_of(MODEL, make_setting("none", 0, 4, 4, recipe="repq",
                                                                               compensation="qwt-v2"))[1:]))
    out = Callbacks.restore(Request())
    assert out[3:5] == ("4", "4") and out[8:10] == ("repq", "qwt-v2")


def test_threads_policy(monkeypatch):
    from craftlab import threads

    monkeypatch.delenv("CRAFTLAB_THREADS", raising=False)
    monkeypatch.delenv("CRAFTLAB_APP_THREADS", raising=False)
    assert threads.resolve_threads() == (1, "default")
    assert threads.resolve_threads(model="vit-tiny") == (1, "default")
    assert threads.resolve_threads(3) == (3, "argument")
    monkeypatch.setenv("CRAFTLAB_APP_THREADS", "2")  # the app's old variable is an alias
    assert threads.resolve_threads() == (2, "CRAFTLAB_APP_THREADS")
    monkeypatch.setenv("CRAFTLAB_THREADS", "auto")
    assert threads.resolve_threads() == (2, "CRAFTLAB_APP_THREADS")
    monkeypatch.setenv("CRAFTLAB_THREADS", "1")
    assert threads.resolve_threads() == (1, "CRAFTLAB_THREADS")
    monkeypatch.setenv("CRAFTLAB_THREADS", "zero")
    with pytest.raises(ValueError, match="CRAFTLAB_THREADS must be a positive integer"):
        threads.resolve_threads()
    assert threads.default_threads(50_000_000) == threads._cores()
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_EXPLICIT", [])
    monkeypatch.setenv("CRAFTLAB_THREADS", "2")
    try:
        assert threads.configure_threads(1) == 1 == torch.get_num_threads()
        assert threads.configure_threads() == 1  # an explicit number (the CLI's --threads) holds for the process
    finally:
        torch.set_num_threads(before)


def test_the_core_fails_fast_offline_for_timm_weights(monkeypatch):
    from craftlab import models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket_closed() as port:
        monkeypatch.setattr(models, "HUB", ("127.0.0.1", port))
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match="resnet18.*Hugging Face Hub.*unreachable"):
            craftlab.create_model("resnet18", num_classes=10)
        assert time.perf_counter() - t0 < scaled(5)
    models.check_hub("vit-tiny")  # zoo: nothing to fetch


@contextlib.contextmanager
def socket_closed():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


# ----------------------------------------------------------------------------------------------------- issue 10: QwT

def test_a_compensated_setting_gives_what_the_core_gives(explorer):
    """The Explorer's accuracy of a compensated setting equals craftlab.compress(setting=...) + evaluate on the arm's
    checkpoint (an independent path: the core's pipeline and a fresh data split, not the app's cached tensors).

    The app calibrates on the 128 calibration images as one batch; the reference does too, because the core's
    ``repq + QwT`` fit depends on how the same images are batched (2 x 64 gives 3 test images fewer here)."""
    for label in ("W4A4 + QwT-v2", "W4A4 repq + QwT", "magnitude 50% + QwT-v2"):
        setting = as_setting(label)
        ans = explorer.compress(MODEL, setting)
        assert ans["setting_label"] == label
        for arm in ans["arms"].values():
            model = craftlab.load_checkpoint(cache.home() / "runs" / arm["checkpoint"])
            data = craftlab.load_data("digits", model=model)
            xs, ys = zip(*data.calib)
            q = craftlab.compress(model, setting=setting, calib=[(torch.cat(xs), torch.cat(ys))])
            assert arm["compressed_accuracy"] == craftlab.evaluate(q, data.test)["accuracy"], (label, arm["label"])
    plain = explorer.compress(MODEL, make_setting("none", 0, 4, 4))
    assert plain["setting_label"] == "W4A4" and plain["arms"] != explorer.compress(MODEL, as_setting("W4A4 + QwT"))


def test_curves_of_a_compensated_setting_keep_its_compensation(explorer):
    setting = make_setting("magnitude", 0.5, 4, 8, compensation="qwt-v2")
    points = explorer.curve_settings(setting)
    assert all(s.compensation == "qwt-v2" for _, _, _, s in points if not s.is_identity)
    assert any(s == setting for _, _, _, s in points)  # the star is a point of its curve


@pytest.mark.parametrize("kw,message", [
    (dict(method="magnitude", sparsity=0.0, compensation="qwt"), "needs a compressed model"),
    (dict(method="none", w_bits=4, compensation="qwt-v3"), "unknown compensation 'qwt-v3'"),
    (dict(method="none", w_bits=4, recipe="repqq"), "unknown quantization recipe 'repqq'"),
])
def test_bad_compensation_input_is_named(explorer, kw, message):
    import gradio as gr
    from craftlab_app.explore.handlers import Callbacks

    with pytest.raises(ValueError, match=message):
        explorer.compress(MODEL, **kw)
    args = {"sparsity": 0.0, "w_bits": None, "a_bits": None, **kw}
    with pytest.raises(gr.Error, match=message):
        Callbacks(explorer).compress(MODEL, args.pop("method"), args.pop("sparsity"), args.pop("w_bits"),
                                     args.pop("a_bits"), **args)


def test_no_weight_path_settings_have_a_landscape_note(explorer):
    from craftlab_app.explore.handlers import Callbacks

    cb = Callbacks(explorer)
    for comp, recipe, why in (("qwt", "uniform", "QwT adds side-path"), ("none", "repq", "RepQ-ViT")):
        figs_ = cb.landscape(MODEL, "none", 0.0, 4, 4, recipe=recipe, compensation=comp)
        for f in figs_:
            text = " ".join(a.text for a in f.layout.annotations)
            assert why in text and "no landscape" in text


# ----------------------------------------------------------------------------------------------------- issue 11: SNT

def test_pretrain_then_fine_tune_a_pair_that_opens_in_explore(explorer):
    """Pretrain resnet-tiny (Adam + RepVGG branches, 2 epochs), fine-tune AdamW + CrAFT from it (1 epoch): the pair
    is an Explore model whose arms are the checkpoints craftlab.get_transfer makes, measured like any model."""
    from craftlab_app.common.transfers import PREFIX
    from craftlab_app.train.service import make_pretrain_spec, make_transfer, pretrain_choices

    from craftlab.train.pretrain import get_transfer

    spec = make_pretrain_spec("resnet-tiny", "adam", 0.0, "repvgg", 2, 0)
    states = list(TrainService(explorer).pretrain_stream(spec, poll=0.2))
    assert states[-1]["done"] and states[-1]["runs"][0]["test_accuracy"] > 0.5
    assert len(states[-1]["runs"][0]["history"]) == 2
    assert spec.key in [k for _, k in pretrain_choices()]
    states = list(TrainService(explorer).transfer_stream(make_transfer(spec.key, "digits", 1, 0), poll=0.2))
    final = states[-1]
    name = final["model"]
    assert final["done"] and name.startswith(PREFIX) and [r["label"] for r in final["runs"]] == ["AdamW", "SAM ρ=0.05"]
    assert name in [v for _, v in explorer.model_choices()]
    assert "Adam+repvgg" in explorer.describe(name)
    ans = explorer.compress(name, make_setting("magnitude", 0.5))
    assert [a["role"] for a in ans["arms"].values()] == ["plain", "craft"]
    for arm, rho in zip(ans["arms"].values(), (0.0, 0.05)):
        path = get_transfer(spec, "digits", 1, sam_rho=rho, seed=0, progress=False)  # cached: the same checkpoint
        assert path.name == arm["checkpoint"]
        model = craftlab.load_checkpoint(path)
        data = craftlab.load_data("digits", model=model)
        assert arm["fp_accuracy"] == craftlab.evaluate(model, data.test)["accuracy"]
    with pytest.raises(ValueError, match="not a fine-tuning run from a pretraining run|no craftlab.json|checkpoint"):
        explorer.resolve(name + "x")
    again = list(TrainService(explorer).transfer_stream(make_transfer(spec.key, "digits", 1, 0), poll=0.2))
    assert len(again) == 1 and all(r["cached"] for r in again[0]["runs"])  # cached: nothing trains twice


@pytest.mark.parametrize("kw,message", [
    (dict(model="resnet-50"), "unknown model to pretrain"),
    (dict(optimizer="lion"), "unknown optimizer 'lion'"),
    (dict(transform="expnd"), "did you mean 'expand'"),
    (dict(model="vit-tiny", transform="repvgg"), "does not apply to any layer"),
    (dict(epochs=0), "epochs must be a whole number"),
    (dict(sam_rho=-0.1), "rho must be in"),
])
def test_bad_pretrain_requests_are_named(kw, message):
    from craftlab_app.train.service import make_pretrain_spec

    with pytest.raises(ValueError, match=message):
        make_pretrain_spec(**{"model": "resnet-tiny", **kw})


def test_bad_transfer_requests_are_named():
    from craftlab_app.train.service import make_transfer

    with pytest.raises(ValueError, match="unknown pretrained run 'nope'"):
        make_transfer("nope")


# ----------------------------------------------------------------------------------------------------- issue 15

def test_batch_size_keeps_default_run_keys():
    from dataclasses import asdict

    from craftlab.train.runs import RunSpec

    old = RunSpec("vit-tiny", epochs=3, sam_rho=0.05)
    assert old.key == "vit-tiny-digits-adamw+sam0.05-e3-s0" and "batch_size" not in old.record()
    assert make_run_spec("vit-tiny", "digits", "adamw", 0.05, False, 3, 0, None, 64) == old  # the default: same run
    assert make_run_spec("vit-tiny", "digits", "adamw", 0.05, False, 3, 0, None, "").key == old.key
    small = make_run_spec("vit-tiny", "digits", "adamw", 0.05, False, 3, 0, None, 32)
    assert small.key == "vit-tiny-digits-adamw+sam0.05-b32-e3-s0"
    defaults = ("sam_mode", "amp")  # not recorded when they are the default
    assert small.record() == {k: v for k, v in asdict(small).items() if k not in defaults}
    with pytest.raises(ValueError, match="batch size must be a whole number"):
        make_run_spec("vit-tiny", batch_size=0)


def test_sharpness_gap_and_scatter(explorer):
    from craftlab_app.explore.sharpness import MEASURES

    setting = make_setting("magnitude", 0.5, 4, 4)
    explorer.sharpness(MODEL)
    explorer.compress(MODEL, setting)
    table = explorer.sharpness_table(MODEL, setting)
    seed0 = table[table["seed"] == 0].set_index("role")
    sharp = {a["role"]: a for a in explorer.sharpness(MODEL).values()}
    ans = {a["role"]: a for a in explorer.compress(MODEL, setting)["arms"].values()}
    for role in ("plain", "craft"):
        assert seed0.at[role, "lambda_max"] == sharp[role]["lambda_max"]
        assert seed0.at[role, "accuracy_drop"] == pytest.approx(ans[role]["accuracy_drop"])
    tag = "[vit-tiny · W4A4]"
    gap = figs.sharpness_gap_figure(table, tag, MEASURES)
    bars = gap.data[0]
    m = table.groupby("role")[list(MEASURES)].mean()
    expect = [100 * (m.at["craft", k] - m.at["plain", k]) / abs(m.at["plain", k]) for k in MEASURES]
    assert list(bars.y) == pytest.approx(expect) and tag in gap.layout.title.text
    assert "smaller = flatter" in gap.layout.title.text
    sc = figs.sharpness_scatter(table, "trace", MEASURES["trace"], tag)
    assert tag in sc.layout.title.text and "Spearman" in sc.layout.title.text
    assert sum(len(tr.x) for tr in sc.data if tr.mode == "markers") == len(table)


def test_a_compensation_on_a_batchnorm_model_is_shown_beside_the_cheap_fix(explorer):
    """Issue 19: on a CNN, BN re-estimation fixes the same per-channel error as QwT/QwT-v2, so the cards show it
    beside the compensation; checked against the core's own compress + evaluate of the same checkpoints."""
    ans = explorer.compress("resnet-tiny", "W4A4 + QwT-v2")
    for la in explorer.arms("resnet-tiny"):  # the arms' checkpoints and the app's own test / calibration data
        cheap = ans["arms"][la.arm.name]["cheap_baseline"]
        assert cheap["label"] == "W4A4 +BN"
        model = craftlab.load_checkpoint(la.path)
        want = craftlab.evaluate(craftlab.compress(model, setting="W4A4 +BN", calib=la.ctx.calib), la.ctx.test)
        assert cheap["accuracy"] == want["accuracy"]
    card, _ = panels.cards(ans, tag_model="resnet-tiny")
    assert "the cheap fix of the same error, **W4A4 +BN**" in card
    assert "cheap_baseline" not in next(iter(explorer.compress(MODEL, "W4A4 + QwT-v2")["arms"].values()))


def test_bn_with_qwt_v2_on_a_cnn_is_said_in_the_cards_not_in_the_log(explorer, recwarn):
    """compress() warns that BN re-estimation and QwT-v2 undo each other on a CNN; the app says it under the cards
    and keeps the server log free of the warning."""
    from craftlab.compression.pipeline import BN_QWT2_CLASH

    ans = explorer.compress("resnet-tiny", "W4A4 +BN + QwT-v2")
    card, _ = panels.cards(ans, tag_model="resnet-tiny", bn_used=True)
    assert BN_QWT2_CLASH in card
    assert not [w for w in recwarn if BN_QWT2_CLASH[:40] in str(w.message)]
    plain, _ = panels.cards(explorer.compress("resnet-tiny", "W4A4 + QwT-v2"), tag_model="resnet-tiny", bn_used=False)
    assert BN_QWT2_CLASH not in plain


def test_the_learn_tab_reads_the_claims_ledger():
    from craftlab_app.learn.texts import LEARN, learn_text

    from craftlab.analysis import ledger

    text = learn_text()
    assert text.startswith(LEARN)
    df = ledger.read_ledger()
    if df is None:
        assert "python -m benchmarks.run claims" in text
    else:  # every claim's sentence, with its verdict, as the ledger states it
        for claim_id in df["id"]:
            assert ledger.verdict_line(claim_id, df) in text
