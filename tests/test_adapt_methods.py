"""craftlab.adapt's entry points: adapt_model for every method (LoRA through peft, full fine-tuning with and without
SAM), the on-disk cache inside training, the comparison table, the K-way timing and the ``craftlab adapt`` CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import craftlab
from craftlab.adapt import recipes


def test_lora_trains_adapters_and_head_only(vit, small, unchanged):
    pytest.importorskip("peft")
    from craftlab.adapt.baselines import lora_model

    x, _ = next(iter(small.test))
    lm = lora_model(vit, rank=4)
    torch.testing.assert_close(lm(x), vit(x), rtol=0, atol=1e-6)  # B = 0: a no-op until it trains
    names = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "modules_to_save" in n for n in names)
    assert sum("lora_A" in n for n in names) == 4  # one qkv per block
    with unchanged(vit):
        res = recipes.adapt_model(vit, small, "lora", epochs=1, lora_rank=2)
    assert res.trainable_params == 4 * 2 * (64 + 3 * 64) + 64 * 10 + 10
    assert craftlab.evaluate(res.model, small.test)["accuracy"] == pytest.approx(res.metrics["test_accuracy"])


@pytest.mark.parametrize("sam_rho", [0.0, 0.05])
def test_full_finetuning_trains_everything(vit, small, unchanged, sam_rho):
    with unchanged(vit):
        res = recipes.adapt_model(vit, small, "full", epochs=1, sam_rho=sam_rho)
    assert res.trainable_params == sum(p.numel() for p in vit.parameters())
    assert res.config["sam_rho"] == sam_rho and len(res.history) == 1


def test_disk_cache_inside_training_skips_the_backbone(vit, small, tmp_path):
    first = recipes.adapt_model(vit, small, "linear", epochs=2, cache=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3  # train, val, test
    calls = []
    hook = vit.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = recipes.adapt_model(vit, small, "linear", epochs=2, cache=tmp_path)
    finally:
        hook.remove()
    assert calls == []
    assert again.metrics == first.metrics
    online = recipes.adapt_model(vit, small, "linear", epochs=2)  # the backbone on every batch: same numbers
    assert online.metrics["test_accuracy"] == pytest.approx(first.metrics["test_accuracy"])
    for k in (1, 2):  # other taps get entries of their own under the default names (not a stale-entry error)
        recipes.adapt_model(vit, small, "miet", k=k, epochs=1, cache=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 9


def test_compare_methods_table(vit, small):
    from craftlab.adapt.methods import ARMS, LAST, MIET
    from craftlab.studies.adapt import compare_methods

    arms = {k: ARMS[k] for k in ("linear probe", LAST, MIET)}
    df = compare_methods(vit, small, arms=arms, seeds=[0, 1], epochs=1, gap=2, k=2)
    assert list(df["arm"]) == ["linear probe"] * 2 + [LAST] * 2 + [MIET] * 2
    per_arm = df.groupby("arm").first()
    assert per_arm.loc[LAST, "memory_bytes"] > per_arm.loc["linear probe", "memory_bytes"] > 0
    assert per_arm.loc["linear probe", "bytes_per_image"] < per_arm.loc[MIET, "bytes_per_image"] \
        < per_arm.loc[LAST, "bytes_per_image"]
    assert df["test_accuracy"].between(0, 1).all() and (df["time_per_epoch_s"] > 0).all()


def test_kway_speedup_counts_backbone_passes(vit, small):
    from craftlab.studies.adapt import kway_speedup

    df = kway_speedup(vit, small, ks=(1, 3), gap=2)
    batches = -(-len(small.train_set) // small.batch_size)
    assert list(df["backbone_passes_parallel"]) == [batches, batches]
    assert list(df["backbone_passes_sequential"]) == [batches, 3 * batches]
    with pytest.raises(ValueError, match="K must be >= 1"):
        kway_speedup(vit, small, ks=(0,))


def _cli(argv):
    from craftlab.cli import adapt as cli

    p = argparse.ArgumentParser(prog="craftlab")
    cli.add_parser(p.add_subparsers(dest="command"))
    return cli.run(p.parse_args(argv))


def test_cli_train_json_and_errors(capsys):
    assert _cli(["adapt", "train", "--method", "last", "--gap", "2", "--epochs", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "last" and out["config"]["taps"] == [0, 2, 4] and 0 <= out["test_accuracy"] <= 1
    with pytest.raises(ValueError, match="does not divide"):
        _cli(["adapt", "train", "--method", "last", "--gap", "3", "--epochs", "1"])
    with pytest.raises(ValueError, match="below the feature width"):
        _cli(["adapt", "search", "--method", "miet", "--rank", "8", "64", "--epochs", "1"])


def test_cli_bytes_and_search(capsys):
    assert _cli(["adapt", "bytes", "--k", "2", "--gap", "2", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["MIET"]["shape"] == [17, 64] and rows["full fine-tuning"]["once_bytes"] > 100_000
    assert _cli(["adapt", "search", "--method", "linear", "--lr", "0.01", "0.1", "--epochs", "1",
                 "--cache", "memory"]) == 0
    out = capsys.readouterr().out
    assert "K = 2 networks" in out and "best" in out
    # the choices come from the method registry; a method that trains through the backbone cannot be searched
    # K-way, and the command says so before it loads anything
    with pytest.raises(ValueError, match="K-way search trains side networks"):
        _cli(["adapt", "search", "--method", "lora", "--epochs", "1"])


def test_the_arms_table_is_the_registry_s():
    """ARMS is derived from the method modules: every arm's label is its config's label, every method has an arm,
    and the arms carry the labels the reference table and the ledger use."""
    from craftlab.adapt.methods import ARMS, LAST, LORA, MIET, arms_table, method
    from craftlab.registry import ADAPT_METHODS

    assert set(ADAPT_METHODS.names()) == {"full", "last", "linear", "lora", "miet"} == {a["method"] for a in
                                                                                        ARMS.values()}
    for label, kw in ARMS.items():
        kw = dict(kw)
        assert method(kw.pop("method")).configure(kw).label(4) == label
    assert (LORA, LAST, MIET) == ("LoRA (r=4, qkv)", "LAST (g=1, m=4)", "MIET (k=4)")
    vitb = arms_table(depth=12)  # the same arms labelled for a 12-block backbone
    assert vitb["LAST (g=1, m=12)"] == ARMS[LAST] and vitb["MIET (k=12)"] == ARMS[MIET]
    with pytest.raises(ValueError, match="has no option"):
        recipes.configure("last", kk=3)
    with pytest.raises(ValueError, match="adaptation method"):
        recipes.configure("lastt")


def test_a_method_registered_from_a_test_joins_the_arms_table_and_trains(vit, small, unchanged):
    """Adding an adaptation method is one class: it appears in ARMS (after the built-in ones), adapt_model trains
    it with the shared recipe, and compare_methods measures it."""
    from dataclasses import dataclass

    from craftlab.adapt.methods import ARMS, FinetuneMethod
    from craftlab.registry import ADAPT_METHODS
    from craftlab.studies.adapt import compare_methods

    @dataclass(frozen=True)
    class HeadOnly(FinetuneMethod):
        """Only the classifier trains; the backbone is frozen."""

        default_lr = 3e-2
        arms = ({}, {"width": 2})
        width: int = 1  # an option of its own (labels only)

        def label(self, depth: int = 4) -> str:
            return f"head only (x{self.width})"

        def prepare(self, model, seed=0):
            import copy

            net = copy.deepcopy(model)
            head = net.get_classifier()
            for p in net.parameters():
                p.requires_grad_(False)
            for p in head.parameters():
                p.requires_grad_(True)
            return net

    ADAPT_METHODS.register("head-only")(HeadOnly)
    try:
        assert list(ARMS)[-2:] == ["head only (x1)", "head only (x2)"]
        assert ARMS["head only (x2)"] == {"method": "head-only", "width": 2}
        with unchanged(vit):
            res = recipes.adapt_model(vit, small, "head-only", epochs=1, width=2)
        head = vit.get_classifier()
        assert res.trainable_params == sum(p.numel() for p in head.parameters())
        assert res.config["lr"] == 3e-2 and res.metrics["test_accuracy"] > 0.0
        trained = dict(res.model.named_parameters())
        for name, p in vit.named_parameters():  # the backbone kept its weights, the head moved
            moved = not torch.equal(p, trained[name])
            assert moved == (p.data_ptr() in {q.data_ptr() for q in head.parameters()}), name
        df = compare_methods(vit, small, arms={"head only (x1)": ARMS["head only (x1)"]}, seeds=[0], epochs=1)
        assert df["trainable_params"].tolist() == [res.trainable_params] and df["memory_bytes"].iloc[0] > 0
        with pytest.raises(ValueError, match="has no option"):
            recipes.adapt_model(vit, small, "head-only", epochs=1, depth=3)
    finally:
        ADAPT_METHODS.unregister("head-only")
    assert "head only (x1)" not in ARMS
    with pytest.raises(ValueError, match="built in"):
        ADAPT_METHODS.unregister("last")
