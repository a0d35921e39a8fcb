"""Thread-safe plumbing of the app's service: a single-flight bounded LRU and a two-lane scheduler.

* :class:`Memo` — a bounded LRU whose misses are computed once even when many threads ask at the same
  time (the others wait for the leader's value, or its error). A foreground caller never waits for a
  background leader: that thread runs niced and can be starved on a busy machine, so the caller computes
  the value itself (later callers wait for it instead).
* :class:`Scheduler` — the *foreground* lane fans a request's work out on a thread pool; the *background*
  lane runs queued jobs one at a time, by priority, on a low-priority worker thread that pauses while
  any foreground request is running. A job queued again with a better priority moves up; a job whose
  ``wanted()`` says no when its turn comes (the view that asked for it was replaced) is dropped.
* :class:`Deferred` — an object built on a background thread (the app's Explorer: importing torch and timm
  takes seconds that serving the page does not need).
* :class:`Cancelled` and :func:`memo_call` — a computation given up because a newer request replaced the
  one that asked for it, and a :class:`Memo` lookup that retries when another caller's computation it
  was waiting for was given up.

Nothing here knows about models or compression: :mod:`craftlab_app.explore.service` builds on it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["HVP_LOCK", "Cancelled", "Deferred", "Flight", "Memo", "Scheduler", "lower_priority", "memo_call"]


HVP_LOCK = threading.RLock()
"""Held by every computation of Hessian-vector products (sharpness, the 2nd-order terms of a compression path).

They need torch's "math" attention kernel (the fused CPU kernels have no double backward), which the probes
select with ``sdpa_kernel`` — whose flags are process-wide: a thread leaving its ``with`` block switches the
fused kernel back on for every thread. One HVP computation at a time means none runs while another thread
restores the flags (forward passes elsewhere keep the faster fused kernel, or the math one for a moment)."""


class Cancelled(Exception):
    """A computation given up because a newer request (of the same session) replaced the one that asked."""


def raise_if(cancelled: Callable[[], bool] | None) -> None:
    """Raise :class:`Cancelled` when `cancelled` says so (None: never)."""
    if cancelled is not None and cancelled():
        raise Cancelled("replaced by a newer request")


class Flight:
    """One computation in progress: waiters block on ``done`` and then read ``value`` or ``error``."""

    def __init__(self, background: bool = False) -> None:
        self.background = background
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Memo:
    """A bounded LRU whose misses are computed once even when many threads ask at the same time.

    Example::

        >>> m = Memo(maxsize=2)
        >>> m.get_or_compute("a", lambda: 1), m.get_or_compute("a", lambda: 2)
        (1, 1)
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._inflight: dict[Hashable, Flight] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            return default

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._put(key, value)

    def _put(self, key: Hashable, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def with_prefix(self, prefix: tuple) -> dict[Any, Any]:
        """{rest of key: value} of the tuple keys starting with `prefix` (one element left after it)."""
        n = len(prefix)
        with self._lock:
            return {k[n]: v for k, v in self._data.items()
                    if isinstance(k, tuple) and len(k) == n + 1 and k[:n] == prefix}

    def get_or_compute(self, key: Hashable, fn: Callable[[], Any], store: bool = True,
                       background: bool = False) -> Any:
        """The cached value of `key`, else ``fn()`` computed once for all concurrent callers (and kept
        unless `store` is False: the waiters still share it).

        `background` marks a caller on the low-priority worker: a foreground caller that finds such a
        leader computes the value itself rather than wait for it (the values must not depend on who
        computes them)."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            flight = self._inflight.get(key)
            leader = flight is None or (flight.background and not background)
            if leader:
                flight = self._inflight[key] = Flight(background)
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = fn()
            if store:
                with self._lock:
                    self._put(key, flight.value)
            return flight.value
        except BaseException as err:
            flight.error = err
            raise
        finally:
            with self._lock:
                if self._inflight.get(key) is flight:  # a foreground caller may have taken the lead since
                    del self._inflight[key]
            flight.done.set()


def memo_call(memo: Memo, key: Hashable, fn: Callable[[], Any], cancelled: Callable[[], bool] | None = None,
              **kw: Any) -> Any:
    """``memo.get_or_compute(key, fn)``, computed again when the computation this caller waited for was
    given up by *another* caller (:class:`Cancelled`); re-raised when this caller is cancelled itself."""
    while True:
        try:
            return memo.get_or_compute(key, fn, **kw)
        except Cancelled:
            if cancelled is None or cancelled():
                raise


def lower_priority(niceness: int = 10) -> None:
    """Make the calling thread yield the CPU to request threads (Linux: per-thread nice); no-op elsewhere."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


class Scheduler:
    """Foreground requests on a thread pool; background jobs, by priority, on one low-priority worker.

    Args:
        workers: threads of the foreground pool (the arms of one request run in parallel).
        on_idle: called by the worker when its queue has been empty for a second, and when it stops
            (the service writes its on-disk stores then).
        on_error: called with a background job's exception (the worker keeps going).
    """

    def __init__(self, workers: int = 2, on_idle: Callable[[], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self._workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="craftlab-explore")
        self._bg_pool: ThreadPoolExecutor | None = None  # the background's helpers (map(..., parallel_background))
        self._bg_threads: set[int] = set()
        self._on_idle = on_idle or (lambda: None)
        self._on_error = on_error or (lambda err: None)
        self._lock = threading.Lock()
        self._busy = 0
        self._idle = threading.Event()
        self._idle.set()
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._queued: dict[Hashable, float] = {}  # key -> priority of its live entry
        self._seq = itertools.count()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def in_background(self) -> bool:
        """True on the background worker thread and on its low-priority helpers."""
        return threading.current_thread() is self._worker or threading.get_ident() in self._bg_threads

    def _bg_init(self) -> None:
        lower_priority()
        self._bg_threads.add(threading.get_ident())

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], parallel_background: bool = False) -> list[Any]:
        """fn over items: in parallel on the pool for a request; on the background worker sequentially, or
        with `parallel_background` in parallel on low-priority helper threads (as many as the pool's)."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        if self.in_background:
            if not parallel_background or threading.get_ident() in self._bg_threads:
                return [fn(x) for x in items]
            with self._lock:
                if self._bg_pool is None:
                    self._bg_pool = ThreadPoolExecutor(max_workers=self._workers, initializer=self._bg_init,
                                                       thread_name_prefix="craftlab-explore-bg")
                pool = self._bg_pool
            return list(pool.map(fn, items))
        return list(self._pool.map(fn, items))

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a foreground request: background jobs wait while any runs."""
        with self._lock:
            self._busy += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

    def enqueue(self, priority: float, key: Hashable, fn: Callable[..., Any], *args: Any,
                wanted: Callable[[], bool] | None = None) -> None:
        """Queue ``fn(*args)`` for the background (lower `priority` first). A `key` already queued keeps its
        place unless this priority is better (then it moves up). ``wanted()`` is asked when the job's turn
        comes: False drops it (e.g. the view that asked for it was replaced; asking again queues it again)."""
        with self._lock:
            best = self._queued.get(key)
            if best is not None and best <= priority:
                return
            self._queued[key] = priority
        self._jobs.put((priority, next(self._seq), key, fn, args, wanted))
        self._ensure_worker()

    def pending(self) -> int:
        """Background jobs queued or running."""
        with self._lock:
            return len(self._queued)

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._stop.clear()
                self._worker = threading.Thread(target=self._work, name="craftlab-explore-worker", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        lower_priority()
        while not self._stop.is_set():
            try:
                priority, _, key, fn, args, wanted = self._jobs.get(timeout=1.0)
            except queue.Empty:
                self._on_idle()
                continue
            with self._lock:
                if self._queued.get(key) != priority:  # moved up: that entry ran (or runs) instead
                    continue
            try:
                while not self._idle.wait(0.5):  # foreground requests first
                    if self._stop.is_set():
                        return
                with self._lock:  # moved up while it waited (taken before the request that moved it): the other
                    stale = self._queued.get(key) != priority  # entry runs instead
                if not stale and (wanted is None or wanted()):
                    fn(*args)
            except Cancelled:
                pass
            except Exception as err:  # a background failure must not kill the worker
                self._on_error(err)
            finally:
                with self._lock:
                    if self._queued.get(key) == priority:
                        del self._queued[key]
        self._on_idle()

    def close(self) -> None:
        """Stop the worker (it runs ``on_idle`` once more) and the pool."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._bg_pool is not None:
            self._bg_pool.shutdown(wait=False, cancel_futures=True)


class Deferred:
    """An object built by `factory` on a background thread, so that what does not need it (serving the page)
    does not wait for it; attribute access waits for it (and raises what the factory raised). With
    ``start=False`` the build starts at :meth:`start` or at the first use, whichever comes first.

    Example::

        >>> d = Deferred(lambda: "built")
        >>> d.upper()
        'BUILT'
    """

    def __init__(self, factory: Callable[[], Any], name: str = "craftlab-deferred", start: bool = True) -> None:
        self._factory, self._name = factory, name
        self._done = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        self._value: Any = None
        self._error: BaseException | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Start building (once)."""
        with self._start_lock:
            if self._started:
                return
            self._started = True

        def build() -> None:
            try:
                self._value = self._factory()
            except BaseException as err:  # reported to every caller
                self._error = err
            finally:
                self._done.set()

        threading.Thread(target=build, name=self._name, daemon=True).start()

    @property
    def ready(self) -> bool:
        """True once built (or failed)."""
        return self._done.is_set()

    def get(self) -> Any:
        """The object, once built (starting the build if nobody did)."""
        self.start()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.get(), name)
