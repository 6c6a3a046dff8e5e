"""Drop-in replacements for the functions other poisoning codebases write by hand.

``nt_xent(x, y, t=0.1)``
    the MI-UE loss with the official function's signature, value and gradient (all-pairs
    cosine similarity, exp(·/t) + 1e-8, same-label mask with the diagonal,
    -log(pos/all).mean()), computed by the fused ``miue.supcon_loss`` without its
    B×B×D tensor. Returns a scalar in x's dtype.
``pgd_update_(delta, grad, data, alpha, eps, minimize=True)``
    the 3-4 line update of EM, REM, TAP and MI-UE crafting loops,
        delta = delta ∓ alpha * sign(grad); delta = clamp(delta, -eps, eps)
        delta = clamp(data + delta, 0, 1) - data
    in one fused, in-place call (``miue.pgd_linf_step_``). ``data`` is the clean batch,
    float in [0, 1] or uint8. Returns ``delta``.
``patch(module, names=None)``
    replaces the module's functions of those names (``nt_xent``, ``pgd_update_``,
    ``pgd_update``) by the fused ones, in place; returns a handle whose ``undo()`` (or a
    ``with`` block) restores the originals.
"""

from __future__ import annotations

import torch

from miue import ops


def nt_xent(x: torch.Tensor, y: torch.Tensor, t: float = 0.1) -> torch.Tensor:
    return ops.supcon_loss(x, y, temperature=t, eps=1e-8).to(x.dtype)


def pgd_update_(delta: torch.Tensor, grad: torch.Tensor, data: torch.Tensor, alpha, eps, minimize: bool = True):
    step = alpha if minimize else (-alpha if not isinstance(alpha, torch.Tensor) else alpha.neg())
    if delta.requires_grad and delta.is_leaf:
        with torch.no_grad():
            ops.pgd_linf_step_(delta, grad, data, step, eps)
        return delta
    return ops.pgd_linf_step_(delta, grad, data, step, eps)


def pgd_update(delta: torch.Tensor, grad: torch.Tensor, data: torch.Tensor, alpha, eps, minimize: bool = True):
    """Out-of-place variant: returns the updated copy of ``delta``."""
    return pgd_update_(delta.detach().clone(), grad, data, alpha, eps, minimize)


REPLACEMENTS = {"nt_xent": nt_xent, "pgd_update_": pgd_update_, "pgd_update": pgd_update}


class PatchHandle:
    def __init__(self, module, originals: dict):
        self.module = module
        self.originals = originals
        self.patched = sorted(originals)

    def undo(self) -> None:
        for name, fn in self.originals.items():
            setattr(self.module, name, fn)
        self.originals = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()
        return False

    def __repr__(self):
        return f"PatchHandle({getattr(self.module, '__name__', self.module)!r}, patched={self.patched})"


def patch(module, names=None) -> PatchHandle:
    """Replace ``module.<name>`` for each name (default: every name in REPLACEMENTS the module has)."""
    if names is None:
        names = [n for n in REPLACEMENTS if hasattr(module, n)]
    unknown = [n for n in names if n not in REPLACEMENTS]
    if unknown:
        raise ValueError(f"no fused replacement for {unknown}; known: {sorted(REPLACEMENTS)}")
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise AttributeError(f"{getattr(module, '__name__', module)!r} has no attribute(s) {missing}")
    originals = {n: getattr(module, n) for n in names}
    for n in names:
        setattr(module, n, REPLACEMENTS[n])
    return PatchHandle(module, originals)
