"""QwT-v2 (Tang et al., arXiv 2505.20932): channel-wise affine compensation (CWAC), ``a_c·y_c + b_c`` per output
channel of each changed layer, folded into its weights and bias. The closed form is DERIVED (QwT's normal equations
restricted to a diagonal map); see :mod:`craftlab.compression.compensate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import COMPENSATION_METHODS, Compensation

if TYPE_CHECKING:
    from torch import nn


@COMPENSATION_METHODS.register("qwt-v2")
@dataclass(frozen=True)
class QwTv2(Compensation):
    """A channel-wise affine per changed layer (folds for free), or per block output (``placement="blocks"``)."""

    label = "QwT-v2"
    aliases = ("qwtv2", "qwt_v2", "qwt v2", "cwac")
    blurb = "folded"
    default_target = "reference"
    foldable = True

    def placements(self, work: nn.Module, reference: nn.Module, blocks: Sequence[str] | None,
                   placement: str | Sequence[str]) -> list[str]:
        from ..compensate import _changed_layers, find_blocks

        if isinstance(placement, str) and placement in ("layers", "blocks"):
            return _changed_layers(work, reference) if placement == "layers" else find_blocks(work, blocks)
        return find_blocks(work, [placement] if isinstance(placement, str) else placement)

    def fit(self, work: nn.Module, reference: nn.Module, names: list[str], batches: list[Any], opts: dict[str, Any],
            mods: dict[str, nn.Module], ref_mods: dict[str, nn.Module],
            next_bn: dict[str, nn.Module]) -> list[dict[str, Any]]:
        from .._lstsq import Collector, fit_diagonal, rows_fn, score, stream
        from ..compensate import _channel_dim, _gate_note, _parent
        from ..fold import ChannelAffine

        report = []
        for name in names:
            mod = mods[name]
            col = Collector(True, opts["holdout"], opts["max_tokens"], opts["images"], opts["seed"])
            info: dict[str, Any] = {}

            def sink(x, yq, yt, mod=mod, col=col, info=info):
                cd = info.setdefault("cd", _channel_dim(mod, yq))
                info.update(dtype=yq.dtype, device=yq.device)
                col.add(yq, yt - yq, rows_fn(cd))

            stream(work, mod, reference, ref_mods[name], name, batches, opts["target"], sink)
            fit = fit_diagonal(col.fit, opts["ridge"])
            sc = score(col.fit, fit)
            hold = score(col.hold, fit) if col.hold.n else None
            r2 = hold["r2"] if hold else sc["r2"]
            use = not (opts["r2_gate"] and not r2 > 0)
            gain = (1.0 + fit.weight).to(device=info["device"], dtype=info["dtype"])
            if use:
                wrapper = ChannelAffine(mod, gain, fit.bias.to(device=info["device"], dtype=info["dtype"]), info["cd"])
                if name in next_bn:
                    object.__setattr__(wrapper, "_next_bn", next_bn[name])  # a reference, not a registered submodule
                parent, child = _parent(mods, name)
                setattr(parent, child, wrapper.train(mod.training))
            report.append({"name": name, "method": "qwt-v2", "kind": "channel affine", "r2": sc["r2"],
                           "r2_holdout": hold["r2"] if hold else None, "mse_before": sc["mse_before"],
                           "mse_after": sc["mse_after"] if use else sc["mse_before"],
                           "params_added": 2 * gain.numel() if use else 0, "macs_added": 0,
                           "ridge_used": fit.ridge_used, "tokens": col.fit.n, "compensated": use,
                           "negative_gains": int((gain < 0).sum()) if use else 0,
                           "note": "; ".join(filter(None, [fit.note, "" if use else _gate_note(r2)]))})
        return report
