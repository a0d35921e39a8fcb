"""Registries of method families: names listed without importing anything, methods found by file name, your own
method registered from anywhere and used by the library like a built-in one."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

import craftlab
from craftlab.compression.scorers import Scorer
from craftlab.registry import COMPENSATION_METHODS, PRUNE_SCORERS, Registry
from craftlab.settings import make_setting, parse_setting


def test_names_are_listed_without_importing_a_method_or_torch():
    code = ("import sys; from craftlab.registry import PRUNE_SCORERS, COMPENSATION_METHODS as C; "
            "print(PRUNE_SCORERS.names(), C.names()); "
            "print(sorted(m for m in sys.modules if m.startswith('torch') or m.count('.') == 3))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["('magnitude', 'random', 'wanda') ('qwt', 'qwt-v2')", "[]"]  # no method module, no torch


def test_method_modules_are_light_to_import():
    """A method's module (its label, aliases, defaults) loads without torch: the CLI and settings read them."""
    code = ("import sys; from craftlab.registry import PRUNE_SCORERS, COMPENSATION_METHODS as C, SAM_MODES_REGISTRY "
            "as S; PRUNE_SCORERS.all(); C.all(); S.all(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_names_say_what_exists():
    with pytest.raises(ValueError, match="unknown pruning method 'wand'.*wanda"):
        PRUNE_SCORERS.get("wand")
    with pytest.raises(ValueError, match="pruning method"):
        craftlab.prune(torch.nn.Sequential(torch.nn.Linear(4, 4)), 0.5, method="snip")


def test_a_registered_score_is_used_like_a_built_in_one():
    """Your own score, registered from anywhere: prune(), make_setting() and the choices list it; |W| registered
    again under another name prunes exactly what magnitude prunes."""

    @PRUNE_SCORERS.register("abs-copy")
    @dataclass(frozen=True)
    class AbsCopy(Scorer):
        default_scope = "layer"

        def score(self, layer, weight, input_norm=None, generator=None):
            return weight.abs()

    try:
        assert "abs-copy" in PRUNE_SCORERS.names() and "abs-copy" in PRUNE_SCORERS
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
        mine = craftlab.prune(model, 0.5, method="abs-copy", targets="all")
        ref = craftlab.prune(model, 0.5, method="magnitude", scope="layer", targets="all")
        for a, b in zip(mine.parameters(), ref.parameters()):
            assert torch.equal(a, b)
        assert mine.craftlab_compression["prune"]["scope"] == "layer"  # the score's default scope
        assert make_setting("abs-copy", 0.5).label() == "abs-copy 50%"
        with pytest.raises(ValueError, match="registered already"):
            PRUNE_SCORERS.register("abs-copy")(type("Other", (Scorer,), {}))
    finally:
        PRUNE_SCORERS._entries.pop("abs-copy", None)
    assert "abs-copy" not in PRUNE_SCORERS.names()


def test_compensation_labels_and_spellings_come_from_the_method():
    qwt2 = COMPENSATION_METHODS.get("qwt-v2")
    assert qwt2.label == "QwT-v2" and "cwac" in qwt2.aliases and qwt2.foldable
    assert COMPENSATION_METHODS.get("qwt").default_target == "same-input"
    s = make_setting("magnitude", 0.5, 4, 4, compensation="cwac")
    assert s.compensation == "qwt-v2" and s.label() == "magnitude 50% + W4A4 + QwT-v2"
    assert parse_setting(s.label()) == s


def test_a_registry_checks_its_names():
    reg: Registry = Registry("widget", "craftlab.compression.scorers")
    assert reg.names() == PRUNE_SCORERS.names()  # built-ins are the package's files
    with pytest.raises(ValueError, match="unknown widget"):
        reg.get("nothing")


def test_sam_modes_come_from_their_modules():
    from craftlab.registry import SAM_MODES_REGISTRY
    from craftlab.train.sam import SAM, SAM_MODES, parse_sam_mode

    assert SAM_MODES_REGISTRY.names() == ("looksam", "msam", "random", "rwp", "sam")
    assert SAM_MODES == {"looksam": 5, "msam": None, "random": 0.5, "rwp": None, "sam": None}
    assert parse_sam_mode("looksam:3").options() == {"mode": "looksam", "interval": 3}
    with pytest.raises(ValueError, match="'looksam\\[:K\\]'.*'random\\[:F\\]'"):
        parse_sam_mode("lookahead")
    with pytest.raises(ValueError, match="interval must be a positive integer"):
        parse_sam_mode("looksam:2.5")
    opt = SAM([torch.nn.Parameter(torch.ones(2))], torch.optim.SGD, mode="looksam", interval=4, lr=0.1)
    assert opt.rule.interval == 4 and opt.rule.alpha == 0.7


# ------------------------------------------------------------------------------------------ quantization recipes


def test_recipes_are_listed_default_first_and_read_without_torch():
    """settings, the CLI and the app read names, labels, aliases and range methods from the recipe modules, which
    load without torch."""
    code = ("import sys; from craftlab.registry import QUANT_RECIPES as Q; from craftlab import settings; "
            "print(Q.ordered(), Q.choices(), settings.RECIPES, settings.QUANT_METHODS); "
            "print(settings.parse_recipe(' RepQ-ViT '), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["('uniform', 'repq') [('uniform', 'uniform'), ('RepQ-ViT', 'repq')] ('uniform', 'repq') "
                   "{'uniform': ('minmax', 'percentile', 'mse'), 'repq': ('repq', 'minmax')}", "repq False"]


def test_recipe_options_default_as_their_quantizers_do():
    """A recipe's dataclass fields are its options: their defaults are the backend's (one truth, not two)."""
    import inspect

    from craftlab.compression import quant, vit_quant
    from craftlab.registry import QUANT_RECIPES

    for name, fn in (("uniform", quant.quantize), ("repq", vit_quant.quantize_vit)):
        how = QUANT_RECIPES.get(name)
        params = inspect.signature(fn).parameters
        assert {o: params[o].default for o in how.options()} == how().config(), name


def test_a_registered_recipe_quantizes_exactly_like_the_built_in_one_it_copies():
    """Your own recipe, registered from a test: quantize(), compress(), make_setting()/parse_setting() and the
    CLI's choices take it; a copy of ``uniform`` with another name gives the same model bit for bit."""
    from craftlab import settings
    from craftlab.cli import build_parser
    from craftlab.compression.recipes import QUANT_RECIPES
    from craftlab.compression.recipes.uniform import Uniform

    @QUANT_RECIPES.register("uniform-copy")
    @dataclass(frozen=True)
    class UniformCopy(Uniform):
        label = "uniform (copy)"
        aliases = ("copy",)

    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                                    torch.nn.Linear(8, 3))
        calib = [(torch.randn(16, 8), torch.zeros(16, dtype=torch.long))]
        x = torch.randn(5, 8)
        ref = craftlab.quantize(model, 4, 8, calib=calib, method="mse")
        for mine in (craftlab.quantize(model, 4, 8, calib=calib, method="mse", recipe="uniform-copy"),
                     craftlab.compress(model, setting="W4A8 uniform-copy mse", calib=calib)):
            assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), ref.state_dict().values()))
            assert torch.equal(mine(x), ref(x))
        s = make_setting("none", 0, 4, 8, recipe="COPY", quant_method="mse")
        assert s.recipe == "uniform-copy" and s.label() == "W4A8 uniform-copy mse" and parse_setting(s.label()) == s
        assert s.describe() == "W4A8 uniform-copy (uniform (copy)) mse"
        assert settings.RECIPES[0] == "uniform" and "uniform-copy" in settings.RECIPES
        assert ("uniform (copy)", "uniform-copy") in QUANT_RECIPES.choices()
        args = build_parser()[0].parse_args(["compress", "--checkpoint", "c", "--w-bits", "4", "--recipe",
                                             "uniform-copy"])
        assert args.recipe == "uniform-copy"  # the choices are read from the registry when the parser is built
        with pytest.raises(ValueError, match=r"percentile belong\(s\) to recipe 'uniform', not to recipe 'repq'"):
            craftlab.quantize(model, 4, 8, calib=calib, recipe="repq", percentile=99.0)
    finally:
        QUANT_RECIPES._entries.pop("uniform-copy", None)
    assert "uniform-copy" not in settings.RECIPES
    with pytest.raises(ValueError, match="unknown quantization recipe 'uniform-copy'"):
        make_setting("none", 0, 4, 8, recipe="uniform-copy")
