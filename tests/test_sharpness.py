"""Sharpness probes against dense Hessians of a tiny float64 MLP, plus exact-restore checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from craftlab import hessian as H
from craftlab import sharpness as S


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: one thread is faster and avoids oversubscription on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _data(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _loss_at(model: nn.Module, x, y, overrides: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(functional_call(model, overrides, (x,)), y)


def _dense_hessian(model: nn.Module, x, y, names: list[str] | None = None) -> torch.Tensor:
    """Exact Hessian of the mean cross-entropy w.r.t. the flattened `names` (others fixed)."""
    names = names or _names(model)
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(flat):
        d, i = {}, 0
        for n, s in zip(names, shapes):
            d[n] = flat[i:i + s.numel()].view(s)
            i += s.numel()
        return _loss_at(model, x, y, d)

    return torch.autograd.functional.hessian(f, flat0)


def _flat(d: dict[str, torch.Tensor] | list[torch.Tensor], names: list[str] | None = None) -> torch.Tensor:
    ts = [d[n] for n in names] if names is not None else d
    return torch.cat([t.reshape(-1) for t in ts])


def _by_magnitude(ev: torch.Tensor) -> torch.Tensor:
    return ev[torch.argsort(ev.abs(), descending=True)]


@pytest.fixture(scope="module")
def mlp():
    model, (x, y) = _mlp(), _data()
    h = _dense_hessian(model, x, y)
    return model, x, y, h, _by_magnitude(torch.linalg.eigvalsh(h))


# ---------------------------------------------------------------------------------------------


def test_hvp_matches_dense(mlp):
    model, x, y, h, _ = mlp
    g = torch.Generator().manual_seed(3)
    vs = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in model.parameters()]
    hv = H.hessian_vector_product(model, (x, y), vs)
    assert isinstance(hv, list) and [t.shape for t in hv] == [p.shape for p in model.parameters()]
    torch.testing.assert_close(_flat(hv), h @ _flat(vs), rtol=1e-10, atol=1e-12)
    names = _names(model)
    hv_d = H.hessian_vector_product(model, [(x, y)], dict(zip(names, vs)))
    assert isinstance(hv_d, dict) and list(hv_d) == names
    torch.testing.assert_close(_flat(hv_d, names), h @ _flat(vs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("max_cached", [4, 0])
def test_hvp_several_batches_is_example_weighted(mlp, monkeypatch, max_cached):
    model, x, y, h, _ = mlp
    monkeypatch.setattr(H, "MAX_CACHED_BATCHES", max_cached)  # 0: rebuild the graph for every product
    batches = [(x[:5], y[:5]), (x[5:20], y[5:20]), (x[20:], y[20:])]  # unequal sizes
    vs = [torch.ones_like(p) for p in model.parameters()]
    hv = H.hessian_vector_product(model, batches, vs)
    torch.testing.assert_close(_flat(hv), h @ _flat(vs), rtol=1e-10, atol=1e-12)


def test_hvp_with_params_subset(mlp):
    model, x, y, _, _ = mlp
    names = ["2.weight", "0.bias"]
    h_sub = _dense_hessian(model, x, y, names)
    vs = {n: torch.full_like(dict(model.named_parameters())[n], 0.5) for n in names}
    hv = H.hessian_vector_product(model, (x, y), vs)
    torch.testing.assert_close(_flat(hv, names), h_sub @ _flat(vs, names), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_match_dense(mlp, method):
    model, x, y, h, ev = mlp
    r = H.top_hessian_eigenvalues(model, (x, y), k=3, method=method, tol=1e-9, max_iter=3000,
                                  return_eigenvectors=True, seed=1)
    assert r.converged and r.method == method and r.n_hvp > 0
    assert len(r.eigenvalues) == 3
    assert [abs(v) for v in r.eigenvalues] == sorted((abs(v) for v in r.eigenvalues), reverse=True)
    lam = torch.tensor(r.eigenvalues, dtype=torch.float64)
    assert abs(lam[0] - ev[0]) / abs(ev[0]) < 1e-3
    assert torch.all((lam - ev[:3]).abs() / ev[:3].abs() < 1e-3), (lam, ev[:3])
    names = _names(model)
    for value, vec in zip(r.eigenvalues, r.eigenvectors):
        assert list(vec) == names
        v = _flat(vec, names)
        assert abs(float(v.norm()) - 1) < 1e-6
        assert float((h @ v - value * v).norm()) < 1e-3 * abs(float(ev[0]))


def test_lanczos_default_tol_is_accurate_and_cheaper_than_power(mlp):
    model, x, y, _, ev = mlp
    lz = H.top_hessian_eigenvalues(model, (x, y), k=2)
    pw = H.top_hessian_eigenvalues(model, (x, y), k=2, method="power")
    assert lz.eigenvectors is None
    assert abs(lz.eigenvalues[0] - ev[0]) / abs(ev[0]) < 1e-4
    assert abs(lz.eigenvalues[1] - ev[1]) / abs(ev[1]) < 1e-3
    assert lz.n_hvp < pw.n_hvp
    # deterministic given the seed
    assert H.top_hessian_eigenvalues(model, (x, y), k=2).eigenvalues == lz.eigenvalues


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_trace_within_three_stderr(mlp, distribution):
    model, x, y, h, _ = mlp
    r = H.hessian_trace(model, (x, y), n_samples=300, seed=0, distribution=distribution)
    exact = float(torch.trace(h))
    assert len(r.samples) == 300 and r.n_hvp == 300
    # the estimator's exact variance: 2 Σ_{i≠j} H_ij² (Rademacher), 2 ‖H‖_F² (Gaussian)
    off = float((h ** 2).sum()) - (float((torch.diagonal(h) ** 2).sum()) if distribution == "rademacher" else 0.0)
    sigma = math.sqrt(2 * off / 300)
    assert 0.8 < r.stderr / sigma < 1.25, (r.stderr, sigma)
    assert abs(r.trace - exact) < 3 * sigma, (r.trace, exact, sigma)


# --------------------------------------------------------------------------------------------- known spectra


class _Quadratic(nn.Module):
    """Loss ½ wᵀAw (with `_value` as loss_fn): its Hessian is exactly A."""

    def __init__(self, a: torch.Tensor, seed: int = 0):
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(torch.randn(a.shape[0], generator=torch.Generator().manual_seed(seed), dtype=a.dtype))

    def forward(self, x):
        return (0.5 * self.w @ self.a @ self.w).expand(len(x))


def _value(out, y):
    return out.mean()


_BATCH = (torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.long))


def _with_spectrum(spectrum, seed: int = 0) -> torch.Tensor:
    """A random rotation of diag(spectrum) (float64)."""
    n = len(spectrum)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T


_SPECTRA = {  # (spectrum, k): repeated eigenvalues inside the top k
    "diag_3_3_2": ([3, 3, 2, 1, 0.5, 0.1], 3),
    "triple_top": ([5, 5, 5, 2, 1, -1, 0.5] + [0.1] * 20, 4),
    "negative_pairs": ([-4, -4, 3, 3, 1, 0.2, 0.1, 0.05] + [0.01] * 10, 4),
    "two_clusters": ([2.0] * 8 + [1.0] * 8, 5),
}


@pytest.mark.parametrize("case", list(_SPECTRA))
def test_lanczos_finds_repeated_eigenvalues(case):
    """One Lanczos run sees one copy of each eigenvalue: diag(3, 3, 2, ...) with k = 3 gave [3, 2, 1]."""
    spectrum, k = _SPECTRA[case]
    a = torch.diag(torch.tensor(spectrum, dtype=torch.float64)) if case == "diag_3_3_2" else _with_spectrum(spectrum)
    exact = _by_magnitude(torch.linalg.eigvalsh(a))[:k]
    r = H.top_hessian_eigenvalues(_Quadratic(a), _BATCH, k=k, loss_fn=_value, return_eigenvectors=True)
    assert len(r.eigenvalues) == k and r.converged and r.runs >= 2
    torch.testing.assert_close(torch.tensor(r.eigenvalues, dtype=torch.float64), exact, rtol=1e-6, atol=1e-9)
    v = torch.stack([e["w"] for e in r.eigenvectors])
    torch.testing.assert_close(v @ v.T, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-6)  # distinct vectors
    torch.testing.assert_close(v @ a, torch.tensor(r.eigenvalues, dtype=torch.float64)[:, None] * v,
                               rtol=0, atol=1e-4)


def test_the_first_start_is_a_unit_draw_plus_the_unit_gradient():
    """gradient_start = r/‖r‖ + g/‖g‖ (r from the seed's generator, g = A w for the loss ½ wᵀAw), and
    top_hessian_eigenvalues starts from it; a zero gradient leaves the draw alone."""
    from craftlab.probes._probe import flat, probing
    from craftlab.probes.hessian import HessianOperator, eig_lanczos, gradient_start

    a = _with_spectrum([6.0, 4.0, 3.0, 1.0, 0.5, -0.2, 0.1, 0.05])
    model = _Quadratic(a, seed=2)
    w = model.w.detach().clone()
    for seed in (0, 3):
        r = torch.randn(8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        g = a @ w
        expected = r / r.norm() + g / g.norm()
        with probing(model, None) as sel:
            op = HessianOperator(model, [_BATCH], [p for _, p in sel], _value)
            gen = torch.Generator().manual_seed(seed)
            v0 = gradient_start(op, gen)
            torch.testing.assert_close(v0, expected, rtol=1e-12, atol=1e-12)
            gen = torch.Generator().manual_seed(seed)
            direct = eig_lanczos(op, 2, 100, 1e-4, gen, False, v0=gradient_start(op, gen)).values
        assert H.top_hessian_eigenvalues(model, _BATCH, k=2, seed=seed, loss_fn=_value).eigenvalues == direct
    with torch.no_grad():
        model.w.zero_()  # the gradient A w vanishes
    with probing(model, None) as sel:
        op = HessianOperator(model, [_BATCH], [p for _, p in sel], _value)
        v0 = gradient_start(op, torch.Generator().manual_seed(0))
    r = torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(flat([v0]), r / r.norm(), rtol=1e-12, atol=1e-12)


def test_a_top_eigenvector_orthogonal_to_the_gradient_is_still_found():
    """The gradient only biases the start: with w on the eigenvalue-4 eigenvector, g = 4 w has no component along
    the top eigenvector (eigenvalue 10), and the random part of the start still finds it."""
    spectrum = [10.0, 4.0, 3.0, 2.0, 1.0, 0.5] + [0.1] * 30
    n = len(spectrum)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T
    model = _Quadratic(a)
    with torch.no_grad():
        model.w.copy_(q[:, 1])  # an eigenvector of eigenvalue 4: the gradient is 4 q1, orthogonal to q0
    assert abs(float((a @ model.w.detach()) @ q[:, 0])) < 1e-12
    for seed in range(3):
        r = H.top_hessian_eigenvalues(model, _BATCH, k=2, seed=seed, tol=1e-10, loss_fn=_value)
        assert r.converged
        assert r.eigenvalues == pytest.approx([10.0, 4.0], rel=1e-8)


def test_a_confirming_run_never_stops_on_its_first_product():
    """With one Ritz value there is no gap: its error estimate is the residual, not r²/∞ = 0, so the 'below' stop
    (which asks only the estimate) waits for a second product."""
    from craftlab.probes.lanczos import _ritz_error, lanczos

    assert _ritz_error(torch.tensor([2.0]), torch.tensor([0.5]), 3.0, 0) == 1.5
    a = _with_spectrum([10.0, 5.0] + torch.linspace(0.05, 1.0, 40).tolist(), seed=3)
    v0 = torch.randn(a.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alphas, _, _, status = lanczos(lambda v: a @ v, v0, 200, 1, 1e-8, below=100.0, below_tol=0.5)
    assert status == "below" and len(alphas) >= 2


def test_lanczos_solver_on_dense_matrices():
    """The solver alone (mv = A @ v) on random spectra with multiplicities, against eigvalsh."""
    from craftlab.probes.lanczos import top_eigenpairs

    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        distinct = torch.randn(6, generator=g, dtype=torch.float64) * 3
        mult = torch.randint(1, 4, (6,), generator=g)
        spectrum = torch.repeat_interleave(distinct, mult).tolist() + [0.01] * 10
        a = _with_spectrum(spectrum, seed=trial)
        n, k = a.shape[0], int(torch.randint(1, 7, (1,), generator=g))
        r = top_eigenpairs(lambda v, a=a: a @ v, n, k, 10 * n, 1e-10,
                           lambda n=n: torch.randn(n, generator=g, dtype=torch.float64))
        exact = _by_magnitude(torch.linalg.eigvalsh(a))[:k]
        assert r.converged, (trial, spectrum)
        torch.testing.assert_close(torch.tensor(r.values, dtype=torch.float64), exact, rtol=1e-8, atol=1e-8)


def test_eigenvalues_k_is_always_honoured():
    a = torch.diag(torch.tensor([3, 3, 2, 1, 0.5, 0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="max_iter=3.*k=5"):  # used to return 3 values
        H.top_hessian_eigenvalues(_Quadratic(a), _BATCH, k=5, max_iter=3, loss_fn=_value)
    with pytest.raises(ValueError, match="k=7 exceeds"):
        H.top_hessian_eigenvalues(_Quadratic(a), _BATCH, k=7, loss_fn=_value)
    for method in ("lanczos", "power"):
        r = H.top_hessian_eigenvalues(_Quadratic(a), _BATCH, k=6, loss_fn=_value, method=method, tol=1e-10)
        assert sorted(r.eigenvalues) == pytest.approx([0.1, 0.5, 1, 2, 3, 3], rel=1e-6)
    # a budget too small to converge still gives k values, flagged
    model, (x, y) = _mlp(), _data()
    r = H.top_hessian_eigenvalues(model, (x, y), k=3, max_iter=3)
    assert len(r.eigenvalues) == 3 and not r.converged and r.n_hvp == 3


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_zero_curvature_gives_zero_eigenvalues(method):
    """Power iteration normalised H v = 0 and returned NaN; Lanczos returned one value for k = 2."""
    model = _Quadratic(torch.zeros(5, 5, dtype=torch.float64))
    r = H.top_hessian_eigenvalues(model, _BATCH, k=2, loss_fn=_value, method=method, return_eigenvectors=True)
    assert r.eigenvalues == [0.0, 0.0] and r.converged
    assert all(torch.isfinite(e["w"]).all() and abs(float(e["w"].norm()) - 1) < 1e-9 for e in r.eigenvectors)


def test_hessian_probes_are_reexported_by_sharpness():
    import craftlab

    for name in ("top_hessian_eigenvalues", "hessian_trace", "hessian_vector_product", "spectral_density",
                 "density_on_grid", "EigenResult", "TraceResult", "SpectralDensity"):
        assert getattr(S, name) is getattr(H, name) is getattr(craftlab.sharpness, name)
    assert craftlab.hessian is H


def test_results_serialise_to_json(mlp):
    """One field-driven serializer for every result: strict JSON, and back to the same numbers."""
    import json

    model, x, y, _, _ = mlp
    for r in (H.top_hessian_eigenvalues(model, (x, y), k=2, return_eigenvectors=True),
              H.hessian_trace(model, (x, y), 3), S.eps_sharpness(model, (x, y), return_perturbation=True),
              H.spectral_density(model, (x, y), n_iter=5)):
        d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
        back = type(r).from_dict(d)
        assert _numbers(back) == pytest.approx(_numbers(r), rel=1e-12)


def _sam_hand(model, x, y, rho, adaptive=False, eta=0.0):
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    loss = _loss_at(model, x, y, params)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    t = {n: (p.detach().abs() + eta) if adaptive else torch.ones_like(p) for n, p in params.items()}
    norm = math.sqrt(sum(float(((t[n] * grads[n]) ** 2).sum()) for n in params))
    eps = {n: rho * t[n] ** 2 * grads[n] / norm for n in params}
    with torch.no_grad():
        perturbed = _loss_at(model, x, y, {n: params[n] + eps[n] for n in params})
    return float(loss.detach()), float(perturbed), eps


@pytest.mark.parametrize(("adaptive", "eta"), [(False, 0.0), (True, 0.0), (True, 0.01)])
def test_eps_sharpness_one_step_matches_hand_computation(mlp, adaptive, eta):
    model, x, y, _, _ = mlp
    loss, perturbed, eps = _sam_hand(model, x, y, 0.05, adaptive, eta)
    r = S.eps_sharpness(model, (x, y), rho=0.05, adaptive=adaptive, eta=eta, return_perturbation=True)
    assert r.loss == pytest.approx(loss, rel=1e-12)
    assert r.perturbed_loss == pytest.approx(perturbed, rel=1e-10)
    assert r.sharpness == pytest.approx(perturbed - loss, rel=1e-8)
    assert r.sharpness > 0 and r.rho == 0.05 and r.steps == 1
    for n, e in eps.items():
        torch.testing.assert_close(r.perturbation[n], e, rtol=1e-8, atol=1e-14)
    assert r.eps_norm == pytest.approx(0.05, rel=1e-8)


@pytest.mark.parametrize("adaptive", [False, True])
def test_eps_sharpness_multistep_stays_in_ball_and_is_not_lower(mlp, adaptive):
    model, x, y, _, _ = mlp
    one = S.eps_sharpness(model, (x, y), rho=0.2, adaptive=adaptive)
    many = S.eps_sharpness(model, (x, y), rho=0.2, adaptive=adaptive, steps=6, return_perturbation=True)
    assert many.steps == 6
    assert many.sharpness >= one.sharpness - 1e-12
    assert many.eps_norm <= 0.2 * (1 + 1e-9)
    params = dict(model.named_parameters())
    if adaptive:  # ball metric ‖ε / |w|‖
        norm = math.sqrt(sum(float(((e / params[n].detach().abs()) ** 2).sum()) for n, e in many.perturbation.items()))
    else:
        norm = math.sqrt(sum(float((e ** 2).sum()) for e in many.perturbation.values()))
        assert many.l2_norm == pytest.approx(norm)
    assert norm == pytest.approx(many.eps_norm, rel=1e-9)
    assert norm <= 0.2 * (1 + 1e-9)
    # the kept perturbation really reaches the reported loss
    with torch.no_grad():
        reached = _loss_at(model, x, y, {n: p + many.perturbation[n] for n, p in params.items()})
    assert float(reached) == pytest.approx(many.perturbed_loss, rel=1e-10)


def test_eps_sharpness_several_batches_equals_one_batch(mlp):
    model, x, y, _, _ = mlp
    whole = S.eps_sharpness(model, (x, y))
    split = S.eps_sharpness(model, [(x[:7], y[:7]), (x[7:], y[7:])])
    assert split.sharpness == pytest.approx(whole.sharpness, rel=1e-9)
    assert split.loss == pytest.approx(whole.loss, rel=1e-12)


def test_layer_sharpness_matches_dense_blocks(mlp):
    model, x, y, _, _ = mlp
    weights = ["0.weight", "2.weight"]
    h_w = _dense_hessian(model, x, y, weights)  # Hessian restricted to the two weights
    sizes = [dict(model.named_parameters())[n].numel() for n in weights]
    blocks, i = [], 0
    for s in sizes:
        blocks.append(slice(i, i + s))
        i += s
    n = 400
    tr = S.layer_sharpness(model, (x, y), measure="trace", n_samples=n, seed=5)
    assert list(tr) == ["0", "2"]
    # per-layer values of one joint probe sum exactly to Hutchinson over the same weights and seed
    joint = H.hessian_trace(model, (x, y), n_samples=n, seed=5, params=weights)
    assert sum(tr.values()) == pytest.approx(joint.trace, rel=1e-10)
    assert abs(sum(tr.values()) - float(torch.trace(h_w))) < 3 * joint.stderr
    for name, b in zip(tr, blocks):
        exact = float(torch.trace(h_w[b, b]))
        # exact std of the per-layer Rademacher estimator v_lᵀ(Hv)_l = vᵀ B v with B = E_l H, symmetrised
        e = torch.zeros_like(h_w)
        e[b, b] = torch.eye(b.stop - b.start, dtype=h_w.dtype)
        sym = (e @ h_w + h_w @ e) / 2
        std = math.sqrt(2 * float((sym ** 2).sum() - (torch.diagonal(sym) ** 2).sum()))
        assert abs(tr[name] - exact) < 3.5 * std / math.sqrt(n), (name, tr[name], exact)
    lm = S.layer_sharpness(model, (x, y), measure="lambda_max", tol=1e-9, max_iter=200)
    for name, b in zip(lm, blocks):
        exact = float(_by_magnitude(torch.linalg.eigvalsh(h_w[b, b]))[0])
        assert lm[name] == pytest.approx(exact, rel=1e-6)


def test_spectral_density(mlp):
    model, x, y, h, ev = mlp
    lo, hi = float(ev.min()), float(ev.max())
    sd = H.spectral_density(model, (x, y), n_runs=3, n_iter=40, seed=0)
    assert sd.nodes.shape == sd.weights.shape == sd.run.shape
    assert float(sd.weights.sum()) == pytest.approx(1.0, abs=1e-10)
    assert bool((sd.weights >= 0).all())
    for r in range(3):
        assert float(sd.weights[sd.run == r].sum()) == pytest.approx(1 / 3, abs=1e-10)
    span = hi - lo
    assert abs(float(sd.nodes.min()) - lo) < 1e-3 * span
    assert abs(float(sd.nodes.max()) - hi) < 1e-3 * span
    assert float(sd.nodes.min()) >= lo - 1e-8 * span and float(sd.nodes.max()) <= hi + 1e-8 * span
    assert sd.n_params == h.shape[0] and sd.n_hvp == 3 * 40
    grid, dens = sd.on_grid(n_grid=2000)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-3)
    # Lanczos stops once the Krylov space is exhausted (67 parameters)
    full = H.spectral_density(model, (x, y), n_iter=200)
    assert len(full.nodes) <= h.shape[0]


def test_sharpness_summary_consistent(mlp):
    model, x, y, h, ev = mlp
    s = S.sharpness_summary(model, (x, y), rho=0.05)
    assert {"lambda_max", "trace", "trace_stderr", "eps_sharpness", "loss", "n_hvp", "seconds"} <= set(s)
    assert s["lambda_max"] == pytest.approx(float(ev[0]), rel=1e-2)
    assert s["eps_sharpness"] == pytest.approx(S.eps_sharpness(model, (x, y), rho=0.05).sharpness, rel=1e-9)
    assert s["n_hvp"] <= 10 + 3 and s["lambda_max_converged"]
    many = S.sharpness_summary(model, (x, y), n_samples=300, max_iter=100, tol=1e-8)
    assert many["n_hvp"] <= 100 + 299
    assert many["lambda_max"] == pytest.approx(float(ev[0]), rel=1e-6)
    assert abs(many["trace"] - float(torch.trace(h))) < 3 * many["trace_stderr"]
    assert many["trace_stderr"] < 0.2 * float(torch.trace(h))


def test_bad_arguments(mlp):
    model, x, y, _, _ = mlp
    with pytest.raises(ValueError, match="did you mean"):
        H.hessian_trace(model, (x, y), n_samples=2, params=["0.weigth"])
    with pytest.raises(ValueError, match="method"):
        H.top_hessian_eigenvalues(model, (x, y), method="arnoldi")
    with pytest.raises(ValueError, match="distribution"):
        H.hessian_trace(model, (x, y), distribution="uniform")
    with pytest.raises(ValueError, match="shape"):
        H.hessian_vector_product(model, (x, y), [torch.zeros(3)])


# --------------------------------------------------------------------------------------------- restore


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(self.drop(torch.tanh(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture(scope="module")
def bn_net():
    torch.manual_seed(0)
    net = _Net().double()
    x = torch.randn(12, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (12,))
    net.train()
    with torch.no_grad():
        net(x)  # non-trivial running statistics
    net.conv.bias.requires_grad_(False)  # a frozen parameter
    net.fc.weight.grad = torch.full_like(net.fc.weight, 0.25)  # a stale gradient that must survive
    return net, x, y


def _snapshot(net):
    return ({k: v.clone() for k, v in net.state_dict().items()},
            {n: (p.requires_grad, None if p.grad is None else p.grad.clone()) for n, p in net.named_parameters()},
            {n: m.training for n, m in net.named_modules()})


def _assert_same(net, snap):
    state, params, modes = snap
    now = net.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        assert torch.equal(now[k], v) and now[k].dtype == v.dtype, k
    for n, p in net.named_parameters():
        req, grad = params[n]
        assert p.requires_grad == req, n
        assert (p.grad is None) == (grad is None) and (grad is None or torch.equal(p.grad, grad)), n
    assert {n: m.training for n, m in net.named_modules()} == modes


def _numbers(obj):
    """Flatten a probe result into a list of floats for equality checks."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().reshape(-1).tolist()
    if isinstance(obj, dict):
        return [z for k in obj if k != "seconds" for z in _numbers(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [z for o in obj for z in _numbers(o)]
    if hasattr(obj, "__dataclass_fields__"):
        return [z for k in obj.__dataclass_fields__ if k != "seconds" for z in _numbers(getattr(obj, k))]
    if isinstance(obj, (bool, int, float)):
        return [float(obj)]
    return []


_PROBES = {
    "hvp": lambda m, b: H.hessian_vector_product(m, b, [torch.ones_like(p) for p in m.parameters() if p.requires_grad]),
    "lanczos": lambda m, b: H.top_hessian_eigenvalues(m, b, k=2, return_eigenvectors=True),
    "power": lambda m, b: H.top_hessian_eigenvalues(m, b, k=2, method="power", max_iter=20),
    "trace": lambda m, b: H.hessian_trace(m, b, n_samples=5),
    "eps": lambda m, b: S.eps_sharpness(m, b, rho=0.1, return_perturbation=True),
    "eps_asam_steps": lambda m, b: S.eps_sharpness(m, b, rho=0.1, adaptive=True, steps=3, eta=0.01),
    "layer_trace": lambda m, b: S.layer_sharpness(m, b, n_samples=5),
    "layer_lmax": lambda m, b: S.layer_sharpness(m, b, measure="lambda_max", max_iter=10),
    "slq": lambda m, b: H.spectral_density(m, b, n_iter=10),
    "summary": lambda m, b: S.sharpness_summary(m, b),
    "frozen_param": lambda m, b: H.hessian_trace(m, b, n_samples=3, params=["conv.bias", "bn.weight"]),
}


@pytest.mark.parametrize("probe", list(_PROBES))
def test_probes_restore_model_exactly_and_ignore_train_mode(bn_net, probe):
    net, x, y = bn_net
    snap = _snapshot(net)
    assert net.training
    in_train = _numbers(_PROBES[probe](net, [(x[:7], y[:7]), (x[7:], y[7:])]))
    _assert_same(net, snap)
    net.eval()
    try:
        in_eval = _numbers(_PROBES[probe](net, [(x[:7], y[:7]), (x[7:], y[7:])]))
    finally:
        net.train()
    _assert_same(net, snap)
    assert in_train and in_train == in_eval


def test_vit_double_backward_through_attention():
    """timm attention uses fused SDPA, which has no double backward: the probes must still work."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1,
                            num_heads=2, mlp_ratio=1.0)
    assert getattr(vit.blocks[0].attn, "fused_attn", True)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    g = torch.Generator().manual_seed(0)
    u = [torch.randn(p.shape, generator=g) for p in vit.parameters()]
    v = [torch.randn(p.shape, generator=g) for p in vit.parameters()]
    hu = H.hessian_vector_product(vit, (x, y), u)
    hv = H.hessian_vector_product(vit, (x, y), v)
    uhv, vhu = float(_flat(u) @ _flat(hv)), float(_flat(v) @ _flat(hu))
    assert uhv == pytest.approx(vhu, rel=1e-3, abs=1e-4)  # H is symmetric
    r = H.top_hessian_eigenvalues(vit, (x, y), k=1, tol=1e-3)
    assert math.isfinite(r.eigenvalues[0]) and r.eigenvalues[0] != 0


def test_math_attention_holds_until_the_last_thread_leaves():
    """torch's SDPA switches are process-wide: one thread leaving must not lift another thread's restriction."""
    import threading

    from craftlab.probes._probe import math_attention

    def fused_on():
        return torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.mem_efficient_sdp_enabled()

    assert fused_on()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with math_attention():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with math_attention():
            b_in.set()
            a_out.wait(5)
            seen["after_a_left"] = fused_on()
    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"after_a_left": False}
    assert fused_on()  # lifted once both left


def test_confirming_run_stops_early_without_a_cluster_and_converges_one():
    """The restart that checks for multiplicity costs a few products when nothing lies near the k-th value
    (its top Ritz value settles clearly below it), and still finds a repeated top eigenvalue."""
    from craftlab.probes.lanczos import lanczos, top_eigenpairs

    g = torch.Generator().manual_seed(1)
    bulk = torch.linspace(0.05, 1.0, 60).tolist()
    for spectrum, expected in (([10.0, 5.0, 2.0] + bulk, [10.0, 5.0]), ([10.0, 10.0, 5.0] + bulk, [10.0, 10.0])):
        a = _with_spectrum(spectrum, seed=3)
        n, calls = a.shape[0], []

        def mv(v, a=a, calls=calls):
            calls.append(1)
            return a @ v

        v0 = torch.randn(n, generator=g, dtype=torch.float64)
        first = len(lanczos(lambda v, a=a: a @ v, v0, 10 * n, 2, 1e-8)[0])  # the first run alone
        r = top_eigenpairs(mv, n, 2, 10 * n, 1e-8, lambda n=n: torch.randn(n, generator=g, dtype=torch.float64), v0=v0)
        torch.testing.assert_close(torch.tensor(r.values, dtype=torch.float64), torch.tensor(expected,
                                   dtype=torch.float64), rtol=1e-8, atol=0)
        assert r.converged and r.runs >= 2
        if expected[1] == 5.0:  # no cluster: the confirming run stopped after a handful of products
            assert len(calls) - first <= 7, (len(calls), first)  # converging it to tol took 10
    # the early stop needs the top Ritz value converged (to the looser tolerance) and clearly below
    a = _with_spectrum([10.0, 5.0] + bulk, seed=3)
    v0 = torch.randn(a.shape[0], generator=g, dtype=torch.float64)
    assert lanczos(lambda v: a @ v, v0, 200, 1, 1e-8, below=11.0, below_tol=1e-4)[3] == "below"
    assert lanczos(lambda v: a @ v, v0, 200, 1, 1e-8, below=9.0, below_tol=1e-4)[3] == "converged"
