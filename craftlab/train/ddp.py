"""Data-parallel fine-tuning: what :func:`craftlab.finetune` does when it runs in a ``torch.distributed`` group.

Launch any script that calls :func:`craftlab.finetune` (or ``craftlab finetune``) with ``torchrun`` (or
``accelerate launch --multi_gpu``, which starts torchrun): ``finetune`` sees ``WORLD_SIZE > 1`` in the environment,
joins the process group (gloo on CPU, NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``) and trains a
``DistributedDataParallel`` copy of the model. A single process never reaches this module's code paths: its
training is bit-identical to what it was.

* **Same global batch as one process.** Every rank draws the single-process loader's order (same seed, same
  generator draws) and takes its slice of each global batch, so with the base optimizer a run on N ranks
  equals the single-process run to float tolerance. The global batch (``batch_size``, default the data's) must
  be divisible by the world size; the last, shorter batch is split as evenly as possible (losses are weighted
  so the all-reduced gradient is that batch's mean) and dropped only when it has fewer examples than ranks.
* **SAM.** By default the first (ascent) backward runs under ``no_sync``: each replica perturbs its weights by
  its *own* gradient — Foret et al.'s m-sharpness with m = the per-replica batch, the default of their
  data-parallel setup. ``sam_sync_first=True`` all-reduces it instead (every replica takes the global-batch
  perturbation: the single-process SAM step). The second gradient is always all-reduced before the base step.
* **BatchNorm.** By default each replica normalises with its *own* batch's statistics (per-replica BN, as
  plain DDP does): a BatchNorm model then does NOT equal one process at the same global batch (its
  normalisation sees B/N examples), and its running statistics are rank 0's (DDP broadcasts buffers).
  ``sync_bn=True`` makes the BatchNorm layers use the global batch's statistics (:func:`sync_batchnorm`,
  gradients through the all-reduce): the one-process run to float tolerance. LayerNorm models (ViTs) need
  nothing: LayerNorm is per example. SAM's second pass keeps the running statistics frozen either way.
* **Checkpoints** are written once, by rank 0 (atomically, as always); the other ranks wait for it.

Example (2 CPU processes)::

    torchrun --standalone --nproc_per_node 2 -m craftlab.cli finetune --model vit-tiny --data digits \\
        --sam-rho 0.05 --epochs 8 --out runs/vit-sam-ddp
"""

from __future__ import annotations

import atexit
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel group (``rank`` of ``size``; ``local_rank`` on its node)."""

    rank: int
    size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, dev: torch.device) -> torch.device:
        """`dev` pinned to this rank's GPU (``cuda`` -> ``cuda:LOCAL_RANK``); CPU unchanged."""
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return dev

    def check_batch(self, batch_size: int) -> None:
        """A clear error when the global batch cannot be cut into equal per-rank batches."""
        if batch_size % self.size:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by the world size {self.size} (the number of processes "
                f"torchrun/accelerate started): choose a global batch size that is a multiple of {self.size}, "
                f"e.g. {(batch_size // self.size + 1) * self.size}")

    def wrap(self, model: torch.nn.Module, dev: torch.device, sync_bn: bool = False) -> torch.nn.Module:
        """``DistributedDataParallel(model)`` (parameters broadcast from rank 0); with `sync_bn` its BatchNorm
        layers first become :func:`sync_batchnorm` layers (in place: pass the training copy)."""
        from torch.nn.parallel import DistributedDataParallel

        if sync_bn:
            sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def loader(self, single: DataLoader) -> DataLoader:
        """This rank's loader: `single` (the single-process training loader)'s batches, each cut into world-size
        slices, this rank's slice; the generator is `single`'s, so the draws are the same as one process's."""
        sampler = ShardedBatches(single.batch_sampler, self.rank, self.size)
        return DataLoader(single.dataset, batch_sampler=sampler, generator=single.generator,
                          num_workers=single.num_workers, collate_fn=single.collate_fn)

    def loss_weight(self, step: int, local_n: int, n_examples: int, batch_size: int) -> float:
        """Weight of this rank's mean loss at `step` of an epoch so that DDP's average over ranks is the mean over
        the global batch: 1 for full batches, ``local_n * size / global_n`` for a short last one."""
        full = n_examples // batch_size
        global_n = batch_size if step < full else n_examples - full * batch_size
        return local_n * self.size / global_n

    def all_sum(self, *values: float) -> list[float]:
        """Sum numbers over the ranks (epoch statistics)."""
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        if self.backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().tolist()

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, as DDP does before each forward: after
        the last step of an epoch every replica then evaluates, and holds, the same model."""
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


class _SyncBatchNorm:
    """Forward of a BatchNorm layer whose training statistics are those of the global batch: per-channel sums
    are all-reduced over the ranks (two passes: the mean, then the squared deviations from it) with
    ``torch.distributed.nn``'s differentiable all-reduce, so the gradient flows through the other ranks'
    statistics as in one process. Works on gloo (CPU) and NCCL; ``torch.nn.SyncBatchNorm`` refuses CPU input.
    Eval mode with running statistics is the plain layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = _PLAIN_BN[type(self)]
        if not self.training and self.track_running_stats:
            return plain.forward(self, x)
        self._check_input_dim(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local = torch.cat([xf.sum(dims), xf.new_tensor([xf.numel() / xf.shape[1]])])
        total = all_reduce(local)
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


_PLAIN_BN = {}
_SYNC_BN = {}
for _cls in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d):
    _sync = type(f"Sync{_cls.__name__}", (_SyncBatchNorm, _cls), {"__module__": __name__})
    _SYNC_BN[_cls], _PLAIN_BN[_sync] = _sync, _cls


def sync_batchnorm(model: torch.nn.Module) -> int:
    """Make `model`'s BatchNorm1d/2d/3d layers synchronise their training statistics across the ranks (in
    place: the same parameters, buffers and state-dict keys; :func:`plain_batchnorm` undoes it). Returns how
    many layers changed. Example::

        >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
        >>> sync_batchnorm(m), type(m[1]).__name__, plain_batchnorm(m), type(m[1]).__name__
        (1, 'SyncBatchNorm2d', 1, 'BatchNorm2d')
    """
    mods = [m for m in model.modules() if type(m) in _SYNC_BN]
    for m in mods:
        m.__class__ = _SYNC_BN[type(m)]
    return len(mods)


def plain_batchnorm(model: torch.nn.Module) -> int:
    """Undo :func:`sync_batchnorm`: plain BatchNorm layers again (what a checkpoint holds)."""
    mods = [m for m in model.modules() if type(m) in _PLAIN_BN]
    for m in mods:
        m.__class__ = _PLAIN_BN[type(m)]
    return len(mods)


class ShardedBatches(Sampler[list[int]]):
    """A batch sampler's batches, each split into `size` nearly equal slices; yields slice `rank`.

    A last batch with fewer examples than ranks is dropped (a rank would get nothing).

    Example::

        >>> from torch.utils.data import BatchSampler, SequentialSampler
        >>> list(ShardedBatches(BatchSampler(SequentialSampler(range(10)), 4, False), rank=1, size=2))
        [[2, 3], [6, 7], [9]]
    """

    def __init__(self, batches: Any, rank: int, size: int):
        self.batches, self.rank, self.size = batches, rank, size

    def __iter__(self):
        for batch in self.batches:
            if len(batch) < self.size:
                return
            q, r = divmod(len(batch), self.size)
            start = self.rank * q + min(self.rank, r)
            yield list(batch[start:start + q + (self.rank < r)])

    def __len__(self) -> int:
        n, b = len(self.batches.sampler), self.batches.batch_size
        return n // b + (n % b >= self.size)


ACCELERATE_CPU_MESSAGE = (
    "`accelerate launch --cpu` started this as ONE process, whatever --num_processes says (ACCELERATE_USE_CPU is "
    "set and WORLD_SIZE is not): fine-tuning is not data-parallel. For N CPU processes use `torchrun "
    "--standalone --nproc_per_node N ...`, or `accelerate launch --multi_gpu --num_processes N ...` without --cpu "
    "(gloo is used when there is no GPU)")


def accelerate_cpu_trap(environ: Any = None) -> bool:
    """Whether this process was started by ``accelerate launch --cpu`` (``ACCELERATE_USE_CPU`` true) with no
    process group in the environment (no ``WORLD_SIZE``): accelerate then runs one process even for
    ``--num_processes 2``. Example::

        >>> accelerate_cpu_trap({"ACCELERATE_USE_CPU": "True"}), accelerate_cpu_trap({})
        (True, False)
    """
    env = os.environ if environ is None else environ
    return env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") and "WORLD_SIZE" not in env


def current_world(setup: bool = True) -> World | None:
    """The data-parallel group this process belongs to, or None in a single process (the usual case).

    With ``setup`` and ``WORLD_SIZE > 1`` in the environment (torchrun, ``accelerate launch``, SLURM + torchrun)
    and no process group yet, joins one: NCCL when CUDA is available, else gloo. Example::

        >>> current_world() is None   # a plain python process
        True
    """
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if setup and accelerate_cpu_trap():
            warnings.warn(ACCELERATE_CPU_MESSAGE, RuntimeWarning, stacklevel=2)
        if not setup or _env_world_size() <= 1:
            return None
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        atexit.register(_destroy)
    if dist.get_world_size() <= 1:
        return None
    return World(rank=dist.get_rank(), size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend=dist.get_backend())


def save_once(save: Any, path: Any) -> Any:
    """Call ``save()`` on rank 0 only (the other ranks wait for it) and return `path` on every rank; in a single
    process just ``save()``."""
    world = current_world(setup=False)
    if world is None:
        return save()
    out = save() if world.is_main else path
    world.barrier()
    return out
