"""The search space of a mixed-precision supernet and its configurations (subnets).

A :class:`SubnetConfig` is one subnet: per searchable layer a weight and an activation bit-width, plus the
structural operators of a ViT: input ``resolution`` (pixels), ``depth`` (the first `depth` blocks run),
``mlp_ratio`` (MLP hidden width / embedding width, the first units kept) and ``heads`` (the first heads
kept). A :class:`SearchSpace` holds the candidates of every gene and samples, mutates, crosses over and
validates configurations; all randomness comes from a ``random.Random`` passed in (never torch's RNG).

Operators a model does not have are ``None`` in its configurations (a CNN has no depth/width/heads here).
Costs (BitOPs, size) need the model's MAC counts: :meth:`craftlab.supernet.model.Supernet.cost`.

Example::

    >>> space = SearchSpace(layers=("fc1", "fc2"), blocks=(None, None), w_bits=(4, 8), a_bits=(8,))
    >>> space.uniform(4, 8).label()
    'W4A8'
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .._errors import ALLOWED_BITS

OPERATORS = ("bits", "resolution", "depth", "mlp_ratio", "heads")
"""Every dimension a configuration can have; ``bits`` is per layer, the others are one value per subnet."""
STRUCTURAL = ("resolution", "depth", "mlp_ratio", "heads")
DEFAULT_W_BITS = (2, 3, 4, 6, 8)
DEFAULT_A_BITS = (4, 6, 8)
LORA_MODES = ("shared", "per-bit")
"""LoRA designs: one adapter for every bit-width, or one per weight bit-width (the layer's current one runs)."""


def check_candidates(values: Any, what: str) -> tuple[int, ...]:
    """A sorted tuple of distinct bit-widths from 2..8 (ValueError naming the bad one)."""
    try:
        vals = sorted({int(v) for v in values})
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of bit-widths from 2..8, got {values!r}") from None
    bad = [v for v in vals if v not in ALLOWED_BITS or v > 8]
    if bad or not vals or any(float(v) != int(v) for v in values):
        raise ValueError(f"{what} must be bit-widths from 2..8 (a supernet quantizes every searchable layer), "
                         f"got {list(values)!r}")
    return tuple(vals)


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet: per-layer bits (in the space's layer order) and the structural operators (None: absent)."""

    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    resolution: int | None = None
    depth: int | None = None
    mlp_ratio: float | None = None
    heads: int | None = None

    def key(self) -> str:
        """A compact, unique text of the configuration (cache keys)."""
        ops = "".join(f"|{n[0]}{getattr(self, n):g}" for n in STRUCTURAL if getattr(self, n) is not None)
        return "w" + "".join(map(str, self.w_bits)) + "|a" + "".join(map(str, self.a_bits)) + ops

    def label(self) -> str:
        """``W4A8`` for uniform bits, else ``mixed W2-8 A4-8``; structural values appended (``r21 d3``)."""
        bits = _bits_label(self)
        short = {"resolution": "r", "depth": "d", "mlp_ratio": "mlp", "heads": "h"}
        return " ".join([bits] + [f"{short[n]}{getattr(self, n):g}" for n in STRUCTURAL
                                  if getattr(self, n) is not None])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["w_bits"], d["a_bits"] = list(self.w_bits), list(self.a_bits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubnetConfig:
        return cls(**{**d, "w_bits": tuple(d["w_bits"]), "a_bits": tuple(d["a_bits"])})


def _bits_label(cfg: SubnetConfig) -> str:
    w, a = set(cfg.w_bits), set(cfg.a_bits)
    if len(w) == 1 and len(a) == 1:
        return f"W{cfg.w_bits[0]}A{cfg.a_bits[0]}"
    return f"mixed W{min(w)}-{max(w)} A{min(a)}-{max(a)}"


@dataclass(frozen=True)
class SearchSpace:
    """Candidates of every gene. ``layers``: searchable layer names in forward order; ``blocks``: the block
    index of each (None outside the blocks; used by ``depth``); operator tuples are None when absent."""

    layers: tuple[str, ...]
    blocks: tuple[int | None, ...]
    w_bits: tuple[int, ...] = DEFAULT_W_BITS
    a_bits: tuple[int, ...] = DEFAULT_A_BITS
    resolutions: tuple[int, ...] | None = None
    depths: tuple[int, ...] | None = None
    mlp_ratios: tuple[float, ...] | None = None
    heads: tuple[int, ...] | None = None
    native: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "w_bits", check_candidates(self.w_bits, "w_bits candidates"))
        object.__setattr__(self, "a_bits", check_candidates(self.a_bits, "a_bits candidates"))
        if len(self.blocks) != len(self.layers):
            raise ValueError("blocks must give one block index (or None) per layer")
        for name in ("resolutions", "depths", "mlp_ratios", "heads"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(sorted(set(v))))

    # ---- genes -------------------------------------------------------------------------------------
    def _choices(self, op: str) -> tuple | None:
        return {"resolution": self.resolutions, "depth": self.depths, "mlp_ratio": self.mlp_ratios,
                "heads": self.heads}[op]

    def elastic(self) -> list[str]:
        """Operators with more than one candidate (``bits`` when the bit sets allow any choice)."""
        out = ["bits"] if len(self.w_bits) > 1 or len(self.a_bits) > 1 else []
        return out + [op for op in STRUCTURAL if (c := self._choices(op)) is not None and len(c) > 1]

    def _ops(self, pick) -> dict[str, Any]:
        return {op: (pick(c) if (c := self._choices(op)) is not None else None) for op in STRUCTURAL}

    def uniform(self, w_bits: int, a_bits: int, **ops: Any) -> SubnetConfig:
        """Every layer at (w_bits, a_bits); structural operators at their largest unless given."""
        n = len(self.layers)
        unknown = set(ops) - set(STRUCTURAL)
        if unknown:
            raise ValueError(f"unknown operator {sorted(unknown)[0]!r}; operators: {', '.join(OPERATORS)}")
        cfg = SubnetConfig((int(w_bits),) * n, (int(a_bits),) * n, **{**self._ops(max), **ops})
        return self.validate(cfg)

    def largest(self, w_allowed: tuple[int, ...] | None = None, a_allowed: tuple[int, ...] | None = None):
        """The largest subnet: the most bits everywhere (of the allowed ones) and every structural maximum."""
        return self.uniform(max(w_allowed or self.w_bits), max(a_allowed or self.a_bits))

    def smallest(self, w_allowed: tuple[int, ...] | None = None, a_allowed: tuple[int, ...] | None = None):
        """The smallest subnet: the fewest (allowed) bits everywhere and every structural minimum."""
        return self.uniform(min(w_allowed or self.w_bits), min(a_allowed or self.a_bits), **self._ops(min))

    def sample(self, rng: random.Random, w_allowed: tuple[int, ...] | None = None,
               a_allowed: tuple[int, ...] | None = None) -> SubnetConfig:
        """A uniformly random configuration (each gene independently) from the (allowed) candidates."""
        w, a = w_allowed or self.w_bits, a_allowed or self.a_bits
        n = len(self.layers)
        return SubnetConfig(tuple(rng.choice(w) for _ in range(n)), tuple(rng.choice(a) for _ in range(n)),
                            **self._ops(rng.choice))

    def mutate(self, cfg: SubnetConfig, rng: random.Random, prob: float = 0.1) -> SubnetConfig:
        """Resample each gene with probability `prob` (OFA's ``arch_mutate_prob``)."""
        w = tuple(rng.choice(self.w_bits) if rng.random() < prob else b for b in cfg.w_bits)
        a = tuple(rng.choice(self.a_bits) if rng.random() < prob else b for b in cfg.a_bits)
        ops = {op: (rng.choice(c) if rng.random() < prob else getattr(cfg, op))
               for op in STRUCTURAL if (c := self._choices(op)) is not None}
        return replace(cfg, w_bits=w, a_bits=a, **ops)

    def crossover(self, x: SubnetConfig, y: SubnetConfig, rng: random.Random) -> SubnetConfig:
        """Each gene from either parent with probability 1/2."""
        pick = lambda u, v: u if rng.random() < 0.5 else v
        ops = {op: pick(getattr(x, op), getattr(y, op)) for op in STRUCTURAL}
        return SubnetConfig(tuple(map(pick, x.w_bits, y.w_bits)), tuple(map(pick, x.a_bits, y.a_bits)), **ops)

    def lower(self, cfg: SubnetConfig, rng: random.Random) -> SubnetConfig | None:
        """One random gene one step cheaper (a bit-width or a structural value); None at the smallest subnet."""
        moves: list[tuple[str, int | None]] = []
        active = self.active_layers(cfg)
        moves += [("w", i) for i in active if cfg.w_bits[i] > self.w_bits[0]]
        moves += [("a", i) for i in active if cfg.a_bits[i] > self.a_bits[0]]
        moves += [(op, None) for op in STRUCTURAL
                  if (c := self._choices(op)) is not None and getattr(cfg, op) > c[0]]
        if not moves:
            return None
        kind, i = rng.choice(moves)
        if kind in ("w", "a"):
            cands = self.w_bits if kind == "w" else self.a_bits
            bits = list(getattr(cfg, f"{kind}_bits"))
            bits[i] = cands[cands.index(bits[i]) - 1]
            return replace(cfg, **{f"{kind}_bits": tuple(bits)})
        c = self._choices(kind)
        return replace(cfg, **{kind: c[c.index(getattr(cfg, kind)) - 1]})

    def active_layers(self, cfg: SubnetConfig) -> list[int]:
        """Indices of the layers that run in `cfg` (those of dropped blocks do not)."""
        return [i for i, b in enumerate(self.blocks) if b is None or cfg.depth is None or b < cfg.depth]

    def canonical(self, cfg: SubnetConfig) -> SubnetConfig:
        """`cfg` with the bits of layers that do not run (dropped blocks) set to the largest: equal subnets
        get equal keys."""
        keep = set(self.active_layers(cfg))
        w = tuple(b if i in keep else self.w_bits[-1] for i, b in enumerate(cfg.w_bits))
        a = tuple(b if i in keep else self.a_bits[-1] for i, b in enumerate(cfg.a_bits))
        return replace(cfg, w_bits=w, a_bits=a)

    def label(self, cfg: SubnetConfig) -> str:
        """`cfg`'s label with only the operators this space can change: ``W4A8``, ``mixed W2-8 A4-8 d3``."""
        short = {"resolution": "r", "depth": "d", "mlp_ratio": "mlp", "heads": "h"}
        elastic = [op for op in STRUCTURAL if (c := self._choices(op)) is not None and len(c) > 1]
        return " ".join([_bits_label(cfg)] + [f"{short[op]}{getattr(cfg, op):g}" for op in elastic])

    def size(self) -> float:
        """log10 of the number of configurations."""
        n = len(self.layers) * (math.log10(len(self.w_bits)) + math.log10(len(self.a_bits)))
        return n + sum(math.log10(len(c)) for op in STRUCTURAL if (c := self._choices(op)) is not None)

    # ---- validation ----------------------------------------------------------------------------------
    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """`cfg` if every gene is a candidate of this space, else a ValueError naming the first bad gene."""
        if not isinstance(cfg, SubnetConfig):
            raise TypeError(f"expected a SubnetConfig, got {type(cfg).__name__}")
        n = len(self.layers)
        for kind, bits, cands in (("w_bits", cfg.w_bits, self.w_bits), ("a_bits", cfg.a_bits, self.a_bits)):
            if len(bits) != n:
                raise ValueError(f"{kind} gives {len(bits)} bit-widths for a space of {n} layers")
            for name, b in zip(self.layers, bits):
                if b not in cands:
                    raise ValueError(f"{kind} {b!r} of layer {name!r} is not in the candidate set {cands}")
        for op in STRUCTURAL:
            value, cands = getattr(cfg, op), self._choices(op)
            if cands is None and value is not None:
                raise ValueError(f"operator {op!r} is not supported by this supernet ({self.native.get('kind', '')} "
                                 f"model); its operators: {', '.join(self.operators())}")
            if cands is not None and value not in cands:
                raise ValueError(f"{op} {value!r} is not in the search space {cands}; build the supernet with "
                                 f"more {op} candidates to use it")
        return cfg

    def operators(self) -> list[str]:
        return ["bits"] + [op for op in STRUCTURAL if self._choices(op) is not None]

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_budget(value: Any, fp32_bitops: float) -> float:
    """A BitOPs budget from user input: a number (``1.2e8``), a number with a suffix (``120M``, ``1.5G``) or
    a percentage of the FP32 model's BitOPs (``5%``). ValueError for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        budget = float(value)
    else:
        text = str(value).strip().lower().replace("bitops", "").strip()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt%]?)", text)
        if not m:
            raise ValueError(f"budget must be BitOPs like 1.2e8, 120M, 1.5G or a percentage of FP32 like 5%, "
                             f"got {value!r}")
        num, unit = float(m.group(1)), m.group(2)
        budget = num / 100 * fp32_bitops if unit == "%" else num * _SUFFIX[unit]
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive number of BitOPs, got {value!r}")
    return budget
