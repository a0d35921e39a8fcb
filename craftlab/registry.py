"""Registries of method families (timm / peft style): one module per method, found by its file name.

A family lives in a package with one module per method (``compression/scorers/wanda.py``); the module registers
its method with ``@FAMILY.register("wanda", ...)``. :meth:`Registry.names` lists the methods **without importing
them** (the package folder's module names, ``_`` read as ``-``, plus methods registered from elsewhere), so the
command line, the app and the benchmarks derive their choices from the registry and ``craftlab --help`` stays
light; :meth:`Registry.get` imports the method's module on first use. Adding a method is adding one file.

Example::

    from craftlab.compression.scorers import PRUNE_SCORERS
    PRUNE_SCORERS.names()                      # ('magnitude', 'random', 'wanda')
    PRUNE_SCORERS.get("wanda").needs_calib     # True
    QUANT_RECIPES.choices()                    # [('uniform', 'uniform'), ('RepQ-ViT', 'repq')]: default first

    @PRUNE_SCORERS.register("my-score")        # your own, from any module
    class MyScore(Scorer): ...
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._errors import unknown_name

T = TypeVar("T")


def _origin(obj: Any) -> tuple[str, str]:
    return getattr(obj, "__module__", ""), getattr(obj, "__qualname__", repr(obj))


class Registry(Generic[T]):
    """Methods of one family by name. `package` (dotted) holds one module per built-in method."""

    def __init__(self, family: str, package: str, default: str | None = None) -> None:
        self.family, self.package, self.default = family, package, default
        self._entries: dict[str, T] = {}
        self._files: tuple[str, ...] | None = None

    def register(self, name: str) -> Callable[[T], T]:
        """Class or function decorator: make `obj` the method `name` of this family. The same definition again (a
        re-imported module, a re-run notebook cell: same module and qualified name) replaces it; another one under
        a taken name is an error."""

        def add(obj: T) -> T:
            old = self._entries.get(name)
            if old is not None and _origin(old) != _origin(obj):
                raise ValueError(f"{self.family} {name!r} is registered already: the name is taken by "
                                 f"{'.'.join(_origin(old))}")
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove a method registered from outside the family's package (a test's, a notebook's); a built-in
        method (a module of the package) cannot be removed (ValueError)."""
        if name in self._builtin():
            raise ValueError(f"{self.family} {name!r} is built in ({self.package}); it cannot be unregistered")
        self._entries.pop(name, None)

    def _builtin(self) -> tuple[str, ...]:
        if self._files is None:  # the package folder is read once
            spec = importlib.util.find_spec(self.package)
            paths = list(spec.submodule_search_locations or []) if spec else []
            self._files = tuple(m.name.replace("_", "-") for m in pkgutil.iter_modules(paths)
                                if not m.name.startswith("_"))
        return self._files

    def names(self) -> tuple[str, ...]:
        """Every method of the family, sorted; nothing is imported."""
        return tuple(sorted({*self._builtin(), *self._entries}))

    def get(self, name: str) -> T:
        """The registered method `name` (its module imported on first use); an unknown name is a ValueError that
        lists the known ones and the closest match."""
        if name not in self._entries and name in self._builtin():
            importlib.import_module(f"{self.package}.{name.replace('-', '_')}")
        if name not in self._entries:
            raise unknown_name(self.family, name, self.names())
        return self._entries[name]

    def ordered(self) -> tuple[str, ...]:
        """:meth:`names` with the family's default first (what a choice list shows)."""
        names = self.names()
        return (self.default, *(n for n in names if n != self.default)) if self.default in names else names

    def canonical(self, value: Any) -> str:
        """The name of the method `value` spells: a name or one of the method's ``aliases``, any case and spacing
        around it; anything else is a ValueError that lists the names (imports the methods to read aliases)."""
        text = str(value).strip().lower()
        if text in self.names():
            return text
        aliases = {a: n for n in self.names() for a in getattr(self.get(n), "aliases", ())}
        if text not in aliases:
            raise unknown_name(self.family, value, self.ordered())
        return aliases[text]

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) of every method, the default first: a method's ``label`` or else its name."""
        return [(getattr(self.get(n), "label", "") or n, n) for n in self.ordered()]

    def all(self) -> dict[str, T]:
        """{name: method} of every method (imports them all)."""
        return {n: self.get(n) for n in self.names()}

    def __contains__(self, name: Any) -> bool:
        return isinstance(name, str) and name in self.names()

    def __repr__(self) -> str:
        return f"Registry({self.family!r}: {', '.join(self.names())})"


# The families. Each names the package of its built-in methods; nothing is imported until a method is used.
ADAPT_METHODS: Registry[Any] = Registry("adaptation method", "craftlab.adapt.methods")
PRUNE_SCORERS: Registry[Any] = Registry("pruning method", "craftlab.compression.scorers")
COMPENSATION_METHODS: Registry[Any] = Registry("compensation method", "craftlab.compression.compensations")
SAM_MODES_REGISTRY: Registry[Any] = Registry("sam_mode", "craftlab.train.sam_modes")
TRANSFORMS: Registry[Any] = Registry("transform", "craftlab.transforms")
QUANT_RECIPES: Registry[Any] = Registry("quantization recipe", "craftlab.compression.recipes", default="uniform")
