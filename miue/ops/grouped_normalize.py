"""The op ``miue::grouped_normalize`` (docs/ops.md): unit rows and their per-class sums.

Oracle ``miue.ops.reference.grouped_normalize``; kernels ``csrc/cpu/grouped_normalize.cpp``,
``csrc/cuda/grouped_normalize.cu`` and ``kernels/grouped_normalize.py`` (whose row normalisation
and class sums the loss ops reuse); tests ``tests/test_grouped_normalize.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from miue.ops import _validate as V
from miue.ops._backend import implementation, resolve_backend
from miue.ops._common import dtype_name, kernel_region, meta, meta_labels, sample, sample_features
from miue.ops.reference import acc_dtype

__all__ = ["grouped_normalize"]


@torch.library.custom_op("miue::grouped_normalize", mutates_args=())
def _grouped_normalize_op(
    features: Tensor, labels: Tensor, num_classes: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with kernel_region(features):
        return tuple(implementation(backend).grouped_normalize(features, labels, num_classes))


@_grouped_normalize_op.register_fake
def _(features, labels, num_classes, backend):
    B, D = features.shape
    acc = acc_dtype(features.dtype)
    return (
        features.new_empty((B, D)),
        features.new_empty((B,), dtype=acc),
        features.new_empty((num_classes, D), dtype=acc),
        features.new_empty((num_classes,), dtype=torch.int64),
    )


def _setup(ctx, inputs, output):
    features, labels, num_classes, _ = inputs
    z, inv_norm, _, class_count = output
    ctx.save_for_backward(z, inv_norm, labels)
    ctx.num_classes = num_classes
    ctx.feature_dtype = features.dtype
    ctx.mark_non_differentiable(class_count)


def _backward(ctx, g_z, g_inv, g_sum, g_count):
    z, inv, labels = ctx.saved_tensors
    zf = z.to(inv.dtype)
    total = torch.zeros_like(zf) if g_z is None else g_z.to(zf.dtype)
    if g_sum is not None:
        counted = (labels >= 0) & (labels < ctx.num_classes) & (inv > 0)
        idx = torch.where(counted, labels, torch.zeros_like(labels)).long()
        total = total + g_sum.to(zf.dtype)[idx] * counted[:, None].to(zf.dtype)
    gf = (total - (total * zf).sum(1, keepdim=True) * zf) * inv[:, None]
    if g_inv is not None:  # d(1/r)/df = -f/r^3 = -z/r^2
        gf = gf - zf * (g_inv.to(zf.dtype) * inv * inv)[:, None]
    return gf.to(ctx.feature_dtype), None, None, None


_grouped_normalize_op.register_autograd(_backward, setup_context=_setup)


def grouped_normalize(
    features: Tensor, labels: Tensor, num_classes: int, *, backend: str | None = None, validate: bool | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalise rows and sum them per class (docs/ops.md).

    Returns ``(z, inv_norm, class_sum, class_count)``: ``z`` (B×D, features' dtype) the unit
    rows, ``inv_norm`` (B) = 1/‖f_i‖ (0 for null rows, ‖f_i‖ < 1e-12), ``class_sum`` (C×D) the
    sum of the rows of each class, ``class_count`` (C, int64) how many rows each sum holds
    (null rows and, with validation off, out-of-range labels are not counted). ``inv_norm``
    and ``class_sum`` are float32 (float64 for float64 features). Differentiable w.r.t.
    ``features`` through ``z``, ``inv_norm`` and ``class_sum``.
    """
    V.check_features(features, min_rows=1)
    labels = V.check_labels(labels, features)
    num_classes = V.check_num_classes(num_classes)
    V.check_label_range(labels, num_classes, validate)
    name = resolve_backend(backend, features.device, features.dtype)
    return _grouped_normalize_op(features, labels, num_classes, name)


# --------------------------------------------------------------------------- sample inputs


def sample_inputs(device="cpu", dtype=torch.float32, backend: str = "reference"):
    """Calls of ``miue::grouped_normalize`` for opcheck: 13×7 features of ``dtype`` on ``device``
    (row 2 null), 3 classes, run by ``backend``."""
    f, y = sample_features(13, 7, 3, seed=0, dtype=dtype, device=device, null_rows=(2,))
    return [sample(torch.ops.miue.grouped_normalize.default, f, y, 3, backend)]


# The AOT check's shapes (miue.aot): the kernels' tiles depend on D only (tests/test_gpu_tiles.py
# checks that these D reach every configuration): D 8, 32, 64, 100 (not a multiple of 16), 256, 512.
KERNEL_B = 512
KERNEL_D = (8, 32, 64, 100, 256, 512)
KERNEL_CLASSES = 10


def kernel_cases(impl, dtype):
    """[(case name, call)] for the AOT check: each call runs backend module ``impl``'s
    ``grouped_normalize`` on ``meta`` tensors of ``dtype``, one per shape above."""
    B = KERNEL_B
    return [(f"grouped_normalize B={B} D={D} {dtype_name(dtype)}",
             lambda D=D: impl.grouped_normalize(meta((B, D), dtype), meta_labels(B), KERNEL_CLASSES))
            for D in KERNEL_D]
