"""Triton launcher of ``pgd_linf_step_`` (docs/ops.md): the fused L∞ PGD step, one elementwise
pass over delta, grad and clean (the kernel, shared with ``project_linf_``: ``_linf.py``).

Reference: ``miue.ops.reference.pgd_linf_step_``.
"""

from __future__ import annotations

from ._linf import launch


def pgd_linf_step_(delta, grad, clean, step_size, eps, lo, hi):
    launch(delta, grad, clean, step_size, eps, lo, hi, True)
