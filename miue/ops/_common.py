"""What the op modules of :mod:`miue.ops` share: the autocast-free kernel region, the layout and
scalar helpers of the PGD ops, and the pieces of their sample inputs (``sample_inputs`` of each
op module: opcheck, the GPU tests; ``kernel_cases``: the AOT compile check, :mod:`miue.aot`).
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
from torch import Tensor

from miue.ops import _validate as V


def kernel_region(t: Tensor):
    """Autocast off while a backend runs: the kernels take bf16/fp16 inputs and accumulate in
    fp32 themselves; left on, autocast would recast the BLAS products inside the C++ and
    reference kernels to bf16 (on the CPU with ``amp``, and on CUDA)."""
    if t.device.type in ("cpu", "cuda"):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- layouts and scalars (PGD)


def dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill its memory exactly once (any dimension order)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def strides(t: Tensor) -> tuple:
    return tuple(st for sz, st in zip(t.shape, t.stride()) if sz != 1)  # size-1 dims do not affect layout


def same_layout(*tensors: Tensor) -> bool:
    """Whether the tensors are dense and share one layout (the kernels walk them as one flat array)."""
    first = tensors[0]
    return dense(first) and all(strides(t) == strides(first) for t in tensors[1:])


# step_size and eps travel as 0-dim float64 tensors, not floats: a float argument of a custom
# op is specialised by torch.compile (a recompilation for every new value), while a tensor
# built from the traced float is not. A CPU scalar tensor is read on the host; a scalar tensor on
# delta's device is read by the kernel, so a captured CUDA graph can be replayed with a new step size.


def scalar(value, name: str, device: torch.device, nonnegative: bool) -> Tensor:
    """A float or a one-element tensor as a 0-dim float64 tensor on the CPU or on ``device``."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or not (value.is_floating_point() or value.dtype in V._INT_DTYPES):
            raise ValueError(f"{name} must be a float or a one-element real tensor, "
                             f"got shape {tuple(value.shape)} {value.dtype}")
        if value.device.type != "cpu" and value.device != device:
            raise ValueError(f"{name} is on {value.device}; it must be on the CPU or on {device}")
        value = value.reshape(()).to(torch.float64)
        if value.device.type == "cpu" and not V._is_compiling():
            (V.check_nonnegative if nonnegative else V.check_finite)(value.item(), name)
        return value
    if V._is_compiling():
        # ones * value keeps a traced float symbolic (torch.tensor(value) would specialise it)
        return torch.ones((), dtype=torch.float64) * value
    value = (V.check_nonnegative if nonnegative else V.check_finite)(value, name)
    return torch.full((), value, dtype=torch.float64)


# --------------------------------------------------------------------------- sample inputs


class Sample(NamedTuple):
    """One call of a registered op: ``op(*args, **kwargs)``, for ``torch.library.opcheck``."""

    op: Any  # a torch._ops.OpOverload, e.g. torch.ops.miue.supcon_loss.default
    args: tuple
    kwargs: dict


def sample(op, *args, **kwargs) -> Sample:
    return Sample(op, args, kwargs)


def sample_features(B: int, D: int, num_classes: int, seed: int, dtype=torch.float32, device="cpu", null_rows=()):
    """Features (B×D, ``dtype``, requiring grad) and int64 labels on ``device``: class centres plus
    unit noise drawn in float64 from a generator seeded with ``seed`` (tests/_util.py's
    ``make_features`` with its defaults draws the same numbers); ``null_rows`` are zero."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (B,), generator=g)
    centres = torch.randn(num_classes, D, generator=g, dtype=torch.float64)
    f64 = centres[y] + torch.randn(B, D, generator=g, dtype=torch.float64)
    for i in null_rows:
        if i < B:
            f64[i] = 0
    return f64.to(dtype).to(device).requires_grad_(True), y.to(device)


def sample_pgd(device="cpu", dtype=torch.float32):
    """(delta, grad, uint8 clean) of shape 2×3×4×4 on ``device`` and (step, eps) as 0-dim float64
    CPU tensors, drawn from a generator seeded with 0 (delta in [-0.05, 0.05))."""
    gen = torch.Generator().manual_seed(0)
    delta = (torch.rand(2, 3, 4, 4, generator=gen) * 0.1 - 0.05).to(device=device, dtype=dtype)
    grad = torch.randn(2, 3, 4, 4, generator=gen).to(device=device, dtype=dtype)
    clean = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=gen).to(device)
    step, eps = torch.tensor(0.01, dtype=torch.float64), torch.tensor(0.03, dtype=torch.float64)
    return delta, grad, clean, step, eps


def meta(shape, dtype) -> Tensor:
    """An unallocated tensor (the AOT check records launches on these)."""
    return torch.empty(shape, dtype=dtype, device="meta")


def meta_labels(B: int) -> Tensor:
    return torch.empty((B,), dtype=torch.int64, device="meta")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
