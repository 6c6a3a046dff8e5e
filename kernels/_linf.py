"""Triton kernel shared by ``pgd_linf_step_`` (``pgd_linf_step.py``) and ``project_linf_``
(``project_linf.py``): the fused L∞ PGD step and projection (docs/ops.md), one elementwise pass.

Reference: ``miue.ops.reference.pgd_linf_step_`` / ``project_linf_``. One read of delta, grad and
clean and one write of delta per element; the three tensors share one dense layout and are
walked as flat arrays. Computed in fp32 (fp64 for an fp64 delta) and bitwise equal to

    d = clamp(delta - step·sign(grad), -eps, eps);   delta = clamp(clean + d, lo, hi) - clean

with uint8 clean read as value/255 through a correctly rounded division (``div_rn``).
``step_size`` and ``eps`` come as 0-dim float64 tensors, each on the CPU or on delta's
device, and each is passed its own way: a device scalar is read by the kernel (so a captured
CUDA graph replays with the value the tensor holds at replay time); a CPU scalar is passed by
value as fp32, or, for an fp64 delta on a GPU (a by-value float is fp32), written into a
device scalar by a fill kernel (no host-to-device copy: that would be an unpinned transfer,
refused or recorded from a freed host buffer inside a CUDA-graph capture). The box [lo, hi]
goes by value (fp32), or, for an fp64 delta, through two fill kernels into delta's memory.
Nothing is copied between host and device here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _config
from ._common import INTERP, cast_rne


@triton.jit
def _pgd_kernel(delta_ptr, grad_ptr, clean_ptr, step_ptr, eps_ptr, bounds_ptr, step_val, eps_val, lo, hi, n,
                DO_STEP: tl.constexpr, STEP_IN_MEMORY: tl.constexpr, EPS_IN_MEMORY: tl.constexpr,
                CLEAN_U8: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    ct: tl.constexpr = tl.float64 if F64 else tl.float32
    if STEP_IN_MEMORY:
        step = tl.load(step_ptr).to(ct)
    else:  # an fp32 by-value argument (never for an fp64 delta)
        step = step_val
    if EPS_IN_MEMORY:
        eps = tl.load(eps_ptr).to(ct)
    else:
        eps = eps_val
    if F64:  # the box [lo, hi] from memory: a by-value float is fp32 on a GPU
        lo = tl.load(bounds_ptr)
        hi = tl.load(bounds_ptr + 1)
    t = tl.load(delta_ptr + offs, mask=ok, other=0.0).to(ct)
    if DO_STEP:
        g = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(ct)
        sgn = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0)).to(ct)  # sign(NaN) = 0, as torch.sign
        t = t - step * sgn
    # clamp as min(max(.)) with NaN propagating from t, like torch.clamp
    t = tl.where(t < -eps, -eps, t)
    t = tl.where(t > eps, eps, t)
    if CLEAN_U8:
        c = tl.load(clean_ptr + offs, mask=ok, other=0).to(ct)
        if F64:
            c = c / 255.0  # fp64 division is IEEE (div.rn.f64); div_rn only takes fp32
        else:
            c = tl.math.div_rn(c, 255.0)
    else:
        c = tl.load(clean_ptr + offs, mask=ok, other=0.0).to(ct)
    x = c + t
    x = tl.where(x < lo, lo, x)
    x = tl.where(x > hi, hi, x)
    tl.store(delta_ptr + offs, cast_rne(x - c, delta_ptr.dtype.element_ty, INTERP), mask=ok)


def _scalar_arg(value: torch.Tensor, delta: torch.Tensor):
    """(tensor, by-value float, in_memory) for one 0-dim float64 scalar (see the module
    docstring). Never a host-to-device copy."""
    if value.device.type != "cpu":  # on delta's device (checked by miue.ops): read by the kernel
        return value, 0.0, True
    if delta.dtype != torch.float64:
        return delta, float(value), False  # fp32 by value; the pointer is unused
    if delta.device.type == "cpu":  # the interpreter reads CPU memory
        return value, 0.0, True
    # fp64 on a GPU: a fill kernel writes the value (a kernel argument) into device memory
    return torch.full((), float(value), dtype=torch.float64, device=delta.device), 0.0, True


def _bounds_arg(lo: float, hi: float, delta: torch.Tensor) -> torch.Tensor:
    """The box for an fp64 delta, as float64 in delta's memory (written by fill kernels, no
    host-to-device copy); for other dtypes lo and hi go by value and the pointer is unused."""
    if delta.dtype != torch.float64:
        return delta
    bounds = torch.empty(2, dtype=torch.float64, device=delta.device)
    bounds[0].fill_(float(lo))
    bounds[1].fill_(float(hi))
    return bounds


def launch(delta, grad, clean, step_size, eps, lo, hi, do_step):
    """One pass over delta: the step when ``do_step`` (``pgd_linf_step.py``), else the projection
    alone (``project_linf.py``, ``grad`` None)."""
    n = delta.numel()
    if n == 0:
        return
    step_t, step_v, step_mem = _scalar_arg(step_size, delta)
    eps_t, eps_v, eps_mem = _scalar_arg(eps, delta)
    cfg = _config.pgd_config(delta.dtype, clean.dtype, do_step, step_mem, eps_mem)
    _config.launch(_pgd_kernel, (triton.cdiv(n, cfg["BLOCK"]),),
                   (delta, grad if grad is not None else delta, clean, step_t, eps_t, _bounds_arg(lo, hi, delta), step_v,
                    eps_v, float(lo), float(hi), n),
                   cfg)
