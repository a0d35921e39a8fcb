"""The craftlab CLI end to end on digits, and its error messages."""

import json
import math
import subprocess
import sys

import pytest

from craftlab.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "craftlab.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "vit-sam"
    r = run("finetune", "--model", "vit-tiny", "--data", "digits", "--sam-rho", "0.05", "--epochs", "1",
            "--seed", "0", "--out", str(out), "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0.0 <= info["test_accuracy"] <= 1.0
    return out


def test_help_shows_examples():
    r = run("--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "craftlab compress" in r.stdout


def _commands():
    import argparse

    from craftlab.cli import build_parser

    parser, _ = build_parser()

    def walk(p, path):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, p
        for a in subs:
            for name, sub in a.choices.items():
                yield from walk(sub, [*path, name])

    return list(walk(parser, []))


def test_help_of_every_command_imports_no_torch():
    """`craftlab --help` and `craftlab CMD [SUB] --help` build the parser from light modules only (a fresh process:
    the test session has torch loaded already)."""
    cmds = [" ".join(path) for path, _ in _commands()]
    assert len(cmds) >= 15, cmds
    probe = ("import sys, contextlib, io\nfrom craftlab.cli import main\n"
             "for cmd in sys.argv[1:]:\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n"
             "        try:\n            main([*cmd.split(), '--help'])\n        except SystemExit:\n            pass\n"
             "heavy = sorted(m for m in ('torch', 'pandas', 'numpy', 'plotly', 'gradio', 'timm') if m in sys.modules)\n"
             "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", probe, "", *cmds], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_every_option_has_help_and_every_result_can_be_json():
    """One spelling per concept, documented: every option of every command says what it is; every command that
    prints results can print them as JSON (the app serves, it prints none)."""
    import argparse

    missing, no_json = [], []
    for path, p in _commands():
        for a in p._actions:
            if a.option_strings and a.help != argparse.SUPPRESS and not a.help:
                missing.append(f"craftlab {' '.join(path)} {max(a.option_strings, key=len)}")
        if path != ["app"] and not any("--json" in a.option_strings for a in p._actions):
            no_json.append(" ".join(path))
    assert not missing, missing
    assert not no_json, no_json


def test_an_old_spelling_still_works_but_is_not_shown(capsys):
    """`adapt --bits` became `--transfer-bits` (sweep's --bits are W,A pairs): scripts keep working."""
    from craftlab.cli import build_parser

    parser, _ = build_parser()
    old = parser.parse_args(["adapt", "train", "--method", "miet", "--bits", "4", "--rank", "8"])
    new = parser.parse_args(["adapt", "train", "--method", "miet", "--transfer-bits", "4", "--lsa-rank", "8"])
    assert (old.transfer_bits, old.lsa_rank) == (new.transfer_bits, new.lsa_rank) == (4, 8)
    default = parser.parse_args(["adapt", "train"])
    assert default.transfer_bits is None and default.lsa_rank is None
    r = run("adapt", "train", "--help")
    assert "--transfer-bits" in r.stdout and "--bits" not in r.stdout.replace("--transfer-bits", "")


def test_finetune_writes_checkpoint_with_recipe(checkpoint):
    meta = json.loads((checkpoint / "craftlab.json").read_text())
    assert meta["architecture"] == "vit-tiny" and meta["sam_rho"] == 0.05 and meta["optimizer"] == "adamw"
    assert meta["seed"] == 0 and meta["data"]["name"] == "digits" and len(meta["history"]) == 1


def test_compress_json(checkpoint, capsys):
    assert main(["compress", "--checkpoint", str(checkpoint), "--method", "wanda", "--sparsity", "0.5",
                 "--w-bits", "8", "--a-bits", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["accuracy"] <= 1 and 0 <= res["fp_accuracy"] <= 1
    assert res["sparsity_measured"] == pytest.approx(0.5, abs=1e-3)


def test_compress_saves_compressed_model(checkpoint, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["compress", "--checkpoint", str(checkpoint), "--pattern", "2:4", "--out", str(out)]) == 0
    import craftlab

    assert craftlab.sparsity_report(craftlab.load_checkpoint(out))["overall"] == pytest.approx(0.5)


def test_sweep_writes_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "sweep.csv"
    assert main(["sweep", "--checkpoint", str(checkpoint), "--methods", "magnitude", "--sparsities", "0.5",
                 "--patterns", "2:4", "--bits", "8,8", "4,none", "--out", str(out), "--quiet"]) == 0
    import pandas as pd

    df = pd.read_csv(out)
    assert len(df) == 1 + 2 + 2  # fp, 50%, 2:4, W8A8, W4
    assert (tmp_path / "sweep.json").exists()
    assert df.loc[df.kind == "fp", "accuracy"].item() == pytest.approx(df.fp_accuracy.iloc[0])


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--w-bits", "33"], "w_bits must be one of"),
    (["--a-bits", "1"], "a_bits must be one of"),
    (["--pattern", "4:2"], "impossible N:M pattern"),
])
def test_bad_input_is_one_clear_line(checkpoint, args, message, capsys):
    assert main(["compress", "--checkpoint", str(checkpoint), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_model_and_bad_checkpoint(tmp_path):
    r = run("finetune", "--model", "vit-tiniest", "--out", str(tmp_path / "x"))  # a real process: exit status 2
    assert r.returncode == 2 and "did you mean 'vit-tiny'" in r.stderr and "Traceback" not in r.stderr
    assert main(["compress", "--checkpoint", str(tmp_path)]) == 2


def test_sharpness_json(checkpoint, capsys):
    assert main(["sharpness", "--checkpoint", str(checkpoint), "--batch-size", "32", "--samples", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # lambda_max is the largest-magnitude eigenvalue: negative is possible away from a minimum
    assert res["batch_size"] == 32 and math.isfinite(res["lambda_max"]) and res["trace_stderr"] >= 0
    assert res["eps_sharpness"] > 0  # one SAM ascent step raises the loss


@pytest.mark.parametrize("kind,extra", [("plane", ["--steps", "5"]),
                                        ("compression", ["--w-bits", "4", "--steps", "5"])])
def test_landscape_writes_json_and_html(checkpoint, tmp_path, capsys, kind, extra):
    out = tmp_path / f"{kind}.json"
    assert main(["landscape", "--checkpoint", str(checkpoint), "--kind", kind, "--batch-size", "32", *extra,
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "loss" in data
    html = (tmp_path / f"{kind}.html").read_text()
    assert "plotly" in html.lower()


def test_landscape_compression_needs_a_setting(checkpoint, tmp_path, capsys):
    assert main(["landscape", "--checkpoint", str(checkpoint), "--kind", "compression", "--out",
                 str(tmp_path / "x.json")]) == 2
    assert "needs a compression" in capsys.readouterr().err


# ------------------------------------------------------------------------------ recipes and compensation


@pytest.mark.parametrize("extra,label", [(["--recipe", "repq", "--compensate", "qwt-v2"], "W4A4 repq + QwT-v2"),
                                         (["--compensate", "qwt"], "W4A4 + QwT")])
def test_compress_with_recipe_and_compensation(checkpoint, tmp_path, capsys, extra, label):
    out = tmp_path / "compressed"
    assert main(["compress", "--checkpoint", str(checkpoint), "--w-bits", "4", "--a-bits", "4", *extra, "--json",
                 "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    import craftlab

    # the saved model reads back as the compressed model: same test accuracy as the one just measured in memory
    with pytest.raises(craftlab.CheckpointError, match="load_compressed"):
        craftlab.load_checkpoint(out)
    back = craftlab.load_compressed(out)
    data = craftlab.load_data("digits", model=back)
    assert craftlab.evaluate(back, data.test)["accuracy"] == res["accuracy"]
    assert sum(p.numel() for p in back.parameters()) == res["params"]
    # compressing a compressed checkpoint again would stack the two: refused in one line
    assert main(["compress", "--checkpoint", str(out), "--w-bits", "8"]) == 2
    assert "already holds a compressed model" in capsys.readouterr().err

    fp_params = sum(p.numel() for p in craftlab.load_checkpoint(checkpoint).parameters())
    assert res["setting"] == label and 0 <= res["accuracy"] <= 1
    if "QwT-v2" in label:  # folded: not one parameter added
        assert res["params"] == fp_params and res["recipe"] == "repq" and res["compensation"] == "qwt-v2"
    else:  # a 64x64 + 64 side path in each of the 4 blocks
        assert res["params"] == fp_params + 4 * (64 * 64 + 64)


def test_compress_pruned_with_cwac_keeps_the_sparsity(checkpoint, capsys):
    assert main(["compress", "--checkpoint", str(checkpoint), "--sparsity", "0.5", "--compensate", "qwt-v2",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["setting"] == "magnitude 50% + QwT-v2" and res["sparsity_measured"] == pytest.approx(0.5, abs=1e-3)


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory):
    import craftlab

    model = craftlab.create_model("resnet-tiny", num_classes=10)
    return craftlab.save_checkpoint(model, tmp_path_factory.mktemp("cli") / "resnet", {"data": {"name": "digits"}})


@pytest.mark.parametrize("model,args,message", [
    ("vit", ["--compensate", "qwt"], "--compensate qwt needs something to compensate: give --w-bits/--a-bits"),
    ("vit", ["--sparsity", "0", "--compensate", "qwt-v2"], "needs something to compensate"),
    ("vit", ["--recipe", "repq", "--sparsity", "0.5"], "--recipe repq is a quantization recipe: give --w-bits"),
    ("vit", ["--recipe", "repq", "--w-bits", "4", "--quant-method", "mse"],
     "'mse' is a range estimator of recipe 'uniform'"),
    ("vit", ["--w-bits", "4", "--quant-method", "repq"], "unknown method 'repq'"),
    ("cnn", ["--recipe", "repq", "--w-bits", "4", "--a-bits", "4"],
     "recipe 'repq' (RepQ-ViT) quantizes timm Vision Transformers (ViT / DeiT) only, got ResNet"),
])
def test_bad_recipe_and_compensation_combos_are_one_clear_line(checkpoint, cnn_checkpoint, model, args, message,
                                                               capsys):
    ckpt = cnn_checkpoint if model == "cnn" else checkpoint
    assert main(["compress", "--checkpoint", str(ckpt), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_sweep_with_recipe_and_compensation(checkpoint, cnn_checkpoint, tmp_path, capsys):
    out = tmp_path / "qwt.csv"
    assert main(["sweep", "--checkpoint", str(checkpoint), "--methods", "magnitude", "--sparsities", "0.5",
                 "--patterns", "--bits", "4,4", "--recipe", "repq", "--compensate", "qwt-v2", "--out", str(out),
                 "--quiet"]) == 0
    import pandas as pd

    df = pd.read_csv(out)
    assert list(df.setting) == ["FP32", "magnitude 50%", "magnitude 50% + QwT-v2", "W4A4 repq", "W4A4 repq + QwT-v2"]
    assert list(df.compensation.fillna("-")) == ["-", "-", "qwt-v2", "-", "qwt-v2"]
    capsys.readouterr()
    assert main(["sweep", "--checkpoint", str(cnn_checkpoint), "--bits", "4,4", "--recipe", "repq", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "recipe 'repq'" in err and "ResNet" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--kind", "compression", "--w-bits", "4", "--recipe", "repq"], "with --recipe repq"),
    (["--kind", "compression", "--w-bits", "4", "--compensate", "qwt"], "use --compensate qwt-v2"),
    (["--kind", "plane", "--compensate", "qwt-v2"], "apply to --kind compression, not --kind plane"),
])
def test_landscape_rejects_what_has_no_weight_path(checkpoint, tmp_path, capsys, args, message):
    assert main(["landscape", "--checkpoint", str(checkpoint), *args, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_landscape_compression_path_with_folded_cwac(checkpoint, tmp_path, capsys):
    out = tmp_path / "path.json"
    assert main(["landscape", "--checkpoint", str(checkpoint), "--kind", "compression", "--w-bits", "4", "--a-bits",
                 "4", "--compensate", "qwt-v2", "--batch-size", "32", "--steps", "5", "--out", str(out)]) == 0
    assert "loss" in json.loads(out.read_text())


def test_threads_option_sets_torch_threads_and_rejects_bad_values(checkpoint, capsys):
    import torch

    from craftlab import threads

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "abc", "sharpness", "--checkpoint", str(checkpoint)]) == 2
        err = capsys.readouterr().err
        assert "threads must be a positive integer or 'auto'" in err and "Traceback" not in err
        r = run("--threads", "2", "sharpness", "--checkpoint", str(checkpoint), "--help")
        assert r.returncode == 0
        probe = ("import torch, sys; from craftlab.cli import main; "
                 "main(['--threads', '2', 'compress', '--checkpoint', sys.argv[1], '--sparsity', '0.5']); "
                 "print('THREADS', torch.get_num_threads())")
        r = subprocess.run([sys.executable, "-c", probe, str(checkpoint)], capture_output=True, text=True,
                           timeout=600, env={**__import__("os").environ, "CRAFTLAB_THREADS": "1"})
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == "THREADS 2"  # the explicit option beats the variable
    finally:
        threads._EXPLICIT.clear()
        torch.set_num_threads(before)
