"""``craftlab.sweep(..., engine="ray")``: a sweep's cells as Ray tasks on a local or remote Ray cluster.

* **Tasks.** A :class:`~craftlab.train.runs.RunSpec` that is not cached yet becomes one fine-tuning task: on a
  cluster with GPUs one GPU each, in a single-use worker process (``max_calls=1``), submitted as GPUs free up
  with the cluster's resources read again at each submission; else ``cpus_per_task`` CPUs. Every (model,
  setting) cell becomes a ``cpus_per_task``-CPU task that depends on its run, so compression/evaluation cells
  pack beside the fine-tuning runs; a model's uncompressed evaluation is one task its cells share. On a cluster
  with GPUs a cell (and that evaluation) also asks for ``gpus_per_cell`` of a GPU (default half of one) and runs
  on ``cuda``, in a single-use worker process: a reused one could not move to the GPU Ray assigns next.
* **What is shared.** Data go through Ray's object store (put once). Runs, checkpoints and finished cells live
  in the driver's ``CRAFTLAB_HOME``, which every node must mount at the same path (NFS or a cluster file
  system): workers are told the driver's path, and :func:`check_shared_home` verifies, on every node, that a
  marker the driver wrote is visible there and that the driver sees the node's reply — a folder that is not
  shared is reported before any work starts. A worker writes each finished row to that folder (atomically), so a
  sweep killed half-way, started again, computes only the missing cells.
* **Connecting** (:mod:`~craftlab.distributed.connect`): the address is checked first, in seconds; a failing
  cell is a one-line :class:`~craftlab.distributed.cells.CellError` naming it, or with ``keep_going`` listed.

Example::

    df = craftlab.sweep({"sam": "runs/vit-sam"}, data, engine="ray", address="10.0.0.1:6379")
    df.attrs["cells"]        # {"computed": 12, "cached": 18, "total": 30}
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ..settings import Setting
from .cells import (
    CellError,
    CellStore,
    cell_device,
    cell_key,
    check_gpus_per_cell,
    compute_row,
    data_id,
    evaluate_uncompressed,
    model_id,
)
from .connect import ADDRESS_TIMEOUT_S, RayUnreachableError, check_address, last_line, ray_session

__all__ = ["ADDRESS_TIMEOUT_S", "AUTO_GPUS_PER_CELL", "RayUnreachableError", "cell_device", "check_address",
           "check_shared_home", "gpus_per_cell_for", "last_line", "ray_session", "run_cells", "shared_home_error"]

_LOADED: dict[str, Any] = {}  # per worker process: the last checkpoint loaded (its cells reuse it)

AUTO_GPUS_PER_CELL = 0.5
"""What a compression/evaluation cell asks for on a cluster with GPUs when ``gpus_per_cell`` is left to the engine:
half a GPU, so two cells share one (one calibrating while the other evaluates)."""


def _use_home(home: str, threads: int) -> None:
    """A worker adopts the driver's cache folder and its thread count."""
    from ..threads import configure_threads

    os.environ["CRAFTLAB_HOME"] = home
    configure_threads(threads)


def _finetune(spec: Any, home: str, threads: int) -> dict[str, Any]:
    """Fine-tune `spec` (cached in the shared `home`): its folder, and where it ran (pid, GPUs, node)."""
    import ray

    from ..train.runs import get_run

    _use_home(home, threads)
    path = str(get_run(spec, progress=False))
    ctx = ray.get_runtime_context()
    return {"path": path, "pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "node": ctx.get_node_id()}


def _placed(source: Any, mid: str, home: str, threads: int) -> tuple[Any, dict[str, Any]]:
    """In a worker: the model of `source` (a module, a checkpoint folder or what :func:`_finetune` returned) on
    this task's device (:func:`~craftlab.distributed.cells.cell_device`), and where it runs."""
    import ray
    import torch

    from ..checkpoint import load_checkpoint

    _use_home(home, threads)
    if isinstance(source, dict):  # what _finetune returned
        source = source["path"]
    if isinstance(source, str):
        loaded = f"{source}|{mid}"  # a folder rewritten with other weights is loaded again
        if loaded not in _LOADED:
            _LOADED.clear()
            _LOADED[loaded] = load_checkpoint(source)
        source = _LOADED[loaded]
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = cell_device(gpu_ids, torch.cuda.is_available())
    if device != "cpu":  # a single-use process (max_calls=1): its own copy, on the GPU Ray gave it
        source = source.to(device)
    return source, {"device": device, "pid": os.getpid(), "gpu_ids": gpu_ids}


def _fp_eval(source: Any, mid: str, data: Any, split: str, home: str, threads: int) -> dict[str, Any]:
    """The uncompressed evaluation of one model, done once and shared by all its cells."""
    model, _ = _placed(source, mid, home, threads)
    return evaluate_uncompressed(model, data, split)


def _cell(source: Any, mid: str, data: Any, setting: Setting, split: str, label: str, key: str, home: str,
          threads: int, fp: dict[str, Any] | None) -> dict[str, Any]:
    """One cell in a worker: its row (also stored under `key` in the shared `home`) and where it ran."""
    model, where = _placed(source, mid, home, threads)
    row = compute_row(model, data, setting, split, label, fp=fp)
    CellStore(Path(home) / "sweeps" / "cells").put(key, row)
    return {"row": row, "where": where}


def _probe(marker: str, token: str) -> dict[str, Any]:
    """On one node: does it see the driver's marker, and can it leave a reply beside it?"""
    import ray

    node = ray.get_runtime_context().get_node_id()
    path = Path(marker)
    try:
        seen = path.read_text() == token
    except OSError:
        seen = False
    reply = path.with_name(f"{path.name}.{node}")
    with contextlib.suppress(OSError):
        reply.write_text(token)
    return {"node": node, "host": socket.gethostname(), "sees_marker": seen, "reply": str(reply)}


@cache
def _remote(fn_name: str, gpus: float = 0) -> Any:
    """`fn_name` as a Ray remote function; ``gpus`` > 0: that many GPUs (a fraction: a share of one), in a
    single-use worker process (``max_calls=1``, which Ray honours only in the decorator, not in ``.options()``), so
    its CUDA memory is freed when it ends and the next task gets a fresh process on the GPU Ray assigns it."""
    import ray

    if gpus:
        return ray.remote(max_retries=1, num_gpus=gpus, max_calls=1)(globals()[fn_name])
    return ray.remote(max_retries=1)(globals()[fn_name])


def gpus_per_cell_for(requested: float | None, resources: Mapping[str, float]) -> float:
    """The GPUs each compression/evaluation cell asks for on a cluster with `resources`: `requested` when given
    (0: on CPUs), else :data:`AUTO_GPUS_PER_CELL` when the cluster has GPUs and 0 when it has none.

    Example::

        >>> gpus_per_cell_for(None, {"CPU": 16, "GPU": 4}), gpus_per_cell_for(None, {"CPU": 8})
        (0.5, 0)
        >>> gpus_per_cell_for(0.25, {"CPU": 16, "GPU": 4}), gpus_per_cell_for(0, {"CPU": 16, "GPU": 4})
        (0.25, 0)
    """
    check_gpus_per_cell(requested)
    if requested is None:
        return AUTO_GPUS_PER_CELL if resources.get("GPU", 0) else 0
    if requested and not resources.get("GPU", 0):
        raise ValueError(f"gpus_per_cell={requested:g}, but the Ray cluster has no GPUs (resources: "
                         f"{dict(resources)}): leave it out or pass 0 to run the cells on CPUs")
    return requested


def shared_home_error(home: str, reports: Sequence[Mapping[str, Any]]) -> str | None:
    """The message for nodes that do not share `home` with the driver (None when all do). A report is what
    :func:`check_shared_home` gathers per node: ``node``, ``host``, ``sees_marker`` and ``reply_seen``.

    Example::

        >>> shared_home_error("/nfs/craftlab", [{"node": "ab12", "host": "w1", "sees_marker": True,
        ...                                      "reply_seen": True}]) is None
        True
    """
    bad = [r for r in reports if not (r["sees_marker"] and r["reply_seen"])]
    if not bad:
        return None
    nodes = ", ".join(f"node {r['node'][:12]} on {r['host']}" for r in bad)
    return (f"CRAFTLAB_HOME={home} is not shared across the Ray cluster: {nodes} "
            f"{'does' if len(bad) == 1 else 'do'} not see the driver's files there (or the driver does not see "
            "theirs). Runs, checkpoints and finished sweep cells live in that folder: mount one shared folder "
            "(NFS, a cluster file system) at the same path on every node and point CRAFTLAB_HOME to it")


def check_shared_home(home: str | os.PathLike) -> list[dict[str, Any]]:
    """Check on every alive node of the connected cluster that `home` is the same folder as the driver's; return
    the per-node reports, or raise RuntimeError naming the nodes that do not share it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    marker = Path(home) / ".shared-check" / token
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        refs = [_remote("_probe").options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(str(marker), token) for node in nodes]
        reports = ray.get(refs, timeout=120)
        for r in reports:
            r["reply_seen"] = Path(r.pop("reply")).exists()
    finally:
        for p in marker.parent.glob(f"{token}*"):
            p.unlink(missing_ok=True)
    msg = shared_home_error(str(home), reports)
    if msg:
        raise RuntimeError(msg)
    return reports


def _finetune_slots(resources: Mapping[str, float], cpus_per_task: int) -> tuple[int, bool]:
    """How many fine-tuning tasks may run at once on a cluster with `resources`, and whether they take GPUs:
    one per GPU when there are GPUs, else one per `cpus_per_task` CPUs (at least one).

    Example::

        >>> _finetune_slots({"CPU": 16, "GPU": 4}, 2), _finetune_slots({"CPU": 8}, 2)
        ((4, True), (4, False))
    """
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return gpus, True
    return max(1, int(resources.get("CPU", 1)) // max(1, cpus_per_task)), False


def run_cells(models: Mapping[str, Any], data: Any, settings: Sequence[Setting], split: str = "test",
              progress: bool = True, address: str | None = None, cpus_per_task: int = 1, keep_going: bool = False,
              gpus_per_cell: float | None = None) -> tuple[list[dict[str, Any] | None], dict[str, Any]]:
    """The sweep's rows (models x settings, in that order; None for a failed cell) computed as Ray tasks, and
    what happened: ``{"cells": {"computed", "cached", "total"}, "failed": [{"model", "setting", "error"}],
    "runs": {label: {"path", "pid", "gpu_ids", "node"}}, "placement": [{"model", "setting", "device", "pid",
    "gpu_ids"}]}`` (``runs``: the fine-tunes done in this call; ``placement``: where each computed cell ran).
    `models`: label -> module, checkpoint folder or RunSpec. A failing cell raises :class:`CellError` unless
    `keep_going`.

    Cells ask for `gpus_per_cell` GPUs (:func:`gpus_per_cell_for`: by default half a GPU when the cluster has
    GPUs, else none) and then run their model and data on ``cuda`` (:func:`~craftlab.distributed.cells.cell_device`),
    each in a single-use worker process; a model's uncompressed evaluation is one task that its cells share.

    Fine-tunes are submitted as slots free up (:func:`_finetune_slots`), the cluster's GPUs read again at each
    submission, so GPU nodes that join during the sweep are used; a GPU fine-tune is a single-use worker process
    (``max_calls=1``: its CUDA memory is freed when it ends).
    """
    import ray
    from tqdm.auto import tqdm

    from .. import cache
    from ..train.runs import RunSpec, is_cached, run_dir

    check_gpus_per_cell(gpus_per_cell)
    if address is not None:  # first, and also when every cell is cached: a wrong address is never silent
        check_address(address)
    home = str(cache.home())
    store = CellStore(Path(home) / "sweeps" / "cells")
    did = data_id(data, split)
    rows: list[dict[str, Any] | None] = []
    todo: dict[str, list[tuple[int, str, Setting, str]]] = {}  # label -> (position, model id, setting, key)
    for label, m in models.items():
        mid = model_id(m if isinstance(m, RunSpec) or hasattr(m, "state_dict") else str(m))
        for s in settings:
            key = cell_key(mid, did, split, s)
            rows.append(store.get(key, label=label))
            if rows[-1] is None:
                todo.setdefault(label, []).append((len(rows) - 1, mid, s, key))
    n_todo = sum(map(len, todo.values()))
    info: dict[str, Any] = {"cells": {"computed": n_todo, "cached": len(rows) - n_todo, "total": len(rows)},
                            "failed": [], "runs": {}, "placement": []}
    c = info["cells"]
    if progress:  # the start-up line: workers take seconds to start, the bar would sit at 0 meanwhile
        where = address or os.environ.get("RAY_ADDRESS") or ("this session" if ray.is_initialized() else
                                                             "a local cluster (started here)")
        print(f"sweep [ray]: {c['total']} cells, {c['cached']} cached, {c['computed']} to compute"
              + (f" on {where}: starting workers..." if todo else ""), file=sys.stderr, flush=True)
    bar = tqdm(total=len(rows), initial=len(rows) - n_todo, desc="sweep [ray]", disable=not progress)
    if not todo:
        bar.close()
        return rows, info
    with ray_session(address):
        check_shared_home(home)
        gpus = gpus_per_cell_for(gpus_per_cell, ray.cluster_resources())
        data_ref = ray.put(data)
        pending: dict[Any, tuple[int, str, str]] = {}  # cell ref -> (position, label, setting label)
        tuning: dict[Any, str] = {}  # fine-tune ref -> label
        queue = [lb for lb in todo if isinstance(models[lb], RunSpec) and not is_cached(models[lb])]

        def submit_cells(label: str, source: Any) -> None:
            cells, fp = todo[label], None
            if len(cells) > 1:  # the uncompressed evaluation: once per model, its cells wait for it
                fp = _remote("_fp_eval", gpus).options(num_cpus=cpus_per_task).remote(
                    source, cells[0][1], data_ref, split, home, cpus_per_task)
            for pos, mid, s, key in cells:
                ref = _remote("_cell", gpus).options(num_cpus=cpus_per_task).remote(
                    source, mid, data_ref, s, split, label, key, home, cpus_per_task, fp)
                pending[ref] = (pos, label, s.label())

        def submit_runs() -> None:
            slots, gpu = _finetune_slots(ray.cluster_resources(), cpus_per_task)  # re-read: nodes come and go
            while queue and len(tuning) < slots:
                label = queue.pop(0)
                ref = _remote("_finetune", 1 if gpu else 0).options(num_cpus=cpus_per_task).remote(
                    models[label], home, cpus_per_task)
                tuning[ref] = label
                submit_cells(label, ref)

        try:
            for label in todo:
                m = models[label]
                if isinstance(m, RunSpec):
                    if label not in queue:
                        submit_cells(label, str(run_dir(m)))
                else:  # a path is resolved here: a worker (another machine) has its own working directory
                    submit_cells(label, ray.put(m) if hasattr(m, "state_dict") else str(
                        Path(m).expanduser().resolve()))
            submit_runs()
            while pending or tuning:
                done = ray.wait([*tuning, *pending], num_returns=1)[0][0]
                if done in tuning:
                    label = tuning.pop(done)
                    with contextlib.suppress(Exception):  # a failed fine-tune fails its cells: reported there
                        info["runs"][label] = ray.get(done)
                    submit_runs()
                    continue
                pos, label, setting = pending.pop(done)
                try:
                    got = ray.get(done)
                    rows[pos] = got["row"]
                    info["placement"].append({"model": label, "setting": setting, **got["where"]})
                except Exception as err:  # a RayTaskError: its cause's last line, with the cell's names
                    failure = CellError(label, setting, last_line(err))
                    if not keep_going:
                        raise failure from None
                    info["failed"].append(failure.record())
                bar.update()
        finally:
            for ref in [*pending, *tuning]:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            bar.close()
    return rows, info
