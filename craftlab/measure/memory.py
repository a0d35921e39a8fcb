"""THE training-memory measure: what one training step holds, counted by PyTorch rather than by the process's RSS.

On a CPU the max RSS of a tiny model's process is dominated by the runtime (libraries, allocator caches), so
CraftLab counts what training itself keeps alive. Each quantity is defined once, here:

* ``saved_bytes`` — the tensors autograd **saves for backward**: the most bytes of them alive at once during the
  step (``torch.autograd.graph.saved_tensors_hooks``; a storage shared by several saved tensors counts once, and
  is released when the graph drops it). Storages of the weights and buffers (of the model and of `frozen`
  modules) are not counted: they are resident anyway (``weights_bytes``). A SAM step's two passes do not overlap,
  so its saved bytes are the larger pass's.
* ``grad_bytes`` — the gradients the backward pass leaves (``p.grad`` of every parameter after the step).
* ``optimizer_bytes`` — **every tensor** in the optimizer's state after the step (AdamW: two moments per trainable
  parameter plus its one-element step counter; one rule for every optimizer, no entry left out by name); a SAM
  step adds its base optimizer's state and the copy of the weights it holds between its two passes.
* ``input_bytes`` — the tensors the step consumes, when the caller names them (the image batch; the tapped features
  a side network trains on), each storage once: a method whose input is larger than an image pays for it.
* ``total_bytes`` = saved + gradients + optimizer state + input: what training adds on top of the weights.
* ``cuda_peak_bytes`` — on CUDA, ``torch.cuda.max_memory_allocated`` over the step minus what was allocated
  before it (None on a CPU).

:func:`measure_step` runs a loss function's step (backward and the optimizer's step done here, SAM aware: LAST /
MIET and the adaptation arms); :func:`measure_training_memory` runs a whole step function (the supernet's sandwich
step). Both return one :class:`TrainingMemory`.

Example::

    >>> import torch, torch.nn.functional as F
    >>> net = torch.nn.Linear(3, 2)
    >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    >>> mem = measure_step(lambda: F.cross_entropy(net(x), y), net, torch.optim.AdamW(net.parameters()))
    >>> mem.grad_bytes, mem.optimizer_bytes   # 8 floats of gradient; 2 moments + a step counter per tensor
    (32, 72)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["SavedTensorMeter", "TrainingMemory", "measure_step", "measure_training_memory", "optimizer_state_bytes",
           "tensor_bytes"]


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of `tensors`, each storage counted once (views of one storage are one allocation).

    >>> w = torch.zeros(10)
    >>> tensor_bytes([w, w[:5], torch.zeros(2, dtype=torch.float64)])
    56
    """
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
    return sum(seen.values())


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class _Handle:
    """What the pack hook stores in the graph: the tensor, and a release of its bytes when the graph drops it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key: int | None, meter: SavedTensorMeter):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        if self.key is not None:
            self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: the tensors autograd saves for backward inside it. ``peak_bytes``: the most bytes alive at
    once; ``total_bytes``: every storage saved, each once while it lives (a traffic figure, not memory). Storages
    of `model`'s parameters and buffers and of the tensors in `exclude` are not counted; neither are non-strided
    (sparse) tensors.

    >>> net = torch.nn.Linear(3, 2)
    >>> with SavedTensorMeter(net) as meter:
    ...     loss = net(torch.randn(4, 3)).sum()
    >>> meter.peak_bytes      # the input (4 x 3 floats) is saved for the weight's gradient
    48
    """

    def __init__(self, model: nn.Module | None = None, exclude: Iterable[torch.Tensor] = ()):
        tensors = [*model.parameters(), *model.buffers()] if model is not None else []
        self._skip = {_storage(t)[0] for t in (*tensors, *exclude)}
        self._live: dict[int, list[int]] = {}  # storage ptr -> [bytes, references]
        self.current_bytes = self.peak_bytes = self.total_bytes = 0
        self._hooks: Any = None

    def _pack(self, t: torch.Tensor) -> _Handle:
        if t.layout != torch.strided:
            return _Handle(t, None, self)
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


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one training step holds (see the module's docstring for each quantity's one definition).

    >>> TrainingMemory(saved_bytes=100, grad_bytes=8, optimizer_bytes=20, input_bytes=4, weights_bytes=8,
    ...                trainable_params=2, total_params=2).total_bytes
    132
    """

    saved_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    input_bytes: int
    weights_bytes: int
    trainable_params: int
    total_params: int
    cuda_peak_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        """Saved for backward + gradients + optimizer state + input: what training adds on top of the weights."""
        return self.saved_bytes + self.grad_bytes + self.optimizer_bytes + self.input_bytes

    def as_dict(self) -> dict[str, int | None]:
        """The fields and ``total_bytes`` (JSON-able)."""
        return {**asdict(self), "total_bytes": self.total_bytes}

    to_dict = as_dict

    def summary(self) -> str:
        """One line in MiB (2^20 bytes)."""
        mb = lambda b: f"{b / 2**20:.1f} MB"  # noqa: E731
        inputs = f" + input {mb(self.input_bytes)}" if self.input_bytes else ""
        return (f"saved for backward {mb(self.saved_bytes)} + grads {mb(self.grad_bytes)} + optimizer "
                f"{mb(self.optimizer_bytes)}{inputs} = {mb(self.total_bytes)}; {self.trainable_params:,} of "
                f"{self.total_params:,} parameters trainable")


def _is_sam(optimizer: Any) -> bool:
    """A SAM-style two-pass optimizer (``first_step`` / ``second_step`` around a ``base_optimizer``), found by its
    methods so that this layer does not import the training package."""
    return all(hasattr(optimizer, a) for a in ("first_step", "second_step", "base_optimizer"))


def _own_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for per_param in optimizer.state.values() for v in per_param.values()
               if torch.is_tensor(v))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: both moments and the step counters); for SAM, its own
    state plus its base optimizer's.

    >>> p = torch.nn.Parameter(torch.zeros(5))
    >>> opt = torch.optim.AdamW([p]); p.grad = torch.ones(5); opt.step()
    >>> optimizer_state_bytes(opt)   # exp_avg + exp_avg_sq (5 floats each) + step (one float)
    44
    """
    base = optimizer.base_optimizer if _is_sam(optimizer) else None
    extra = _own_state_bytes(base) if base is not None and base.state is not optimizer.state else 0
    return _own_state_bytes(optimizer) + extra


def _measure(model: nn.Module, optimizer: torch.optim.Optimizer, run: Callable[[], int],
             frozen: Iterable[nn.Module], inputs: Iterable[torch.Tensor]) -> TrainingMemory:
    """Run `run()` (one step; it returns the optimizer bytes held only inside the step) under the meter."""
    frozen = list(frozen)
    resident = list({id(t): t for m in (model, *frozen) for t in (*m.parameters(), *m.buffers())}.values())
    params = list({id(p): p for m in (model, *frozen) for p in m.parameters()}.values())
    cuda = any(p.is_cuda for p in params)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with SavedTensorMeter(exclude=resident) as meter:
        transient = run()
    peak = None
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    return TrainingMemory(
        saved_bytes=meter.peak_bytes, grad_bytes=grads, optimizer_bytes=optimizer_state_bytes(optimizer) + transient,
        input_bytes=tensor_bytes(inputs), weights_bytes=sum(t.numel() * t.element_size() for t in resident),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),  # the trained net's only
        total_params=sum(p.numel() for p in params),
        cuda_peak_bytes=peak)


def measure_step(loss_fn: Callable[[], torch.Tensor], model: nn.Module, optimizer: torch.optim.Optimizer,
                 frozen: Iterable[nn.Module] = (), inputs: Iterable[torch.Tensor] = ()) -> TrainingMemory:
    """Run one training step of `model` (``loss_fn()`` → backward → the optimizer's step) and count what it held.

    `optimizer` is a torch optimizer over the trainable parameters, or a SAM optimizer (two passes: the copy of
    the weights it keeps between them counts as optimizer state). The step changes the model's trainable
    parameters (measure on a copy); the gradients are cleared after counting. `frozen`: modules `loss_fn` also
    runs that are not part of `model` (a backbone held outside a side network): their weights count as resident.
    `inputs`: the tensors the step consumes (``input_bytes``).

    >>> net = torch.nn.Linear(3, 2)
    >>> x = torch.randn(4, 3)
    >>> measure_step(lambda: net(x).sum(), net, torch.optim.SGD(net.parameters(), lr=0.1), inputs=[x]).total_bytes
    128
    """

    def run() -> int:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        if not _is_sam(optimizer):
            optimizer.step()
            return 0
        optimizer.first_step(zero_grad=True)
        held = _own_state_bytes(optimizer)  # with the weights' copy ("old_p") that second_step pops
        loss_fn().backward()
        optimizer.second_step(zero_grad=False)
        return max(0, held - _own_state_bytes(optimizer))

    mem = _measure(model, optimizer, run, frozen, inputs)
    optimizer.zero_grad(set_to_none=True)
    return mem


def measure_training_memory(model: nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], Any],
                            frozen: Iterable[nn.Module] = (), inputs: Iterable[torch.Tensor] = ()) -> TrainingMemory:
    """Run one training `step()` (forward(s), backward(s), ``optimizer.step()``; it must not clear the gradients at
    its end) and count what it held (:class:`TrainingMemory`; `frozen` and `inputs` as in :func:`measure_step`).

    >>> net = torch.nn.Linear(3, 2)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> measure_training_memory(net, opt, lambda: (net(torch.randn(4, 3)).sum().backward(), opt.step())).saved_bytes
    48
    """
    return _measure(model, optimizer, lambda: (step(), 0)[1], frozen, inputs)
