"""``supcon_views_loss``: SupContrast's supervised-contrastive loss (Khosla et al. 2020) as the
poisoning codebases copy it (``SupConLoss`` of ``HobbitLong/SupContrast``, ``SimCLRLoss`` of
Contrastive Poisoning), without its (B·V)×(B·V) tensors.

Notation: ``contrast`` C is the (N = V·b)×D matrix of the V views stacked view-major (row
``v·b + i`` is view v of sample i); the anchors are its first A rows (A = N for
``contrast_mode="all"``, A = b for ``"one"``); ``pos`` is the b×b positive weight between samples
(label equality, a user's mask, or the identity for SimCLR). With ``l_ij = c_i·c_j / T`` and the
self pair (j = i) left out of both sums,

    m_ij = pos[i mod b, j mod b]·[j ≠ i],     n_i = Σ_j m_ij,
    lse_i = log Σ_{j≠i} exp(l_ij),             loss = −(T / T_base) · mean_i (Σ_j m_ij l_ij − n_i lse_i) / n_i.

An anchor without positives (n_i = 0) gives NaN (SupContrast before December 2023, and
Contrastive Poisoning's copy) or 0 (SupContrast since, which divides by 1 there):
``nan_without_positive`` picks which. The gradient is ``G_ij = −(T/T_base)/A · (m_ij/n_i −
w_i p_ij)`` with ``p_ij = exp(l_ij − lse_i)`` (0 on the diagonal) and ``w_i = Σ_j m_ij / n_i``;
``∂L/∂c = (G C + Gᵀ C_anchors) / T`` scattered to the rows.

The op works on row chunks of the anchors: forward and backward each hold one chunk of the
logits (at most ``_CHUNK_ELEMS`` elements) and the backward recomputes them, so memory is
O(chunk·N + N·D) where the copied code holds several N×N tensors. It is one
``torch.library.custom_op`` with a fake kernel and a registered autograd formula (opcheck,
``torch.compile``); the arithmetic is PyTorch's (any device), accumulated in fp32 for
half-precision inputs and fp64 for fp64. Used by ``miue.compat``'s ``SupConLoss`` / ``SimCLRLoss``
(tests: ``tests/test_supcon_views_loss.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from miue.ops import reference as R
from miue.ops._common import sample

__all__ = ["supcon_views_loss"]

_CHUNK_ELEMS = 1 << 22  # logits per chunk (16 MiB in fp32)


def _chunks(A: int, N: int):
    rows = max(1, min(A, _CHUNK_ELEMS // max(N, 1)))
    for r0 in range(0, A, rows):
        yield r0, min(A, r0 + rows)


def _positives(pos: Tensor, b: int, V: int, r0: int, r1: int) -> Tensor:
    """m for anchor rows r0:r1: pos tiled over the views, the self pair zeroed."""
    rows = torch.arange(r0, r1, device=pos.device)
    m = pos[rows % b].repeat(1, V)
    m[torch.arange(r1 - r0, device=pos.device), rows] = 0
    return m


def _npos(pos: Tensor, b: int, V: int, A: int, nan_without_positive: bool) -> tuple[Tensor, Tensor]:
    """(n_i, the divisor): n_i = V·rowsum(pos)[i mod b] − pos[i mod b, i mod b]."""
    i = torch.arange(A, device=pos.device) % b
    n = V * pos.sum(1)[i] - pos.diagonal()[i]
    div = n if nan_without_positive else torch.where(n < 1e-6, torch.ones_like(n), n)
    return n, div


def _logits(anchors: Tensor, contrast: Tensor, T: float, r0: int) -> Tensor:
    lg = torch.matmul(anchors, contrast.T) / T
    rows = torch.arange(lg.shape[0], device=lg.device)
    return lg, rows, rows + r0


@torch.library.custom_op("miue::supcon_views_loss", mutates_args=())
def _supcon_views_op(contrast: Tensor, pos: Tensor, n_anchor: int, temperature: float, base_temperature: float,
                     nan_without_positive: bool) -> tuple[Tensor, Tensor]:
    acc = R.acc_dtype(contrast.dtype)
    C = contrast.to(acc)
    P = pos.to(acc)
    N, b = C.shape[0], P.shape[0]
    V = N // b
    _, div = _npos(P, b, V, n_anchor, nan_without_positive)
    lse = torch.empty(n_anchor, dtype=acc, device=C.device)
    total = torch.zeros((), dtype=acc, device=C.device)
    for r0, r1 in _chunks(n_anchor, N):
        lg, rows, cols = _logits(C[r0:r1], C, temperature, r0)
        m = _positives(P, b, V, r0, r1)
        masked = lg.clone()
        masked[rows, cols] = float("-inf")
        lse[r0:r1] = torch.logsumexp(masked, dim=1)
        lg[rows, cols] = 0  # the self term carries m = 0; keep an inf/NaN-free product there
        total = total + (((m * lg).sum(1) - m.sum(1) * lse[r0:r1]) / div[r0:r1]).sum()
    loss = -(temperature / base_temperature) * total / n_anchor
    return loss, lse


@_supcon_views_op.register_fake
def _(contrast, pos, n_anchor, temperature, base_temperature, nan_without_positive):
    acc = R.acc_dtype(contrast.dtype)
    return contrast.new_empty((), dtype=acc), contrast.new_empty((n_anchor,), dtype=acc)


@torch.library.custom_op("miue::supcon_views_loss_backward", mutates_args=())
def _supcon_views_backward_op(grad: Tensor, contrast: Tensor, pos: Tensor, lse: Tensor, temperature: float,
                              base_temperature: float, nan_without_positive: bool) -> Tensor:
    acc = R.acc_dtype(contrast.dtype)
    C = contrast.to(acc)
    P = pos.to(acc)
    N, b, A = C.shape[0], P.shape[0], lse.shape[0]
    V = N // b
    n, div = _npos(P, b, V, A, nan_without_positive)
    w = n / div
    scale = -(temperature / base_temperature) / A * grad.to(acc)
    gC = torch.zeros_like(C)
    for r0, r1 in _chunks(A, N):
        lg, rows, cols = _logits(C[r0:r1], C, temperature, r0)
        p = torch.exp(lg - lse[r0:r1, None])
        p[rows, cols] = 0
        m = _positives(P, b, V, r0, r1)
        G = (m / div[r0:r1, None] - w[r0:r1, None] * p) * (scale / temperature)
        gC[r0:r1] += G @ C
        gC += G.T @ C[r0:r1]
    return gC.to(contrast.dtype)


@_supcon_views_backward_op.register_fake
def _(grad, contrast, pos, lse, temperature, base_temperature, nan_without_positive):
    return torch.empty_like(contrast, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    contrast, pos, _, temperature, base_temperature, nan_without_positive = inputs
    ctx.save_for_backward(contrast, pos, output[1])
    ctx.args = (temperature, base_temperature, nan_without_positive)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, g_loss, _g_lse):
    contrast, pos, lse = ctx.saved_tensors
    g = _supcon_views_backward_op(g_loss, contrast, pos, lse, *ctx.args)
    return g, None, None, None, None, None


_supcon_views_op.register_autograd(_backward, setup_context=_setup)


def _float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def supcon_views_loss(features: Tensor, labels: Tensor | None = None, mask: Tensor | None = None, *,
                      temperature: float = 0.07, contrast_mode: str = "all", base_temperature: float = 0.07,
                      nan_without_positive: bool = False) -> Tensor:
    """SupContrast's loss with its signature's meaning (module docstring): ``features`` is
    ``[bsz, n_views, ...]`` (flattened to ``[bsz, n_views, D]``; not normalised here, as in the
    original), and at most one of ``labels`` (``[bsz]``, compared for equality) and ``mask``
    (``[bsz, bsz]`` positive weights, may be asymmetric) is given; neither is SimCLR (each
    sample's other views are its positives). Returns a 0-dim tensor (fp32 for half-precision
    features, else their dtype), differentiable w.r.t. ``features``."""
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a tensor, got {type(features).__name__}")
    if features.dim() < 3:
        raise ValueError(f"features must be [bsz, n_views, ...] with at least 3 dimensions, got shape "
                         f"{tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    if contrast_mode not in ("all", "one"):
        raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
    temperature = _float(temperature, "temperature")
    base_temperature = _float(base_temperature, "base_temperature")
    b, V = features.shape[0], features.shape[1]
    if b < 1 or V < 1:
        raise ValueError(f"features must hold at least one sample and one view, got shape {tuple(features.shape)}")
    features = features.reshape(b, V, -1)
    if labels is not None and mask is not None:
        raise ValueError("give labels or mask, not both")
    if labels is not None:
        if not isinstance(labels, Tensor):
            labels = torch.as_tensor(labels)
        labels = labels.reshape(-1)
        if labels.numel() != b:
            raise ValueError(f"labels has {labels.numel()} entries but features has bsz={b}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got {labels.dtype}")
        labels = labels.to(features.device)
        pos = (labels[:, None] == labels[None, :]).to(features.dtype)
    elif mask is not None:
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (b, b):
            raise ValueError(f"mask must be a [bsz, bsz] = [{b}, {b}] tensor, got "
                             f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
        pos = mask.to(device=features.device, dtype=features.dtype)
    else:
        pos = torch.eye(b, dtype=features.dtype, device=features.device)
    contrast = features.transpose(0, 1).reshape(V * b, -1)  # view-major, as torch.cat(torch.unbind(f, 1))
    n_anchor = V * b if contrast_mode == "all" else b
    return _supcon_views_op(contrast, pos.contiguous(), n_anchor, temperature, base_temperature,
                            bool(nan_without_positive))[0]


# --------------------------------------------------------------------------- sample inputs


def sample_inputs(device="cpu", dtype=torch.float32, backend: str | None = None):
    """Calls of ``miue::supcon_views_loss`` and its backward for opcheck: 12 rows of 4 features of
    ``dtype`` on ``device`` (2 views of 6 samples), a random 6×6 positive mask, T = 0.3: all
    anchors with the guard, then the first view only without it (NaN for an anchor without
    positives). The op has one implementation (PyTorch's arithmetic): ``backend`` is ignored."""
    g = torch.Generator().manual_seed(5)
    c = torch.randn(12, 4, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(True)
    pos = (torch.rand(6, 6, generator=g) > 0.4).to(device=device, dtype=dtype)
    op, bwd = torch.ops.miue.supcon_views_loss, torch.ops.miue.supcon_views_loss_backward
    lse = op(c, pos, 12, 0.3, 0.07, False)[1].detach()
    return [sample(op.default, c, pos, 12, 0.3, 0.07, False),
            sample(op.default, c, pos, 6, 0.3, 0.07, True),
            sample(bwd.default, torch.tensor(1.0, dtype=R.acc_dtype(dtype), device=device), c.detach(), pos, lse,
                   0.3, 0.07, False)]
