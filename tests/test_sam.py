"""SAM/ASAM against hand computations with autograd, and the fixes over davda54/sam."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from craftlab import SAM, frozen_bn


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    return model, x, y


def _loss_at(model, params, x, y):
    return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)


def _hand_step(model, x, y, rho, lr, adaptive=False, eta=0.0):
    """w_new = w - lr * grad L(w + e),  e = rho T^2 g / ||T g||  (T = |w| + eta for ASAM, else I)."""
    names = [n for n, _ in model.named_parameters()]
    w = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    g = dict(zip(names, torch.autograd.grad(_loss_at(model, w, x, y), list(w.values()))))
    t = {n: (w[n].detach().abs() + eta) if adaptive else torch.ones_like(w[n]) for n in names}
    norm = torch.sqrt(sum(((t[n] * g[n]) ** 2).sum() for n in names))
    e = {n: rho * t[n] ** 2 * g[n] / norm for n in names}
    wp = {n: (w[n].detach() + e[n]).requires_grad_(True) for n in names}
    g2 = dict(zip(names, torch.autograd.grad(_loss_at(model, wp, x, y), list(wp.values()))))
    return {n: w[n].detach() - lr * g2[n] for n in names}, e


@pytest.mark.parametrize("adaptive,eta", [(False, 0.0), (True, 0.0), (True, 0.01)])
def test_one_step_matches_hand_computation(adaptive, eta):
    model, x, y = _setup()
    rho, lr = (0.5 if adaptive else 0.05), 0.1
    expected, e = _hand_step(model, x, y, rho, lr, adaptive, eta)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, eta=eta, lr=lr)
    F.cross_entropy(model(x), y).backward()
    w_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.first_step(zero_grad=True)
    for n, p in model.named_parameters():  # the ascent step moved w by exactly e
        torch.testing.assert_close(p.detach() - w_before[n], e[n], rtol=1e-10, atol=1e-12)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_closure_step_equals_two_step_api():
    model, x, y = _setup(1)
    twin = copy.deepcopy(model)
    a = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2, weight_decay=0.01)
    b = SAM(twin.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        a.step(lambda: F.cross_entropy(model(x), y).backward())
        a.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        b.first_step(zero_grad=True)
        F.cross_entropy(twin(x), y).backward()
        b.second_step(zero_grad=True)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_zero_gradient_gives_no_perturbation_and_no_nan():
    model, x, y = _setup()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.first_step()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)  # no NaN, no move
    opt.second_step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_batchnorm_stats_untouched_by_perturbed_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    reference = copy.deepcopy(model)
    reference.train()(x)  # one forward = the only update SAM's step may make
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, model=model)
    model.train()
    F.cross_entropy(model(x), y).backward()
    opt.step(lambda: F.cross_entropy(model(x), y).backward())
    bn, ref = model[1], reference[1]
    assert torch.equal(bn.running_mean, ref.running_mean)
    assert torch.equal(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1
    assert bn.track_running_stats  # restored


def test_frozen_bn_uses_batch_statistics_in_train_mode():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4).train()
    x = torch.randn(64, 4) * 3 + 2
    with frozen_bn(bn):
        out = bn(x)
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert torch.equal(bn.running_mean, torch.zeros(4)) and int(bn.num_batches_tracked) == 0


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_scheduler_on_either_optimizer_changes_base_lr():
    model, _, _ = _setup()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt.base_optimizer, step_size=1, gamma=0.5)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    sched2 = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    sched2.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


def test_grad_scaler_path_equals_unscaled_step():
    """first_step on scaled gradients + second_step(scaler=...) == the plain SAM step."""
    model, x, y = _setup(2)
    model = model.float()
    x = x.float()
    twin = copy.deepcopy(model)
    a = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    b = SAM(twin.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    a.first_step(zero_grad=True)
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    a.second_step(zero_grad=True, scaler=scaler)
    scaler.update()
    F.cross_entropy(twin(x), y).backward()
    b.first_step(zero_grad=True)
    F.cross_entropy(twin(x), y).backward()
    b.second_step(zero_grad=True)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    model, _, _ = _setup()
    with pytest.raises(ValueError, match="rho"):
        SAM(model.parameters(), torch.optim.SGD, rho=-1, lr=0.1)
    with pytest.raises(TypeError, match="class"):
        SAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def _sam_step(model, opt, x, y):
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)


def test_state_dict_carries_the_base_optimizer_state_so_a_resume_is_exact():
    model, x, y = _setup(3)
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        _sam_step(model, opt, x, y)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # plain tensors and dicts: loads with weights_only=True
    twin = copy.deepcopy(model)
    # other hyperparameters on purpose: the state dict restores ρ and lr too
    resumed = SAM(twin.parameters(), torch.optim.AdamW, rho=0.5, lr=1.0, weight_decay=0.01)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    first = next(twin.parameters())
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(resumed.base_optimizer.state[first])
    assert resumed.param_groups is resumed.base_optimizer.param_groups  # still one list of groups
    assert resumed.param_groups[0]["rho"] == 0.05 and resumed.param_groups[0]["lr"] == 1e-2
    _sam_step(model, opt, x, y)
    _sam_step(twin, resumed, x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    sched = torch.optim.lr_scheduler.LambdaLR(resumed.base_optimizer, lambda s: 0.5)
    assert resumed.param_groups[0]["lr"] == pytest.approx(5e-3) and sched.get_last_lr() == [pytest.approx(5e-3)]


def test_state_dict_of_an_older_craftlab_still_loads():
    model, x, y = _setup(4)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    _sam_step(model, opt, x, y)
    old = {k: v for k, v in opt.state_dict().items() if k != "base_optimizer"}
    fresh = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.3, momentum=0.9)
    fresh.load_state_dict(old)
    assert fresh.param_groups is fresh.base_optimizer.param_groups and fresh.param_groups[0]["lr"] == 0.1
    _sam_step(model, fresh, x, y)
