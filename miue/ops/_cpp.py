"""The ``cpp`` backend: thin adapters over the compiled ops ``torch.ops.miue_C.*``.

Kernels live in ``csrc/cpu/<op>.cpp`` (CPU, OpenMP) and ``csrc/cuda/<op>.cu`` (CUDA), one file
per op (``pgd_linf_step`` and ``project_linf`` share ``linf.h`` / ``linf.cuh``); their schemas are
in ``csrc/miue.cpp``. Signatures match :mod:`miue.ops.reference`.
"""

from __future__ import annotations

import torch

from miue.ops._extension import load_extension

load_extension()
_ops = torch.ops.miue_C


def grouped_normalize(features, labels, num_classes):
    return tuple(_ops.grouped_normalize(features, labels, num_classes))


def supcon_fwd(features, labels, temperature, eps):
    return tuple(_ops.supcon_fwd(features, labels, temperature, eps))


def supcon_bwd(grad, z, inv_norm, P, N, labels, temperature):
    return _ops.supcon_bwd(grad, z, inv_norm, P, N, labels, temperature)


def intra_class_fwd(features, labels, num_classes):
    return tuple(_ops.intra_class_fwd(features, labels, num_classes))


def intra_class_bwd(grad, z, inv_norm, class_sum, class_count, labels):
    return _ops.intra_class_bwd(grad, z, inv_norm, class_sum, class_count, labels)


def pgd_linf_step_(delta, grad, clean, step_size, eps, lo, hi):
    _ops.pgd_linf_step_(delta, grad, clean, step_size, eps, lo, hi)


def project_linf_(delta, clean, eps, lo, hi):
    _ops.project_linf_(delta, clean, eps, lo, hi)
