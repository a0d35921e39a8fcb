"""QwT (Fu et al., "Quantization without Tears", CVPR 2025): a linear side path per block, ``block_q(x) + W x + b``,
fitted by least squares on the block's error on the same quantized-path input (a 1x1 conv with the block's stride on
conv blocks). See :mod:`craftlab.compression.compensate` for the details and the differences from the official code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import COMPENSATION_METHODS, Compensation

if TYPE_CHECKING:
    from torch import nn


@COMPENSATION_METHODS.register("qwt")
@dataclass(frozen=True)
class QwT(Compensation):
    """A linear side path per block (cannot fold: it costs parameters and latency)."""

    label = "QwT"
    blurb = "side paths"
    default_target = "same-input"

    def placements(self, work: nn.Module, reference: nn.Module, blocks: Sequence[str] | None,
                   placement: str | Sequence[str]) -> list[str]:
        from ..compensate import find_blocks

        return find_blocks(work, blocks)

    def fit(self, work: nn.Module, reference: nn.Module, names: list[str], batches: list[Any], opts: dict[str, Any],
            mods: dict[str, nn.Module], ref_mods: dict[str, nn.Module],
            next_bn: dict[str, nn.Module]) -> list[dict[str, Any]]:
        import torch
        from torch import nn

        from .._lstsq import Collector, fit_full, rows_fn, score, stream
        from ..compensate import _gate_note, _parent, _stride
        from ..fold import QwTBlock

        report = []
        for name in names:
            block = mods[name]
            conv = any(isinstance(m, nn.Conv2d) for m in block.modules())
            col = Collector(False, opts["holdout"], opts["max_tokens"], opts["images"], opts["seed"])
            info: dict[str, Any] = {}

            def sink(x, yq, yt, conv=conv, col=col, info=info, name=name):
                if conv:
                    info.setdefault("stride", _stride(x, yq, name))
                    x = x[:, :, :: info["stride"], :: info["stride"]]
                info.update(d_in=x.shape[1 if conv else -1], d_out=yq.shape[1 if conv else -1], dtype=yq.dtype,
                            device=yq.device, per_image=x[:1].numel() // x.shape[1 if conv else -1])
                col.add(x, yt - yq, rows_fn(1 if conv else -1))

            stream(work, block, reference, ref_mods[name], name, batches, opts["target"], sink)
            groups = opts["conv_groups"] if conv else 1
            fit = fit_full(col.fit, opts["ridge"], groups)
            sc = score(col.fit, fit)
            hold = score(col.hold, fit) if col.hold.n else None
            r2 = hold["r2"] if hold else sc["r2"]
            use = not (opts["r2_gate"] and not r2 > 0)
            d_in, d_out = info["d_in"], info["d_out"]
            if conv:
                comp = nn.Conv2d(d_in, d_out, 1, stride=info["stride"], groups=groups, bias=True)
                gi, go = d_in // groups, d_out // groups
                w = torch.cat([fit.weight[g * gi:(g + 1) * gi, g * go:(g + 1) * go].T for g in range(groups)])
                comp.weight.data = w.reshape(d_out, gi, 1, 1).float()
            else:
                comp = nn.Linear(d_in, d_out)
                comp.weight.data = fit.weight.T.contiguous().float()
            comp.bias.data = fit.bias.float()
            comp = comp.to(device=info["device"], dtype=info["dtype"])
            if use:
                parent, child = _parent(mods, name)
                setattr(parent, child, QwTBlock(block, comp).train(block.training))
            n_par = sum(p.numel() for p in comp.parameters()) if use else 0
            report.append({"name": name, "method": "qwt", "kind": "conv1x1" if conv else "linear", "r2": sc["r2"],
                           "r2_holdout": hold["r2"] if hold else None, "mse_before": sc["mse_before"],
                           "mse_after": sc["mse_after"] if use else sc["mse_before"], "params_added": n_par,
                           "macs_added": info["per_image"] * d_in * d_out // groups if use else 0,
                           "ridge_used": fit.ridge_used, "tokens": col.fit.n, "compensated": use,
                           "note": "; ".join(filter(None, [fit.note, "" if use else _gate_note(r2)]))})
        return report
