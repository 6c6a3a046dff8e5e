"""``miue.compat``: exact, faster stand-ins for the loss and update code poisoning codebases write
by hand, and the means to swap them in without editing those codebases (docs/compat.md has one
section per codebase: what to run or change, what comes out bitwise, the measured speed).

Building blocks (each with the original's signature and semantics):

``nt_xent(x, y, t=0.1)``
    the official MI-UE loss, on the fused ``miue.supcon_loss``.
``SupConLoss`` / ``SimCLRLoss``
    SupContrast's loss (multi-view ``[bsz, n_views, D]``, ``labels``, ``mask`` or neither,
    ``contrast_mode``, ``base_temperature``) and Contrastive Poisoning's copy, on the row-chunked
    ``miue.ops.supcon_views_loss``.
``pgd_update_`` / ``pgd_update``
    δ-space signed PGD with a general box: a clean batch or no ``data`` at all, ``lo``/``hi``,
    per-channel tensors, TAP's ``box="delta"``.
``min_min_step`` / ``min_max_step``
    EM's (and REM's) step in its own image state: returns the new x + δ and the unboxed noise.

Swapping them in:

``patch(target, names=None, *, strict=False, verbose=False)``
    replaces every known function, class and ``Class.method`` that ``target`` defines (:data:`KNOWN`),
    returns a handle that reports what it replaced and skipped; ``undo()`` or a ``with`` block
    restores. Nothing replaced warns (``PatchWarning``) or, with ``strict=True``, raises.
``accelerate(modules=(), ...)`` and ``python -m miue.compat SCRIPT ARGS``
    the numerics-preserving runtime settings (the CPU allocator tuning; the CUDA allocator's
    expandable segments) plus the known patches, printed; TF32 and cuDNN autotuning only when asked.
"""

from miue.compat.losses import SimCLRLoss, SupConLoss, nt_xent
from miue.compat.patching import KNOWN, PatchHandle, PatchWarning, Replacement, patch
from miue.compat.runtime import Acceleration, accelerate
from miue.compat.updates import min_max_step, min_min_step, pgd_update, pgd_update_

REPLACEMENTS = {r.name: r for r in KNOWN}

__all__ = ["KNOWN", "REPLACEMENTS", "Acceleration", "PatchHandle", "PatchWarning", "Replacement", "SimCLRLoss",
           "SupConLoss", "accelerate", "min_max_step", "min_min_step", "nt_xent", "patch", "pgd_update",
           "pgd_update_"]
