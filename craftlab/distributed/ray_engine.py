"""``craftlab.sweep(..., engine="ray")``: a sweep's cells as Ray tasks on a local or remote Ray cluster.

* **Tasks.** A :class:`~craftlab.train.runs.RunSpec` that is not cached yet becomes one fine-tuning task (one GPU
  when the cluster has GPUs, else one CPU); every (model, setting) cell becomes a one-CPU task that depends on
  it, so compression/evaluation cells pack beside the fine-tuning runs. Tasks use one intra-op thread each
  (THE thread policy for small models; ``cpus_per_task`` raises it).
* **What is shared.** Data go through Ray's object store (put once). Runs, checkpoints and finished cells live
  in the driver's ``CRAFTLAB_HOME``, which every node must mount at the same path (NFS or a cluster file
  system): workers are told the driver's path, and :func:`check_shared_home` verifies, on every node, that a
  marker the driver wrote is visible there and that the driver sees the node's reply — a folder that is not
  shared is reported before any work starts. A worker writes each finished row to that folder (atomically), so a
  sweep killed half-way, started again, computes only the missing cells.
* **Connecting.** ``address=None`` uses the Ray session this process already has, else ``RAY_ADDRESS`` (set by
  ``ray job submit``), else starts a local cluster (``include_dashboard=False``) and shuts it down afterwards. An
  explicit address is checked with a plain TCP connection first: an unreachable one fails in seconds with its
  name in the message, never hangs.

Example::

    df = craftlab.sweep({"sam": "runs/vit-sam"}, data, engine="ray", address="10.0.0.1:6379")
    df.attrs["cells"]        # {"computed": 12, "cached": 18, "total": 30}
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ..settings import Setting
from .cells import CellError, CellStore, cell_key, compute_row, data_id, model_id
from .connect import ADDRESS_TIMEOUT_S, RayUnreachableError, check_address, last_line, ray_session

__all__ = ["ADDRESS_TIMEOUT_S", "RayUnreachableError", "check_address", "check_shared_home", "last_line",
           "ray_session", "run_cells", "shared_home_error"]

_LOADED: dict[str, Any] = {}  # per worker process: the last checkpoint loaded (its cells reuse it)


def _use_home(home: str, threads: int) -> None:
    """A worker adopts the driver's cache folder and its thread count."""
    from ..threads import configure_threads

    os.environ["CRAFTLAB_HOME"] = home
    configure_threads(threads)


def _finetune(spec: Any, home: str, threads: int) -> str:
    from ..train.runs import get_run

    _use_home(home, threads)
    return str(get_run(spec, progress=False))


def _cell(source: Any, mid: str, data: Any, setting: Setting, split: str, label: str, key: str, home: str,
          threads: int) -> dict[str, Any]:
    from ..checkpoint import load_checkpoint

    _use_home(home, threads)
    if isinstance(source, str):
        loaded = f"{source}|{mid}"  # a folder rewritten with other weights is loaded again
        if loaded not in _LOADED:
            _LOADED.clear()
            _LOADED[loaded] = load_checkpoint(source)
        source = _LOADED[loaded]
    row = compute_row(source, data, setting, split, label)
    CellStore(Path(home) / "sweeps" / "cells").put(key, row)
    return row


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
def _remote(fn_name: str) -> Any:
    import ray

    return ray.remote(max_retries=1)(globals()[fn_name])


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


def run_cells(models: Mapping[str, Any], data: Any, settings: Sequence[Setting], split: str = "test",
              progress: bool = True, address: str | None = None, cpus_per_task: int = 1, keep_going: bool = False,
              ) -> tuple[list[dict[str, Any] | None], dict[str, int], list[dict[str, str]]]:
    """The sweep's rows (models x settings, in that order) computed as Ray tasks, cell counts
    ``{"computed", "cached", "total"}`` and the failed cells (``model, setting, error``; their rows are None).
    `models`: label -> module, checkpoint folder or RunSpec. A failing cell raises :class:`CellError` unless
    `keep_going`."""
    import ray
    from tqdm.auto import tqdm

    from .. import cache
    from ..train.runs import RunSpec, is_cached, run_dir

    if address is not None:  # first, and also when every cell is cached: a wrong address is never silent
        check_address(address)
    home = str(cache.home())
    store = CellStore(Path(home) / "sweeps" / "cells")
    did = data_id(data, split)
    rows: list[dict[str, Any] | None] = []
    todo: list[tuple[int, str, Any, str, Setting, str]] = []  # (position, label, model, model id, setting, key)
    for label, m in models.items():
        mid = model_id(m if isinstance(m, RunSpec) or hasattr(m, "state_dict") else str(m))
        for s in settings:
            key = cell_key(mid, did, split, s)
            rows.append(store.get(key, label=label))
            if rows[-1] is None:
                todo.append((len(rows) - 1, label, m, mid, s, key))
    counts = {"computed": len(todo), "cached": len(rows) - len(todo), "total": len(rows)}
    bar = tqdm(total=len(rows), initial=counts["cached"], desc="sweep [ray]", disable=not progress, leave=False)
    failed: list[dict[str, str]] = []
    if not todo:
        bar.close()
        return rows, counts, failed
    with ray_session(address):
        check_shared_home(home)
        gpus = ray.cluster_resources().get("GPU", 0)
        data_ref = ray.put(data)
        sources: dict[str, Any] = {}
        pending: dict[Any, int] = {}
        names: dict[int, tuple[str, str]] = {}
        try:
            for pos, label, m, mid, s, key in todo:
                if label not in sources:
                    if isinstance(m, RunSpec):
                        sources[label] = str(run_dir(m)) if is_cached(m) else _remote("_finetune").options(
                            num_cpus=cpus_per_task, num_gpus=1 if gpus else 0).remote(m, home, cpus_per_task)
                    else:
                        # a path is resolved here: a worker (another machine) has its own working directory
                        sources[label] = ray.put(m) if hasattr(m, "state_dict") else str(
                            Path(m).expanduser().resolve())
                ref = _remote("_cell").options(num_cpus=cpus_per_task).remote(
                    sources[label], mid, data_ref, s, split, label, key, home, cpus_per_task)
                pending[ref] = pos
                names[pos] = (label, s.label())
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                pos = pending.pop(done[0])
                try:
                    rows[pos] = ray.get(done[0])
                except Exception as err:  # a RayTaskError: its cause's last line, with the cell's names
                    failure = CellError(*names[pos], last_line(err))
                    if not keep_going:
                        raise failure from None
                    failed.append(failure.record())
                bar.update()
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            bar.close()
    return rows, counts, failed
