"""The op ``miue::intra_class_cosine_loss`` and its backward
``miue::intra_class_cosine_loss_backward`` (docs/ops.md): the paper's linear surrogate.

Oracle ``miue.ops.reference.intra_class_fwd`` / ``intra_class_bwd``; kernels
``csrc/cpu/intra_class_cosine_loss.cpp``, ``csrc/cuda/intra_class_cosine_loss.cu`` and
``kernels/intra_class_cosine_loss.py``; tests ``tests/test_intra_class_cosine_loss.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from miue.ops import _validate as V
from miue.ops import reference as R
from miue.ops._backend import implementation, resolve_backend
from miue.ops._common import dtype_name, kernel_region, meta, meta_labels, sample, sample_features

__all__ = ["intra_class_cosine_loss"]


@torch.library.custom_op("miue::intra_class_cosine_loss", mutates_args=())
def _intra_op(
    features: Tensor, labels: Tensor, num_classes: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with kernel_region(features):
        return tuple(implementation(backend).intra_class_fwd(features, labels, num_classes))


@_intra_op.register_fake
def _(features, labels, num_classes, backend):
    B, D = features.shape
    acc = R.acc_dtype(features.dtype)
    return (
        features.new_empty((), dtype=acc),
        features.new_empty((B, D)),
        features.new_empty((B,), dtype=acc),
        features.new_empty((num_classes, D), dtype=acc),
        features.new_empty((num_classes,), dtype=torch.int64),
    )


@torch.library.custom_op("miue::intra_class_cosine_loss_backward", mutates_args=())
def _intra_backward_op(
    grad: Tensor, z: Tensor, inv_norm: Tensor, class_sum: Tensor, class_count: Tensor, labels: Tensor, backend: str
) -> Tensor:
    with kernel_region(z):
        return implementation(backend).intra_class_bwd(grad, z, inv_norm, class_sum, class_count, labels)


@_intra_backward_op.register_fake
def _(grad, z, inv_norm, class_sum, class_count, labels, backend):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    _, labels, _, backend = inputs
    _, z, inv_norm, class_sum, class_count = output
    ctx.save_for_backward(z, inv_norm, class_sum, class_count, labels)
    ctx.backend = backend
    ctx.mark_non_differentiable(z, inv_norm, class_sum, class_count)


def _backward(ctx, g_loss, *unused):
    z, inv_norm, class_sum, class_count, labels = ctx.saved_tensors
    gf = _intra_backward_op(g_loss, z, inv_norm, class_sum, class_count, labels, ctx.backend)
    return gf, None, None, None


_intra_op.register_autograd(_backward, setup_context=_setup)


def intra_class_cosine_loss(
    features: Tensor, labels: Tensor, num_classes: int, *, backend: str | None = None, validate: bool | None = None
) -> Tensor:
    """The paper's linear surrogate (docs/ops.md): minus the mean cosine similarity over ordered
    same-class pairs i ≠ j, ``-(1/P) Σ_c (‖S_c‖² - n_c)`` with ``P = Σ_c n_c(n_c - 1)``;
    0 when no class has two (non-null) rows. O(B·D) work. Differentiable w.r.t. ``features``."""
    V.check_features(features, min_rows=1)
    labels = V.check_labels(labels, features)
    num_classes = V.check_num_classes(num_classes)
    V.check_label_range(labels, num_classes, validate)
    name = resolve_backend(backend, features.device, features.dtype)
    return _intra_op(features, labels, num_classes, name)[0]


# --------------------------------------------------------------------------- sample inputs


def sample_inputs(device="cpu", dtype=torch.float32, backend: str = "reference"):
    """Calls of ``miue::intra_class_cosine_loss`` and its backward for opcheck: 13×7 features of
    ``dtype`` on ``device`` (row 2 null), 3 classes, run by ``backend``; the backward's saved
    tensors come from the reference backend."""
    f, y = sample_features(13, 7, 3, seed=0, dtype=dtype, device=device, null_rows=(2,))
    _, z, inv, s, n = R.intra_class_fwd(f.detach(), y, 3)
    g = torch.ones((), dtype=R.acc_dtype(f.dtype), device=device)
    return [sample(torch.ops.miue.intra_class_cosine_loss.default, f, y, 3, backend),
            sample(torch.ops.miue.intra_class_cosine_loss_backward.default, g, z, inv, s, n, y, backend)]


# The AOT check's shapes (miue.aot): the backward's tiles depend on D only (tests/test_gpu_tiles.py
# checks that these D reach every configuration); the forward is grouped_normalize's kernels.
KERNEL_B = 512
KERNEL_D = (8, 32, 64, 100, 256, 512)
KERNEL_CLASSES = 10


def kernel_cases(impl, dtype):
    """[(case name, call)] for the AOT check: each call runs backend module ``impl``'s
    ``intra_class_fwd`` then ``intra_class_bwd`` on ``meta`` tensors of ``dtype``."""
    B = KERNEL_B

    def fwd_bwd(D):
        loss, z, inv, sums, counts = impl.intra_class_fwd(meta((B, D), dtype), meta_labels(B), KERNEL_CLASSES)
        impl.intra_class_bwd(meta((), torch.float32), z, inv, sums, counts, meta_labels(B))

    return [(f"intra_class B={B} D={D} {dtype_name(dtype)}", lambda D=D: fwd_bwd(D)) for D in KERNEL_D]
