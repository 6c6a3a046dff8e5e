"""Triton launcher of ``project_linf_`` (docs/ops.md): the projection onto the L∞ ball and the
box, the PGD step's kernel without the step (``_linf.py``).

Reference: ``miue.ops.reference.project_linf_``.
"""

from __future__ import annotations

from ._linf import launch


def project_linf_(delta, clean, eps, lo, hi):
    launch(delta, None, clean, eps, eps, lo, hi, False)
