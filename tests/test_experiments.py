"""The notebooks' multi-run helpers leave the caller's model alone."""

from __future__ import annotations

import craftlab
from craftlab import experiments as ex


def test_scale_invariance_table_keeps_the_callers_mode_and_weights(digits, unchanged):
    model = craftlab.create_model("vit-tiny", num_classes=10).train()  # a model a learner left in train mode
    with unchanged(model):
        table = ex.scale_invariance_table(model, digits, alphas=(1.0, 2.0), n_examples=16, max_iter=5, tol=1e-1)
    assert model.training
    # the rescaled model computes the same function: logits agree, weights grow
    assert float(table["max_logit_change"].max()) < 1e-3
    assert table["weight_norm"].iloc[1] > table["weight_norm"].iloc[0]
