"""Triton kernels: the intra-class cosine loss (docs/ops.md), O(B·D).

Reference: ``miue.ops.reference.intra_class_fwd`` / ``intra_class_bwd``. The forward reuses the
normalisation and deterministic per-class sums of :mod:`.grouped_normalize`; the loss
-(Σ_c ‖S_c‖² - n_c)/P is formed on the device in float64 (it cancels when the mean cosine is
near 0). ``_intra_bwd_kernel``: program per block of rows,
dL/df_i = (S_y - (z_i·S_y) z_i) · inv_i · (-2g/P), zero for null rows, out-of-range labels
and when P = 0; the gradient g and P are read on the device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _config
from ._common import INTERP, cast_rne, check_dtype, empty
from .grouped_normalize import class_sums, normalize


@triton.jit
def _intra_bwd_kernel(z_ptr, inv_ptr, y_ptr, sum_ptr, scale_ptr, out_ptr, B, D, C,
                      BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, I64: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    if I64:  # row * D past 2**31
        rows = rows.to(tl.int64)
    ok = rows < B
    inv = tl.load(inv_ptr + rows, mask=ok, other=0.0)
    y = tl.load(y_ptr + rows, mask=ok, other=0)
    valid = ok & (inv > 0) & (y >= 0) & (y < C)
    yc = tl.where(valid, y, 0).to(tl.int64)
    rd = tl.arange(0, BLOCK_D)
    dot = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        c = d0 + rd
        m = valid[:, None] & (c < D)[None, :]
        s = tl.load(sum_ptr + yc[:, None] * D + c[None, :], mask=m, other=0.0)
        z = tl.load(z_ptr + rows[:, None] * D + c[None, :], mask=m, other=0.0).to(tl.float32)
        dot += tl.sum(s * z, axis=1)
    k = tl.where(valid, inv * tl.load(scale_ptr), 0.0)
    for d0 in range(0, D, BLOCK_D):
        c = d0 + rd
        m = valid[:, None] & (c < D)[None, :]
        s = tl.load(sum_ptr + yc[:, None] * D + c[None, :], mask=m, other=0.0)
        z = tl.load(z_ptr + rows[:, None] * D + c[None, :], mask=m, other=0.0).to(tl.float32)
        g = (s - dot[:, None] * z) * k[:, None]
        tl.store(out_ptr + rows[:, None] * D + c[None, :], cast_rne(g, out_ptr.dtype.element_ty, INTERP), mask=ok[:, None] & (c < D)[None, :])


def _pairs(class_count: torch.Tensor) -> torch.Tensor:
    return (class_count * (class_count - 1)).sum()


def intra_class_fwd(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    check_dtype(features)
    z, inv = normalize(features)
    sums, counts = class_sums(features, inv, labels, num_classes)
    s64 = sums.double()
    total = (s64 * s64).sum() - counts.sum().double()
    pairs = _pairs(counts)
    loss = torch.where(pairs > 0, -total / pairs.clamp_min(1).double(), torch.zeros_like(total)).float()
    return loss, z, inv, sums, counts


def intra_class_bwd(grad, z, inv_norm, class_sum, class_count, labels):
    check_dtype(z, "z")
    B, D = z.shape
    z, inv_norm, labels = z.contiguous(), inv_norm.contiguous(), labels.contiguous()  # indexed as dense arrays
    class_sum = class_sum.contiguous()
    pairs = _pairs(class_count)
    scale = torch.where(pairs > 0, -2.0 * grad.float() / pairs.clamp_min(1).float(), torch.zeros((), device=z.device))
    out = empty((B, D), z.dtype, z.device)
    cfg = _config.intra_bwd_config(D, B * D)
    _config.launch(_intra_bwd_kernel, (triton.cdiv(B, cfg["BLOCK_B"]),),
                   (z, inv_norm, labels, class_sum, scale.reshape(1), out, B, D, class_sum.shape[0]), cfg)
    return out
