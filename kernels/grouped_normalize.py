"""Triton kernels: row normalisation and per-class sums (docs/ops.md).

Reference: ``miue.ops.reference.grouped_normalize``. Launchers at the bottom.

``_normalize_kernel``     one program per block of rows: sum of squares in fp32, then
                          z = f / ‖f‖ (input dtype) and inv_norm (fp32); null rows -> 0.
Per-class sums are deterministic and use no atomics (segmented reduction over rows sorted
by label):
``_segment_scan_kernel``  program (chunk k, column block): the rows at sorted positions
                          [k·CHUNK, (k+1)·CHUNK) are summed per run of equal labels by a
                          segmented scan; the sum of each run is stored at the run's last
                          sorted position in a scratch buffer.
``_segment_sum_kernel``   program (class c, column block): adds, in chunk order, the run
                          sums that belong to class c.
No host synchronisation: the sort, counts and offsets are device-side torch ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _config
from ._common import INTERP, acc_dtype_for, cast_rne, check_dtype, empty, extent


@triton.jit
def _normalize_kernel(
    f_ptr, z_ptr, inv_ptr, B, D, stride_fb, stride_fd,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, I64: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    if I64:  # row * D, or a column's offset c * stride_fd (column-major features), past 2**31
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
    row_ok = rows < B
    sumsq = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        c = d0 + cols
        m = row_ok[:, None] & (c[None, :] < D)
        x = tl.load(f_ptr + rows[:, None] * stride_fb + c[None, :] * stride_fd, mask=m, other=0.0).to(tl.float32)
        sumsq += tl.sum(x * x, axis=1)
    norm = tl.sqrt(sumsq)
    live = norm >= 1e-12
    inv = tl.where(live, 1.0 / tl.where(live, norm, 1.0), 0.0)
    tl.store(inv_ptr + rows, inv, mask=row_ok)
    for d0 in range(0, D, BLOCK_D):
        c = d0 + cols
        m = row_ok[:, None] & (c[None, :] < D)
        x = tl.load(f_ptr + rows[:, None] * stride_fb + c[None, :] * stride_fd, mask=m, other=0.0).to(tl.float32)
        tl.store(z_ptr + rows[:, None] * D + c[None, :], cast_rne(x * inv[:, None], z_ptr.dtype.element_ty, INTERP), mask=m)


@triton.jit
def _seg_add(v1, f1, v2, f2):
    # segmented sum: a set flag starts a new segment
    return tl.where(f2 != 0, v2, v1 + v2), f1 | f2


@triton.jit
def _segment_scan_kernel(
    f_ptr, inv_ptr, order_ptr, key_ptr, run_ptr, B, D, C, stride_fb, stride_fd,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, I64: tl.constexpr,
):
    k = tl.program_id(0)
    dblk = tl.program_id(1)
    pos = k * CHUNK + tl.arange(0, CHUNK)
    cols = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    if I64:  # pos * D, or cols * stride_fd (column-major features), past 2**31
        pos = pos.to(tl.int64)
        cols = cols.to(tl.int64)
    ok = pos < B
    key = tl.load(key_ptr + pos, mask=ok, other=C)
    prev = tl.load(key_ptr + pos - 1, mask=ok & (pos > k * CHUNK), other=-1)
    nxt = tl.load(key_ptr + pos + 1, mask=ok & (pos + 1 < B) & (pos + 1 < (k + 1) * CHUNK), other=-1)
    start = (key != prev).to(tl.int32)
    end = ok & (key != nxt) & (key < C)
    row = tl.load(order_ptr + pos, mask=ok, other=0)  # int64 (torch.sort's indices)
    inv = tl.load(inv_ptr + row, mask=ok, other=0.0)
    cm = cols < D
    x = tl.load(f_ptr + row[:, None] * stride_fb + cols[None, :] * stride_fd, mask=ok[:, None] & cm[None, :], other=0.0)
    z = x.to(tl.float32) * inv[:, None]
    flags = tl.broadcast_to(start[:, None], (CHUNK, BLOCK_D))
    sums, _ = tl.associative_scan((z, flags), 0, _seg_add)
    tl.store(run_ptr + pos[:, None] * D + cols[None, :], sums, mask=end[:, None] & cm[None, :])


@triton.jit
def _segment_sum_kernel(run_ptr, offsets_ptr, counts_ptr, sum_ptr, D, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
                        I64: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)  # c * D: C·D can pass 2**31 when B·D does not
    dblk = tl.program_id(1)
    cols = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    cm = cols < D
    start = tl.load(offsets_ptr + c)
    n = tl.load(counts_ptr + c)
    stop = start + n  # the class occupies sorted positions [start, stop)
    k_begin = start // CHUNK
    k_end = tl.where(n > 0, (stop - 1) // CHUNK + 1, k_begin)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    # start, n: int64 (loaded from int64 tensors), so `last * D` is int64 whatever I64 says
    for k in range(k_begin, k_end):
        last = tl.minimum(stop, (k + 1) * CHUNK) - 1
        acc += tl.load(run_ptr + last * D + cols, mask=cm, other=0.0)
    tl.store(sum_ptr + c * D + cols, acc, mask=cm)


# --------------------------------------------------------------------------- launchers


def normalize(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z in the features' dtype, inv_norm fp32); accepts any strides."""
    check_dtype(features)
    B, D = features.shape
    z = empty((B, D), features.dtype, features.device)
    inv = empty((B,), acc_dtype_for(features), features.device)
    cfg = _config.normalize_config(D, max(B * D, extent(features)))
    _config.launch(_normalize_kernel, (triton.cdiv(B, cfg["BLOCK_B"]),),
                   (features, z, inv, B, D, features.stride(0), features.stride(1)), cfg)
    return z, inv


def class_sums(features: torch.Tensor, inv: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """(class_sum fp32 C×D, class_count int64 C): sums of z_i = f_i·inv_i over rows with a
    label in [0, C) and a non-null norm; deterministic (no atomics)."""
    B, D = features.shape
    C = num_classes
    dev = features.device
    inv = inv.contiguous()  # indexed as a dense array
    counted = (inv > 0) & (labels >= 0) & (labels < C)
    key = torch.where(counted, labels.long(), torch.full_like(labels, C, dtype=torch.int64))
    key_sorted, order = torch.sort(key, stable=True)
    counts = torch.zeros(C + 1, dtype=torch.int64, device=dev).scatter_add_(0, key, torch.ones_like(key))
    offsets = torch.cumsum(counts, 0) - counts
    runs = empty((B, D), torch.float32, dev)
    sums = empty((C, D), torch.float32, dev)
    cfg = _config.class_sums_config(D, max(B * D, extent(features)))
    col_blocks = triton.cdiv(D, cfg["BLOCK_D"])
    _config.launch(_segment_scan_kernel, (triton.cdiv(B, cfg["CHUNK"]), col_blocks),
                   (features, inv, order, key_sorted, runs, B, D, C, features.stride(0), features.stride(1)), cfg)
    _config.launch(_segment_sum_kernel, (C, col_blocks), (runs, offsets, counts, sums, D), cfg)
    return sums, counts[:C].clone()


def grouped_normalize(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    z, inv = normalize(features)
    sums, counts = class_sums(features, inv, labels, num_classes)
    return z, inv, sums, counts
