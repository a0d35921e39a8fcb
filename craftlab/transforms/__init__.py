"""Train-time network transformations that fold back into the plain architecture (layer 2).

SNT (arXiv 2305.04526v1) reports that "a sharpness-minimizing network transformation" applied during
pretraining makes models more compressible, but never published what the transformation is. CraftLab
provides the comparison frame with stand-ins from the literature, each labelled as such:

* ``expand``: ExpandNets-style linear expansion (each weight trained as a product of factors);
* ``repvgg``: RepVGG-style k×k + 1×1 + identity branches (BN-free), summed at fold time;
* ``weight-noise``: filter-normalized Gaussian weight noise in the forward pass (random weight perturbation),
  one pass per step.

``get_transform(name, **params)``, ``list_transforms()``, ``register_transform(name)`` (a class decorator for
your own :class:`Transform`), ``fold(model)``. The built-in transforms are one module each (``expand.py``,
``repvgg.py``, ``weight_noise.py``) in :data:`craftlab.registry.TRANSFORMS`, imported when first used. Example::

    from craftlab import transforms
    t = transforms.get_transform("expand", rate=4)
    train_form = t.apply(model, seed=0)      # same outputs, factorized weights
    plain = t.fold(train_form)               # the original architecture again
"""

from __future__ import annotations

from ._base import Transform, fold, get_transform, list_transforms, register_transform, transform_info

__all__ = ["Transform", "fold", "get_transform", "list_transforms", "register_transform", "transform_info"]
