"""ε on the uint8 grid: the one rule for turning clean + δ into released uint8 pixels.

A released pixel may move by at most ``eps_steps(eps)`` = floor(ε·255) units of 1/255 from its
uint8 original (the 1e-6 absorbs ε = k/255 given as a float). :func:`quantize` is used by the
crafting results (``miue.craft.quantize_images``), the int8 δ store and the native-size release.
"""

from __future__ import annotations

import math

import torch


ROUNDINGS = ("round", "trunc")  # "trunc": as the official code releases


def eps_steps(eps: float) -> int:
    """The largest whole number of 1/255 steps inside ε."""
    return math.floor(float(eps) * 255 + 1e-6)


def quantize(clean: torch.Tensor, delta: torch.Tensor, eps: float, rounding: str = "round") -> torch.Tensor:
    """clean + δ as uint8. For uint8 clean images the step is clamped to ±eps_steps(eps), so the
    result stays within ε of them; float clean images (in [0, 1]) are scaled and rounded."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"release rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if clean.dtype == torch.uint8:
        base = clean.float()
        scaled = base + delta.float() * 255
        q = torch.round(scaled) if rounding == "round" else torch.trunc(scaled)
        k = eps_steps(eps)
        q = torch.minimum(torch.maximum(q, base - k), base + k)
    else:
        scaled = (clean.float() + delta.float()) * 255
        q = torch.round(scaled) if rounding == "round" else torch.trunc(scaled)
    return q.clamp_(0, 255).to(torch.uint8)
