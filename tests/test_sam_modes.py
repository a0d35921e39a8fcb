"""Efficient SAM modes (LookSAM, random steps, Momentum-SAM, random weight perturbation) against plain SAM and
hand-written references, and through finetune / RunSpec / the CLI."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from craftlab import SAM
from craftlab.train.sam import parse_sam_mode


def _setup(seed=0, steps=6):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    batches = [(torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))) for _ in range(steps)]
    return model, batches


def _loss(model, params, x, y):
    return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)


def _grad(model, w, x, y):
    wr = {n: t.detach().clone().requires_grad_(True) for n, t in w.items()}
    return dict(zip(wr, torch.autograd.grad(_loss(model, wr, x, y), list(wr.values()))))


def _norm(d):
    return torch.sqrt(sum((v ** 2).sum() for v in d.values()))


def _dot(a, b):
    return sum((a[n] * b[n]).sum() for n in a)


def _run(model, opt, batches):
    """The training loop finetune runs; returns the weights after every step."""
    out = []
    for x, y in batches:
        if opt.plan_step():
            F.cross_entropy(model(x), y).backward()
            opt.first_step(zero_grad=True)
        else:
            opt.perturb()
        F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
        out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return out


def _hand_sam_sgd(model, batches, rho, lr):
    """Plain SAM with SGD (no momentum), written out: w ← w − lr ∇L(w + ρ g/‖g‖)."""
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = []
    for x, y in batches:
        g = _grad(model, w, x, y)
        gn = _norm(g)
        gs = _grad(model, {n: w[n] + rho * g[n] / gn for n in w}, x, y)
        w = {n: w[n] - lr * gs[n] for n in w}
        out.append(w)
    return out


def _assert_same(a, b, **tol):
    assert len(a) == len(b)
    for step, (wa, wb) in enumerate(zip(a, b)):
        for n in wa:
            torch.testing.assert_close(wa[n], wb[n], **(tol or {"rtol": 0, "atol": 0}), msg=f"step {step}: {n}")


@pytest.mark.parametrize("options", [{"mode": "looksam", "interval": 1}, {"mode": "random", "fraction": 1.0}])
@pytest.mark.parametrize("base,kw", [(torch.optim.SGD, {"lr": 0.1}),
                                     (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.05})])
def test_interval_one_and_fraction_one_are_plain_sam_step_for_step(options, base, kw):
    model, batches = _setup(1)
    first = copy.deepcopy(model)
    ref = _run(first, SAM(first.parameters(), base, rho=0.05, **kw), batches)
    twin = copy.deepcopy(model)
    got = _run(twin, SAM(twin.parameters(), base, rho=0.05, **options, **kw), batches)
    _assert_same(got, ref)  # bit for bit: the same operations in the same order
    if base is torch.optim.SGD:
        _assert_same(got, _hand_sam_sgd(model, batches, 0.05, 0.1), rtol=1e-10, atol=1e-12)


def test_looksam_matches_a_hand_written_reference():
    """k = 3: two passes at steps 0 and 3; between them g + α‖g‖ĝ_v, ĝ_v = unit(g_s − ⟨g_s, g⟩/‖g‖² g)."""
    model, batches = _setup(2, steps=7)
    rho, lr, alpha, k = 0.1, 0.2, 0.7, 3
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected, gv = [], None
    for t, (x, y) in enumerate(batches):
        g = _grad(model, w, x, y)
        if t % k == 0:
            gs = _grad(model, {n: w[n] + rho * g[n] / _norm(g) for n in w}, x, y)
            v = {n: gs[n] - _dot(gs, g) / _dot(g, g) * g[n] for n in w}
            gv = {n: v[n] / _norm(v) for n in w}
            step = gs
        else:
            step = {n: g[n] + alpha * _norm(g) * gv[n] for n in w}
        w = {n: w[n] - lr * step[n] for n in w}
        expected.append(w)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, mode="looksam", interval=k, alpha=alpha, lr=lr)
    _assert_same(_run(model, opt, batches), expected, rtol=1e-10, atol=1e-12)


def test_msam_matches_a_hand_written_reference():
    """SGD(momentum μ): ε = −ρ m/‖m‖ with m the buffer before the step (0 at the first step), one gradient at
    w + ε, then m ← μ m + g, w ← w − lr m (as marlonbecker/msam)."""
    model, batches = _setup(3)
    rho, lr, mu = 0.3, 0.1, 0.9
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    m, expected = None, []
    for x, y in batches:
        eps = {n: torch.zeros_like(w[n]) for n in w} if m is None else {n: -rho * m[n] / _norm(m) for n in w}
        g = _grad(model, {n: w[n] + eps[n] for n in w}, x, y)
        m = dict(g) if m is None else {n: mu * m[n] + g[n] for n in w}
        w = {n: w[n] - lr * m[n] for n in w}
        expected.append(w)
    passes = []
    model[0].register_forward_hook(lambda *_: passes.append(1))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, mode="msam", lr=lr, momentum=mu)
    _assert_same(_run(model, opt, batches), expected, rtol=1e-10, atol=1e-12)
    assert len(passes) == len(batches)  # one forward per step: no extra pass


def test_rwp_matches_a_hand_written_reference():
    """ε_i = ρ‖W_i‖·z_i per output row of 2-D parameters (biases untouched), z from the seeded generator."""
    model, batches = _setup(4)
    rho, lr, seed = 0.05, 0.1, 7
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen, expected = torch.Generator().manual_seed(seed), []
    for x, y in batches:
        eps = {}
        for n, t in w.items():
            eps[n] = (torch.randn(t.shape, generator=gen, dtype=t.dtype) * rho * t.norm(dim=1, keepdim=True)
                      if t.ndim >= 2 else torch.zeros_like(t))
        g = _grad(model, {n: w[n] + eps[n] for n in w}, x, y)
        w = {n: w[n] - lr * g[n] for n in w}
        expected.append(w)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, mode="rwp", seed=seed, lr=lr)
    _assert_same(_run(model, opt, batches), expected, rtol=1e-10, atol=1e-12)


def test_random_mode_takes_about_its_fraction_of_two_pass_steps_reproducibly():
    model, _ = _setup(5)
    plans = []
    for _ in range(2):
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, mode="random", fraction=0.3, seed=11, lr=0.1)
        state = torch.get_rng_state()
        plans.append([opt.plan_step() for _ in range(400)])
        assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is not drawn from
    assert plans[0] == plans[1]
    assert 0.22 < sum(plans[0]) / 400 < 0.38  # binomial(400, 0.3): sd 0.023


def test_random_mode_resumes_exactly_from_a_state_dict():
    model, batches = _setup(6, steps=8)
    kw = dict(rho=0.05, mode="random", fraction=0.5, seed=3, lr=0.1)
    full = copy.deepcopy(model)
    ref = _run(full, SAM(full.parameters(), torch.optim.SGD, **kw), batches)
    half = copy.deepcopy(model)
    opt = SAM(half.parameters(), torch.optim.SGD, **kw)
    _run(half, opt, batches[:4])
    state = copy.deepcopy(opt.state_dict())
    again = SAM(half.parameters(), torch.optim.SGD, **{**kw, "seed": 99})
    again.load_state_dict(state)
    _assert_same(_run(half, again, batches[4:]), ref[4:])


def test_step_closure_in_efficient_modes():
    model, batches = _setup(7, steps=4)
    twin = copy.deepcopy(model)
    a = SAM(model.parameters(), torch.optim.SGD, rho=0.05, mode="looksam", interval=2, lr=0.1)
    ref = _run(twin, SAM(twin.parameters(), torch.optim.SGD, rho=0.05, mode="looksam", interval=2, lr=0.1), batches)
    for (x, y), expected in zip(batches, ref):
        F.cross_entropy(model(x), y).backward()
        a.step(lambda x=x, y=y: F.cross_entropy(model(x), y).backward())
        a.zero_grad()
        for n, p in model.named_parameters():
            assert torch.equal(p.detach(), expected[n])
    m = SAM(model.parameters(), torch.optim.SGD, rho=0.05, mode="msam", lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="perturb"):
        m.step(lambda: None)


def test_parse_sam_mode_and_bad_input():
    assert parse_sam_mode("sam").spec() == "sam"
    assert parse_sam_mode("LookSAM").value == 5 and parse_sam_mode("looksam:3").spec() == "looksam:3"
    assert parse_sam_mode("random:0.25").value == 0.25 and parse_sam_mode("random").spec() == "random:0.5"
    assert parse_sam_mode("msam").options() == {"mode": "msam"}
    for bad in ("looksam:0", "looksam:1.5", "random:0", "random:1.5", "random:x", "msam:2", "gsam", 3):
        with pytest.raises(ValueError):
            parse_sam_mode(bad)
    model, _ = _setup()
    for kw in ({"mode": "nope"}, {"interval": 0}, {"fraction": 0.0}, {"alpha": -1.0}):
        with pytest.raises(ValueError):
            SAM(model.parameters(), torch.optim.SGD, lr=0.1, **kw)


def test_runspec_keys_stay_valid_and_modes_change_them():
    from craftlab.train.runs import RunSpec

    plain = RunSpec(sam_rho=0.05)
    assert plain.key == "vit-tiny-digits-adamw+sam0.05-e8-s0" and "sam_mode" not in plain.record()
    look = RunSpec(sam_rho=0.05, sam_mode="LOOKSAM")
    assert look.sam_mode == "looksam:5" and look.key == "vit-tiny-digits-adamw+sam0.05-looksam5-e8-s0"
    assert look.record()["sam_mode"] == "looksam:5" and look.label == "SAM ρ=0.05 looksam:5"
    assert RunSpec(sam_rho=0.3, sam_mode="msam").label == "MSAM ρ=0.3"
    assert RunSpec(sam_rho=0.01, sam_mode="rwp").label == "RWP σ=0.01"
    assert look.twin() == RunSpec()
    assert len({RunSpec(sam_rho=0.05, sam_mode=m).key for m in ("sam", "looksam:2", "random:0.5", "msam", "rwp")}) == 5
    with pytest.raises(ValueError):
        RunSpec(sam_mode="msam")  # no radius
    with pytest.raises(ValueError):
        RunSpec(sam_rho=0.05, sam_mode="looksam:0")


def test_finetune_modes(small, unchanged):
    import craftlab

    model = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
    kw = dict(epochs=1, progress=False, seed=2, device="cpu")
    with unchanged(model):
        sam = craftlab.finetune(model, small, sam_rho=0.05, **kw)
        state = torch.get_rng_state()
        for mode in ("looksam:1", "random:1"):
            res = craftlab.finetune(model, small, sam_rho=0.05, sam_mode=mode, **kw)
            for (n, a), b in zip(sam.model.state_dict().items(), res.model.state_dict().values()):
                assert torch.equal(a, b), f"{mode}: {n}"
            assert res.config["sam_mode"] == mode
        assert torch.equal(torch.get_rng_state(), state)
        msam = craftlab.finetune(model, small, sam_rho=0.05, sam_mode="msam", **kw)
        assert any(not torch.equal(a, b) for a, b in zip(msam.model.parameters(), sam.model.parameters()))
        assert "sam_mode" not in sam.config
    with pytest.raises(ValueError, match="sam_rho"):
        craftlab.finetune(model, small, sam_mode="msam", **kw)
    with pytest.raises(ValueError, match="sam_mode"):
        craftlab.finetune(model, small, sam_rho=0.05, sam_mode="looksam:-1", **kw)


def test_cli_finetune_sam_mode(tmp_path, capsys):
    from craftlab.cli import main

    assert main(["finetune", "--model", "resnet-tiny", "--data", "digits", "--epochs", "1", "--sam-rho", "0.05",
                 "--sam-mode", "random:0.5", "--out", str(tmp_path / "r"), "--quiet", "--device", "cpu"]) == 0
    from craftlab.checkpoint import read_meta

    assert read_meta(tmp_path / "r")["sam_mode"] == "random:0.5"
    assert main(["finetune", "--sam-mode", "bogus", "--sam-rho", "0.05", "--epochs", "1",
                 "--out", str(tmp_path / "b"), "--quiet"]) != 0
    assert "sam_mode" in capsys.readouterr().err


def test_notebook_arms_accept_a_sam_mode():
    from craftlab.studies.craft import _arm_items

    items = _arm_items({"AdamW": {}, "LookSAM": {"sam_rho": 0.05, "sam_mode": "looksam:5"}})
    assert items[1] == ("LookSAM", {"sam_rho": 0.05, "sam_mode": "looksam:5"})
    with pytest.raises(ValueError, match="unknown setting"):
        _arm_items({"x": {"sam_modes": "msam"}})
