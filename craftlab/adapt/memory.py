"""What a training step holds: tensors saved for backward, gradients, optimizer state.

On a CPU a process's peak RSS is dominated by the runtime for tiny models, so this counts what training itself
keeps alive: the bytes of every tensor autograd saves for the backward pass (``saved_tensors_hooks``; each
storage once; storages of parameters and buffers are not counted, they are resident anyway), the gradients the
backward pass leaves, and the optimizer's state after a step (AdamW: two moments per trainable parameter; SAM:
plus the copy of the weights it keeps between its two passes). On CUDA, ``torch.cuda.max_memory_allocated``
over the step is reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one training step holds. ``total_bytes`` = saved + gradients + optimizer state + the step's input
    (the image batch for fine-tuning and LoRA; the tapped features a side network trains on)."""

    saved_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    trainable_params: int
    weights_bytes: int
    cuda_peak_bytes: int | None = None
    input_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.saved_bytes + self.grad_bytes + self.optimizer_bytes + self.input_bytes

    def as_dict(self) -> dict[str, int | None]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class SavedTensors:
    """``with SavedTensors(exclude=model.parameters()) as saved: loss = f(x)``: ``saved.bytes`` is the size of
    the distinct storages autograd saved for backward inside the block (not counting those of `exclude`)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._skip = {_storage(t)[0] for t in exclude}
        self._seen: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided:
            ptr, n = _storage(t)
            if ptr not in self._skip:
                self._seen[ptr] = max(self._seen.get(ptr, 0), n)
        return t

    def __enter__(self) -> SavedTensors:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())


def _state_bytes(state: dict) -> int:
    total = 0
    for per_param in state.values():
        for key, v in per_param.items():
            if torch.is_tensor(v) and key != "step":  # AdamW's scalar step counters are not state memory
                total += v.numel() * v.element_size()
    return total


def measure_step(loss_fn: Callable[[], torch.Tensor], model: nn.Module, optimizer: torch.optim.Optimizer,
                 frozen: Iterable[nn.Module] = (), inputs: Iterable[torch.Tensor] = ()) -> TrainingMemory:
    """Run one training step of `model` (``loss_fn()`` → backward → step) and count what it held.

    `optimizer` is a torch optimizer over the trainable parameters, or a :class:`craftlab.SAM` (two passes:
    saved tensors are the larger pass's, and SAM's copy of the weights counts as optimizer state).
    The step changes the model's trainable parameters: measure on a copy. `frozen`: modules `loss_fn` also runs
    that are not part of `model` (a backbone held outside a side network): their weights count as resident.
    `inputs`: the tensors the step consumes (the image batch; a side network's tapped features), counted once per
    storage in ``input_bytes``: a method whose input is larger than an image pays for it.

    >>> opt = torch.optim.AdamW(net.parameters())                                  # doctest: +SKIP
    >>> measure_step(lambda: F.cross_entropy(net(x), y), net, opt).total_bytes      # doctest: +SKIP
    """
    from ..train.sam import SAM

    params = [p for p in model.parameters() if p.requires_grad]
    resident = list({id(t): t for m in (model, *frozen) for t in (*m.parameters(), *m.buffers())}.values())
    cuda = any(p.is_cuda for p in params)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    optimizer.zero_grad(set_to_none=True)
    with SavedTensors(resident) as saved:
        loss = loss_fn()
    loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    saved_bytes, extra = saved.bytes, 0
    if isinstance(optimizer, SAM):
        optimizer.first_step(zero_grad=True)
        extra = _state_bytes(optimizer.state)  # the weights' copy ("old_p") held until second_step
        with SavedTensors(resident) as saved2:
            loss2 = loss_fn()
        loss2.backward()
        saved_bytes = max(saved_bytes, saved2.bytes)
        optimizer.second_step(zero_grad=False)
        state = _state_bytes(optimizer.base_optimizer.state) + extra
    else:
        optimizer.step()
        state = _state_bytes(optimizer.state)
    optimizer.zero_grad(set_to_none=True)
    peak = None
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    held = {_storage(t)[0]: _storage(t)[1] for t in inputs}
    return TrainingMemory(saved_bytes=saved_bytes, grad_bytes=grads, optimizer_bytes=state,
                          trainable_params=sum(p.numel() for p in params),
                          weights_bytes=sum(t.numel() * t.element_size() for t in resident), cuda_peak_bytes=peak,
                          input_bytes=sum(held.values()))
