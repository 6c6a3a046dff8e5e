"""Helpers shared by the Triton launchers."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
INTERP = tl.constexpr(INTERPRET)  # the same, as a compile-time constant for kernels

SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


# Tests set POISON = True: every buffer a launcher allocates then starts as NaN (or a
# sentinel for integers), so an element a kernel forgets to write shows up as a failure.
POISON = False


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON:
        out.fill_(float("nan") if dtype.is_floating_point else -7777)
    return out


def check_dtype(t: torch.Tensor, name: str = "features") -> None:
    if t.dtype not in SUPPORTED:
        raise TypeError(
            f"the triton backend supports {name} of dtype float32, float16 or bfloat16, got {t.dtype}; "
            "use backend='cpp' or 'reference' for float64"
        )


def acc_dtype_for(t: torch.Tensor) -> torch.dtype:
    return torch.float32


# Row offsets (row · D) are int32 in the kernels unless an element offset of some tensor of
# the launch can reach 2**31; then the launcher passes I64=True and the kernels index in int64.
# (A module constant so that tests can lower it and run the int64 path on small tensors.)
I64_FROM = 2**31


def needs_i64(*extents: int) -> bool:
    """Whether an element offset up to ``max(extents)`` (e.g. B·D, or a strided tensor's
    largest offset + 1) needs int64 indexing."""
    return max((int(e) for e in extents), default=0) >= I64_FROM


def extent(t: torch.Tensor) -> int:
    """One past the largest element offset of ``t`` (its strides' reach)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (TRITON_INTERPRET=1)."""
    return INTERPRET


@triton.jit
def cast_rne(x, dtype: tl.constexpr, INTERP: tl.constexpr):
    """``x.to(dtype)`` rounding to nearest even. GPUs do that natively; the interpreter
    truncates fp32 -> bf16, so there the rounding is done on the bits."""
    if INTERP and dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)
