"""One concept, one answer: the app, the CLI, sweep tables and the notebooks' helpers agree on a setting's
label and on a checkpoint's sharpness (same probe batch, same measure)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gradio")

from craftlab_app.explore.service import Explorer  # noqa: E402

import craftlab  # noqa: E402
from craftlab import experiments as ex  # noqa: E402
from craftlab.cli import main  # noqa: E402
from craftlab.settings import make_setting  # noqa: E402
from craftlab.train.runs import RunSpec, run_dir  # noqa: E402


def test_one_label_everywhere(digits):
    setting = make_setting("wanda", 0.7, 4, 4)
    model = craftlab.create_model("vit-tiny", num_classes=10)
    table = craftlab.sweep({"m": model}, digits, [setting, "W4A8", "magnitude 2:4"], progress=False)
    assert table["setting"].tolist() == ["wanda 70% + W4A4", "W4A8", "magnitude 2:4"]
    assert [ex.setting_label(r) for r in table.to_dict("records")] == table["setting"].tolist()
    assert ex.compress_kwargs("wanda 70% + W4A4") == setting.compress_kwargs()


def test_cli_and_app_report_the_same_sharpness(capsys):
    before = torch.get_num_threads()
    explorer = Explorer(epochs=1, sparsity_grid=(0.5,), bits_grid=(8,), probe_size=64, landscape_steps=5,
                        path_steps=9)
    try:
        app = {r["role"]: r for r in explorer.sharpness("vit-tiny").values()}["plain"]
    finally:
        explorer.close()
        torch.set_num_threads(before)
    path = run_dir(RunSpec(model="vit-tiny", data="digits", epochs=1, seed=0))
    assert main(["sharpness", "--checkpoint", str(path), "--batch-size", "64", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["batch_size"] == app["n_examples"] == 64
    for key in ("loss", "lambda_max", "trace", "eps_sharpness"):
        assert cli[key] == pytest.approx(app[key], rel=1e-4), key
