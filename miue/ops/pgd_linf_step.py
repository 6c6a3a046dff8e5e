"""The op ``miue::pgd_linf_step_`` (docs/ops.md): one signed-gradient L∞ PGD step, in place.

Oracle ``miue.ops.reference.pgd_linf_step_``; kernels ``csrc/cpu/pgd_linf_step.cpp``,
``csrc/cuda/pgd_linf_step.cu`` and ``kernels/pgd_linf_step.py``; tests
``tests/test_pgd_linf_step.py``. The step and the projection (``project_linf_``, the step without
the step) are one elementwise pass, written once per backend: ``csrc/cpu/linf.h``,
``csrc/cuda/linf.cuh`` and ``kernels/_linf.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from miue.ops import _validate as V
from miue.ops._backend import implementation, resolve_backend
from miue.ops._common import dtype_name, meta, same_layout, sample, sample_pgd, scalar

__all__ = ["pgd_linf_step_"]


@torch.library.custom_op("miue::pgd_linf_step_", mutates_args=("delta",))
def _pgd_step_op(
    delta: Tensor, grad: Tensor, clean: Tensor, step_size: Tensor, eps: Tensor, lo: float, hi: float, backend: str
) -> None:
    impl = implementation(backend)
    if same_layout(delta, grad, clean):
        impl.pgd_linf_step_(delta, grad, clean, step_size, eps, lo, hi)
    else:  # kernels walk the three tensors as one flat array: give them one layout
        work = delta.contiguous()
        impl.pgd_linf_step_(work, grad.contiguous(), clean.contiguous(), step_size, eps, lo, hi)
        delta.copy_(work)


@_pgd_step_op.register_fake
def _(delta, grad, clean, step_size, eps, lo, hi, backend):
    return None


def pgd_linf_step_(
    delta: Tensor,
    grad: Tensor,
    clean: Tensor,
    step_size: float | Tensor,
    eps: float | Tensor,
    lo: float = 0.0,
    hi: float = 1.0,
    *,
    backend: str | None = None,
) -> Tensor:
    """One signed-gradient L∞ PGD step on ``delta``, in place (docs/ops.md); returns ``delta``.

    ``delta <- clamp(delta - step_size*sign(grad), -eps, eps)`` then
    ``delta <- clamp(clean + delta, lo, hi) - clean``. ``sign(0) = 0``; a negative
    ``step_size`` ascends. ``clean`` is float, or uint8 read as value/255 (a true division).
    Computed in fp32 (fp64 for an fp64 ``delta``) and bitwise equal to that formula.
    ``step_size`` and ``eps`` are floats or one-element tensors (on the CPU, or on
    ``delta``'s device so that a captured CUDA graph can be replayed with new values). Under
    ``torch.compile`` a tensor never recompiles; a Python float recompiles at most once (the
    second value makes it dynamic).
    """
    V.check_pgd_args(delta, clean, grad)
    step_size = scalar(step_size, "step_size", delta.device, nonnegative=False)
    if delta.dtype != torch.float64 and step_size.device.type == "cpu" and not V._is_compiling() \
            and abs(float(step_size)) > torch.finfo(torch.float32).max:
        # the step is taken in fp32 for a non-fp64 delta: it would be inf, and inf * sign(0) NaN
        raise ValueError(f"step_size must fit in float32 for a {delta.dtype} delta, got {float(step_size)!r}")
    eps = scalar(eps, "eps", delta.device, nonnegative=True)
    lo, hi = V.check_box(lo, hi)
    name = resolve_backend(backend, delta.device)
    _pgd_step_op(delta, grad, clean, step_size, eps, lo, hi, name)
    return delta


# --------------------------------------------------------------------------- sample inputs


def sample_inputs(device="cpu", dtype=torch.float32, backend: str = "reference"):
    """A call of ``miue::pgd_linf_step_`` for opcheck: a 2×3×4×4 ``delta`` and ``grad`` of
    ``dtype`` on ``device``, a uint8 ``clean``, the step 0.01 and ε 0.03 as float64 CPU scalars,
    the box [0, 1], run by ``backend``."""
    delta, grad, clean, step, eps = sample_pgd(device, dtype)
    return [sample(torch.ops.miue.pgd_linf_step_.default, delta, grad, clean, step, eps, 0.0, 1.0, backend)]


# The AOT check's sizes (miue.aot): the CIFAR PGD batch (512 images of 3×32×32), and for fp32 with
# a uint8 clean an odd size and the 224 px dataset (more than 2^31 elements: 64-bit sizes).
KERNEL_N = (512 * 3 * 32 * 32,)
KERNEL_EDGE_N = (1000, 50_000 * 3 * 224 * 224)


def _host(v):  # a scalar passed by value
    return torch.tensor(v, dtype=torch.float64)


def _device(v):  # a scalar read by the kernel (CUDA graphs)
    return meta((), torch.float64)


SCALAR_PLACES = (("host", _host), ("device", _device))


def kernel_grid(dtype):
    """(size, clean dtype, scalar placement, scalar maker) of the AOT cases of the L∞ kernel
    (shared with ``project_linf``): each clean dtype (uint8, ``dtype``), each scalar placement
    (fp64 always reads its scalars from memory), each size above."""
    for clean_dt in (torch.uint8, dtype):
        for where, mk in SCALAR_PLACES:
            if dtype == torch.float64 and where == "host":
                continue
            sizes = KERNEL_N + (KERNEL_EDGE_N if (dtype == torch.float32 and clean_dt == torch.uint8) else ())
            for n in sizes:
                yield n, clean_dt, where, mk


def kernel_cases(impl, dtype, grad_dtype=None):
    """[(case name, call)] for the AOT check: each call runs backend module ``impl``'s
    ``pgd_linf_step_`` on ``meta`` tensors, ``delta`` and ``grad`` of ``dtype``; for each clean dtype
    (uint8, ``dtype``) and scalar placement (host, device; fp64 always reads its scalars from
    memory), each size above. With ``grad_dtype``: the engine's one mixed case instead, ``grad``
    of ``grad_dtype`` (autocast), uint8 clean, host scalars, the PGD batch."""
    if grad_dtype is not None:
        n = KERNEL_N[0]
        return [(f"pgd_linf_step_ delta {dtype_name(dtype)} grad {dtype_name(grad_dtype)} clean uint8",
                 lambda: impl.pgd_linf_step_(meta((n,), dtype), meta((n,), grad_dtype), meta((n,), torch.uint8),
                                             _host(0.01), _host(0.03), 0.0, 1.0))]
    return [(f"pgd_linf_step_ n={n} delta {dtype_name(dtype)} clean {dtype_name(clean_dt)} scalars on {where}",
             lambda n=n, cd=clean_dt, mk=mk: impl.pgd_linf_step_(
                 meta((n,), dtype), meta((n,), dtype), meta((n,), cd), mk(0.01), mk(0.03), 0.0, 1.0))
            for n, clean_dt, where, mk in kernel_grid(dtype)]
