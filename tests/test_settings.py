"""The one compression setting: parsing, validation, N:M reading, labels and round trips."""

from __future__ import annotations

import pytest

from craftlab.settings import (
    DEFAULT_SETTING,
    bits_label,
    make_setting,
    parse_bits,
    parse_compensation,
    parse_pattern,
    parse_setting,
)


@pytest.mark.parametrize("value,expected", [
    (4, 4), ("4", 4), (" 8 ", 8), (16, 16), (4.0, 4), (None, None), ("", None), ("None", None), ("float", None),
    ("fp32", None), ("FP", None),
])
def test_bits_spellings(value, expected):
    assert parse_bits(value) == expected


@pytest.mark.parametrize("value", [1, "1", 9, 32, "32", 4.5, "abc", True, -4, "4bit"])
def test_bad_bits_are_errors_naming_the_value(value):
    with pytest.raises(ValueError, match="w_bits must be"):
        parse_bits(value, "w_bits")


@pytest.mark.parametrize("text,keep,m", [("2:4", 2, 4), ("1:4", 1, 4), (" 4 : 8 ", 4, 8), ("keep 1 of 4", 1, 4),
                                         ("zero 3 of 4", 1, 4), ("zero 2 of 4", 2, 4)])
def test_nm_means_n_kept_of_m(text, keep, m):
    assert parse_pattern(text) == (keep, m)


@pytest.mark.parametrize("text", ["4:2", "0:4", "4:4", "2-4", "keep 4 of 4", "zero 4 of 4"])
def test_impossible_patterns(text):
    with pytest.raises(ValueError, match="N:M"):
        parse_pattern(text)


def test_nm_sparsity_is_one_minus_n_over_m():
    assert make_setting("1:4").sparsity == 0.75
    assert make_setting("N:M", 0.9, pattern="2:4").sparsity == 0.5  # the slider value is ignored for N:M
    s = make_setting("2:8", nm_score="wanda")
    assert (s.method, s.pattern, s.sparsity, s.nm_score) == ("N:M", "2:8", 0.75, "wanda")
    assert "keep 2 of 8" in s.describe()


def test_equivalent_inputs_normalize_to_equal_settings():
    assert make_setting("magnitude", 0.0) == DEFAULT_SETTING  # no sparsity: no pruning
    assert make_setting("none", 0.7) == DEFAULT_SETTING
    assert make_setting("magnitude", 0.5, "4", "float") == make_setting("magnitude", 0.5, 4.0, None)
    # granularity of a side that is not quantized is irrelevant, so it is normalized away
    assert make_setting("wanda", 0.5, None, 8, granularity="tensor") == make_setting("wanda", 0.5, None, 8)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="wanda", sparsity=1.0), "sparsity"), (dict(method="wanda", sparsity=-0.1), "sparsity"),
    (dict(method="wanda", sparsity="lots"), "sparsity"), (dict(method="snip", sparsity=0.5), "pruning method"),
    (dict(method="magnitude", sparsity=0.5, granularity="row"), "granularity"),
    (dict(method="2:4", nm_score="snip"), "N:M score"),
])
def test_bad_input_names_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_setting(**kwargs)


@pytest.mark.parametrize("setting,label", [
    (DEFAULT_SETTING, "FP32"),
    (make_setting("magnitude", 0.5), "magnitude 50%"),
    (make_setting("2:4", nm_score="wanda"), "wanda 2:4"),
    (make_setting("none", 0, 4, 8), "W4A8"),
    (make_setting("none", 0, 4, None), "W4AFP"),
    (make_setting("wanda", 0.7, 4, 4), "wanda 70% + W4A4"),
    (make_setting("none", 0, 4, 8, granularity="tensor"), "W4A8 per-tensor"),
    (make_setting("magnitude", 0.5, recalibrate_bn=True), "magnitude 50% +BN"),
    (make_setting("none", 0, 4, 4, recipe="repq"), "W4A4 repq"),
    (make_setting("none", 0, 4, 4, recipe="repq", compensation="qwt-v2"), "W4A4 repq + QwT-v2"),
    (make_setting("none", 0, 8, 8, compensation="qwt"), "W8A8 + QwT"),
    (make_setting("magnitude", 0.5, compensation="qwt-v2"), "magnitude 50% + QwT-v2"),
    (make_setting("2:4", nm_score="wanda", compensation="qwt-v2"), "wanda 2:4 + QwT-v2"),
    (make_setting("2:4", w_bits=4, a_bits=4, nm_score="wanda", recalibrate_bn=True, compensation="qwt-v2"),
     "wanda 2:4 +BN + W4A4 + QwT-v2"),
    (make_setting("wanda", 0.7, 4, 8, granularity="tensor", recipe="repq", compensation="qwt"),
     "wanda 70% + W4A8 per-tensor repq + QwT"),
])
def test_labels_and_their_inverse(setting, label):
    assert setting.label() == label
    assert parse_setting(label) == setting


def test_parse_setting_accepts_dicts_and_settings():
    s = make_setting("wanda", 0.7)
    assert parse_setting(s) is s
    assert parse_setting({"method": "wanda", "sparsity": 0.7}) == s
    # the sweep's older dict form (kind + pattern) still reads
    want = make_setting("2:4", nm_score="wanda")
    assert parse_setting({"kind": "prune", "method": "wanda", "pattern": "2:4"}) == want
    with pytest.raises(ValueError, match="cannot read"):
        parse_setting("half the weights")


def test_compress_kwargs():
    assert make_setting("2:4", nm_score="wanda").compress_kwargs()["method"] == "wanda"
    assert make_setting("2:4").compress_kwargs()["pattern"] == "2:4"
    kw = make_setting("magnitude", 0.5, 4, 8).compress_kwargs()
    assert (kw["method"], kw["sparsity"], kw["w_bits"], kw["a_bits"]) == ("magnitude", 0.5, 4, 8)
    assert "pattern" not in kw and "recalibrate_bn" not in kw
    assert make_setting("magnitude", 0.5, recalibrate_bn=True).compress_kwargs()["recalibrate_bn"] is True


def test_bits_label():
    assert bits_label(4, 8) == "W4A8" and bits_label(None, 8) == "WFPA8"


def test_default_recipe_and_no_compensation_keep_todays_labels_keys_and_kwargs():
    s = make_setting("wanda", 0.7, 4, 8)
    assert (s.recipe, s.compensation) == ("uniform", None)
    assert s.label() == "wanda 70% + W4A8" and "recipe" not in s.key() and "compensation" not in s.key()
    assert "recipe" not in s.compress_kwargs() and "compensation" not in s.compress_kwargs()
    assert make_setting("wanda", 0.7, 4, 8, recipe="uniform", compensation="none") == s
    r = make_setting("wanda", 0.7, 4, 8, recipe="repq", compensation="qwt-v2")
    assert '"recipe": "repq"' in r.key() and '"compensation": "qwt-v2"' in r.key() and r.key() != s.key()
    kw = r.compress_kwargs()
    assert (kw["recipe"], kw["compensation"]) == ("repq", "qwt-v2")


@pytest.mark.parametrize("spelling,expected", [("QwT", "qwt"), ("qwt-v2", "qwt-v2"), ("QwT-V2", "qwt-v2"),
                                               ("CWAC", "qwt-v2"), ("qwtv2", "qwt-v2"), ("none", None), ("", None),
                                               (None, None), (float("nan"), None)])
def test_compensation_spellings(spelling, expected):
    assert parse_compensation(spelling) == expected


def test_recipe_is_normalized_away_without_quantization():
    # like a granularity, the recipe of an unquantized model is irrelevant
    assert make_setting("magnitude", 0.5, recipe="repq") == make_setting("magnitude", 0.5)
    assert make_setting("none", 0, 4, 4, recipe="REPQ").recipe == "repq"
    assert make_setting("none", 0, 4, None, recipe="repq").label() == "W4AFP repq"


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="none", w_bits=4, recipe="repqq"), "quantization recipe 'repqq'.*did you mean 'repq'"),
    (dict(method="none", w_bits=4, compensation="qwt3"), "compensation 'qwt3'"),
    (dict(method="none", compensation="qwt"), "needs a compressed model"),
    (dict(method="magnitude", sparsity=0.0, compensation="qwt-v2"), "needs a compressed model"),
    (dict(method="none", w_bits=4, a_bits=4, recipe="repq", a_granularity="channel"), "per tensor"),
    (dict(method="magnitude", sparsity=0.5, recalibrate_bn=True, compensation="qwt-v2"), "recalibrate_bn and "
     "compensation both correct"),
])
def test_bad_recipe_or_compensation_names_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_setting(**kwargs)


@pytest.mark.parametrize("label,match", [("W4A4 fancy", "quantization recipe 'fancy'"), ("QwT", "needs a compressed"),
                                         ("W4A4 + QwT-v3", "cannot read")])
def test_bad_labels(label, match):
    with pytest.raises(ValueError, match=match):
        parse_setting(label)


def test_dict_round_trip_with_recipe_and_compensation():
    s = make_setting("2:4", w_bits=4, a_bits=4, nm_score="wanda", recipe="repq", compensation="qwt-v2")
    assert parse_setting(s.as_dict()) == s
    assert parse_setting(s.label()) == s and parse_setting(s.describe().replace(" (RepQ-ViT)", "").replace(
        " (folded channel-wise affine)", "").replace(" (keep 2 of 4)", "")) == s


def test_scope_and_range_method_live_in_the_setting_and_its_label():
    """`--quant-method mse` used to get the minmax label: every option of a setting is in the Setting, its label
    and its key; defaults are dropped so equal settings compare (and cache) equal."""
    s = make_setting("magnitude", 0.5, 4, 8, scope="layer", quant_method="mse")
    assert s.label() == "magnitude 50% layer + W4A8 mse"
    assert parse_setting(s.label()) == s
    assert s.compress_kwargs()["scope"] == "layer" and s.compress_kwargs()["quant_method"] == "mse"
    rq = make_setting("none", 0, 4, 4, recipe="repq", quant_method="minmax")
    assert rq.label() == "W4A4 repq minmax" and parse_setting(rq.label()) == rq
    # the score's default scope and the recipe's default range method are no options: dropped
    assert make_setting("wanda", 0.5, scope="row") == make_setting("wanda", 0.5)
    assert make_setting("none", 0, 4, 8, quant_method="minmax") == make_setting("none", 0, 4, 8)
    assert make_setting("2:4", scope="layer").scope is None  # N:M is counted per group of M
    assert make_setting("none", 0, None, None, quant_method="mse").quant_method is None  # nothing quantized
    assert "scope" not in make_setting("magnitude", 0.5).key()  # keys of settings without them are unchanged
    with pytest.raises(ValueError, match="pruning scope"):
        make_setting("magnitude", 0.5, scope="tensor")
    with pytest.raises(ValueError, match="unknown method 'mse'.*range estimator of recipe 'uniform'"):
        make_setting("none", 0, 4, 4, recipe="repq", quant_method="mse")


def test_compress_follows_the_settings_scope_and_range_method():
    """compress(setting=s) equals the direct calls with the same options (an independent path)."""
    import torch

    import craftlab

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 4))
    calib = [torch.randn(32, 16)]
    s = make_setting("magnitude", 0.5, 4, None, scope="layer", quant_method="mse")
    got = craftlab.compress(model, setting=s, calib=calib)
    want = craftlab.quantize(craftlab.prune(model, 0.5, method="magnitude", scope="layer"), w_bits=4,
                             method="mse", calib=calib)
    x = torch.randn(8, 16)
    assert torch.equal(got(x), want(x))
    other = craftlab.compress(model, setting=make_setting("magnitude", 0.5, 4, None), calib=calib)
    assert not torch.equal(other(x), got(x))  # the options matter here, so the test can fail
    with pytest.raises(ValueError, match="give either setting= or scope"):
        craftlab.compress(model, setting=s, scope="global", calib=calib)
