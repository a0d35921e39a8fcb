"""Model factory: zoo, timm names, seeded initialisation, suggestions (checkpoints: test_checkpoint.py)."""

import pytest
import torch

import craftlab


def test_zoo_models_are_timm_classes_with_data_config():
    import timm.models.resnet as R
    import timm.models.vision_transformer as V

    vit = craftlab.create_model("vit-tiny", num_classes=7, pretrained=False)
    res = craftlab.create_model("resnet-tiny", num_classes=7, pretrained=False)
    assert isinstance(vit, V.VisionTransformer) and isinstance(res, R.ResNet)
    x = torch.randn(2, 1, 28, 28)
    assert vit(x).shape == (2, 7) and res(x).shape == (2, 7)
    assert vit.pretrained_cfg["input_size"] == (1, 28, 28)


def test_pretrained_zoo_model_knows_mnist():
    """The shipped/cached foundation weights are loaded (not random): the source-task head reads MNIST."""
    model = craftlab.create_model("resnet-tiny")  # pretrained, MNIST head kept
    assert craftlab.evaluate(model, craftlab.load_data("mnist5k").test)["accuracy"] > 0.9
    fresh_head = craftlab.create_model("resnet-tiny", num_classes=10)
    assert torch.equal(fresh_head.conv1.weight, model.conv1.weight)
    assert not torch.equal(fresh_head.fc.weight, model.fc.weight)


def test_head_init_is_seeded():
    a = craftlab.create_model("vit-tiny", num_classes=3, pretrained=False, seed=1)
    b = craftlab.create_model("vit-tiny", num_classes=3, pretrained=False, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_any_timm_name_without_weights():
    m = craftlab.create_model("resnet10t", num_classes=4, pretrained=False)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_unknown_model_suggests():
    with pytest.raises(ValueError, match="did you mean 'vit-tiny'"):
        craftlab.create_model("vit_tiny")
    with pytest.raises(ValueError, match="num_classes"):
        craftlab.create_model("vit-tiny", num_classes=0)


def test_seeded_rng_streams_are_private():
    from craftlab.models import SeededRNG

    a, b = SeededRNG(1), SeededRNG(2)
    torch.manual_seed(0)
    caller = torch.random.get_rng_state()
    with a:
        x1 = torch.rand(3)
    with b:
        y = torch.rand(3)
    with a:
        x2 = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), caller)
    assert torch.equal(torch.cat([x1, x2]), torch.rand(6, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(y, torch.rand(3, generator=torch.Generator().manual_seed(2)))


def test_seeded_builds_in_threads_match_a_build_alone():
    import threading

    from craftlab.models import build_model

    ref = build_model("vit-tiny", num_classes=10, seed=1)
    out = [None] * 4

    def work(i):
        out[i] = build_model("vit-tiny", num_classes=10, seed=1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in out:
        assert all(torch.equal(p, q) for p, q in zip(ref.state_dict().values(), m.state_dict().values()))
