"""Issue 26, item 4: the guided tour's words come from the paired over-seeds verdict (no preset claims what its
verdict does not support), and the seed-0 line is secondary to that verdict (never the bold headline)."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("gradio")

from craftlab_app.explore import panels  # noqa: E402


def verdict(status: str | None, plain_drop: float = 0.1, craft_drop: float = 0.05, n: int = 3) -> dict:
    arms = {"plain": {"label": "AdamW", "mean": 0.9 - plain_drop, "sd": 0.01, "fp_mean": 0.9, "values": [0.0] * n},
            "craft": {"label": "SAM ρ=0.05", "mean": 0.9 - craft_drop, "sd": 0.01, "fp_mean": 0.9,
                      "values": [0.0] * n}}
    comp = None if status is None else {"n": n, "mean_diff": plain_drop - craft_drop, "ci_low": -0.5, "ci_high": 0.6,
                                        "p_adjusted": 0.46}
    return {"arms": arms, "comparison": comp, "status": status, "seeds": list(range(n)), "expected_seeds": n,
            "point_pts": 0.28}


CLAIMS = {"pays": "supports", "not": "flat", "cliff": "cliff"}


@pytest.mark.parametrize("key, status", itertools.product(
    [p.key for p in panels.PRESETS], ["supports", "partly supports", "contradicts", "inconclusive", None]))
def test_no_preset_claims_what_its_verdict_does_not_support(key, status):
    preset = next(p for p in panels.PRESETS if p.key == key)
    text = panels.guide_text(preset, verdict(status))
    assert text.startswith(preset.guide)
    said = text[len(preset.guide):]
    significant_gain = status in ("supports", "partly supports")
    if preset.expects == "craft-better":
        assert ("supports it" in said) == significant_gain, said
        if status is not None and not significant_gain:
            assert "does **not** support" in said
    if preset.expects == "no-difference" and status is not None:
        assert ("no significant difference" in said) == (status == "inconclusive"), said
    if status is None and preset.expects != "both-collapse":
        assert "still being measured" in said
    for words in ("keeps the compressed point low", "barely moves", "both arms fall off"):  # the old fixed claims
        assert words not in preset.guide.lower()


def test_the_cliff_is_claimed_only_when_both_arms_lose_more_than_the_threshold():
    cliff = next(p for p in panels.PRESETS if p.expects == "both-collapse")
    assert "Both arms fall off the cliff" in panels.guide_text(cliff, verdict("inconclusive", 0.5, 0.45))
    text = panels.guide_text(cliff, verdict("inconclusive", 0.5, 0.05))
    assert "Not a cliff for both arms" in text and "50.0 and 5.0 pts" in text


def test_the_seed0_line_is_secondary_to_the_over_seeds_verdict():
    answer = {"model": "resnet-tiny", "setting_label": "W4AFP", "arms": {
        "a": {"role": "plain", "label": "AdamW", "accuracy_drop": 0.6, "compressed_accuracy": 0.3},
        "b": {"role": "craft", "label": "SAM", "accuracy_drop": 0.1, "compressed_accuracy": 0.793}}}
    text = panels.summary(answer, "resnet-tiny")
    seed0 = text.split("\n\n", 1)[1]
    assert "Seed 0 alone" in seed0 and "+49.3 pts" in seed0 and "**" not in seed0 and "seed0" in seed0
    v = verdict(None, n=1)
    v["expected_seeds"] = 1
    line = panels.interpretation(v, "resnet-tiny", "W4AFP")
    assert "Seed 0 only" in line and "**" not in line
    over = panels.interpretation(verdict("inconclusive"), "resnet-tiny", "W4AFP")
    assert over.startswith("**Over 3 seeds")  # the verdict over seeds is the bold headline
