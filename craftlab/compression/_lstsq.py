"""Closed-form affine least squares from streamed statistics, and the hooks that stream them (plumbing).

Rows ``x`` (N, d_in) and targets ``r`` (N, d_out) arrive batch by batch; :class:`Moments` keeps their
sums in float64 (n, Σx, Σr, ΣxxT, ΣxrT, Σr²), so no calibration token is stored. Two fits:

* ``full``: ``r ≈ x W + b`` with W (d_in, d_out), the QwT compensation. Ordinary least squares with an
  intercept is solved from the centred normal equations ``(C_xx + λI) W = C_xr`` (C = covariance,
  i.e. sums divided by N), ``b = mean(r) − mean(x) W``. With λ = 0 this is exactly the least-squares
  solution with a column of ones appended (the bias is never penalised).
* ``diagonal``: one 1-D regression per channel, ``r_c ≈ w_c x_c + b_c`` (x and r have the same
  channels), ``w_c = cov(x_c, r_c) / (var(x_c) + λ)``, ``b_c = mean(r_c) − w_c mean(x_c)``.

λ is on the covariance scale (per-token averages), so it does not grow with the number of tokens.
Constant input channels (variance 0) carry no information beyond the intercept: their coefficients
are set to 0. When the remaining covariance is singular or nearly so (fewer tokens than channels,
collinear channels) and λ = 0, an automatic ridge λ = 1e-2 · mean(variance) is used and reported.
This automatic value is a CraftLab choice, not a number from the QwT papers.

:func:`stream` runs a model on calibration batches until one module has run and hands its input, its
output and the target output to a sink; :class:`Collector` turns those into rows for the moments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

AUTO_RIDGE = 1e-2  # automatic λ, relative to the mean variance of the (non-constant) input channels
_COND = 1e10  # covariance eigenvalue ratio above which the normal equations count as singular


class Moments:
    """Running float64 sums of rows ``x`` (n, d_in) and targets ``r`` (n, d_out) for an affine fit."""

    def __init__(self, diagonal: bool) -> None:
        self.diagonal = diagonal
        self.n = 0
        self.sx = self.sr = self.sxx = self.sxr = self.srr = None

    def add(self, x: torch.Tensor, r: torch.Tensor) -> None:
        x, r = x.detach().double(), r.detach().double()
        if self.diagonal and x.shape != r.shape:
            raise ValueError(f"a channel-wise fit needs inputs and targets of one shape, got {x.shape} and {r.shape}")
        parts = (x.sum(0), r.sum(0), (x * x).sum(0) if self.diagonal else x.T @ x,
                 (x * r).sum(0) if self.diagonal else x.T @ r, (r * r).sum(0))
        if self.n == 0:
            self.sx, self.sr, self.sxx, self.sxr, self.srr = (p.cpu() for p in parts)
        else:
            for name, p in zip(("sx", "sr", "sxx", "sxr", "srr"), parts):
                setattr(self, name, getattr(self, name) + p.cpu())
        self.n += x.shape[0]

    def covariances(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean x, mean r, C_xx, C_xr), divided by n (C_xx is a vector of variances when diagonal)."""
        n = self.n
        mx, mr = self.sx / n, self.sr / n
        if self.diagonal:
            return mx, mr, self.sxx / n - mx * mx, self.sxr / n - mx * mr
        return mx, mr, self.sxx / n - torch.outer(mx, mx), self.sxr / n - torch.outer(mx, mr)


@dataclass
class Fit:
    """A fitted affine map: ``weight`` (d_in, d_out), or (d,) when diagonal, and ``bias`` (d_out,)."""

    weight: torch.Tensor
    bias: torch.Tensor
    ridge_used: float
    note: str = ""


def _solve(cxx: torch.Tensor, cxr: torch.Tensor, n: int, ridge: float) -> tuple[torch.Tensor, float, str]:
    """W for one (group of) channels: constant channels dropped, automatic ridge when singular."""
    var = cxx.diagonal()
    active = var > 1e-12 * max(float(var.max()), 1e-300)
    w = torch.zeros(cxx.shape[0], cxr.shape[1], dtype=torch.float64)
    notes = []
    if int((~active).sum()):
        notes.append(f"{int((~active).sum())} constant input channel(s) left to the bias")
    if not bool(active.any()):
        return w, ridge, "; ".join(notes)
    c = cxx[active][:, active]
    lam = ridge
    if ridge == 0.0:
        eig = torch.linalg.eigvalsh(c)
        if n - 1 < c.shape[0] or float(eig[0]) <= float(eig[-1]) / _COND:
            lam = AUTO_RIDGE * float(var[active].mean())
            why = f"{n} tokens for {c.shape[0]} channels" if n - 1 < c.shape[0] else "singular covariance"
            notes.append(f"automatic ridge {lam:.3g} ({why})")
    eye = torch.eye(c.shape[0], dtype=torch.float64)
    w[active] = torch.linalg.solve(c + lam * eye, cxr[active])
    return w, lam, "; ".join(notes)


def fit_full(m: Moments, ridge: float = 0.0, groups: int = 1) -> Fit:
    """Least-squares ``r ≈ x W + b``; with `groups` > 1, W is block-diagonal (input slice g -> output slice g)."""
    mx, mr, cxx, cxr = m.covariances()
    d_in, d_out = cxr.shape
    if d_in % groups or d_out % groups:
        raise ValueError(f"groups={groups} must divide both {d_in} input and {d_out} output channels")
    gi, go = d_in // groups, d_out // groups
    w = torch.zeros(d_in, d_out, dtype=torch.float64)
    used, notes = 0.0, []
    for g in range(groups):
        si, so = slice(g * gi, (g + 1) * gi), slice(g * go, (g + 1) * go)
        w[si, so], lam, note = _solve(cxx[si, si], cxr[si, so], m.n, ridge)
        used = max(used, lam)
        if note and note not in notes:
            notes.append(note)
    return Fit(w, mr - mx @ w, used, "; ".join(notes))


def fit_diagonal(m: Moments, ridge: float = 0.0) -> Fit:
    """Per-channel 1-D least squares ``r_c ≈ w_c x_c + b_c`` (ridge λ shrinks w_c towards 0)."""
    mx, mr, var, cov = m.covariances()
    active = var > 1e-12 * max(float(var.max()), 1e-300)
    w = torch.where(active, cov / (var + ridge).clamp_min(1e-300), torch.zeros_like(var))
    const = int((~active).sum())
    note = f"{const} constant channel(s): offset only" if const else ""
    return Fit(w, mr - w * mx, ridge, note)


def score(m: Moments, fit: Fit) -> dict[str, float]:
    """``mse_before`` (mean r², no compensation), ``mse_after`` (mean residual² of the fit) and ``r2``.

    R² = 1 − SS_res / SS_tot with SS_tot = Σ (r − mean r)² pooled over every output channel (the
    official QwT code's definition); NaN when the target does not vary.
    """
    n, w, b = m.n, fit.weight, fit.bias
    if m.diagonal:
        ss_res = (m.srr - 2 * w * m.sxr - 2 * b * m.sr + w * w * m.sxx + 2 * w * b * m.sx + n * b * b).sum()
    else:
        ss_res = (m.srr.sum() - 2 * (w * m.sxr).sum() - 2 * b @ m.sr + (w * (m.sxx @ w)).sum()
                  + 2 * b @ (w.T @ m.sx) + n * b @ b)
    ss_res = max(float(ss_res), 0.0)
    ss_tot = float((m.srr - m.sr * m.sr / n).sum())
    size = n * m.sr.numel()
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 1e-30 * max(float(m.srr.sum()), 1e-300) else float("nan")
    return {"mse_before": float(m.srr.sum()) / size, "mse_after": ss_res / size, "r2": r2}


class Stop(Exception):
    """Raised by a hook to end a forward pass once the module of interest has run."""


def run_until(model: nn.Module, x: torch.Tensor, name: str) -> None:
    try:
        model(x)
    except Stop:
        return
    raise ValueError(f"module {name!r} did not run in the model's forward pass: it cannot be compensated")


class Collector:
    """Feeds per-image batches of (x, r) rows into the fit and holdout moments, subsampling to `max_tokens`."""

    def __init__(self, diagonal: bool, holdout: float, max_tokens: int | None, images: int, seed: int) -> None:
        self.fit, self.hold = Moments(diagonal), Moments(diagonal)
        self.holdout, self.max_tokens, self.images = holdout, max_tokens, images
        self.frac: float | None = None
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, x: torch.Tensor, r: torch.Tensor, rows) -> None:
        b = x.shape[0]
        k = b - round(self.holdout * b) if b > 1 else b
        for part, mom in ((slice(0, k), self.fit), (slice(k, b), self.hold)):
            if part.start == part.stop:
                continue
            xr, rr = rows(x[part]), rows(r[part])
            if self.frac is None:
                per_image = xr.shape[0] / (part.stop - part.start)
                self.frac = 1.0 if self.max_tokens is None else min(1.0, self.max_tokens / (per_image * self.images))
            if self.frac < 1.0:
                keep = torch.randperm(xr.shape[0], generator=self.gen)[: max(1, round(self.frac * xr.shape[0]))]
                xr, rr = xr[keep.to(xr.device)], rr[keep.to(rr.device)]
            mom.add(xr, rr)


def stream(work, mod, reference, ref_mod, name, batches, target, sink) -> None:
    """For every batch, run `work` until `mod` has run and call ``sink(x, y_q, y_target)``."""
    stash: dict[str, Any] = {}

    def pre(_m, args, kwargs):
        stash["args"], stash["kwargs"] = (args[0].clone(), *args[1:]), kwargs

    def post(_m, _args, _kwargs, out):
        y = ref_mod(*stash["args"], **stash["kwargs"]) if target == "same-input" else stash["ref"]
        sink(stash["args"][0], out, y)
        raise Stop

    def ref_post(_m, _args, out):
        stash["ref"] = out
        raise Stop

    handles = [mod.register_forward_pre_hook(pre, with_kwargs=True), mod.register_forward_hook(post, with_kwargs=True)]
    if target == "reference":
        handles.append(ref_mod.register_forward_hook(ref_post))
    try:
        for x in batches:
            if target == "reference":
                run_until(reference, x, name)
            run_until(work, x, name)
    finally:
        for h in handles:
            h.remove()


def rows_fn(channel_dim: int):
    def rows(t: torch.Tensor) -> torch.Tensor:
        t = t.movedim(channel_dim, -1) if channel_dim != -1 else t
        return t.reshape(-1, t.shape[-1])
    return rows
