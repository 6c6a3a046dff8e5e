"""The op ``miue::project_linf_`` (docs/ops.md): the projection onto the L∞ ball and the box, in
place (the PGD step without the step).

Oracle ``miue.ops.reference.project_linf_``; kernels ``csrc/cpu/project_linf.cpp``,
``csrc/cuda/project_linf.cu`` and ``kernels/project_linf.py``; tests ``tests/test_project_linf.py``.
It shares its elementwise pass with ``pgd_linf_step_`` (``csrc/cpu/linf.h``, ``csrc/cuda/linf.cuh``,
``kernels/_linf.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from miue.ops import _validate as V
from miue.ops._backend import implementation, resolve_backend
from miue.ops._common import dtype_name, meta, same_layout, sample, sample_pgd, scalar
from miue.ops.pgd_linf_step import kernel_grid

__all__ = ["project_linf_"]


@torch.library.custom_op("miue::project_linf_", mutates_args=("delta",))
def _project_op(delta: Tensor, clean: Tensor, eps: Tensor, lo: float, hi: float, backend: str) -> None:
    impl = implementation(backend)
    if same_layout(delta, clean):
        impl.project_linf_(delta, clean, eps, lo, hi)
    else:
        work = delta.contiguous()
        impl.project_linf_(work, clean.contiguous(), eps, lo, hi)
        delta.copy_(work)


@_project_op.register_fake
def _(delta, clean, eps, lo, hi, backend):
    return None


def project_linf_(
    delta: Tensor, clean: Tensor, eps: float | Tensor, lo: float = 0.0, hi: float = 1.0, *, backend: str | None = None
) -> Tensor:
    """Project ``delta`` in place onto the L∞ ball of radius ``eps`` and the box
    ``lo <= clean + delta <= hi`` (the PGD step without the step); returns ``delta``."""
    V.check_pgd_args(delta, clean)
    eps = scalar(eps, "eps", delta.device, nonnegative=True)
    lo, hi = V.check_box(lo, hi)
    name = resolve_backend(backend, delta.device)
    _project_op(delta, clean, eps, lo, hi, name)
    return delta


# --------------------------------------------------------------------------- sample inputs


def sample_inputs(device="cpu", dtype=torch.float32, backend: str = "reference"):
    """A call of ``miue::project_linf_`` for opcheck: a 2×3×4×4 ``delta`` of ``dtype`` and a uint8
    ``clean`` on ``device``, ε 0.03 as a float64 scalar on ``device`` (read by the kernel), the box
    [0, 1], run by ``backend``."""
    delta, _, clean, _, eps = sample_pgd(device, dtype)
    return [sample(torch.ops.miue.project_linf_.default, delta, clean, eps.to(device), 0.0, 1.0, backend)]


def kernel_cases(impl, dtype):
    """[(case name, call)] for the AOT check: each call runs backend module ``impl``'s
    ``project_linf_`` on ``meta`` tensors, ``delta`` of ``dtype``, for the clean dtypes, scalar
    placements and sizes of ``pgd_linf_step``'s cases (the same kernel, without the step)."""
    return [(f"project_linf_ n={n} delta {dtype_name(dtype)} clean {dtype_name(clean_dt)} scalars on {where}",
             lambda n=n, cd=clean_dt, mk=mk: impl.project_linf_(meta((n,), dtype), meta((n,), cd), mk(0.03), 0.0, 1.0))
            for n, clean_dt, where, mk in kernel_grid(dtype)]
