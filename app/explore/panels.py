"""The words of a view: the accuracy cards, the summary, the one interpretation sentence, sharpness, the
presets of the guided tour and the URL of a view. Pure functions of service results (no Gradio), so they are
tested directly and every panel is titled with its view's tag (:func:`craftlab_app.explore.session.tag`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from craftlab.settings import Setting, make_setting

from ..common.errors import one_line

__all__ = ["PRESETS", "Preset", "cards", "fmt_num", "guide_text", "interpretation", "one_line", "preset_of", "query_of",
           "sharpness_text", "summary"]

ROLES = ("plain", "craft")
ROLE_TITLES = {"plain": "", "craft": "CrAFT · "}
"""Put before an arm's label (``craftlab.train.runs.arm_label``: ``AdamW``, ``SAM ρ=0.05``) on its card."""


def fmt_num(x: float | None) -> str:
    """A number for people: thousands separated, 3 significant digits, never ``6.91e+03``."""
    if x is None or not math.isfinite(float(x)):
        return "–"
    x = float(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if x == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _tag(model: str, label: str) -> str:
    return f"<span class='view-tag'>[{html.escape(model)} · {html.escape(label)}]</span>"


# ----------------------------------------------------------------------------------------------------- presets

@dataclass(frozen=True)
class Preset:
    """A stop of the guided tour: a view, what to look at there (`guide`, which claims nothing) and the claim
    the stop is about (`expects`: ``"craft-better"``, ``"no-difference"`` or ``"both-collapse"``), which
    :func:`guide_text` states only as far as the view's paired over-seeds verdict supports it."""

    key: str
    title: str
    model: str
    method: str
    sparsity: float
    w_bits: str
    a_bits: str
    guide: str
    expects: str = "craft-better"

    def setting(self) -> Setting:
        return make_setting(self.method, self.sparsity, self.w_bits, self.a_bits)


PRESETS = (
    Preset("pays", "Does flatness pay? resnet-tiny W4", "resnet-tiny", "magnitude", 0.0, "4", "None",
           "**Does flatness pay?** Rounding every weight of a small CNN to 4 bits is a long move in weight "
           "space: the place where a flatter basin should keep the compressed point low. Compare the drops on "
           "the cards and the two 2-D landscapes (one colour scale).", "craft-better"),
    Preset("not", "Where it should not matter: vit-tiny magnitude 50%", "vit-tiny", "magnitude", 0.5, "None",
           "None",
           "**Where it should not matter.** Removing the smallest half of vit-tiny's weights is a short move: "
           "compare both curves near their full-precision accuracy and their seed bands. Flatness can only "
           "matter when compression moves the weights far up the walls of the basin.", "no-difference"),
    Preset("cliff", "The cliff: Wanda 85%", "vit-tiny", "wanda", 0.85, "None", "None",
           "**The cliff.** Follow the accuracy-vs-sparsity curve bending down past ~80 % sparsity and the seed "
           "bands near the edge; in the 1-D slice, see where the compressed point (★) sits on the wall.",
           "both-collapse"),
)

COLLAPSE_PTS = 20.0
"""A drop (mean over the seeds, FP − compressed) above this many points counts as falling off the cliff."""


def guide_text(preset: Preset, verdict: Mapping[str, Any] | None) -> str:
    """The guided tour's words at `preset`: its neutral guide, then what the paired over-seeds verdict says
    about the stop's claim — stated only where the verdict supports it, and said plainly where it does not
    (or while the seeds are still being measured)."""
    arms = (verdict or {}).get("arms") or {}
    comp = (verdict or {}).get("comparison")
    if {"plain", "craft"} - set(arms) or (comp is None and preset.expects != "both-collapse"):
        return preset.guide + "\n\n_What this stop shows is decided by the verdict over the seeds below; it is " \
                              "still being measured._"
    if preset.expects == "both-collapse":
        drops = {r: 100 * (arms[r]["fp_mean"] - arms[r]["mean"]) for r in ("plain", "craft")}
        n = len(arms["plain"].get("values", [])) or 1
        if all(d > COLLAPSE_PTS for d in drops.values()):
            said = (f"Both arms fall off the cliff here: they lose {drops['plain']:.1f} and {drops['craft']:.1f} "
                    f"pts (mean of {n} seed{'s' if n != 1 else ''}).")
        else:
            said = (f"Not a cliff for both arms here: they lose {drops['plain']:.1f} and {drops['craft']:.1f} pts "
                    f"(mean of {n} seed{'s' if n != 1 else ''}; a cliff would be more than {COLLAPSE_PTS:.0f}).")
        return f"{preset.guide}\n\n{said}"
    status = (verdict or {}).get("status", "")
    better = status in ("supports", "partly supports")
    worse = status == "contradicts"
    if preset.expects == "craft-better":
        said = ("The verdict below supports it: over the seeds, CrAFT keeps significantly more accuracy here."
                if better else
                "The verdict below does **not** support that flatness pays here: over the seeds, AdamW keeps "
                "significantly more accuracy." if worse else
                "The verdict below does **not** support that flatness pays here: over the seeds, the gap is "
                "within the seed-to-seed noise.")
    else:
        said = ("As expected, the verdict below finds no significant difference over the seeds."
                if not (better or worse) else
                "Unexpectedly, the verdict below finds a significant difference over the seeds: flatness does "
                f"matter here ({'CrAFT' if better else 'AdamW'} keeps more accuracy).")
    return f"{preset.guide}\n\n{said}"


def preset_of(model: str, setting: Setting) -> Preset | None:
    """The preset showing exactly (model, setting), if any."""
    return next((p for p in PRESETS if p.model == model and p.setting() == setting), None)


# ----------------------------------------------------------------------------------------------------- cards

def _by_role(arms: Mapping[str, Any]) -> dict[str, Any]:
    return {a["role"]: a for a in arms.values()}


def cards(answer: Mapping[str, Any] | None, verdict: Mapping[str, Any] | None = None, tag_model: str = "",
          bn_used: bool | None = None) -> tuple[str, str]:
    """(plain card, craft card) markdown: the compressed accuracy (mean ± sd over the seeds when there are
    several, else seed 0), FP accuracy, drop, seed 0's numbers, measured sparsity, size, BatchNorm choice."""
    if not answer or "arms" not in answer:
        return "", ""
    arms = _by_role(answer["arms"])
    seeds = (verdict or {}).get("arms", {})
    setting = answer.get("setting", {})
    quantized = setting.get("w_bits") is not None or setting.get("a_bits") is not None
    prunes = setting.get("method") not in (None, "none")
    what = "compressed" if quantized or prunes else "full precision (nothing compressed)"
    tag = _tag(tag_model or answer["model"], answer["setting_label"])
    out = []
    for role in ROLES:
        a = arms.get(role)
        if a is None:
            out.append(f"### {ROLE_TITLES[role] or 'plain'}\n_This checkpoint has no {role} twin: train one in "
                       f"the **Train** tab._ {tag}")
            continue
        s = seeds.get(role)
        if s and len(s["values"]) >= 2:
            big = (f"<span class='big'>{100 * s['mean']:.1f}%</span> ± {100 * s['sd']:.1f} {what} "
                   f"(mean ± sd of {len(s['values'])} seeds) &nbsp;·&nbsp; FP {_pct(s['fp_mean'])} &nbsp;·&nbsp; "
                   f"drop **{100 * (s['fp_mean'] - s['mean']):+.1f} pts**\n\n"
                   f"seed 0: {_pct(a['compressed_accuracy'])} {what}, FP {_pct(a['fp_accuracy'])}")
        else:
            big = (f"<span class='big'>{_pct(a['compressed_accuracy'])}</span> {what} &nbsp;·&nbsp; "
                   f"FP {_pct(a['fp_accuracy'])} &nbsp;·&nbsp; drop **{100 * a['accuracy_drop']:+.1f} pts** "
                   "(seed 0)")
        details = (f"measured sparsity {a['sparsity_measured']:.1%}" if prunes else
                   f"no pruning; {a['sparsity_measured']:.1%} of the weights are zero after rounding" if quantized
                   else "no pruning, no quantization")
        if quantized:
            details += f" · weights {a['size_mb']:.3f} MB (FP {a['fp_size_mb']:.3f} MB)"
        if bn_used is not None and (prunes or quantized):
            details += (" · BatchNorm statistics re-estimated after compression" if bn_used
                        else " · BatchNorm statistics kept from fine-tuning")
        if bn_used and setting.get("compensation") == "qwt-v2":
            from craftlab.compression.pipeline import BN_QWT2_CLASH

            details += f"\n\n**Note:** {BN_QWT2_CLASH}."
        if a.get("cheap_baseline"):
            cb = a["cheap_baseline"]
            details += (f"\n\nthe cheap fix of the same error, **{cb['label']}** (no compensation): "
                        f"{_pct(cb['accuracy'])} (seed 0): the compensation gains "
                        f"**{100 * (a['compressed_accuracy'] - cb['accuracy']):+.1f} pts** over it")
        out.append(f"### {ROLE_TITLES[role]}{a['label']} {tag}\n{big}\n\n{details} · `{a['checkpoint']}`")
    return out[0], out[1]


def summary(answer: Mapping[str, Any] | None, model_name: str = "") -> str:
    """The header above the cards: the view's tag, the readable model name and seed 0's gap."""
    if not answer or "arms" not in answer:
        return ""
    arms = _by_role(answer["arms"])
    text = (f"**{html.escape(model_name or answer['model'])}** — {answer.get('setting_text', answer['setting_label'])} "
            f"{_tag(answer['model'], answer['setting_label'])}")
    if "plain" in arms and "craft" in arms:
        p, c = arms["plain"], arms["craft"]
        gap = 100 * (c["compressed_accuracy"] - p["compressed_accuracy"])
        text += (f"\n\n<span class='seed0'>Seed 0 alone (one seed; the verdict over the seeds is below the cards): "
                 f"{p['label']} loses {100 * p['accuracy_drop']:.1f} pts, CrAFT ({c['label']}) loses "
                 f"{100 * c['accuracy_drop']:.1f} pts; compressed, CrAFT is {gap:+.1f} pts vs {p['label']}.</span>")
    return text


def interpretation(verdict: Mapping[str, Any] | None, model: str, label: str, training_seeds: bool = False) -> str:
    """The one sentence under the cards: CrAFT − plain over the seeds with its CI and the paired verdict of
    :func:`craftlab.analysis.stats.claim_verdict`, and what one test image is worth."""
    tag = _tag(model, label)
    if not verdict or not verdict.get("arms"):
        return f"_Measuring the seeds…_ {tag}"
    arms = verdict["arms"]
    per_image = verdict.get("point_pts", float("nan"))
    image = f"one test image = {per_image:.2f} pts" if math.isfinite(per_image) else ""
    if {"plain", "craft"} > set(arms):
        return f"_This checkpoint has one arm: nothing to compare._ {tag}"
    plain, craft = arms["plain"], arms["craft"]
    comp = verdict.get("comparison")
    if comp is None:
        gap = 100 * (craft["mean"] - plain["mean"])
        more = (" The other seeds are being fine-tuned in the background; the uncertainty appears when they are "
                "ready." if training_seeds or verdict.get("expected_seeds", 1) > len(verdict.get("seeds", []))
                else " This run has one seed, so no uncertainty can be given: train more seeds to get one.")
        return f"_Seed 0 only:_ CrAFT − {plain['label']} = {gap:+.1f} pts ({image}).{more} {tag}"
    n, diff = int(comp["n"]), 100 * comp["mean_diff"]
    lo, hi, p = 100 * comp["ci_low"], 100 * comp["ci_high"], comp["p_adjusted"]
    status = verdict["status"]
    if status in ("supports", "partly supports"):
        what = "CrAFT keeps significantly more accuracy here: flatness pays at this setting."
    elif status == "contradicts":
        what = f"{plain['label']} keeps significantly more accuracy here: the flatter arm does not compress better."
    else:
        what = "No significant difference: the gap is within the seed-to-seed noise."
    sd = f"seed sd {100 * plain['sd']:.1f} / {100 * craft['sd']:.1f} pts"
    fp_gap = 100 * (craft["fp_mean"] - plain["fp_mean"])
    return (f"**Over {n} seeds, CrAFT − {plain['label']} = {diff:+.1f} pts** (95% CI {lo:+.1f} to {hi:+.1f}, "
            f"paired t p = {p:.2g}, Holm over this one setting). {what} In full precision the gap is "
            f"{fp_gap:+.1f} pts; {sd}; {image}. {tag}")


def sharpness_text(s: Mapping[str, Any] | None, model: str) -> str:
    """One arm's sharpness numbers, formatted ("smaller = flatter" is said once, under both)."""
    if not s:
        return ""
    return (f"**Sharpness at the fine-tuned weights** (seed 0, {s['n_examples']} training images) "
            f"{_tag(model, 'FP weights')}: λmax **{fmt_num(s['lambda_max'])}** · trace **{fmt_num(s['trace'])}** "
            f"± {fmt_num(s['trace_stderr'])} · ε-sharpness (ρ = {s['rho']:g}) **{fmt_num(s['eps_sharpness'])}**")


SHARPNESS_NOTE = ("_Smaller = flatter. Compare the two arms of one model: these numbers depend on the "
                  "architecture's parameterization and do not compare across architectures._")


def query_of(model: str, setting: Setting, kind: str = "contour", scale: str = "log10") -> str:
    """The URL query that restores a view (``?model=vit-tiny&method=wanda&sparsity=0.7&w=4&a=8...``)."""
    q = {"model": model, "method": setting.method if setting.method != "none" else "magnitude",
         "sparsity": f"{setting.sparsity:g}", "w": "None" if setting.w_bits is None else setting.w_bits,
         "a": "None" if setting.a_bits is None else setting.a_bits, "g": setting.granularity}
    if setting.method == "N:M":
        q.update(method="N:M", nm=setting.pattern or "2:4")
    if setting.recalibrate_bn:
        q["bn"] = 1
    if setting.recipe != "uniform":
        q["recipe"] = setting.recipe
    if setting.compensation:
        q["comp"] = setting.compensation
    q["kind"], q["scale"] = kind, scale  # always: a link opened elsewhere shows the same landscape
    return "?" + urlencode(q)
