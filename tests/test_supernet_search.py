"""Supernet search (budget, Pareto front, cache), training loop and memory accounting, and the CLI."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import craftlab
from craftlab.measure.memory import SavedTensorMeter
from craftlab.supernet.build import build_supernet
from craftlab.supernet.search import evolutionary_search, pareto_front, search_budgets
from craftlab.supernet.train import train_supernet


def tiny_data(n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.5 + y.view(-1, 1, 1, 1).float() / 2
    return craftlab.from_tensors(x, y, batch_size=16, calib_size=16)


def tiny_supernet(lora="per-bit", **kw):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=4, embed_dim=16, depth=2,
                            num_heads=2, mlp_ratio=2.0).eval()
    return build_supernet(vit, tiny_data().calib, lora=lora, step_init="minmax", input_size=(1, 16, 16),
                          w_bits=(2, 4, 8), a_bits=(4, 8), **kw)


def test_search_respects_the_budget_and_returns_a_pareto_front():
    sn, data = tiny_supernet(depths=(1, 2)), tiny_data()
    refs = sn.references()
    low = sn.bitops(sn.space.smallest())
    budgets = [low, low * 1.05, (low + refs["W8A8"]) / 2, "8%"]  # the first: only the smallest subnet fits
    report = search_budgets(sn, data, budgets, population=8, generations=2, cache=False)
    assert len(report.results) == 4 and report.results[0].best["config"] == sn.space.canonical(sn.space.smallest())
    for r in report.results:
        assert r.best["bitops"] <= r.budget
        assert sn.bitops(r.best["config"]) == r.best["bitops"]
        assert r.best["accuracy"] == max(p["accuracy"] for p in report.points if p["bitops"] <= r.budget)
    assert report.results[2].budget == pytest.approx((low + refs["W8A8"]) / 2)
    assert report.results[3].budget == pytest.approx(0.08 * refs["FP32"])
    front = report.pareto
    assert front and all(a["bitops"] < b["bitops"] and a["accuracy"] < b["accuracy"] for a, b in zip(front, front[1:]))
    for p in report.points:  # nothing beats the front on both axes
        assert not any(q["bitops"] < p["bitops"] and q["accuracy"] > p["accuracy"] for q in front if p in front)
    table = report.table()
    assert list(table["bitops"]) == [r.best["bitops"] for r in report.results]


def test_search_results_are_cached_and_budget_errors_name_the_minimum():
    sn, data = tiny_supernet(), tiny_data()
    low = sn.bitops(sn.space.smallest())
    first = evolutionary_search(sn, data, low * 1.3, population=6, generations=1, seed=3)
    again = evolutionary_search(sn, data, low * 1.3, population=6, generations=1, seed=3)
    assert first.evaluated > 0 and again.evaluated == 0
    assert again.best["config"] == first.best["config"] and again.estimate == first.estimate
    with pytest.raises(ValueError, match=r"below the smallest subnet of this supernet: .* BitOPs \(.*% of FP32"):
        evolutionary_search(sn, data, low * 0.9)
    with pytest.raises(ValueError, match="budget must be"):
        search_budgets(sn, data, ["cheap"])


def test_pareto_front_by_hand():
    pts = [{"bitops": 1, "accuracy": 0.5}, {"bitops": 2, "accuracy": 0.4}, {"bitops": 3, "accuracy": 0.9},
           {"bitops": 3, "accuracy": 0.7}, {"bitops": 5, "accuracy": 0.9}]
    assert pareto_front(pts) == [pts[0], pts[2]]


def test_saved_tensor_meter_counts_saved_activations_once_and_not_parameters():
    w = torch.nn.Parameter(torch.randn(1000))
    x = torch.randn(1000, requires_grad=True)
    model = torch.nn.Linear(1, 1)
    model.w = w
    with SavedTensorMeter(model) as meter:
        y = x.exp()  # saves its result: 4000 bytes
        z = (y * w).sum()  # saves y (same storage, counted once) and w (a parameter: not counted)
        assert meter.current_bytes == 4000
        z.backward()
        del y, z
    assert meter.peak_bytes == 4000 and meter.current_bytes == 0


def test_train_supernet_copies_trains_and_lora_holds_less_than_full_weights():
    data = tiny_data()
    results = {}
    for lora in ("per-bit", None):
        sn = tiny_supernet(lora=lora)
        before = {k: v.clone() for k, v in sn.state_dict().items()}
        res = train_supernet(sn, data, epochs=2, max_steps=3, n_random=1)
        assert all(torch.equal(v, sn.state_dict()[k]) for k, v in before.items()), "the argument was changed"
        assert res.config["steps"] == 3 and res.history[-1]["val_accuracy_largest"] >= 0
        assert res.memory.saved_bytes > 0 and res.memory.optimizer_bytes > 0
        results[lora] = res.memory
    lora, full = results["per-bit"], results[None]
    assert lora.trainable_params < full.trainable_params
    assert lora.grad_bytes + lora.optimizer_bytes < full.grad_bytes + full.optimizer_bytes


def test_cli_search_on_a_checkpoint_and_a_budget_below_the_minimum(tmp_path, capsys):
    from craftlab.cli import main as craftlab_main

    def main(argv):
        return craftlab_main(["supernet", *argv])

    from craftlab.supernet.store import save_supernet

    model = craftlab.build_model("vit-tiny", num_classes=10)
    sn = build_supernet(model, [torch.randn(8, 1, 28, 28)], lora="shared", step_init="minmax", w_bits=(4, 8),
                        a_bits=(8,))
    save_supernet(sn, tmp_path / "sn", {"spec": {"data": "digits"}})
    assert main(["search", "--checkpoint", str(tmp_path / "sn"), "--budget", "1M"]) == 2
    err = capsys.readouterr().err
    assert "below the smallest subnet" in err and "% of FP32" in err
    assert main(["search", "--checkpoint", str(tmp_path / "sn"), "--budget", "7%", "--population", "4",
                 "--generations", "1", "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "budget" in out and "W/A bits per layer" in out and (tmp_path / "r.json").exists()
    assert main(["train", "--w-bits", "2,9"]) == 2
    assert "bit-widths from 2..8" in capsys.readouterr().err
