"""Triton kernels of miue, installed as ``miue.kernels`` (the ``triton`` backend).

One file per op family, each with its kernels and launchers:

``normalize.py``    row normalisation and deterministic per-class sums (grouped_normalize)
``supcon.py``       the MI-UE supervised-contrastive loss, forward and backward
``intra_class.py``  the intra-class cosine loss, forward and backward
``pgd.py``          the fused L∞ PGD step and projection

The functions exported here have the signatures of :mod:`miue.ops.reference`. They run on CUDA
tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` is set before triton is imported.
"""

from .intra_class import intra_class_bwd, intra_class_fwd
from .normalize import grouped_normalize
from .pgd import pgd_linf_step_, project_linf_
from .supcon import supcon_bwd, supcon_fwd

__all__ = [
    "grouped_normalize",
    "supcon_fwd",
    "supcon_bwd",
    "intra_class_fwd",
    "intra_class_bwd",
    "pgd_linf_step_",
    "project_linf_",
]
