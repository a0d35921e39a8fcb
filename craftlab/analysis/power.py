"""Power by design and the verdict of one primary endpoint.

A claim check that cannot detect the effect it is about says nothing. So each claim of the ledger
(:mod:`craftlab.analysis.ledger`) names one **primary endpoint** before the run, its **effect of interest**
(the paper's claimed effect, or a stated smallest effect worth knowing), and a seed count chosen from a
pilot's spread of the paired differences so that the paired t test finds that effect with >= 80 % power
(:func:`seeds_for_power`). :func:`endpoint_verdict` then gives one of four answers, with the same
definition for every claim:

- ``supports``: the paired test is significant in the claimed direction (for a non-inferiority claim:
  the lower end of the 1 - 2α interval lies above ``-margin``);
- ``contradicts``: significant in the opposite direction (non-inferiority: significantly worse, and the
  interval reaches below ``-margin``);
- ``equivalent``: not significant, and the 1 - 2α interval lies inside ``±margin`` (two one-sided tests):
  no effect of that size;
- ``inconclusive``: none of these; the verdict then states the effect the design had 80 % power to detect.

:func:`mcnemar_exact` is the per-image paired view (the same test images, both models) beside the per-seed
one, and :func:`noise_split` says which noise dominates: seed-to-seed variation of the difference, or the
finite test set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import special
from scipy import stats as _st

from .stats import _t_power, compare_paired, detectable_effect, zero_spread

__all__ = ["EndpointVerdict", "endpoint_verdict", "mcnemar_exact", "noise_split", "power", "seeds_for_power"]

CLAIM_KINDS = ("superiority", "non-inferiority")


def power(effect: float, sd: float, n: int, alpha: float = 0.05, k: int = 1) -> float:
    """Probability that a two-sided paired t test at level ``alpha / k`` (Bonferroni over `k` tests) finds a
    true mean difference `effect` from `n` pairs whose differences have standard deviation `sd`.

    >>> round(power(1.0, 1.0, 10), 2)
    0.8
    """
    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0 if effect != 0 else alpha / k
    return _t_power(abs(effect) / sd, int(n), alpha / k)


def seeds_for_power(effect: float, sd: float, alpha: float = 0.05, target: float = 0.8, k: int = 1,
                    min_n: int = 3, max_n: int = 200) -> int:
    """The smallest number of paired seeds (>= `min_n`) whose paired t test at ``alpha / k`` finds `effect`
    with probability >= `target`, given the pilot's sd of the paired differences; `max_n` + 1 when even
    `max_n` seeds are not enough (the design then cannot answer the question: say so).

    >>> seeds_for_power(effect=3.0, sd=3.0)       # d_z = 1: 10 seeds
    10
    """
    if not effect:
        raise ValueError("the effect of interest must be non-zero")
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"the pilot's sd must be a finite number >= 0, got {sd!r}")
    for n in range(max(2, int(min_n)), int(max_n) + 1):
        if power(effect, sd, n, alpha, k) >= target:
            return n
    return int(max_n) + 1


def mcnemar_exact(correct_a: Any, correct_b: Any) -> tuple[int, int, float]:
    """Exact McNemar test on per-image correctness of two models on the same images.

    Returns ``(b, c, p)``: b images only `a` gets right, c only `b` gets right, and the two-sided exact
    binomial p of ``min(b, c)`` under Binomial(b + c, 1/2) (1.0 when no image differs).

    >>> mcnemar_exact([1, 1, 1, 0, 1, 1], [1, 0, 0, 0, 0, 1])
    (3, 0, 0.25)
    """
    a, b_ = np.asarray(correct_a, dtype=bool).ravel(), np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b_.shape:
        raise ValueError(f"per-image results must be paired: {a.size} vs {b_.size} images")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    if b + c == 0:
        return b, c, 1.0
    return b, c, float(min(1.0, 2 * _st.binom.cdf(min(b, c), b + c, 0.5)))


def noise_split(diffs: Any, discordant: Any, n_images: int) -> dict[str, float | str]:
    """Which noise dominates a paired accuracy difference: the seeds, or the finite test set.

    `diffs`: per-seed accuracy differences (fractions); `discordant`: per seed, the number of test images on
    which the two models disagree in correctness (b + c of :func:`mcnemar_exact`). The test-set sd of one
    seed's difference is about ``sqrt(b + c) / n_images``; the seed sd is the sd of `diffs`. Returns both and
    ``dominant`` (``"seeds"`` or ``"images"``).

    >>> noise_split([0.01, 0.03, -0.01], [10, 12, 8], 359)["dominant"]
    'seeds'
    """
    d = np.asarray(diffs, dtype=float)
    seed_sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    image_sd = float(np.sqrt(np.mean(np.asarray(discordant, dtype=float))) / n_images)
    return {"seed_sd": seed_sd, "image_sd": image_sd,
            "dominant": "seeds" if not (seed_sd <= image_sd) else "images"}


@dataclass(frozen=True)
class EndpointVerdict:
    """One primary endpoint's answer (differences are treatment − baseline, in the value's units)."""

    status: str
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p: float
    effect_size: float
    sd_diff: float
    effect_of_interest: float
    margin: float
    detectable: float
    power_at_effect: float
    kind: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def endpoint_verdict(baseline: Any, treatment: Any, effect: float, *, margin: float | None = None,
                     kind: str = "superiority", alpha: float = 0.05, higher_is_better: bool = True,
                     scale: float = 1.0, unit: str = "") -> EndpointVerdict:
    """The verdict of one primary endpoint from paired values (pair i = same seed), see the module docstring.

    Args:
        effect: the effect of interest in the value's units, signed in the "better" direction (> 0).
        margin: the equivalence / non-inferiority margin (default: half the effect of interest).
        kind: ``superiority`` (the treatment is better) or ``non-inferiority`` (not worse by more than `margin`).
        scale, unit: how numbers are printed (``100, " pp"`` for accuracies as fractions).

    >>> endpoint_verdict([0.80, 0.81, 0.79, 0.80], [0.85, 0.87, 0.84, 0.86], effect=0.03).status
    'supports'
    """
    if kind not in CLAIM_KINDS:
        raise ValueError(f"kind must be one of {CLAIM_KINDS}, got {kind!r}")
    if not effect > 0:
        raise ValueError(f"the effect of interest must be > 0 (in the better direction), got {effect!r}")
    margin = effect / 2 if margin is None else float(margin)
    b, t = np.asarray(baseline, dtype=float), np.asarray(treatment, dtype=float)
    sign = 1.0 if higher_is_better else -1.0
    d = sign * (t - b)  # > 0 = better
    c = compare_paired(b * sign, t * sign, alpha=alpha)
    n, mean = c.n, c.mean_diff
    sd = c.sd_diff if math.isfinite(c.sd_diff) else 0.0
    half = (float(special.stdtrit(n - 1, 1 - alpha)) * sd / math.sqrt(n)) if n >= 2 else float("nan")
    lo, hi = mean - half, mean + half  # the 1 - 2α interval (two one-sided tests at α)
    if n >= 2 and zero_spread(d):
        lo = hi = mean
    sig = c.p < alpha
    if kind == "superiority":
        status = ("supports" if sig and mean > 0 else "contradicts" if sig and mean < 0 else
                  "equivalent" if -margin < lo and hi < margin else "inconclusive")
    else:
        status = ("supports" if lo > -margin else "contradicts" if sig and mean < 0 and lo <= -margin
                  else "inconclusive")
    detect = detectable_effect(n, alpha) * sd if n >= 2 and sd > 0 else float("nan")
    pw = power(effect, sd, n, alpha) if n >= 2 else 0.0
    f = lambda v: f"{scale * v:+.2f}{unit}" if math.isfinite(v) else "n/a"
    ci_pct = round(100 * (1 - 2 * alpha))
    lines = [f"{n} paired seeds: difference {f(mean)} ({ci_pct}% CI {f(lo)} to {f(hi)}), p = {c.p:.3g}, "
             f"d_z = {c.effect_size:.2g}" if math.isfinite(c.effect_size) else
             f"{n} paired seeds: difference {f(mean)} ({ci_pct}% CI {f(lo)} to {f(hi)}), p = {c.p:.3g}"]
    words = {"supports": "SUPPORTS the claim", "contradicts": "CONTRADICTS the claim",
             "equivalent": f"shows NO EFFECT beyond ±{scale * margin:.2g}{unit} (equivalent)",
             "inconclusive": "is INCONCLUSIVE"}
    lines.append(f"Verdict: {words[status]}" + (f" (non-inferiority margin {scale * margin:.2g}{unit})"
                                                if kind == "non-inferiority" else "") + ".")
    if status == "inconclusive" or n < 2:
        if math.isfinite(detect):
            smaller = "smaller" if detect < effect else "NOT smaller"
            lines.append(f"Power: this design finds ±{scale * detect:.2g}{unit} with 80% power, {smaller} than "
                         f"the effect of interest {scale * effect:.2g}{unit}.")
        else:
            lines.append("Power: the differences show no spread; nothing more can be said with these seeds.")
    else:
        lines.append(f"Power at the effect of interest ({scale * effect:.2g}{unit}): {pw:.0%}.")
    return EndpointVerdict(status=status, n=n, mean_diff=float(mean), ci_low=float(lo), ci_high=float(hi),
                           p=float(c.p), effect_size=float(c.effect_size), sd_diff=float(sd),
                           effect_of_interest=float(effect), margin=float(margin), detectable=float(detect),
                           power_at_effect=float(pw), kind=kind, text="\n".join(lines))
