"""Triton kernels: the MI-UE supervised-contrastive loss (docs/ops.md), forward and backward.

Reference: ``miue.ops.reference.supcon_fwd`` / ``supcon_bwd``. Launchers at the bottom.

Nothing B×B is written to memory: each program holds a BLOCK_M×BLOCK_N tile of logits in
registers (its Gram accumulated over D by ``tl.dot``; IEEE fp32 for fp32 inputs, tensor
cores with fp32 accumulation for fp16/bf16), turns it into exponentials, masks it by label
and reduces it on the spot.

``_supcon_fwd_kernel``     program (row block, column split): partial row sums over
                           positives (P) and negatives (N) and positive counts.
``_supcon_finish_kernel``  adds the splits and the eps terms; row loss log1p(N/P).
``_supcon_bwd_kernel``     program (row block): G = W Z with
                           W_ij = exp((s_ij - 1)/τ)·(same ? q_i + q_j : -(1/A_i + 1/A_j)),
                           q = N/(A·P), W_ii = 0 and null rows/columns 0. For D ≤ 256 the
                           accumulator stays in registers and the projection
                           (I - z zᵀ)/r and the scale -g/(Bτ) are applied in the same kernel;
                           otherwise G is accumulated in an fp32 buffer owned row-wise by the
                           program and ``_project_kernel`` finishes.
No host synchronisation: the upstream gradient is read through its pointer.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from . import _config
from ._common import INTERP, cast_rne, check_dtype, empty
from .grouped_normalize import normalize

LOG2E = 1.4426950408889634
# |W_ij| <= 2 (q_i, 1/A_i <= 1: every live row's P holds its own exp(0) = 1), so 2 * 2**14 stays
# far below fp16's 65504 while weights down to 2**-38 stay representable
W_SCALE_FP16 = 2.0**14


@triton.jit
def _gram_tile(z_ptr, rm, rn, m_ok, n_ok, D, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               CAST_FP32: tl.constexpr, PRECISION: tl.constexpr):
    s = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < D
        a = tl.load(z_ptr + rm[:, None] * D + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(z_ptr + rn[:, None] * D + kk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if CAST_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        s = tl.dot(a, tl.trans(b), s, input_precision=PRECISION)
    return s


@triton.jit
def _supcon_fwd_kernel(
    z_ptr, inv_ptr, y_ptr, part_ptr, B, D, scale, cols_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    CAST_FP32: tl.constexpr, PRECISION: tl.constexpr, I64: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if I64:  # row * D past 2**31
        rm = rm.to(tl.int64)
    m_ok = rm < B
    inv_m = tl.load(inv_ptr + rm, mask=m_ok, other=0.0)
    shift = tl.where(inv_m > 0, 1.0, 0.0)  # the row's largest logit: s_ii = 1 (0 for null rows)
    y_m = tl.load(y_ptr + rm, mask=m_ok, other=0)
    p_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    npos = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_begin = split * cols_per_split
    n_end = tl.minimum(n_begin + cols_per_split, B)
    for n0 in range(n_begin, n_end, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        if I64:
            rn = rn.to(tl.int64)
        n_ok = rn < n_end
        s = _gram_tile(z_ptr, rm, rn, m_ok, n_ok, D, BLOCK_M, BLOCK_N, BLOCK_K, CAST_FP32, PRECISION)
        e = tl.exp2((s - shift[:, None]) * scale)
        y_n = tl.load(y_ptr + rn, mask=n_ok, other=0)
        eq = y_m[:, None] == y_n[None, :]
        same = eq & n_ok[None, :]
        diff = (~eq) & n_ok[None, :]
        p_acc += tl.sum(tl.where(same, e, 0.0), axis=1)
        n_acc += tl.sum(tl.where(diff, e, 0.0), axis=1)
        npos += tl.sum(same.to(tl.float32), axis=1)
    base = part_ptr + split * 3 * B
    tl.store(base + rm, p_acc, mask=m_ok)
    tl.store(base + B + rm, n_acc, mask=m_ok)
    tl.store(base + 2 * B + rm, npos, mask=m_ok)


@triton.jit
def _supcon_finish_kernel(part_ptr, inv_ptr, P_ptr, N_ptr, loss_ptr, B, n_splits, scale, eps, BLOCK: tl.constexpr):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = r < B
    p = tl.zeros((BLOCK,), dtype=tl.float32)
    n = tl.zeros((BLOCK,), dtype=tl.float32)
    npos = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, n_splits):
        base = part_ptr + s * 3 * B
        p += tl.load(base + r, mask=ok, other=0.0)
        n += tl.load(base + B + r, mask=ok, other=0.0)
        npos += tl.load(base + 2 * B + r, mask=ok, other=0.0)
    inv = tl.load(inv_ptr + r, mask=ok, other=0.0)
    shift = tl.where(inv > 0, 1.0, 0.0)
    eps_scaled = eps * tl.exp2(-shift * scale)
    p += npos * eps_scaled
    n += (B - npos) * eps_scaled
    x = n / tl.where(ok, p, 1.0)
    u = 1.0 + x
    den = tl.where(u == 1.0, 1.0, u - 1.0)
    row_loss = tl.where(u == 1.0, x, tl.log(u) * (x / den))  # log1p(x), accurate for small x
    tl.store(P_ptr + r, p, mask=ok)
    tl.store(N_ptr + r, n, mask=ok)
    tl.store(loss_ptr + r, row_loss, mask=ok)


@triton.jit
def _supcon_bwd_kernel(
    z_ptr, inv_ptr, y_ptr, q_ptr, ra_ptr, g_ptr, out_ptr, acc_ptr, B, D, scale, coef_scale, w_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    IN_REGS: tl.constexpr, CAST_FP32: tl.constexpr, PRECISION: tl.constexpr, I64: tl.constexpr,
):
    pid_m = tl.program_id(0)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if I64:
        rm = rm.to(tl.int64)
    m_ok = rm < B
    inv_m = tl.load(inv_ptr + rm, mask=m_ok, other=0.0)
    live_m = inv_m > 0
    y_m = tl.load(y_ptr + rm, mask=m_ok, other=0)
    q_m = tl.load(q_ptr + rm, mask=m_ok, other=0.0)
    ra_m = tl.load(ra_ptr + rm, mask=m_ok, other=0.0)
    rd = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, B, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        if I64:
            rn = rn.to(tl.int64)
        n_ok = rn < B
        s = _gram_tile(z_ptr, rm, rn, m_ok, n_ok, D, BLOCK_M, BLOCK_N, BLOCK_K, CAST_FP32, PRECISION)
        inv_n = tl.load(inv_ptr + rn, mask=n_ok, other=0.0)
        y_n = tl.load(y_ptr + rn, mask=n_ok, other=0)
        q_n = tl.load(q_ptr + rn, mask=n_ok, other=0.0)
        ra_n = tl.load(ra_ptr + rn, mask=n_ok, other=0.0)
        k = tl.where(y_m[:, None] == y_n[None, :], q_m[:, None] + q_n[None, :], -(ra_m[:, None] + ra_n[None, :]))
        keep = live_m[:, None] & (inv_n > 0)[None, :] & (rm[:, None] != rn[None, :])
        w = tl.where(keep, tl.exp2((s - 1.0) * scale) * k, 0.0)
        if not CAST_FP32:
            # |W| <= 2, but the negatives' weights fall below fp16's normal range (exp(-10) at
            # tau = 0.1 and cosine 0): scaled by w_scale (a power of two, 2**14 for fp16) before
            # the cast; 1/w_scale is folded into coef_scale, applied to the fp32 accumulator
            w = cast_rne(w * w_scale, z_ptr.dtype.element_ty, INTERP)
        if IN_REGS:
            zj = tl.load(z_ptr + rn[:, None] * D + rd[None, :], mask=n_ok[:, None] & (rd < D)[None, :], other=0.0)
            if CAST_FP32:
                zj = zj.to(tl.float32)
            acc = tl.dot(w, zj, acc, input_precision=PRECISION)
        else:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + rd
                msk = m_ok[:, None] & (cols < D)[None, :]
                zj = tl.load(z_ptr + rn[:, None] * D + cols[None, :], mask=n_ok[:, None] & (cols < D)[None, :], other=0.0)
                if CAST_FP32:
                    zj = zj.to(tl.float32)
                gp = acc_ptr + rm[:, None] * D + cols[None, :]
                prev = tl.load(gp, mask=msk, other=0.0)
                tl.store(gp, tl.dot(w, zj, prev, input_precision=PRECISION), mask=msk)
    if IN_REGS:
        # fused projection: out_i = (G_i - (G_i·z_i) z_i) · inv_i · (-g / (B τ))
        coef = -tl.load(g_ptr).to(tl.float32) * coef_scale
        msk = m_ok[:, None] & (rd < D)[None, :]
        zm = tl.load(z_ptr + rm[:, None] * D + rd[None, :], mask=msk, other=0.0).to(tl.float32)
        dot = tl.sum(acc * zm, axis=1)
        out = (acc - dot[:, None] * zm) * (inv_m * coef)[:, None]
        tl.store(out_ptr + rm[:, None] * D + rd[None, :], cast_rne(out, out_ptr.dtype.element_ty, INTERP), mask=msk)


@triton.jit
def _project_kernel(acc_ptr, z_ptr, inv_ptr, g_ptr, out_ptr, B, D, coef_scale,
                    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, I64: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    if I64:
        rows = rows.to(tl.int64)
    ok = rows < B
    rd = tl.arange(0, BLOCK_D)
    dot = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        c = d0 + rd
        m = ok[:, None] & (c < D)[None, :]
        g = tl.load(acc_ptr + rows[:, None] * D + c[None, :], mask=m, other=0.0)
        z = tl.load(z_ptr + rows[:, None] * D + c[None, :], mask=m, other=0.0).to(tl.float32)
        dot += tl.sum(g * z, axis=1)
    coef = -tl.load(g_ptr).to(tl.float32) * coef_scale
    k = tl.load(inv_ptr + rows, mask=ok, other=0.0) * coef
    for d0 in range(0, D, BLOCK_D):
        c = d0 + rd
        m = ok[:, None] & (c < D)[None, :]
        g = tl.load(acc_ptr + rows[:, None] * D + c[None, :], mask=m, other=0.0)
        z = tl.load(z_ptr + rows[:, None] * D + c[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows[:, None] * D + c[None, :], cast_rne((g - dot[:, None] * z) * k[:, None], out_ptr.dtype.element_ty, INTERP), mask=m)


# --------------------------------------------------------------------------- launchers


def supcon_fwd(features: torch.Tensor, labels: torch.Tensor, temperature: float, eps: float):
    """(loss, z, inv_norm, P, N): see miue.ops.reference.supcon_fwd."""
    check_dtype(features)
    B, D = features.shape
    labels = labels.contiguous()  # indexed as a dense array (free when it is one already)
    z, inv = normalize(features)
    scale = LOG2E / temperature
    cfg = _config.supcon_fwd_config(B, D, z.dtype)
    n_splits, cols_per_split = _config.supcon_fwd_splits(B, cfg)
    part = empty((n_splits, 3, B), torch.float32, z.device)
    _config.launch(_supcon_fwd_kernel, (triton.cdiv(B, cfg["BLOCK_M"]), n_splits),
                   (z, inv, labels, part, B, D, scale, cols_per_split), cfg)
    P = empty((B,), torch.float32, z.device)
    N = empty((B,), torch.float32, z.device)
    row_loss = empty((B,), torch.float32, z.device)
    fin = _config.supcon_finish_config()
    _config.launch(_supcon_finish_kernel, (triton.cdiv(B, fin["BLOCK"]),),
                   (part, inv, P, N, row_loss, B, n_splits, scale, eps), fin)
    loss = row_loss.sum(dtype=torch.float64).div_(B).to(torch.float32)
    return loss, z, inv, P, N


def supcon_bwd(grad, z, inv_norm, P, N, labels, temperature: float):
    """dL/dfeatures: see miue.ops.reference.supcon_bwd."""
    check_dtype(z, "z")
    B, D = z.shape
    z, inv_norm, labels = z.contiguous(), inv_norm.contiguous(), labels.contiguous()  # indexed as dense arrays
    A = P + N
    q = N / (A * P)
    ra = 1.0 / A
    out = empty((B, D), z.dtype, z.device)
    grad = grad.reshape(1)
    scale = LOG2E / temperature
    cfg = _config.supcon_bwd_config(B, D, z.dtype)
    # fp16 weights are scaled into fp16's normal range (see the kernel); undone in coef_scale
    w_scale = W_SCALE_FP16 if (not cfg["CAST_FP32"] and z.dtype == torch.float16) else 1.0
    coef_scale = 1.0 / (B * temperature * w_scale)
    acc = out if cfg["IN_REGS"] else torch.zeros((B, D), dtype=torch.float32, device=z.device)
    _config.launch(_supcon_bwd_kernel, (triton.cdiv(B, cfg["BLOCK_M"]),),
                   (z, inv_norm, labels, q, ra, grad, out, acc, B, D, scale, coef_scale, w_scale), cfg)
    if not cfg["IN_REGS"]:
        pc = _config.project_config(B * D)
        _config.launch(_project_kernel, (triton.cdiv(B, pc["BLOCK_B"]),), (acc, z, inv_norm, grad, out, B, D, coef_scale), pc)
    return out
