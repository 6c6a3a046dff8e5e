"""The perturbation updates poisoning codebases write by hand, in their own state forms
(docs/compat.md has the codebase behind each).

``pgd_update_``   δ-space signed-gradient PGD with a general box: MI-UE's official loop (``data``
                  the clean batch, box [0, 1]), Contrastive Poisoning's unit-space δ (``data=None``,
                  box [-1, 1], no ε), APBench TAP's normalised δ (per-channel tensors,
                  ``box="delta"``).
``min_min_step``  EM's image-state step (``PerturbationTool.min_min_attack`` of
                  Unlearnable-Examples, copied by APBench's EM and REM): takes x + δ, returns the
                  new x + δ and the noise *before* the [0, 1] box, as their loop stores it.
``min_max_step``  the same, ascending (REM's and APBench's inner maximisation).

Scalar ε, step and bounds with the ``"image"`` box run the fused ``miue.pgd_linf_step_`` (one pass
over δ, grad and data, C++/CUDA/Triton); every other form runs the original's own PyTorch
operations in the original's order, in place where the original is, so the result is bitwise the
original's.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from miue import ops
from miue.ops._common import same_layout

__all__ = ["pgd_update_", "pgd_update", "min_min_step", "min_max_step"]

BOXES = ("image", "delta")


def _is_scalar(v) -> bool:
    return isinstance(v, numbers.Real) or (isinstance(v, Tensor) and v.numel() == 1)


def _check_operand(v, name: str, delta: Tensor, *, allow_none: bool = False):
    if v is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number or a tensor, got None")
    if isinstance(v, bool) or not (isinstance(v, numbers.Real) or isinstance(v, Tensor)):
        raise TypeError(f"{name} must be a number or a tensor broadcastable to delta, got {type(v).__name__}")
    if isinstance(v, Tensor):
        if not v.is_floating_point() and v.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32,
                                                         torch.int64):
            raise TypeError(f"{name} must be a real tensor, got {v.dtype}")
        if v.numel() > 1 and v.device != delta.device:
            raise ValueError(f"{name} is on {v.device} but delta is on {delta.device}")
        try:
            torch.broadcast_shapes(v.shape, delta.shape)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(v.shape)} does not broadcast to delta's "
                             f"{tuple(delta.shape)} (per-channel values are [1, C, 1, 1])") from None
        if torch.broadcast_shapes(v.shape, delta.shape) != delta.shape:
            raise ValueError(f"{name} of shape {tuple(v.shape)} would grow delta's {tuple(delta.shape)}")
    return v


_ZEROS: dict = {}


def _zeros_like(delta: Tensor) -> Tensor:
    """A uint8 zero tensor laid out as ``delta`` (a dense layout), from one buffer per device that
    grows as needed: the fused kernel's ``clean`` for a δ that lives alone, without writing a
    zero tensor of δ's size at every step (a quarter of δ's bytes, kept for the process)."""
    key = str(delta.device)
    buf = _ZEROS.get(key)
    if buf is None or buf.numel() < delta.numel():
        buf = _ZEROS[key] = torch.zeros(delta.numel(), dtype=torch.uint8, device=delta.device)
    return buf.as_strided(delta.shape, delta.stride(), 0)


def _fused_ok(delta, grad, data, alpha, eps, lo, hi, box) -> bool:
    if box != "image" or lo is None or hi is None or not all(_is_scalar(v) for v in (alpha, lo, hi)):
        return False
    if eps is None and data is not None:
        return False
    if eps is not None and not _is_scalar(eps):
        return False
    if data is not None and not (isinstance(data, Tensor) and data.shape == delta.shape
                                 and data.device == delta.device and data.dtype in (torch.uint8, delta.dtype)):
        return False
    if grad.shape != delta.shape or grad.device != delta.device or not grad.is_floating_point():
        return False
    return same_layout(delta, grad) and (data is None or same_layout(delta, data))


def pgd_update_(delta: Tensor, grad: Tensor, data, alpha, eps, minimize: bool = True, *, lo=0.0, hi=1.0,
                box: str = "image") -> Tensor:
    """One signed-gradient PGD step on ``delta``, in place; returns ``delta``.

    ``delta <- delta ∓ alpha·sign(grad)`` (``-`` when ``minimize``), then ``clamp(·, -eps, eps)``
    (skipped when ``eps`` is None), then the box:

    * ``box="image"`` (MI-UE, EM): ``clamp(data + delta, lo, hi) - data``; with ``data=None``
      ``clamp(delta, lo, hi)`` (Contrastive Poisoning: ``lo=-1, hi=1, eps=None``);
    * ``box="delta"`` (APBench TAP): ``max(min(delta, hi - data), lo - data)``, the bounds moved
      into δ's space as TAP writes it (``data=None``: ``max(min(delta, hi), lo)``).

    ``lo=None`` and ``hi=None`` skip the box. ``data`` is the clean batch (float, or uint8 read as
    value/255 on the fused path), a number, or None. ``alpha``, ``eps``, ``lo`` and ``hi`` are numbers
    or tensors broadcastable to ``delta`` (per channel ``[1, C, 1, 1]``: TAP's ``tau0``,
    ``eps/255/ds``, ``-dm/ds`` and ``(1-dm)/ds`` in normalised units). Scalars with the image box
    run the fused kernel; the rest runs the original's operations in its order. Bitwise the
    original's update either way (docs/compat.md).
    """
    if not isinstance(delta, Tensor) or not delta.is_floating_point():
        raise TypeError(f"delta must be a floating-point tensor, got "
                        f"{delta.dtype if isinstance(delta, Tensor) else type(delta).__name__}")
    if not isinstance(grad, Tensor) or not grad.is_floating_point():
        raise TypeError(f"grad must be a floating-point tensor, got "
                        f"{grad.dtype if isinstance(grad, Tensor) else type(grad).__name__}")
    if grad.shape != delta.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)} but delta has {tuple(delta.shape)}")
    if box not in BOXES:
        raise ValueError(f"box must be one of {BOXES}, got {box!r}")
    alpha = _check_operand(alpha, "alpha", delta)
    eps = _check_operand(eps, "eps", delta, allow_none=True)
    lo = _check_operand(lo, "lo", delta, allow_none=True)
    hi = _check_operand(hi, "hi", delta, allow_none=True)
    if (lo is None) != (hi is None):
        raise ValueError("give both lo and hi, or neither (no box)")
    if data is not None and not _is_scalar(data):
        if not isinstance(data, Tensor):
            raise TypeError(f"data must be a tensor, a number or None, got {type(data).__name__}")
        if data.shape != delta.shape:
            raise ValueError(f"data has shape {tuple(data.shape)} but delta has {tuple(delta.shape)}")
    target = delta.data if (delta.requires_grad and delta.is_leaf) else delta
    with torch.no_grad():
        if _fused_ok(target, grad, data, alpha, eps, lo, hi, box):
            step = alpha if minimize else (-alpha if not isinstance(alpha, Tensor) else alpha.neg())
            if eps is None:  # the box alone: an ε at the box's reach clamps nothing the box would keep
                eps = max(abs(float(lo)), abs(float(hi)))
            clean = _zeros_like(target) if data is None else data
            ops.pgd_linf_step_(target, grad, clean, step, eps, float(lo), float(hi))
            return delta
        step = grad.sign().mul_(alpha)
        if minimize:
            target.sub_(step)
        else:
            target.add_(step)
        if eps is not None:  # max(min(δ, ε), -ε), as TAP writes it (clamp's order gives the same for ε >= 0)
            eps_t = torch.as_tensor(eps, dtype=target.dtype, device=target.device)
            torch.minimum(target, eps_t, out=target)
            torch.maximum(target, -eps_t, out=target)
        if lo is not None:
            lo_t = torch.as_tensor(lo, dtype=target.dtype, device=target.device)
            hi_t = torch.as_tensor(hi, dtype=target.dtype, device=target.device)
            if isinstance(data, Tensor) and data.dtype == torch.uint8:
                data = data.to(target.dtype).div_(255)
            if box == "image":
                if data is None:
                    target.clamp_(lo_t, hi_t)
                else:
                    target.copy_(torch.clamp(data + target, lo_t, hi_t).sub_(data))
            else:
                up, down = (hi_t, lo_t) if data is None else (hi_t - data, lo_t - data)
                torch.minimum(target, up, out=target)
                torch.maximum(target, down, out=target)
    return delta


def pgd_update(delta: Tensor, grad: Tensor, data, alpha, eps, minimize: bool = True, **kwargs) -> Tensor:
    """Out-of-place :func:`pgd_update_`: returns the updated copy of ``delta``."""
    return pgd_update_(delta.detach().clone(), grad, data, alpha, eps, minimize, **kwargs)


def _state_step(perturb_img: Tensor, images: Tensor, grad: Tensor, step_size, epsilon, lo, hi, sign: int):
    for name, t in (("perturb_img", perturb_img), ("images", images), ("grad", grad)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor")
        if t.shape != perturb_img.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but perturb_img has {tuple(perturb_img.shape)}")
    with torch.no_grad():
        eta = step_size * grad.sign() * sign  # their order: step · sign · (±1)
        moved = perturb_img.detach() + eta
        eta = torch.clamp(moved - images, -epsilon, epsilon)
        new = torch.clamp(images + eta, lo, hi)
    return new, eta


def min_min_step(perturb_img: Tensor, images: Tensor, grad: Tensor, step_size, epsilon, lo=0.0, hi=1.0):
    """EM's step in its image state (``PerturbationTool.min_min_attack``): ``p' = p - step·sign(g)``,
    ``eta = clamp(p' - images, -epsilon, epsilon)``, ``p = clamp(images + eta, lo, hi)``.

    Returns ``(p, eta)``, both new tensors: ``eta`` is the noise *before* the box, which EM's loop
    stores (so ``images + eta`` may leave [0, 1]); ``p`` is the boxed image the next gradient is
    taken at. Bitwise the original's arithmetic."""
    return _state_step(perturb_img, images, grad, step_size, epsilon, lo, hi, -1)


def min_max_step(perturb_img: Tensor, images: Tensor, grad: Tensor, step_size, epsilon, lo=0.0, hi=1.0):
    """:func:`min_min_step` ascending (``p' = p + step·sign(g)``): REM's and APBench's
    ``min_max_attack``."""
    return _state_step(perturb_img, images, grad, step_size, epsilon, lo, hi, 1)
