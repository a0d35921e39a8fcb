"""Training memory: what a training step itself holds, measured by PyTorch rather than by the process's RSS.

On a CPU the max RSS of a tiny model's process is dominated by the runtime (libraries, allocator caches), so
CraftLab counts the three things training adds: the tensors autograd **saves for backward** (peak of the bytes
alive at once, from ``torch.autograd.graph.saved_tensors_hooks``; each storage counted once; parameters, which
are held anyway, not counted), the **gradients** (``p.grad`` of every parameter after the step) and the
**optimizer state** (every tensor in ``optimizer.state``). On a GPU ``torch.cuda.max_memory_allocated`` of the
step is reported as well.

Example::

    with SavedTensorMeter(model) as meter:
        loss = model(x).logsumexp(1).mean()
        loss.backward()
    meter.peak_bytes
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class _Handle:
    """What the pack hook stores in the graph: the tensor, and a release of its bytes when the graph drops it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key: int | None, meter: SavedTensorMeter):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        if self.key is not None:
            self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: the bytes of tensors saved for backward inside it, ``peak_bytes`` alive at once and
    ``total_bytes`` saved overall. Storages shared by several saved tensors count once; storages of `model`'s
    parameters (and of tensors given in `exclude`) are not counted."""

    def __init__(self, model: nn.Module | None = None, exclude: list[torch.Tensor] | None = None):
        tensors = list(model.parameters()) if model is not None else []
        tensors += list(exclude or [])
        self._skip = {t.untyped_storage().data_ptr() for t in tensors}
        self._live: dict[int, list[int]] = {}  # storage ptr -> [bytes, references]
        self.current_bytes = self.peak_bytes = self.total_bytes = 0
        self._hooks: Any = None

    def _pack(self, t: torch.Tensor) -> _Handle:
        ptr, nbytes = _storage(t)
        if ptr in self._skip or nbytes == 0:
            return _Handle(t, None, self)
        entry = self._live.get(ptr)
        if entry is None:
            self._live[ptr] = [nbytes, 1]
            self.current_bytes += nbytes
            self.total_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        else:
            entry[1] += 1
        return _Handle(t, ptr, self)

    def _release(self, ptr: int) -> None:
        entry = self._live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current_bytes -= entry[0]
            del self._live[ptr]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda h: h.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


@dataclass
class TrainingMemory:
    """Bytes a training step holds: saved tensors (peak), gradients, optimizer state; plus parameter counts."""

    saved_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    param_bytes: int
    trainable_params: int
    total_params: int
    cuda_peak_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        """Saved tensors + gradients + optimizer state (what training adds on top of the weights)."""
        return self.saved_bytes + self.grad_bytes + self.optimizer_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}

    def summary(self) -> str:
        mb = lambda b: f"{b / 2**20:.1f} MB"
        return (f"saved for backward {mb(self.saved_bytes)} + grads {mb(self.grad_bytes)} + optimizer "
                f"{mb(self.optimizer_bytes)} = {mb(self.total_bytes)}; {self.trainable_params:,} of "
                f"{self.total_params:,} parameters trainable")


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (Adam's moments, step counters...)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def measure_training_memory(model: nn.Module, optimizer: torch.optim.Optimizer,
                            step: Callable[[], Any]) -> TrainingMemory:
    """Run one training `step()` (forward(s), backward(s), ``optimizer.step()``; it must not clear the gradients
    at its end) and return what it held (:class:`TrainingMemory`)."""
    cuda = any(p.is_cuda for p in model.parameters())
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with SavedTensorMeter(model) as meter:
        step()
    params = list(model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    return TrainingMemory(
        saved_bytes=meter.peak_bytes, grad_bytes=grads, optimizer_bytes=optimizer_state_bytes(optimizer),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_params=sum(p.numel() for p in params),
        cuda_peak_bytes=torch.cuda.max_memory_allocated() if cuda else None)
