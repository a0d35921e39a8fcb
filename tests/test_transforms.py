"""Train-time transforms (craftlab.transforms): each folds exactly back into the plain architecture, starts from
the model's function, and fails clearly on models, parameters and names it does not fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import craftlab
from craftlab import transforms as T

# (transform, model): every built-in transform on every zoo model it applies to
CASES = [("expand", "vit-tiny"), ("expand", "resnet-tiny"), ("repvgg", "resnet-tiny"),
         ("weight-noise", "vit-tiny"), ("weight-noise", "resnet-tiny")]


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _nudge(model: nn.Module, seed: int = 0) -> None:
    """Move every parameter of the training form (factors, branches and the original weights) as training would,
    so that a fold that forgot a branch or a factor gives other outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * p.abs().mean().clamp_min(1e-2) * torch.randn(p.shape, generator=gen))


def _batch(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_registry_lists_the_built_in_stand_ins():
    assert {"expand", "repvgg", "weight-noise"} <= set(T.list_transforms())
    for name in ("expand", "repvgg", "weight-noise"):
        t = T.get_transform(name)
        assert t.name == name and t.spec == name
        assert "stand-in" in t.reference and "arXiv" in t.reference  # every stand-in says what it stands in for


@pytest.mark.parametrize("name,arch", CASES, ids=[f"{t}-{m}" for t, m in CASES])
def test_fold_is_exact_and_gives_the_plain_architecture_back(name, arch, unchanged, tmp_path):
    base = craftlab.build_model(arch, num_classes=10, seed=0)
    x = _batch()
    t = T.get_transform(name)
    with unchanged(base):
        train_form = t.apply(base, seed=3)
    info = T.transform_info(train_form)
    assert info["name"] == name and info["layers"] == t.targets(base) and info["layers"]
    n_base = sum(p.numel() for p in base.parameters())
    if name != "weight-noise":  # noise adds no parameter; the other two add factors / branches
        assert sum(p.numel() for p in train_form.parameters()) > n_base
    assert _rel(_outputs(base, x), _outputs(train_form, x)) <= 1e-5  # apply starts from the model's function

    _nudge(train_form)
    trained = _outputs(train_form, x)
    assert _rel(_outputs(base, x), trained) > 1e-3  # the nudge matters, so the next check can fail
    with unchanged(train_form):
        plain = t.fold(train_form)
    assert _rel(trained, _outputs(plain, x)) <= 1e-5
    assert T.transform_info(plain) is None
    assert sum(p.numel() for p in plain.parameters()) == n_base
    assert list(plain.state_dict()) == list(base.state_dict())
    assert {type(m) for m in plain.modules()} == {type(m) for m in base.modules()}
    assert torch.equal(_outputs(train_form, x), trained)  # folding a copy left the training form working

    path = craftlab.save_checkpoint(plain, tmp_path / "folded")
    fresh = craftlab.create_model(arch, pretrained=False)
    loaded = craftlab.load_checkpoint(path, model=fresh)
    assert _rel(trained, _outputs(loaded, x)) <= 1e-5
    assert _rel(trained, _outputs(craftlab.create_model(arch, pretrained=path), x)) <= 1e-5


def test_repvgg_branches_follow_repvgg():
    """1x1 branch on every 3x3 (and the 7x7 stem: odd k, padding k//2), identity only where in = out and stride 1."""
    model = T.get_transform("repvgg").apply(craftlab.build_model("resnet-tiny", num_classes=10))
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for name, m in convs.items():
        branches = m.parametrizations.weight[0] if name in model.craftlab_transform["layers"] else None
        if m.kernel_size == (1, 1):
            assert branches is None, f"{name}: a 1x1 conv is not a RepVGG target"
            continue
        has_identity = m.in_channels == m.out_channels and m.stride == (1, 1)
        assert (branches.identity is not None) == has_identity, name
    with_identity = [n for n in model.craftlab_transform["layers"]
                     if model.get_submodule(n).parametrizations.weight[0].identity is not None]
    assert with_identity == [f"layer{i}.0.conv2" for i in (1, 2, 3, 4)]  # the stem is 64 wide: 64 -> 16 at layer1
    assert "conv1" in model.craftlab_transform["layers"]  # the 7x7 stem (stride 2, padding 3) gets a 1x1 branch


def test_repvgg_fold_by_hand():
    """The folded kernel is K3 + pad(K1) + diag(s) at the centre tap, written out for one conv."""
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    model = nn.Sequential(conv)
    model.craftlab_name = "toy"
    t = T.get_transform("repvgg")
    tf = t.apply(model)
    _nudge(tf)
    branches = tf[0].parametrizations.weight[0]
    k3 = tf[0].parametrizations.weight.original.detach()
    expect = k3.clone()
    expect[:, :, 1, 1] += branches.branch_1x1.detach()[:, :, 0, 0] + torch.diag(branches.identity.detach())
    x = _batch(2).repeat(1, 4, 1, 1)
    by_branches = (nn.functional.conv2d(x, k3, padding=1) + nn.functional.conv2d(x, branches.branch_1x1.detach())
                   + x * branches.identity.detach().view(1, -1, 1, 1))
    folded = t.fold(tf)
    assert torch.allclose(folded[0].weight, expect)
    assert torch.allclose(folded[0](x), by_branches, atol=1e-5)


def test_expand_is_a_product_of_factors():
    """Linear n->m trained as W2 W1 with W1: n -> rate*n, and the product is what folds."""
    lin = nn.Sequential(nn.Linear(6, 3))
    lin.craftlab_name = "toy"
    tf = T.get_transform("expand", rate=3).apply(lin, seed=0)
    w1 = tf[0].parametrizations.weight[0].q
    w2 = tf[0].parametrizations.weight.original
    assert w1.shape == (18, 6) and w2.shape == (3, 18)
    assert torch.allclose(w1.T @ w1, torch.eye(6), atol=1e-5)  # orthonormal columns: W2 = W Q^T folds back to W
    x = torch.randn(5, 6)
    two_layers = nn.functional.linear(nn.functional.linear(x, w1), w2, tf[0].bias)
    assert torch.allclose(tf(x), two_layers, atol=1e-6)
    assert torch.allclose(T.fold(tf)(x), two_layers, atol=1e-6)


def test_weight_noise_is_filter_normalized_seeded_and_off_in_eval():
    base = craftlab.build_model("vit-tiny", num_classes=10)
    x = _batch(4)
    t = T.get_transform("weight-noise", sigma=0.05)
    a, b = t.apply(base, seed=7), t.apply(base, seed=7)
    state = torch.get_rng_state()
    a.train(), b.train()
    ya1, ya2, yb1 = a(x), a(x), b(x)
    assert torch.equal(torch.get_rng_state(), state)  # private generators: the caller's RNG is not drawn from
    assert torch.equal(ya1, yb1) and not torch.equal(ya1, ya2)  # same seed, same draws; fresh noise per pass
    assert torch.equal(_outputs(a, x), _outputs(base, x))  # no noise in eval mode
    layer = a.blocks[0].mlp.fc1
    layer.train()
    w = layer.parametrizations.weight.original.detach()
    rel = torch.stack([(layer.weight.detach() - w).norm(dim=1) / w.norm(dim=1) for _ in range(50)])
    # each row gets N(0, (sigma |W_i|)^2 I): relative perturbation sigma * sqrt(fan_in) per row
    assert rel.mean().item() == pytest.approx(0.05 * w.shape[1] ** 0.5, rel=0.05)


def test_user_registered_transform(unchanged):
    class TwinBranch(nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.b = nn.Parameter(torch.zeros_like(weight))

        def forward(self, a):
            return a + self.b

    @T.register_transform("test-twin")
    class Twin(T.Transform):
        reference = "DBB transform II (parallel branches add), arXiv 2103.13425: a test stand-in"

        def accepts(self, module):
            return isinstance(module, nn.Linear)

        def parametrization(self, module, generator):
            return TwinBranch(module.weight)

    assert "test-twin" in T.list_transforms()
    base = craftlab.build_model("vit-tiny", num_classes=10)
    t = T.get_transform("test-twin")
    tf = t.apply(base)
    assert all(isinstance(tf.get_submodule(n), nn.Linear) for n in tf.craftlab_transform["layers"])
    _nudge(tf)
    x = _batch(4)
    assert _rel(_outputs(tf, x), _outputs(T.fold(tf), x)) <= 1e-5
    T.register_transform("test-twin")(Twin)  # the same class again (a re-run notebook cell): fine

    class Other(T.Transform):
        pass

    with pytest.raises(ValueError, match="taken"):
        T.register_transform("test-twin")(Other)
    with pytest.raises(TypeError):
        T.register_transform("test-x")(dict)
    with pytest.raises(ValueError, match="lower case"):
        T.register_transform("Bad Name")


def test_specs_and_parameters():
    assert T.get_transform("expand", rate=4).spec == "expand:rate=4"
    assert T.get_transform("expand:rate=4").params == {"rate": 4}
    assert T.get_transform("weight-noise:sigma=0.02").params == {"sigma": 0.02}
    assert T.get_transform("repvgg:identity=false").params == {"identity": False}
    assert T.get_transform("expand:rate=2").spec == "expand"  # the default is not spelled out
    t = T.get_transform("repvgg")
    assert T.get_transform(t) is t


@pytest.mark.parametrize("call,match", [
    (lambda: T.get_transform("expnad"), "did you mean 'expand'"),
    (lambda: T.get_transform("nonsense"), "choose from|unknown transform"),
    (lambda: T.get_transform("expand", rat=2), "did you mean 'rate'"),
    (lambda: T.get_transform("expand", rate=0), "rate must be an integer >= 1"),
    (lambda: T.get_transform("expand", rate=1.5), "rate must be an integer"),
    (lambda: T.get_transform("weight-noise", sigma=-0.1), "sigma must be a finite number >= 0"),
    (lambda: T.get_transform("weight-noise", sigma=float("nan")), "sigma"),
    (lambda: T.get_transform("repvgg", identity="yes"), "identity must be True or False"),
    (lambda: T.get_transform("expand:rate"), "key=value"),
])
def test_bad_names_and_parameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_transform_that_does_not_apply_names_the_layers():
    vit = craftlab.build_model("vit-tiny", num_classes=10)
    with pytest.raises(ValueError, match=r"'repvgg' does not apply.*odd square kernel.*patch_embed\.proj "
                                         r"\(Conv2d 1→64, 7×7, stride 7, padding 0"):
        T.get_transform("repvgg").apply(vit)
    no_layers = nn.Sequential(nn.ReLU())
    with pytest.raises(ValueError, match="no Linear or Conv2d layer"):
        T.get_transform("expand").apply(no_layers)


def test_folding_what_was_not_transformed_and_applying_twice():
    base = craftlab.build_model("resnet-tiny", num_classes=10)
    with pytest.raises(ValueError, match="nothing to fold"):
        T.get_transform("expand").fold(base)
    with pytest.raises(ValueError, match="nothing to fold"):
        T.fold(base)
    tf = T.get_transform("repvgg").apply(base)
    with pytest.raises(ValueError, match="carries transform 'repvgg', not 'expand'"):
        T.get_transform("expand").fold(tf)
    with pytest.raises(ValueError, match="already carries transform 'repvgg'.*fold it first"):
        T.get_transform("weight-noise").apply(tf)


def test_transforms_command(capsys):
    """`craftlab transforms` (an extension of the command line: add_parser / run) lists every transform with its
    reference and, with --model, the layers it would re-parameterize."""
    import argparse

    from craftlab.cli import transforms as cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    assert cli.run(parser.parse_args(["transforms", "--model", "resnet-tiny"])) == 0
    text = capsys.readouterr().out
    assert "expand (rate=2): ExpandNets" in text and "repvgg (identity=True): RepVGG" in text
    assert "resnet-tiny: 9 layer(s): conv1, layer1.0.conv1" in text  # repvgg: the 7x7 stem and the eight 3x3
    assert cli.run(parser.parse_args(["transforms", "--model", "vit-tiny", "--json"])) == 0
    listing = __import__("json").loads(capsys.readouterr().out)
    assert listing["repvgg"]["layers"] == [] and len(listing["expand"]["layers"]) == 18
