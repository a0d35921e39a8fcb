"""MIET's server/device split: the server sends Gather*(B, x, k) = z_0 + … + z_k per image, optionally quantized;
the device trains a small adaptor on it. And the bytes per image each method has to send, really serialized.

RECONSTRUCTION. Gather* is documented as the *sum* of intermediate features (z_0 = tokens after the patch
embedding, z_i = output of block i); which blocks, and any normalization, are not. Here: z_0 … z_k, every block,
no normalization, the whole token sequence (CLS included). The quantized transfer (not in the paper: compression
again) is per-token asymmetric uniform quantization (:func:`craftlab.quant.quantize_tensor`'s grid with
``axis`` = token), codes packed 8/bits to a byte, one float32 scale and one uint8 zero point per token.

A message is a dict of tensors serialized with safetensors (its bytes are what goes over the wire: the header
included); :func:`message_bytes` is ``len(safetensors.torch.save(message))``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import nn

from ..compression.quant import grid, qparams
from .taps import Features

TRANSFER_BITS = (None, 8, 4, 2)
"""Bits of the quantized transfer: None = float32; 8, 4, 2 pack 1, 2, 4 codes per byte."""


def check_k(k: object, depth: int) -> int:
    """k of Gather*(k): an integer 0 ≤ k ≤ L (the model's depth)."""
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 0 <= k <= depth:
        raise ValueError(f"k = {k!r} is outside the model's depth: Gather*(k) sums z_0 … z_k with 0 <= k <= {depth}")
    return int(k)


def check_bits(bits: object) -> int | None:
    if bits not in TRANSFER_BITS or isinstance(bits, bool):
        raise ValueError(f"transfer bits must be one of {TRANSFER_BITS} (None: float32), got {bits!r}")
    return bits  # type: ignore[return-value]


def gather_star(z: torch.Tensor | Features, k: int) -> torch.Tensor:
    """Gather*(k) = z_0 + z_1 + … + z_k: one (N, d) tensor per image.

    `z`: :class:`~craftlab.adapt.taps.Features` holding z_0 … z_k, or a tensor (n, T, N, d) of z_0 … z_{T−1}.

    >>> gather_star(torch.ones(2, 5, 17, 64), 2)[0, 0, 0].item()
    3.0
    """
    if isinstance(z, Features):
        k = check_k(k, max(z.taps))
        return z.select(range(k + 1)).sum(1)
    k = check_k(k, z.shape[1] - 1)
    return z[:, : k + 1].sum(1)


# ------------------------------------------------------------------------------------- messages


def encode(x: torch.Tensor, bits: int | None = None) -> dict[str, torch.Tensor]:
    """The message that carries `x` (..., d): float32 as is, or per-row (token) quantized and packed.

    >>> msg = encode(torch.randn(17, 64), bits=4); msg["codes"].shape, msg["codes"].dtype
    (torch.Size([17, 32]), torch.uint8)
    """
    bits = check_bits(bits)
    x = x.detach().to("cpu", torch.float32).contiguous()
    if bits is None:
        return {"x": x}
    rows = x.reshape(-1, x.shape[-1])
    scale, zero = qparams(rows, bits, axis=0, symmetric=False)
    qmin, qmax = grid(bits, symmetric=False)
    codes = torch.clamp(torch.round(rows * (1.0 / scale)) + zero, qmin, qmax).to(torch.uint8)
    per_byte = 8 // bits
    pad = (-codes.shape[1]) % per_byte
    if pad:
        codes = torch.cat([codes, codes.new_zeros(codes.shape[0], pad)], 1)
    codes = codes.reshape(codes.shape[0], -1, per_byte)
    packed = torch.zeros(codes.shape[:2], dtype=torch.uint8)
    for j in range(per_byte):
        packed |= codes[..., j] << (bits * j)
    return {"codes": packed, "scale": scale.reshape(-1).contiguous(), "zero_point": zero.reshape(-1).to(torch.uint8),
            "shape": torch.tensor(x.shape, dtype=torch.int64), "bits": torch.tensor([bits], dtype=torch.uint8)}


def decode(message: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float32 tensor a message carries (dequantized: ``(code − zero_point) · scale``)."""
    if "x" in message:
        return message["x"]
    bits = int(message["bits"][0])
    shape = torch.Size(message["shape"].tolist())
    per_byte, mask = 8 // bits, (1 << bits) - 1
    packed = message["codes"]
    codes = torch.stack([(packed >> (bits * j)) & mask for j in range(per_byte)], -1).reshape(packed.shape[0], -1)
    codes = codes[:, : shape[-1]].float()
    rows = (codes - message["zero_point"].float()[:, None]) * message["scale"][:, None]
    return rows.reshape(shape)


def serialize(message: dict[str, torch.Tensor]) -> bytes:
    """The bytes sent: the message as safetensors."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in message.items()})


def deserialize(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(blob)


def message_bytes(message: dict[str, torch.Tensor]) -> int:
    """Bytes of the serialized message (header included)."""
    return len(serialize(message))


def send(x: torch.Tensor, bits: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """Send every image's tensor (x: (n, ...)) as its own message: what the device receives (decoded) and the
    bytes of each message. Serializes and deserializes for real."""
    got, sizes = [], []
    for row in x:
        blob = serialize(encode(row, bits))
        sizes.append(len(blob))
        got.append(decode(deserialize(blob)))
    return torch.stack(got), sizes


# ------------------------------------------------------------------------------------- what each method sends


@dataclass(frozen=True)
class Transfer:
    """What one method sends: per image (``per_image_bytes``, serialized; ``payload_bytes``, the raw tensors) and
    once (``once_bytes``: the model, for fine-tuning on the device)."""

    method: str
    what: str
    shape: tuple[int, ...]
    per_image_bytes: int
    payload_bytes: int
    once_bytes: int = 0


def _payload(message: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in message.values())


def model_bytes(model: nn.Module) -> int:
    """Bytes of the whole model's weights as a safetensors file (what full fine-tuning on a device must receive)."""
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    return message_bytes(state)


def transfers(model: nn.Module, image: torch.Tensor, k: int, gap: int, bits: tuple[int | None, ...] = (None, 8, 4)
              ) -> list[Transfer]:
    """Bytes per image for each way of adapting `model` on a device, measured on one `image` (C, H, W):

    the final pre-logits feature (linear probe), Gather*(k) at each of `bits`, all k+1 features z_0 … z_k,
    LAST's z_0, z_g, …, z_L (gap `gap`), and full fine-tuning on the device (the image as 8-bit pixels per image,
    the model once): sending the image is the baseline every feature transfer must beat.
    """
    from .taps import depth, last_taps, tap_batch

    L = depth(model)
    k = check_k(k, L)
    taps_g = last_taps(model, gap)
    z, pooled = tap_batch(model, image.unsqueeze(0), range(L + 1))
    z, pooled = z[0], pooled[0]
    rows = []

    def add(method: str, what: str, x: torch.Tensor, b: int | None = None, once: int = 0) -> None:
        msg = encode(x, b)
        rows.append(Transfer(method, what, tuple(x.shape), message_bytes(msg), _payload(msg), once))

    add("linear probe", "final CLS feature (pre-logits)", pooled)
    for b in bits:
        add("MIET" if b is None else f"MIET {b}-bit", f"Gather*(k={k}) = z_0 + … + z_{k}" +
            ("" if b is None else f", {b}-bit per token"), gather_star(z.unsqueeze(0), k)[0], b)
    add("all features", f"z_0 … z_{k} ({k + 1} tensors)", z[: k + 1])
    add("LAST", f"z_0, z_{gap}, …, z_{L} ({len(taps_g)} tensors, g={gap})", z[list(taps_g)])
    # Full fine-tuning on the device receives the image as a camera gives it: 8-bit pixels (not the float32 tensor
    # the model computes on, 4x larger); the pixel values do not change the size.
    pixels = {"x": torch.zeros(tuple(image.shape), dtype=torch.uint8)}
    rows.append(Transfer("full fine-tuning", "the image as 8-bit pixels (and the whole model once)", tuple(image.shape),
                         message_bytes(pixels), _payload(pixels), model_bytes(model)))
    return rows


def quantized_copy(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    """What the device gets for a batch (n, N, d) sent at `bits` (decoded), without serializing (fast path of
    :func:`send`: the same values)."""
    if bits is None:
        return x.detach().clone()
    return decode(encode(x.reshape(-1, x.shape[-1]), bits)).reshape(x.shape)
