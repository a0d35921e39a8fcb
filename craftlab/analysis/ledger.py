"""The claims ledger: one primary endpoint per headline claim of the six papers, one verdict definition.

Every claim is written down **before** its run (:data:`CLAIMS`): the paper's words and number, one primary
endpoint (model × setting × metric, in a regime where the method has something to fix), the effect of
interest (the paper's number when the paper gives one, else a stated smallest effect worth knowing) and
the claim's kind (superiority, or non-inferiority with a margin). The benchmark
(``python -m benchmarks.run claims``) chooses the seed count from a pilot's spread
(:func:`craftlab.analysis.power.seeds_for_power`), runs the paired comparison and writes one row per claim
to ``benchmarks/results/claims.csv`` with :func:`craftlab.analysis.power.endpoint_verdict`'s answer.

Notebooks and the app read their verdict lines from that file when it is present (:func:`read_ledger`,
:func:`verdict_line`), and compute live with the same function otherwise.

Example::

    from craftlab.analysis import ledger
    print(ledger.verdict_line("craft-vit"))   # the ledger's sentence for CrAFT on vit-tiny
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["CLAIMS", "Claim", "claim", "endpoint_note", "ledger_path", "live_line", "paper_lines", "read_ledger",
           "verdict_line"]


@dataclass(frozen=True)
class Claim:
    """A paper's headline claim and its pre-registered primary endpoint."""

    id: str
    paper: str
    words: str
    paper_number: str
    model: str
    setting: str
    metric: str
    baseline: str
    treatment: str
    effect: float
    effect_source: str
    kind: str = "superiority"
    margin: float | None = None
    higher_is_better: bool = True
    why: str = ""
    source: str = "live"
    """``live`` (run by the claims benchmark) or a results table it reads (``snt.csv``: the seeds that table has,
    not re-run with the power rule; the verdict says what that design could detect)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ACC = "test accuracy (fraction; shown in pp)"
SNT_QUANT_RULE = "the +BN quantization setting where Adam loses most (pilot)"
"""A setting chosen by a rule on the pilot (written in the claim's ``why``); the ledger row records the choice."""
CLAIMS: tuple[Claim, ...] = (
    Claim("craft-vit", "CrAFT", "SAM during fine-tuning makes the model compression-friendly: it loses less accuracy "
          "under one-shot pruning and post-training quantization", "NOT FOUND (no table in the material read)",
          "vit-tiny → digits, 8 epochs", "wanda 70%", _ACC, "AdamW", "SAM ρ=0.05", 0.03,
          "stated smallest effect of interest (3 pp): the paper gives no number",
          why="the hardest vit-tiny setting where AdamW still works: AdamW loses 16.9 pp there (pilot, 5 seeds); "
              "pruning has no BatchNorm confound on a ViT"),
    Claim("craft-resnet", "CrAFT", "the same claim on a convolutional model, with BatchNorm statistics re-estimated "
          "after compression in both arms (the cheap baseline that fixes stale statistics)",
          "NOT FOUND", "resnet-tiny → digits, 8 epochs", "wanda 70% +BN", _ACC, "AdamW", "SAM ρ=0.05", 0.03,
          "stated smallest effect of interest (3 pp)",
          why="AdamW loses 24.1 pp there even with BN re-estimated (pilot): something left to fix"),
    Claim("qwt-vit", "QwT", "a closed-form linear side path per block raises the accuracy of a RepQ-ViT-quantized "
          "ViT at low bits", "DeiT-T W4A4 58.2 → 61.4 (+3.2; README range +0.2 to +7.8)",
          "vit-tiny → digits (AdamW runs)", "W3A3 repq", _ACC, "RepQ-ViT", "RepQ-ViT + QwT", 0.032,
          "paper: DeiT-T W4A4 +3.2 pp (the closest model)",
          why="the zoo ViT has no outlier channels, so RepQ-ViT loses only 1.4 pp at W4A4 (seed 0); the rule: "
              "the mildest setting where RepQ-ViT alone loses >= 5 pp on seed 0 (W4A3: 3.9, W3A3: 7.0 pp)"),
    Claim("qwt-resnet", "QwT", "QwT raises a CNN's PTQ accuracy", "ResNet-50 W4A4 62.3 → 68.5 (+6.2)",
          "resnet-tiny → digits (AdamW runs)", "W4A4", _ACC, "PTQ +BN", "PTQ + QwT", 0.062,
          "paper: ResNet-50 W4A4 +6.2 pp",
          why="against the cheap baseline that fixes the same per-channel error: BatchNorm re-estimation of the "
              "quantized model (stale statistics explained most of the earlier gain over plain PTQ)"),
    Claim("qwt2-resnet", "QwT-v2", "QwT-v2's folded channel-wise affine raises a CNN's PTQ accuracy",
          "ResNet-50 W4A4 (QwT: +6.2; QwT-v2 'matches or beats')", "resnet-tiny → digits (AdamW runs)", "W4A4", _ACC,
          "PTQ +BN", "PTQ + QwT-v2", 0.062, "the QwT paper's CNN number (+6.2 pp): QwT-v2 claims to match it",
          why="the same cheap baseline: BN re-estimation also rescales every channel after each conv"),
    Claim("qwt2-vs-qwt", "QwT-v2", "QwT-v2 matches or beats QwT with no extra parameters (a folded channel-wise "
          "affine)", "matches or beats QwT (no single number)", "resnet-tiny → digits (AdamW runs)", "W4A4", _ACC,
          "PTQ + QwT", "PTQ + QwT-v2", 0.02, "stated non-inferiority margin: 1 pp (effect of interest 2 pp)",
          kind="non-inferiority", margin=0.01, why="the CNN regime where both have something to fix"),
    Claim("qwt2-vit", "QwT-v2", "QwT-v2 matches or beats QwT on a ViT", "matches or beats QwT",
          "vit-tiny → digits (AdamW runs)", "W3A3 repq", _ACC, "RepQ-ViT + QwT", "RepQ-ViT + QwT-v2", 0.02,
          "stated non-inferiority margin: 1 pp", kind="non-inferiority", margin=0.01,
          why="the same ViT regime as the QwT claim"),
    Claim("snt-resnet", "SNT", "an architectural transformation during pretraining gives compression-friendly models",
          "up to +2 % on pruning, +5.4 % on quantization over Adam", "resnet-tiny, pretrained on mnist5k",
          "wanda 70% +BN", _ACC, "Adam", "repvgg", 0.02, "paper: up to +2 pp on pruning",
          why="RepVGG-style branches (folded after training) are the stand-in closest to SNT's 'architectural "
              "transformation'; the +BN pruning setting where Adam loses most; quantization rows of that table "
              "have stale BatchNorm statistics and are not used; run live on the pretraining runs it shares with "
              "snt-resnet-quant (same seeds: the rule asks far more than results/snt.csv's 5), decided before any "
              "of them was scored at this endpoint"),
    Claim("snt-resnet-quant", "SNT", "the same transformation gives models that lose less under post-training "
          "quantization, with BatchNorm statistics re-estimated on the quantized model in both arms",
          "+5.4 % on quantization over Adam", "resnet-tiny, pretrained on mnist5k", SNT_QUANT_RULE, _ACC, "Adam",
          "repvgg", 0.054, "paper: +5.4 pp on quantization",
          why="rule fixed before the run: among W8A8, W6A6, W4A8 and W4A4, each with BatchNorm re-estimated after "
              "quantization (+BN), the setting where the Adam arm loses the most accuracy from its FP32 model, mean "
              "over the pilot seeds 0-4 (Adam only: the choice never sees the treatment arm); repvgg is the same "
              "stand-in as snt-resnet; scored like snt-resnet, the pretrained model on its seed's mnist5k test "
              "split; seeds by the power rule, the pilot's included"),
    Claim("supernet-ni", "Supernet", "the searched subnet cuts about 95 % of BitOPs without degradation",
          "about 95 % BitOPs reduction, no degradation", "vit-tiny supernet (LoRA), quantized attention counted",
          "the search's pick at ≤ 5 % of FP32 BitOPs", _ACC, "FP32", "pick ≤ 5%", 0.02,
          "stated non-inferiority margin: 1 pp", kind="non-inferiority", margin=0.01,
          why="the paper's headline budget, BitOPs as the subnet runs (attention matmuls included)",
          source="supernet_picks.csv"),
    Claim("last-lora", "LAST", "low-rank attention side-tuning is more accurate than PEFT (LoRA) with about 30 % of "
          "its memory", "'significantly higher accuracy', ~30 % memory, ~60 % time", "vit-tiny → digits, 8 epochs",
          "frozen backbone", _ACC, "LoRA (r=4, qkv)", "LAST (g=1, m=4)", 0.01,
          "stated smallest effect of interest (1 pp): the paper gives VTAB numbers only",
          why="the adaptation benchmark's arms, run live with the seeds the power rule asks (a 5-seed pilot); memory "
              "and time are measurements (RESULTS adapt section), not tests; learning rates as the benchmark's "
              "(tuned curves: RESULTS adapt_curves)"),
    Claim("miet-gather", "MIET", "an adaptor on the gathered intermediate features (Gather*) adapts better than the "
          "final features alone", "VTAB-1K 76.7 (no ablation number found)", "vit-tiny → digits, 8 epochs",
          "frozen backbone, features sent once", _ACC, "linear probe", "MIET (k=4)", 0.01,
          "stated smallest effect of interest (1 pp)",
          why="both train on features the device received once (the adaptation benchmark's arms)"),
)
"""The pre-registered claims, in ledger order."""


def claim(claim_id: str) -> Claim:
    """The :class:`Claim` with this id (ValueError naming the known ids)."""
    for c in CLAIMS:
        if c.id == claim_id:
            return c
    raise ValueError(f"unknown claim {claim_id!r}; the ledger has {[c.id for c in CLAIMS]}")


def results_file(name: str, path: str | os.PathLike | None = None, env: str | None = None) -> Path | None:
    """A benchmark results table: `path`, else ``$env``, else the checkout's ``benchmarks/results/<name>`` (beside
    the ``craftlab`` package); None when none exists (a wheel install has no checkout)."""
    for cand in (path, os.environ.get(env) if env else None,
                 Path(__file__).resolve().parents[2] / "benchmarks" / "results" / name):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def ledger_path(path: str | os.PathLike | None = None) -> Path | None:
    """Where the ledger is: `path`, else ``$CRAFTLAB_LEDGER``, else the checkout's
    ``benchmarks/results/claims.csv``; None when none exists."""
    return results_file("claims.csv", path, "CRAFTLAB_LEDGER")


def read_ledger(path: str | os.PathLike | None = None) -> Any:
    """The ledger as a DataFrame (one row per claim), or None when no ledger file is present."""
    import pandas as pd

    where = ledger_path(path)
    return None if where is None else pd.read_csv(where)


def _pp(v: float) -> str:
    return f"{100 * v:+.1f} pp" if math.isfinite(v) else "n/a"


def verdict_line(claim_id: str, ledger: Any = None) -> str | None:
    """One sentence for `claim_id` from the ledger (``read_ledger()`` when not given), or None when the
    ledger has no row for it (then compute live with :func:`craftlab.analysis.power.endpoint_verdict`)."""
    df = read_ledger() if ledger is None else ledger
    if df is None or "id" not in df.columns or claim_id not in set(df["id"]):
        return None
    r = df.set_index("id").loc[claim_id]
    line = (f"{r['paper']} — {r['words']}: {str(r['status']).upper()} at the primary endpoint {r['model']}, "
            f"{r['setting']} ({r['treatment']} − {r['baseline']} = {_pp(r['mean_diff'])}, 90% CI "
            f"{_pp(r['ci_low'])} to {_pp(r['ci_high'])}, p = {float(r['p']):.2g}, {int(r['n'])} paired seeds; "
            f"effect of interest {100 * float(r['effect']):.1f} pp)")
    if r["status"] == "inconclusive" and math.isfinite(float(r["detectable"])):
        line += f"; the design had 80% power for ±{100 * float(r['detectable']):.1f} pp"
        if float(r["detectable"]) < float(r["effect"]):
            line += ", so an effect of the claimed size would most likely have been found"
    return line + "."


def live_line(claim_id: str, baseline: Any, treatment: Any) -> str:
    """The same verdict, computed live from paired values (pair i = same seed) at the claim's endpoint, with the
    claim's effect of interest, margin and kind (:func:`craftlab.analysis.power.endpoint_verdict`)."""
    from .power import endpoint_verdict

    c = claim(claim_id)
    v = endpoint_verdict(baseline, treatment, c.effect, margin=c.margin, kind=c.kind,
                         higher_is_better=c.higher_is_better, scale=100, unit=" pp")
    line = (f"{c.paper} — {c.words}: {v.status.upper()} at {c.model}, {c.setting} (computed live: "
            f"{c.treatment} − {c.baseline} = {_pp(v.mean_diff)}, 90% CI {_pp(v.ci_low)} to {_pp(v.ci_high)}, "
            f"p = {v.p:.2g}, {v.n} paired seeds; effect of interest {100 * c.effect:.1f} pp)")
    if v.status == "inconclusive" and math.isfinite(v.detectable):
        line += f"; these seeds had 80% power for ±{100 * v.detectable:.1f} pp"
    return line + "."


def endpoint_note(papers: tuple[str, ...] | list[str], ledger: Any = None) -> str:
    """A benchmark section's paragraph: each claim's primary endpoint, seeds (and the rule's count) and power,
    from the ledger (:func:`paper_lines`), so every paper's section states them."""
    df = read_ledger() if ledger is None else ledger
    lines = []
    for p in papers:
        for c in (c for c in CLAIMS if c.paper == p):
            if df is None or c.id not in set(df["id"]):
                lines.append(f"- {c.id}: not in the ledger of this checkout (python -m benchmarks.run claims)")
                continue
            r = df.set_index("id").loc[c.id]
            need = int(r["seeds_needed"])
            power = (f"80 % power for ±{100 * float(r['detectable']):.1f} pp" if math.isfinite(float(r["detectable"]))
                     else "no spread")
            lines.append(f"- **{c.id}** ({c.model}, {r['setting']}; {c.baseline} vs {c.treatment}): {int(r['n'])} "
                         f"paired seeds (the power rule asks {need if need <= 200 else '> 200'}), {power}, effect of "
                         f"interest {100 * c.effect:.1f} pp: **{r['status']}**.")
    return ("**Primary endpoints (claims ledger, `benchmarks/results/claims.csv`):** the rest of this section is "
            "exploratory.\n\n" + "\n".join(lines))


def paper_lines(paper: str, ledger: Any = None) -> list[str]:
    """The ledger's sentence for every claim of `paper` (``CrAFT``, ``QwT``, ``QwT-v2``, ``SNT``, ``Supernet``,
    ``LAST``, ``MIET``); a claim missing from the ledger says how to compute it.

    Example::

        for line in ledger.paper_lines("CrAFT"): print(line)
    """
    ids = [c.id for c in CLAIMS if c.paper == paper]
    if not ids:
        raise ValueError(f"no claim of paper {paper!r}; papers: {sorted({c.paper for c in CLAIMS})}")
    df = read_ledger() if ledger is None else ledger
    return [verdict_line(i, df) or f"{i}: not in the ledger of this checkout (python -m benchmarks.run claims)"
            for i in ids]
