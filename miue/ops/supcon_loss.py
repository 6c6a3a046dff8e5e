"""The op ``miue::supcon_loss`` and its backward ``miue::supcon_loss_backward`` (docs/ops.md):
the MI-UE loss.

Oracle ``miue.ops.reference.supcon_fwd`` / ``supcon_bwd``; kernels ``csrc/cpu/supcon_loss.cpp``,
``csrc/cuda/supcon_loss.cu`` and ``kernels/supcon_loss.py``; tests ``tests/test_supcon_loss.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from miue.ops import _validate as V
from miue.ops import reference as R
from miue.ops._backend import implementation, resolve_backend
from miue.ops._common import dtype_name, kernel_region, meta, meta_labels, sample, sample_features

__all__ = ["supcon_loss"]


@torch.library.custom_op("miue::supcon_loss", mutates_args=())
def _supcon_op(
    features: Tensor, labels: Tensor, temperature: float, eps: float, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with kernel_region(features):
        return tuple(implementation(backend).supcon_fwd(features, labels, temperature, eps))


@_supcon_op.register_fake
def _(features, labels, temperature, eps, backend):
    B, D = features.shape
    acc = R.acc_dtype(features.dtype)
    return (
        features.new_empty((), dtype=acc),
        features.new_empty((B, D)),
        features.new_empty((B,), dtype=acc),
        features.new_empty((B,), dtype=acc),
        features.new_empty((B,), dtype=acc),
    )


@torch.library.custom_op("miue::supcon_loss_backward", mutates_args=())
def _supcon_backward_op(
    grad: Tensor, z: Tensor, inv_norm: Tensor, P: Tensor, N: Tensor, labels: Tensor, temperature: float, backend: str
) -> Tensor:
    with kernel_region(z):
        return implementation(backend).supcon_bwd(grad, z, inv_norm, P, N, labels, temperature)


@_supcon_backward_op.register_fake
def _(grad, z, inv_norm, P, N, labels, temperature, backend):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    _, labels, temperature, _, backend = inputs
    _, z, inv_norm, P, N = output
    ctx.save_for_backward(z, inv_norm, P, N, labels)
    ctx.temperature = temperature
    ctx.backend = backend
    ctx.mark_non_differentiable(z, inv_norm, P, N)


def _backward(ctx, g_loss, *unused):
    z, inv_norm, P, N, labels = ctx.saved_tensors
    gf = _supcon_backward_op(g_loss, z, inv_norm, P, N, labels, ctx.temperature, ctx.backend)
    return gf, None, None, None, None


_supcon_op.register_autograd(_backward, setup_context=_setup)


def supcon_loss(
    features: Tensor, labels: Tensor, temperature: float = 0.1, eps: float = 1e-8, *, backend: str | None = None
) -> Tensor:
    """The MI-UE loss (docs/ops.md): supervised-contrastive loss over cosine similarities.

    ``loss = -(1/B) Σ_i log(P_i / A_i)`` with ``e_ij = exp(z_i·z_j/τ) + eps``,
    ``A_i = Σ_j e_ij`` and ``P_i = Σ_j [y_i = y_j] e_ij`` (i is its own positive); computed
    as ``mean(log1p(N_i/P_i))`` with ``N_i = A_i - P_i`` summed directly. Equal to
    the official formulation to float rounding but never builds more than tiles of the
    B×B logits. Labels are compared for equality only. Returns a 0-dim float32 tensor
    (float64 for float64 features), differentiable w.r.t. ``features``.
    """
    V.check_features(features, min_rows=1)
    labels = V.check_labels(labels, features)
    temperature = V.check_positive(temperature, "temperature")
    eps = V.check_nonnegative(eps, "eps")
    name = resolve_backend(backend, features.device, features.dtype)
    return _supcon_op(features, labels, temperature, eps, name)[0]


# --------------------------------------------------------------------------- sample inputs


def sample_inputs(device="cpu", dtype=torch.float32, backend: str = "reference"):
    """Calls of ``miue::supcon_loss`` and ``miue::supcon_loss_backward`` for opcheck: 13×7
    features of ``dtype`` on ``device`` (row 2 null), 3 classes, τ = 0.1, run by ``backend``; the
    backward's saved tensors come from the reference backend."""
    f, y = sample_features(13, 7, 3, seed=0, dtype=dtype, device=device, null_rows=(2,))
    _, z, inv, P, N = R.supcon_fwd(f.detach(), y, 0.1, 1e-8)
    g = torch.ones((), dtype=inv.dtype, device=device)
    return [sample(torch.ops.miue.supcon_loss.default, f, y, 0.1, 1e-8, backend),
            sample(torch.ops.miue.supcon_loss_backward.default, g, z, inv, P, N, y, 0.1, backend)]


# The AOT check's shapes (miue.aot), which reach every branch of the configuration functions
# (tests/test_gpu_tiles.py::test_aot_shapes_cover_every_gpu_config checks it):
#   B 512 (the PGD batch: fwd BLOCK_M 32, bwd 16), 2048 (fwd 64), 8192 (bwd 32),
#     100 (B not a multiple of 16) and 1 (Triton specialises an int equal to 1);
#   D 8 (BLOCK_K 16), 32 (BLOCK_K 32), 64, 100 (D not a multiple of 16, BLOCK_D 128),
#     256 (BLOCK_D 256, in registers), 512 (D > 256: the fp32 buffer and _project_kernel).
KERNEL_B = (512, 2048, 8192)
KERNEL_D = (8, 32, 64, 100, 256, 512)
KERNEL_EDGE = ((100, 64), (1, 64))  # (B, D), fp32 and bf16 only


def kernel_cases(impl, dtype):
    """[(case name, call)] for the AOT check: each call runs backend module ``impl``'s
    ``supcon_fwd`` then ``supcon_bwd`` on ``meta`` tensors of ``dtype``, one per shape above."""
    shapes = [(B, D) for B in KERNEL_B for D in KERNEL_D]
    shapes += [s for s in KERNEL_EDGE if dtype != torch.float16]

    def fwd_bwd(B, D):
        loss, z, inv, P, N = impl.supcon_fwd(meta((B, D), dtype), meta_labels(B), 0.1, 1e-8)
        impl.supcon_bwd(meta((), torch.float32), z, inv, P, N, meta_labels(B), 0.1)

    return [(f"supcon B={B} D={D} {dtype_name(dtype)}", lambda B=B, D=D: fwd_bwd(B, D)) for B, D in shapes]
