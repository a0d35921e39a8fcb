"""THE thread policy: how many intra-op threads torch uses, set the same way by the CLI, the notebooks and the app.

``configure_threads(n=None, model=None)`` sets ``torch.set_num_threads`` once, from (first that is given):

1. `n` (the CLI's ``--threads``; the app's ``launch(threads=...)``);
2. the environment variable ``CRAFTLAB_THREADS`` (``CRAFTLAB_APP_THREADS`` is read as an alias by the app);
3. the default for the model size: **1 thread** for small models — the offline zoo (``vit-tiny``,
   ``resnet-tiny``, ~140 k parameters) and anything under :data:`SMALL_MODEL_PARAMS` — and for an unknown
   model; torch's own default (one thread per core this process may use) for larger timm models.

Why 1 for small models: their kernels are too small to split well. Measured on a 2-core machine (see
``benchmarks/results/app.md``, "Thread policy"): a 2-epoch vit-tiny fine-tune on digits is ~1.3x faster with 2
threads than with 1 on a quiet machine (0.59 vs 0.76 s), but 7-12x slower when other processes load the cores
(OpenMP workers spin waiting for a core): one thread risks little and avoids the worst. Large models (ResNet-50,
ViT-B) gain much more from intra-op threads. ``CRAFTLAB_THREADS=2`` on a dedicated machine.

``n`` and ``CRAFTLAB_THREADS`` take a positive integer or ``auto`` (the per-size default). Example::

    >>> from craftlab.threads import configure_threads
    >>> configure_threads()          # doctest: +SKIP
    1
    >>> configure_threads(model="resnet50")  # doctest: +SKIP
    2
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ENV", "SMALL_MODEL_PARAMS", "configure_threads", "default_threads", "policy_threads", "resolve_threads"]

ENV = "CRAFTLAB_THREADS"
SMALL_MODEL_PARAMS = 5_000_000
"""Models with fewer parameters than this run with one intra-op thread by default."""
_ALIASES = ("CRAFTLAB_APP_THREADS",)


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _params(model: Any) -> int | None:
    """Parameter count of `model`: an ``nn.Module``, an int, a zoo name (known small) or None (unknown)."""
    if model is None:
        return None
    if isinstance(model, int) and not isinstance(model, bool):
        return model
    if hasattr(model, "parameters"):
        return int(sum(p.numel() for p in model.parameters()))
    name = str(model).strip()
    from .models import ZOO  # imported only when a model name is given

    if name in ZOO:
        return 0
    try:
        import timm
        import torch

        with torch.device("meta"):  # counts parameters without allocating them
            net = timm.create_model(name, pretrained=False)
        return int(sum(p.numel() for p in net.parameters()))
    except Exception:  # an unknown name: the caller reports it; the thread default stays safe
        return None


def default_threads(model: Any = None) -> int:
    """The per-size default: 1 for a small or unknown model, all usable cores for a large one."""
    n = _params(model)
    return 1 if n is None or n < SMALL_MODEL_PARAMS else _cores()


def _parse(value: Any, where: str) -> int | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{where} must be a positive integer or 'auto', got {value!r}")
    return n


def resolve_threads(n: Any = None, model: Any = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    """(threads, where the number came from: ``"argument"``, the variable's name, or ``"default"``)."""
    env = os.environ if env is None else env
    got = _parse(n, "threads")
    if got is not None:
        return got, "argument"
    for name in (ENV, *_ALIASES):
        got = _parse(env.get(name), name)
        if got is not None:
            return got, name
    return default_threads(model), "default"


_EXPLICIT: list[int] = []
"""The number an explicit `n` set in this process (the CLI's ``--threads``): later calls without one keep it."""


def policy_threads(n: Any = None, model: Any = None) -> int:
    """The number :func:`configure_threads` would set for (`n`, `model`), without setting anything (an explicit
    number given earlier in the process holds when `n` is None): what a measurement runs with.

    >>> policy_threads(3)
    3
    """
    threads, source = resolve_threads(n, model)
    return _EXPLICIT[0] if source != "argument" and _EXPLICIT else threads


def configure_threads(n: Any = None, model: Any = None) -> int:
    """Set torch's intra-op threads by THE policy (module doc) and return the number set.

    Args:
        n: threads (a positive integer) or ``None`` / ``"auto"``: ``CRAFTLAB_THREADS``, else the per-size default.
            An explicit number holds for the process: a later call without one (e.g. the app started by
            ``craftlab --threads 2 app``) keeps it.
        model: what will run (a name, an ``nn.Module`` or a parameter count) for the per-size default.

    Example::

        craftlab.configure_threads(2)                     # explicit: 2 torch threads from now on
        craftlab.configure_threads(None, model="vit-tiny")  # the policy: $CRAFTLAB_THREADS, else 1 for a tiny model
    """
    import torch

    threads, source = resolve_threads(n, model)
    if source == "argument":
        _EXPLICIT[:] = [threads]
    elif _EXPLICIT:
        threads = _EXPLICIT[0]
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
