"""Triton kernels of miue, installed as ``miue.kernels`` (the ``triton`` backend).

One file per op, each with its kernels and launchers (``miue/ops/<op>.py`` is the op):

``grouped_normalize.py``        row normalisation and deterministic per-class sums (reused by the losses)
``supcon_loss.py``              the MI-UE supervised-contrastive loss, forward and backward
``intra_class_cosine_loss.py``  the intra-class cosine loss, forward and backward
``pgd_linf_step.py``            the fused L∞ PGD step
``project_linf.py``             the L∞ projection (the step without the step)

``_linf.py`` holds the elementwise kernel the last two share, ``_config.py`` the launch
configurations and ``_common.py`` the helpers. The functions exported here have the signatures
of :mod:`miue.ops.reference`. They run on CUDA tensors, or on CPU tensors when
``TRITON_INTERPRET=1`` is set before triton is imported.
"""

from .grouped_normalize import grouped_normalize
from .intra_class_cosine_loss import intra_class_bwd, intra_class_fwd
from .pgd_linf_step import pgd_linf_step_
from .project_linf import project_linf_
from .supcon_loss import supcon_bwd, supcon_fwd

__all__ = [
    "grouped_normalize",
    "supcon_fwd",
    "supcon_bwd",
    "intra_class_fwd",
    "intra_class_bwd",
    "pgd_linf_step_",
    "project_linf_",
]
