"""Train-time network transformations: the registry and the :class:`Transform` base class.

A transform re-parameterizes the weights of some layers for training and folds back into the plain
architecture afterwards. ``apply(model)`` returns a new model whose chosen layers compute their weight from
trainable factors (a ``torch.nn.utils.parametrize`` parametrization: the module keeps its class and its
forward, ``module.weight`` is computed from the factors on every access); ``fold(model)`` evaluates each
weight once, in eval mode, and stores it as a plain parameter again, so the folded model has the original
architecture, parameter names and count, and its outputs are those of the trained model in eval mode.

A subclass only says which layers it takes (:meth:`Transform.accepts`) and what parametrization it puts
on each (:meth:`Transform.parametrization`); registering it by name makes it usable everywhere a transform
name is accepted (``craftlab.pretrain(..., transform="name")``, ``craftlab pretrain --transform name``)::

    @register_transform("twin")
    class Twin(Transform):
        reference = "Diverse Branch Block transform II (arXiv 2103.13425): parallel branches add"

        def parametrization(self, module, generator):
            return TwinBranch(module.weight)      # forward(w) returns w + self.b, b starting at zero
"""

from __future__ import annotations

import copy
import math
import numbers
import re
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._errors import unknown_name
from ..registry import TRANSFORMS

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
INFO_ATTR = "craftlab_transform"
"""Attribute that a transformed model carries: ``{"name", "spec", "params", "layers"}``."""


class Transform:
    """A train-time transformation of a model's weights that folds back exactly.

    Subclasses set ``reference`` (where the idea comes from), ``defaults`` (keyword parameters and their
    default values: the constructor accepts these only), ``requirement`` (which layers it needs, for error
    messages) and, if needed, ``stale_batchnorm``, and implement :meth:`parametrization`; :meth:`accepts`
    picks the layers (default: every ``Linear`` and ``Conv2d``). Register with :func:`register_transform`.

    Example::

        t = get_transform("expand", rate=4)
        train_form = t.apply(model, seed=0)   # same outputs as `model`, more trainable parameters
        ...                                   # train train_form
        plain = t.fold(train_form)            # `model`'s architecture again
    """

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    requirement: ClassVar[str] = "Linear or Conv2d layers"
    stale_batchnorm: ClassVar[bool] = False
    """True when the BatchNorm running statistics gathered by the training form do not describe the folded model
    (weight noise inflates them): :func:`craftlab.pretrain` then re-estimates them after folding."""

    def __init__(self, **params: Any):
        for key in params:
            if key not in self.defaults:
                raise unknown_name(f"parameter of transform {self.name!r}", key, self.defaults,
                                   hint="it takes no parameters" if not self.defaults else "")
        self.params = {**self.defaults, **params}
        self.check_params()

    # ----------------------------------------------------------------------------------- to override
    def check_params(self) -> None:
        """Validate ``self.params`` (raise ValueError naming the bad one). Default: nothing to check."""

    def accepts(self, module: nn.Module) -> bool:
        """True for a layer this transform re-parameterizes (default: every ``Linear`` and ``Conv2d``)."""
        return isinstance(module, (nn.Linear, nn.Conv2d))

    def parametrization(self, module: nn.Module, generator: torch.Generator) -> nn.Module:
        """The module whose ``forward(original)`` returns ``module.weight`` in training form.

        It may define ``right_inverse(weight) -> original`` (``torch.nn.utils.parametrize``): then the stored
        ``original`` is computed from the current weight, and the training form starts from the same function.
        `generator` (seeded per layer by :meth:`apply`'s seed) is for drawing initial factors.
        """
        raise NotImplementedError(f"transform {self.name!r} must implement parametrization()")

    # ----------------------------------------------------------------------------------------- public
    @property
    def spec(self) -> str:
        """Canonical text of this transform: ``"expand"`` with default parameters, else ``"expand:rate=4"``."""
        changed = {k: v for k, v in self.params.items() if v != self.defaults[k]}
        return self.name + (":" + ",".join(f"{k}={_text(v)}" for k, v in sorted(changed.items())) if changed else "")

    def targets(self, model: nn.Module) -> list[str]:
        """Names of the modules of `model` that :meth:`apply` re-parameterizes."""
        return [n for n, m in model.named_modules() if n and self.accepts(m)]

    def check(self, model: nn.Module) -> list[str]:
        """:meth:`targets`, or ValueError when there are none (listing the model's weight layers and what this
        transform needs)."""
        names = self.targets(model)
        if not names:
            raise ValueError(f"transform {self.name!r} does not apply to any layer of this "
                             f"{type(model).__name__}: it needs {self.requirement}; {_layer_listing(model)}")
        return names

    def apply(self, model: nn.Module, seed: int = 0) -> nn.Module:
        """A re-parameterized copy of `model` for training (`model` is not changed).

        Raises ValueError if `model` already carries a transform, or if no layer of it qualifies (the message
        lists the model's weight layers and what this transform needs).
        """
        if transform_info(model) is not None:
            info = transform_info(model)
            raise ValueError(f"the model already carries transform {info['spec']!r} on {len(info['layers'])} "
                             "layer(s): fold it first (craftlab.transforms.fold(model))")
        names = self.check(model)
        model = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(int(seed))
        for name in names:
            module = model.get_submodule(name)
            layer_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
            factors = self.parametrization(module, layer_gen).train(module.training)  # the model's mode
            with torch.no_grad():
                parametrize.register_parametrization(module, "weight", factors)
        setattr(model, INFO_ATTR, {"name": self.name, "spec": self.spec, "params": dict(self.params),
                                   "layers": names})
        return model

    def fold(self, model: nn.Module) -> nn.Module:
        """The plain architecture of a transformed `model`, in eval mode, with the weights it computes in
        eval mode (its outputs in eval mode, exactly). `model` is not changed.

        Raises ValueError when `model` carries no transform, or another one.
        """
        info = transform_info(model)
        if info is None:
            raise ValueError("this model carries no train-time transform, so there is nothing to fold: fold() "
                             "takes a model made by Transform.apply() (or trained from one)")
        if info["name"] != self.name:
            raise ValueError(f"the model carries transform {info['spec']!r}, not {self.name!r}: "
                             "fold it with craftlab.transforms.fold(model)")
        model = copy.deepcopy(model).eval()
        with torch.no_grad():
            for name in info["layers"]:
                _unparametrize(model.get_submodule(name))
        delattr(model, INFO_ATTR)
        return model

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: name, spec, parameters, reference (for checkpoint sidecars)."""
        return {"name": self.name, "spec": self.spec, "params": dict(self.params), "reference": self.reference}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"


def _unparametrize(module: nn.Module) -> None:
    """Store `module`'s computed weight as a plain parameter and give the module its own class back.

    Not ``parametrize.remove_parametrizations``: that deletes the weight property from the parametrized class,
    which a deep copy shares with its original (so folding a copy would break the model it was copied from).
    """
    if not parametrize.is_parametrized(module, "weight"):
        return
    if set(module.parametrizations) != {"weight"}:
        raise ValueError(f"{type(module).__name__} has other parametrizations ({sorted(module.parametrizations)}): "
                         "cannot fold it back to its plain class")
    weight = module.weight.detach().clone()
    requires_grad = module.parametrizations.weight.original.requires_grad
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]  # parametrize made a one-base subclass of the module's class
    rest = dict(module._parameters)
    module._parameters.clear()  # the weight first again, as in the plain module (state_dict order)
    module.register_parameter("weight", nn.Parameter(weight, requires_grad=requires_grad))
    module._parameters.update(rest)


def _text(v: Any) -> str:
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(v)


def _describe_layer(name: str, m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        k = "×".join(map(str, m.kernel_size))
        return (f"{name} (Conv2d {m.in_channels}→{m.out_channels}, {k}, stride {m.stride[0]}, padding "
                f"{m.padding if isinstance(m.padding, str) else m.padding[0]}, groups {m.groups})")
    if isinstance(m, nn.Linear):
        return f"{name} (Linear {m.in_features}→{m.out_features})"
    return f"{name} ({type(m).__name__})"


def _layer_listing(model: nn.Module, limit: int = 6) -> str:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        return "the model has no Linear or Conv2d layer"
    shown = ", ".join(_describe_layer(n, m) for n, m in layers[:limit])
    more = f" (+{len(layers) - limit} more)" if len(layers) > limit else ""
    return f"its Linear/Conv2d layers are {shown}{more}"


def transform_info(model: nn.Module) -> dict[str, Any] | None:
    """What transform `model` carries (``{"name", "spec", "params", "layers"}``), or None for a plain model."""
    return getattr(model, INFO_ATTR, None)


def register_transform(name: str) -> Callable[[type[Transform]], type[Transform]]:
    """Class decorator: register a :class:`Transform` subclass under `name` (lower case, digits, ``-``, ``_``).

    Registering the same class again (a re-run notebook cell) replaces it; another class under a taken name
    is an error.

    Example::

        @register_transform("twin")
        class Twin(Transform):
            def parametrization(self, module, generator):
                return TwinBranch(module.weight)
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"transform name must be lower case letters, digits, '-' or '_', got {name!r}")

    def decorate(cls: type[Transform]) -> type[Transform]:
        if not (isinstance(cls, type) and issubclass(cls, Transform)):
            raise TypeError(f"register_transform decorates Transform subclasses, got {cls!r}")
        TRANSFORMS.register(name)(cls)  # the same class again (a re-run notebook cell) replaces it
        cls.name = name
        return cls

    return decorate


def list_transforms() -> list[str]:
    """Names of the registered transforms: the built-in ones (one module each in this package, not imported
    until used) and yours."""
    return list(TRANSFORMS.names())


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def get_transform(name: str | Transform, **params: Any) -> Transform:
    """A transform by name (with parameters), by spec text (``"expand:rate=4"``), or passed through.

    Raises ValueError for an unknown name (suggesting the closest registered ones) or parameter.

    Example::

        get_transform("expand", rate=4).spec     # 'expand:rate=4'
        get_transform("expand:rate=4")           # the same
    """
    if isinstance(name, Transform):
        if params:
            raise ValueError("parameters go to the constructor of a Transform instance, not to get_transform")
        return name
    if not isinstance(name, str):
        raise TypeError(f"transform must be a name or a Transform, got {type(name).__name__}")
    base, _, args = name.partition(":")
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, text = item.partition("=")
        if not eq:
            raise ValueError(f"transform parameters are written key=value, got {item!r} in {name!r}")
        params.setdefault(key.strip(), _value(text.strip()))
    return TRANSFORMS.get(base)(**params)


def fold(model: nn.Module) -> nn.Module:
    """Fold whatever registered transform `model` carries (see :meth:`Transform.fold`)."""
    info = transform_info(model)
    if info is None:
        raise ValueError("this model carries no train-time transform, so there is nothing to fold")
    return get_transform(info["spec"]).fold(model)


def check_number(name: str, value: Any, low: float, integer: bool = False, strict: bool = False) -> None:
    """ValueError unless `value` is a finite number >= `low` (> with `strict`), an integer if `integer`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (not integer or float(value).is_integer())
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} {'>' if strict else '>='} {low:g}, got {value!r}")
