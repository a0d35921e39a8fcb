"""The one lazy-import mechanism (PEP 562) of craftlab's packages: public names that load their module on first
use, so ``import craftlab`` (and ``import craftlab.supernet``) stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], names: dict[str, str | None],
                 modules: dict[str, str] | None = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for `package` (its ``globals()`` is `namespace`).

    `names`: public name -> the module (relative to `package`) that defines it, or None when the name is a
    submodule itself; `modules`: alias -> a module to return whole. A looked-up value is stored in `namespace`, so
    later lookups skip ``__getattr__``.

    Example::

        __getattr__, __dir__ = lazy_exports(__name__, globals(), {"compress": ".compression.pipeline"})
    """
    modules = modules or {}

    def __getattr__(name: str) -> Any:
        if name in names:
            target = names[name]
            module = importlib.import_module(target or f".{name}", package)
            value = module if target is None else getattr(module, name)
        elif name in modules:
            value = importlib.import_module(modules[name], package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names) | set(modules))

    return __getattr__, __dir__
