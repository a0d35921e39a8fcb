"""THE timing measure: the median seconds of interleaved repetitions, after warm-up, at the thread count of
:mod:`craftlab.threads`.

Each repetition runs every callable once, in turn, so the load of a shared machine hits them alike; the first
`warmup` repetitions are not timed (allocator, caches, lazy initialisation); the median is robust to the odd slow
repetition. Torch's intra-op threads are set by THE thread policy (``policy_threads(threads, model)``:
``--threads`` / ``CRAFTLAB_THREADS`` / the per-size default) for the measurement and restored after it.

Example::

    >>> t = time_interleaved({"sum": lambda: sum(range(1000)), "max": lambda: max(range(1000))}, reps=3, warmup=1)
    >>> sorted(t.median()), len(t.samples["sum"]), t.threads >= 1
    (['max', 'sum'], 3, True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Timings", "time_interleaved"]


@dataclass(frozen=True)
class Timings:
    """Seconds of every timed repetition per label (``samples``), the torch threads they ran with and the clock.

    >>> Timings({"a": [3.0, 1.0, 2.0]}, threads=1).median()
    {'a': 2.0}
    """

    samples: dict[str, list[float]]
    threads: int
    clock: str = "perf_counter"

    def median(self) -> dict[str, float]:
        """The median seconds of each label."""
        return {k: statistics.median(v) for k, v in self.samples.items()}


def time_interleaved(fns: Mapping[str, Callable[[], Any]], reps: int = 12, warmup: int = 2, threads: Any = None,
                     model: Any = None, clock: Callable[[], float] = time.perf_counter) -> Timings:
    """Time each callable of `fns` `reps` times, interleaved (rep by rep, every callable in turn), after `warmup`
    untimed repetitions. `threads`, `model`: as :func:`craftlab.threads.configure_threads` (None: the policy);
    the caller's torch thread count is restored and the process's policy is left as it was. `clock`:
    ``time.perf_counter`` (wall) or ``time.process_time`` (CPU of this process).

    >>> time_interleaved({"noop": lambda: None}, reps=2, warmup=0, threads=1).threads
    1
    """
    import torch

    from ..threads import policy_threads

    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    before = torch.get_num_threads()
    n = policy_threads(threads, model)
    torch.set_num_threads(n)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    try:
        for rep in range(warmup + reps):
            for label, fn in fns.items():
                t0 = clock()
                fn()
                dt = clock() - t0
                if rep >= warmup:
                    samples[label].append(dt)
    finally:
        torch.set_num_threads(before)
    return Timings(samples, n, getattr(clock, "__name__", str(clock)))
