"""THE compression setting: one type that the CLI, the app, sweeps and the notebooks parse, validate,
label and turn into :func:`craftlab.compress` arguments.

Validation happens once, when a :class:`Setting` is made (:func:`make_setting` from loose user input,
:func:`parse_setting` from a label); code that receives a ``Setting`` trusts it.

Conventions:

* **N:M** means **N weights kept of every M** (the reading of sparse tensor cores and of most papers):
  ``"2:4"`` keeps 2 of 4 (50 % sparse), ``"1:4"`` keeps 1 of 4 (75 % sparse). ``"keep N of M"`` and
  ``"zero K of M"`` are accepted as explicit spellings.
* **Bits** are 2..8 or 16; ``None`` (spelled ``None``, ``""``, ``"fp"``, ``"float"``, ``"fp32"``) is full
  precision. Anything else (1, 9, 32, ``"abc"``) is an error.
* **Labels**: ``magnitude 50%``, ``wanda 2:4``, ``W4A8``, ``magnitude 50% + W4A4``, ``FP32``; a
  non-default granularity is appended (``W4A8 per-tensor``), then a non-default quantization recipe
  (``W4A4 repq``), and a compensation is one more part (``W4A4 repq + QwT-v2``, ``magnitude 50% + QwT-v2``).
  :func:`parse_setting` inverts them.
* **Recipes** (:data:`RECIPES`, read from the registry ``QUANT_RECIPES``: one module per recipe in
  ``compression/recipes/``): ``uniform`` (the default: :func:`craftlab.compression.quant.quantize`,
  Conv2d/Linear weights and inputs) and ``repq`` (RepQ-ViT-style ViT PTQ,
  :func:`craftlab.compression.vit_quant.quantize_vit`: attention matmul inputs too, log√2 softmax,
  LayerNorm re-parameterization; timm ViTs only, activations per tensor).
* **Compensation** (:data:`COMPENSATIONS`): ``None``, ``qwt`` (QwT: a linear side path per block) or
  ``qwt-v2`` (QwT-v2 / CWAC: a channel-wise affine per compressed layer, folded into it); it corrects
  whatever the setting compresses (quantization, pruning or both), so it needs one of them.

Example::

    >>> s = make_setting("wanda", 0.7, w_bits=4, a_bits=8)
    >>> s.label()
    'wanda 70% + W4A8'
    >>> parse_setting("wanda 70% + W4A8") == s
    True
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from ._errors import ALLOWED_BITS, check_sparsity, unknown_name
from .registry import COMPENSATION_METHODS, PRUNE_SCORERS, QUANT_RECIPES

__all__ = [
    "ALLOWED_BITS", "COMPENSATIONS", "GRANULARITIES", "PRUNE_METHODS", "Setting", "DEFAULT_SETTING",
    "check_compensation", "make_setting", "parse_bits", "parse_compensation", "parse_pattern", "parse_recipe",
    "parse_setting", "bits_label", "compensation_label", "range_methods", "DEFAULT_RECIPE",
    *("RECIPES", "QUANT_METHODS"),  # read from the registry when asked (module __getattr__)
]

PRUNE_METHODS = PRUNE_SCORERS.names()  # the built-in scores (magnitude, random, wanda): one file each
"""Unstructured / per-row pruning criteria (N:M patterns use magnitude or Wanda scores too)."""
GRANULARITIES = ("tensor", "channel")
DEFAULT_RECIPE = str(QUANT_RECIPES.default)
"""The recipe of a setting that names none."""
SCOPES = ("global", "layer", "row")
"""Where a pruning sparsity is counted (the default is the score's: global for magnitude, row for Wanda)."""
COMPENSATIONS = COMPENSATION_METHODS.names()
"""Closed-form compensations of a compressed model's error: QwT (per block) and QwT-v2 (CWAC, per channel)."""


def range_methods(recipe: str) -> tuple[str, ...]:
    """The weight range methods of `recipe`, its default first: ``range_methods("repq")`` is ``('repq', 'minmax')``."""
    return QUANT_RECIPES.get(recipe).range_methods


def __getattr__(name: str) -> Any:
    """``RECIPES`` (names, the default first) and ``QUANT_METHODS`` (recipe → its range methods, default first),
    read from the registry when asked, so a recipe registered from user code is listed too."""
    if name == "RECIPES":
        return QUANT_RECIPES.ordered()
    if name == "QUANT_METHODS":
        return {n: range_methods(n) for n in QUANT_RECIPES.ordered()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _compensation_aliases() -> dict[str, str]:
    """Every spelling of every registered compensation -> its name (the method modules are light to import)."""
    out = {}
    for name, cls in COMPENSATION_METHODS.all().items():
        out.update({name: name, **{a: name for a in cls.aliases}})
    return out

_FLOAT_WORDS = ("", "none", "null", "fp", "float", "fp32", "full precision")


def parse_bits(value: Any, what: str = "bits") -> int | None:
    """A bit-width from user input: 2..8 or 16, or None (float). ValueError names anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _FLOAT_WORDS:
            return None
        if not re.fullmatch(r"[0-9]+", v):
            raise ValueError(f"{what} must be one of {ALLOWED_BITS} or None (float), got {value!r}")
        value = int(v)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{what} must be an integer, got {value!r}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in ALLOWED_BITS:
        raise ValueError(f"{what} must be one of {ALLOWED_BITS} or None (float), got {value!r}")
    return value


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"N:M"`` (N kept of every M) -> (N, M) with 1 <= N < M. Also ``"keep N of M"``, ``"zero K of M"``."""
    text = str(pattern).strip().lower()
    m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", text) or re.fullmatch(r"keep\s+(\d+)\s+of\s+(\d+)", text)
    if m:
        keep, size = int(m.group(1)), int(m.group(2))
    elif z := re.fullmatch(r"zero\s+(\d+)\s+of\s+(\d+)", text):
        size = int(z.group(2))
        keep = size - int(z.group(1))
    else:
        raise ValueError(f"N:M pattern must look like '2:4' (keep 2 of every 4), got {pattern!r}")
    if not 1 <= keep < size:
        raise ValueError(f"impossible N:M pattern {pattern!r}: need 1 <= N < M (N weights kept of every M)")
    return keep, size


def parse_recipe(value: Any) -> str:
    """A quantization recipe from user input (a name of the registry or an alias, any case; None = ``uniform``).

    >>> parse_recipe("RepQ-ViT")
    'repq'
    """
    return QUANT_RECIPES.canonical(DEFAULT_RECIPE if value is None else value)


def parse_compensation(value: Any) -> str | None:
    """A compensation from user input: None (also ``""``, ``"none"``), ``qwt`` or ``qwt-v2`` (``QwT-v2``,
    ``qwtv2``, ``cwac``). ValueError names anything else."""
    if value is None or (isinstance(value, float) and value != value):  # None, or a NaN from a table
        return None
    text = str(value).strip().lower()
    if text in ("", "none", "null", "off", "no"):
        return None
    aliases = _compensation_aliases()
    if text not in aliases:
        raise unknown_name("compensation", value, COMPENSATION_METHODS.names())
    return aliases[text]


def check_compensation(compensation: str | None, quantizes: bool, prunes: bool, recalibrate_bn: bool) -> None:
    """ValueError when `compensation` has nothing to correct: nothing compressed, or a pruned model whose
    BatchNorm statistics are re-estimated and nothing quantized (re-estimation already corrects the pruned
    layers' per-channel statistics, and a compensation fitted against the uncompressed model after it undoes
    it: see :mod:`craftlab.compression.pipeline`)."""
    if compensation is None:
        return
    if not (quantizes or prunes):
        raise ValueError(f"compensation {compensation!r} needs a compressed model to correct: set w_bits/a_bits "
                         "or prune (a sparsity or an N:M pattern)")
    if recalibrate_bn and not quantizes:
        raise ValueError("recalibrate_bn and compensation both correct the pruned model's per-channel statistics: "
                         "after BatchNorm re-estimation no pruning error is left to compensate (and fitting one "
                         "against the uncompressed model undoes the re-estimation); use one of them, or also "
                         "quantize: compensation then corrects the quantization error")


def compensation_label(compensation: str | None) -> str:
    """``QwT`` / ``QwT-v2`` (empty for None)."""
    return COMPENSATION_METHODS.get(compensation).label if compensation else ""


def bits_label(w_bits: int | None, a_bits: int | None) -> str:
    """``W4A8``; float is ``FP`` (``W4AFP``: weights only)."""
    return f"W{'FP' if w_bits is None else w_bits}A{'FP' if a_bits is None else a_bits}"


@dataclass(frozen=True)
class Setting:
    """One compression setting, normalized so that equivalent settings compare (and cache) equal.

    ``method`` is ``"none"`` (no pruning), ``"magnitude"``, ``"wanda"``, ``"random"`` or ``"N:M"``
    (``pattern`` then says which, e.g. ``"2:4"``: 2 of every 4 weights kept, sparsity 0.5, scored by
    ``nm_score``). ``granularity`` is the weight-quantization granularity, ``a_granularity`` that of
    activations; each is kept only when that side is quantized. ``recalibrate_bn`` re-estimates
    BatchNorm statistics on the calibration set after the whole compression (after pruning, and again after
    quantization and compensation, with the quantizers on): one protocol for pruning and quantization rows.
    ``recipe`` is the quantization recipe
    (``uniform`` unless something is quantized with ``repq``); ``compensation`` (None, ``qwt``, ``qwt-v2``)
    is fitted on the compressed model against the uncompressed one.

    Example::

        >>> s = Setting(method="wanda", sparsity=0.7, w_bits=4, a_bits=8)
        >>> s.label(), s.prunes, s.quantizes
        ('wanda 70% + W4A8', True, True)
    """

    method: str = "none"
    sparsity: float = 0.0
    pattern: str | None = None
    w_bits: int | None = None
    a_bits: int | None = None
    granularity: str = "channel"
    a_granularity: str = "tensor"
    nm_score: str = "magnitude"
    recalibrate_bn: bool = False
    recipe: str = DEFAULT_RECIPE
    compensation: str | None = None
    scope: str | None = None
    quant_method: str | None = None

    @property
    def is_identity(self) -> bool:
        return not self.prunes and not self.quantizes

    @property
    def prunes(self) -> bool:
        return self.method != "none"

    @property
    def quantizes(self) -> bool:
        return self.w_bits is not None or self.a_bits is not None

    def weight_path_problem(self) -> str | None:
        """Why the compressed model is not a point ``C(w)`` in the original's weight space (so the landscape
        probes, which follow ``w + t (C(w) - w)``, do not apply), or None when it is.

        Example::

            >>> make_setting("none", 0, 4, 4, recipe="repq").weight_path_problem()[:22]
            'RepQ-ViT re-parameteri'
        """
        if self.quantizes and QUANT_RECIPES.get(self.recipe).weight_path_problem:
            return QUANT_RECIPES.get(self.recipe).weight_path_problem
        if self.compensation == "qwt":
            return ("QwT adds side-path parameters, so the compensated model is not a point in the original's "
                    "weight space")
        return None

    def compress_kwargs(self) -> dict[str, Any]:
        """Arguments of :func:`craftlab.compress` (without ``calib``)."""
        kw: dict[str, Any] = {"w_bits": self.w_bits, "a_bits": self.a_bits, "w_granularity": self.granularity,
                              "a_granularity": self.a_granularity}
        if self.method == "N:M":
            kw.update(method=self.nm_score, pattern=self.pattern)
        elif self.prunes:
            kw.update(method=self.method, sparsity=self.sparsity)
        if self.recalibrate_bn and not self.is_identity:
            kw["recalibrate_bn"] = True
        if self.recipe != DEFAULT_RECIPE:
            kw["recipe"] = self.recipe
        if self.compensation is not None:
            kw["compensation"] = self.compensation
        if self.scope is not None:
            kw["scope"] = self.scope
        if self.quant_method is not None:
            kw["quant_method"] = self.quant_method
        return kw

    def key(self) -> str:
        """A stable text key (JSON). The recipe and compensation appear only when not the default, so a
        setting without them keeps the key it had before these fields existed (caches stay valid)."""
        import json

        d = asdict(self)
        for name, default in (("recipe", DEFAULT_RECIPE), ("compensation", None), ("scope", None),
                              ("quant_method", None)):
            if d[name] == default:
                del d[name]
        return json.dumps(d, sort_keys=True)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def prune_label(self) -> str:
        if self.method == "N:M":
            return f"{self.nm_score} {self.pattern}"
        scope = f" {self.scope}" if self.scope else ""
        return f"{self.method} {self.sparsity:.0%}{scope}" if self.prunes else ""

    def label(self) -> str:
        """``magnitude 50%``, ``wanda 2:4``, ``W4A8``, ``wanda 70% + W4A4``, ``FP32`` (see module doc)."""
        parts = []
        if self.prunes:
            parts.append(self.prune_label() + (" +BN" if self.recalibrate_bn else ""))
        if self.quantizes:
            q = bits_label(self.w_bits, self.a_bits)
            if self.w_bits is not None and self.granularity != "channel":
                q += f" per-{self.granularity}"
            if self.a_bits is not None and self.a_granularity != "tensor":
                q += f" act-per-{self.a_granularity}"
            if self.recipe != DEFAULT_RECIPE:
                q += f" {self.recipe}"
            if self.quant_method:
                q += f" {self.quant_method}"
            if self.recalibrate_bn and not self.prunes:
                q += " +BN"
            parts.append(q)
        if self.compensation:
            parts.append(compensation_label(self.compensation))
        return " + ".join(parts) or "FP32"

    def describe(self) -> str:
        """A longer label for people: N:M spelled out (``keep 2 of 4``)."""
        text = self.label()
        if self.method == "N:M":
            n, m = parse_pattern(self.pattern or "")
            text = text.replace(f"{self.pattern}", f"{self.pattern} (keep {n} of {m})", 1)
        label = QUANT_RECIPES.get(self.recipe).label
        if self.recipe != DEFAULT_RECIPE and label and label != self.recipe:
            text = text.replace(f" {self.recipe}", f" {self.recipe} ({label})", 1)
        if self.compensation == "qwt-v2":
            text += " (folded channel-wise affine)"
        elif self.compensation == "qwt":
            text += " (per-block linear side path)"
        return text


DEFAULT_SETTING = Setting()


def make_setting(method: str | None = "magnitude", sparsity: Any = 0.0, w_bits: Any = None, a_bits: Any = None,
                 granularity: str = "channel", pattern: str | None = "2:4", a_granularity: str = "tensor",
                 nm_score: str = "magnitude", recalibrate_bn: bool = False, recipe: str = "uniform",
                 compensation: str | None = None, scope: str | None = None,
                 quant_method: str | None = None) -> Setting:
    """Validate and normalize user input into a :class:`Setting` (ValueError naming the problem).

    Args:
        method: ``magnitude``, ``wanda``, ``random``, ``none``, ``N:M`` (uses `pattern`) or a pattern
            like ``"2:4"`` itself.
        sparsity: fraction in [0, 1) of weights to zero (ignored for N:M, which fixes it at 1 − N/M).
        w_bits, a_bits: 2-8 or 16; None / "None" / "float" = full precision.
        granularity, a_granularity: ``"channel"`` or ``"tensor"``.
        nm_score: the score N:M keeps the largest of (``magnitude`` or ``wanda``).
        recipe: ``uniform`` or ``repq`` (RepQ-ViT; activations per tensor, so ``a_granularity="channel"`` is
            an error); normalized to ``uniform`` when nothing is quantized.
        compensation: None, ``qwt`` or ``qwt-v2``; an error when nothing is pruned or quantized.
        scope: where the sparsity is counted (``global``, ``layer``, ``row``; default: the score's); kept only
            for sparsity pruning, dropped when it is the score's default.
        quant_method: the recipe's range method (:data:`QUANT_METHODS`; activations use it too unless the recipe
            says otherwise); kept only when something is quantized, dropped when it is the recipe's default.

    Example::

        >>> make_setting("wanda", 0.7, 4, 8).label()
        'wanda 70% + W4A8'
        >>> make_setting("magnitude", 0.5, 4, 8, scope="layer", quant_method="mse").label()
        'magnitude 50% layer + W4A8 mse'
    """
    if sparsity is None or (isinstance(sparsity, str) and not sparsity.strip()):
        sparsity = 0.0
    sparsity = round(check_sparsity(sparsity), 6)
    w_bits, a_bits = parse_bits(w_bits, "w_bits"), parse_bits(a_bits, "a_bits")
    for name, value in (("granularity", granularity), ("a_granularity", a_granularity)):
        if value not in GRANULARITIES:
            raise unknown_name(name, value, GRANULARITIES)
    if nm_score not in PRUNE_SCORERS:
        raise unknown_name("N:M score", nm_score, PRUNE_SCORERS.names())
    low = "none" if method is None else str(method).strip().lower()
    pat: str | None = None
    if low in ("n:m", "nm") or ":" in low or low.startswith(("keep ", "zero ")):
        n, m = parse_pattern(pattern or "2:4" if low in ("n:m", "nm") else low)
        pat, low, sparsity = f"{n}:{m}", "N:M", round(1 - n / m, 6)
    elif low in ("", "none"):
        low, sparsity = "none", 0.0
    elif low not in PRUNE_SCORERS:
        raise unknown_name("pruning method", method, [*PRUNE_SCORERS.names(), "N:M", "none"])
    if low not in ("N:M", "none") and sparsity == 0.0:
        low = "none"
    recipe, compensation = parse_recipe(recipe), parse_compensation(compensation)
    quantizes = w_bits is not None or a_bits is not None
    if not quantizes:
        recipe = DEFAULT_RECIPE
    if a_bits is not None:
        QUANT_RECIPES.get(recipe).check_a_granularity(a_granularity)
    check_compensation(compensation, quantizes, low != "none", bool(recalibrate_bn))
    return Setting(method=low, sparsity=sparsity if low != "none" else 0.0, pattern=pat, w_bits=w_bits, a_bits=a_bits,
                   granularity=granularity if w_bits is not None else "channel",
                   a_granularity=a_granularity if a_bits is not None else "tensor",
                   nm_score=nm_score if low == "N:M" else "magnitude",
                   recalibrate_bn=bool(recalibrate_bn) and (low != "none" or quantizes), recipe=recipe,
                   compensation=compensation, scope=_scope(scope, low),
                   quant_method=_quant_method(quant_method, recipe, quantizes))


def _scope(scope: str | None, method: str) -> str | None:
    if scope is None or method in ("none", "N:M"):
        return None
    if scope not in SCOPES:
        raise unknown_name("pruning scope", scope, SCOPES)
    return None if scope == PRUNE_SCORERS.get(method).default_scope else scope


def _quant_method(method: str | None, recipe: str, quantizes: bool) -> str | None:
    if method is None or not quantizes:
        return None
    own = range_methods(recipe)
    if method not in own:
        other = [r for r in QUANT_RECIPES.ordered() if method in range_methods(r)]
        hint = f"{method!r} is a range estimator of recipe {other[0]!r}" if other else f"recipe {recipe!r}'s methods"
        raise unknown_name("method", method, own, hint=hint)
    return None if method == own[0] else method


_LABEL_PART = re.compile(r"^(?P<method>[\w-]+) (?:(?P<pct>[0-9.]+)%|(?P<pat>\d+:\d+))"
                         r"(?: (?P<scope>global|layer|row))?(?P<bn> \+BN)?$")
_BITS_PART = re.compile(r"^W(?P<w>FP|\d+)A(?P<a>FP|\d+)(?: per-(?P<g>\w+))?(?: act-per-(?P<ag>\w+))?"
                        r"(?: (?P<r>[a-z][\w-]*))?(?: (?P<qm>[a-z]\w*))?$")


def parse_setting(label: str | Setting | dict[str, Any]) -> Setting:
    """The inverse of :meth:`Setting.label` (also takes a Setting, or a dict of make_setting arguments)."""
    if isinstance(label, Setting):
        return label
    if isinstance(label, dict):
        kw = {k: v for k, v in label.items() if k != "kind"}
        if kw.get("pattern") and kw.get("method") == "N:M":  # Setting.as_dict()
            kw["method"] = kw.pop("pattern")
        elif kw.get("pattern"):  # the sweep's form: method = the N:M score
            kw["nm_score"], kw["method"] = kw.get("method") or "magnitude", kw.pop("pattern")
        return make_setting(**kw)
    text = str(label).strip()
    if text.upper() in ("FP32", "FP", "FULL PRECISION", "NONE", ""):
        return DEFAULT_SETTING
    kw: dict[str, Any] = {"method": "none"}
    aliases = _compensation_aliases()
    for part in (p.strip() for p in text.split("+") if p.strip()):
        if part == "BN":
            kw["recalibrate_bn"] = True
        elif part.lower() in aliases:
            kw["compensation"] = part
        elif b := _BITS_PART.match(part):
            names, plain = QUANT_RECIPES.ordered(), range_methods(DEFAULT_RECIPE)
            if b["r"] and b["r"] not in names and (b["qm"] or b["r"] not in plain):
                raise unknown_name("quantization recipe", b["r"], names,
                                   hint=f"or a range method of {DEFAULT_RECIPE}: {', '.join(plain)}")
            recipe, qm = (b["r"], b["qm"]) if b["r"] in names else (DEFAULT_RECIPE, b["r"])
            kw.update(w_bits=b["w"], a_bits=b["a"], granularity=b["g"] or "channel", a_granularity=b["ag"] or "tensor",
                      recipe=recipe, quant_method=qm)
        elif p := _LABEL_PART.match(part):
            if p["pat"]:
                kw.update(method=p["pat"], nm_score=p["method"])
            else:
                kw.update(method=p["method"], sparsity=float(p["pct"]) / 100, scope=p["scope"])
            if p["bn"]:
                kw["recalibrate_bn"] = True
        else:
            raise ValueError(f"cannot read compression setting {label!r}: expected labels like 'magnitude 50%', "
                             "'wanda 2:4', 'W4A8', 'wanda 70% + W4A4', 'W4A4 repq + QwT-v2' or 'FP32'")
    return make_setting(**kw)
