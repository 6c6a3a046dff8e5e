"""Pure-PyTorch reference implementations (the oracle; docs/ops.md).

Each function here is the ``reference`` backend of one ``miue::`` op and has the same
signature as its counterparts in :mod:`miue.ops._cpp` (C++/CUDA) and :mod:`miue.kernels`
(Triton). They run on any device and in any floating dtype; called on float64 inputs
they are the float64 oracle the tests compare every backend against. They favour clarity
over memory: ``supcon_*`` materialises the B×B logits (never B×B×D).

:func:`official_supcon_loss` is a direct transcription of the loss as the official MI-UE
code computes it (B×B×D cosine broadcast); it exists for tests, benchmarks and
:mod:`miue.compat`.

Conventions shared by all backends
----------------------------------
* accumulation dtype ``acc_dtype(dtype)``: float64 for float64 inputs, else float32;
  ``inv_norm``, ``class_sum``, the loss and the saved row sums use it.
* null rows (‖f_i‖ < 1e-12): z_i = 0, inv_norm_i = 0, zero gradient, excluded from the
  per-class sums and counts.
* rows whose label lies outside [0, num_classes) are ignored by the per-class sums.
* supcon saves the row sums over positives (P) and negatives (N), A = P + N, rescaled by
  exp(-M_i/τ) with M_i = 1 for non-null rows (their largest logit, s_ii = 1) and 0 for
  null rows, so nothing overflows for any τ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NULL_NORM = 1e-12


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _normalize(features: torch.Tensor):
    """(z in acc dtype, inv_norm in acc dtype)."""
    f = features.to(acc_dtype(features.dtype))
    norm = torch.linalg.vector_norm(f, dim=1)
    nonnull = norm >= NULL_NORM
    inv = torch.where(nonnull, 1.0 / norm.clamp_min(NULL_NORM), torch.zeros_like(norm))
    return f * inv[:, None], inv


def _class_mask(labels: torch.Tensor, inv_norm: torch.Tensor, num_classes: int):
    return (labels >= 0) & (labels < num_classes) & (inv_norm > 0)


# --------------------------------------------------------------------------- grouped_normalize


def grouped_normalize(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """(z [input dtype], inv_norm, class_sum [C, D], class_count [C] int64); docs/ops.md."""
    z, inv = _normalize(features)
    counted = _class_mask(labels, inv, num_classes)
    idx = torch.where(counted, labels, torch.zeros_like(labels)).long()
    class_sum = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
    class_sum.index_add_(0, idx, z * counted[:, None].to(z.dtype))
    class_count = torch.zeros(num_classes, dtype=torch.int64, device=z.device)
    class_count.index_add_(0, idx, counted.long())
    return z.to(features.dtype), inv, class_sum, class_count


# --------------------------------------------------------------------------- supcon_loss


def supcon_fwd(features: torch.Tensor, labels: torch.Tensor, temperature: float, eps: float):
    """(loss, z, inv_norm, P, N); docs/ops.md.

    ``P_i`` sums e_ij over the positives (same label, i included) and ``N_i`` over the
    negatives, so ``A_i = P_i + N_i``; both rescaled by exp(-M_i/τ). Keeping N apart avoids
    the cancellation in A - P: the loss is ``mean(log1p(N/P))`` and the backward's
    ``1/P - 1/A = N/(A·P)`` is computed without subtracting nearly equal numbers.
    """
    z_acc, inv = _normalize(features)
    z = z_acc.to(features.dtype)
    zf = z.to(z_acc.dtype)  # the Gram uses the stored z, as every backend's backward does
    shift = (inv > 0).to(zf.dtype)
    logits = (zf @ zf.T - shift[:, None]) / temperature
    e = torch.exp(logits) + (eps * torch.exp(-shift / temperature))[:, None]
    same = labels[:, None] == labels[None, :]
    P = torch.where(same, e, torch.zeros_like(e)).sum(1)
    N = torch.where(same, torch.zeros_like(e), e).sum(1)
    loss = torch.log1p(N / P).mean()
    return loss, z, inv, P, N


def supcon_bwd(grad, z, inv_norm, P, N, labels, temperature: float):
    """dL/dfeatures (dtype of z) for upstream gradient ``grad`` (0-dim tensor).

    W_ij = -(g/(Bτ))·exp((s_ij-1)/τ)·[m_ij(q_i + q_j) - (1-m_ij)(1/A_i + 1/A_j)] with
    q = 1/P - 1/A = N/(A·P); dL/dz = W Z, then projected: dL/df_i = (I - z_i z_iᵀ) dL/dz_i / r_i.
    The diagonal term W_ii z_i lies along z_i and is removed by that projection, so it is
    left out (W_ii = 0), as in every backend.
    """
    zf = z.to(inv_norm.dtype)
    B = zf.shape[0]
    live = inv_norm > 0
    E = torch.exp((zf @ zf.T - 1.0) / temperature)
    keep = live[:, None] & live[None, :] & ~torch.eye(B, dtype=torch.bool, device=zf.device)
    E = torch.where(keep, E, torch.zeros_like(E))
    same = labels[:, None] == labels[None, :]
    A = P + N
    q, ra = N / (A * P), 1.0 / A
    W = torch.where(same, q[:, None] + q[None, :], -(ra[:, None] + ra[None, :])) * E
    W = W * (-grad.to(zf.dtype) / (B * temperature))
    gz = W @ zf
    gf = (gz - (gz * zf).sum(1, keepdim=True) * zf) * inv_norm[:, None]
    return gf.to(z.dtype)


# --------------------------------------------------------------------------- intra_class_cosine_loss


def _pairs(class_count: torch.Tensor) -> torch.Tensor:
    return (class_count * (class_count - 1)).sum()


def intra_class_fwd(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """(loss, z, inv_norm, class_sum, class_count); docs/ops.md."""
    z, inv, class_sum, class_count = grouped_normalize(features, labels, num_classes)
    pairs = _pairs(class_count)
    total = (class_sum * class_sum).sum() - class_count.sum().to(class_sum.dtype)
    loss = torch.where(pairs > 0, -total / pairs.clamp_min(1).to(class_sum.dtype), torch.zeros_like(total))
    return loss, z, inv, class_sum, class_count


def intra_class_bwd(grad, z, inv_norm, class_sum, class_count, labels):
    num_classes = class_sum.shape[0]
    zf = z.to(inv_norm.dtype)
    counted = _class_mask(labels, inv_norm, num_classes)
    idx = torch.where(counted, labels, torch.zeros_like(labels)).long()
    s = class_sum[idx] * counted[:, None].to(zf.dtype)
    pairs = _pairs(class_count)
    scale = torch.where(pairs > 0, -2.0 * grad.to(zf.dtype) / pairs.clamp_min(1).to(zf.dtype), torch.zeros_like(zf[0, 0]))
    gf = (s - (s * zf).sum(1, keepdim=True) * zf) * (inv_norm * scale)[:, None]
    return gf.to(z.dtype)


# --------------------------------------------------------------------------- PGD


def _clean_as(clean: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if clean.dtype == torch.uint8:
        # value / 255 as a true division (not a multiplication by 1/255): docs/ops.md
        return clean.to(dtype) / torch.full((), 255.0, dtype=dtype, device=clean.device)
    return clean.to(dtype)


def _compute_dtype(delta: torch.Tensor) -> torch.dtype:
    return torch.float64 if delta.dtype == torch.float64 else torch.float32


def pgd_linf_step_(delta, grad, clean, step_size, eps, lo: float, hi: float):
    """``step_size`` and ``eps`` are 0-dim tensors (CPU or delta's device)."""
    ct = _compute_dtype(delta)
    c = _clean_as(clean, ct)
    step = step_size.to(device=delta.device, dtype=ct)
    e = eps.to(device=delta.device, dtype=ct)
    d = delta.to(ct) - step * torch.sign(grad).to(ct)
    d = torch.minimum(torch.maximum(d, -e), e)
    delta.copy_((c + d).clamp(lo, hi) - c)


def project_linf_(delta, clean, eps, lo: float, hi: float):
    ct = _compute_dtype(delta)
    c = _clean_as(clean, ct)
    e = eps.to(device=delta.device, dtype=ct)
    d = torch.minimum(torch.maximum(delta.to(ct), -e), e)
    delta.copy_((c + d).clamp(lo, hi) - c)


# --------------------------------------------------------------------------- the official formulation


def eager_supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, eps: float = 1e-8) -> torch.Tensor:
    """A well-written eager PyTorch version of the loss: normalise, one B×B matmul, masked row
    sums; autograd for the gradient; runs in the features' dtype (the "same-precision
    PyTorch implementation" low-precision kernels are judged against)."""
    z = F.normalize(features, dim=1)
    e = torch.exp(z @ z.T / temperature) + eps
    same = labels[:, None] == labels[None, :]
    pos = torch.where(same, e, torch.zeros_like(e)).sum(1)
    return -torch.log(pos / e.sum(1)).mean()


def official_supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The MI-UE loss as the official code computes it: all-pairs cosine similarity through a
    broadcast B×B×D ``F.cosine_similarity``, exp(·/τ), +1e-8, same-label mask with the diagonal,
    ``-log(pos_sum / all_sum).mean()``. Memory O(B²·D): for tests and baselines only."""
    sim = F.cosine_similarity(features.unsqueeze(1), features.unsqueeze(0), dim=2)
    e = torch.exp(sim / temperature) + 1e-8
    mask = (labels.unsqueeze(1) == labels.unsqueeze(0)).to(e.dtype)
    pos = (e * mask).sum(1)
    return -torch.log(pos / e.sum(1)).mean()
