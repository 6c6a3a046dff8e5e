"""The contrastive losses poisoning codebases copy, with the originals' signatures and values.

``nt_xent(x, y, t=0.1)``
    MI-UE's official loss (all-pairs cosine similarity, ``exp(·/t) + 1e-8``, the same-label mask
    with the diagonal, ``-log(pos/all).mean()``), on the fused ``miue.supcon_loss``.
``SupConLoss(temperature=0.07, contrast_mode="all", base_temperature=0.07)``
    ``HobbitLong/SupContrast``'s module (and Contrastive Poisoning's copy, ``SimCLRLoss``):
    ``forward(features, labels=None, mask=None)`` on ``[bsz, n_views, D]`` features, on
    ``miue.ops.supcon_views_loss`` (row-chunked: no (B·V)² tensors held at once).
    ``zero_positive="zero"`` is SupContrast since December 2023 (an anchor without positives adds
    0); ``"nan"`` is the 2020 version that Contrastive Poisoning copied (such a loss is NaN).
"""

from __future__ import annotations

import torch

from miue import ops
from miue.ops.supcon_views_loss import supcon_views_loss

__all__ = ["nt_xent", "SupConLoss", "SimCLRLoss"]


def nt_xent(x: torch.Tensor, y: torch.Tensor, t: float = 0.1) -> torch.Tensor:
    return ops.supcon_loss(x, y, temperature=t, eps=1e-8).to(x.dtype)


class SupConLoss(torch.nn.Module):
    """SupContrast's ``SupConLoss`` with its constructor and ``forward`` (module docstring)."""

    zero_positive = "zero"

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all", base_temperature: float = 0.07,
                 *, zero_positive: str | None = None):
        super().__init__()
        if zero_positive is not None:
            if zero_positive not in ("zero", "nan"):
                raise ValueError(f"zero_positive must be 'zero' or 'nan', got {zero_positive!r}")
            self.zero_positive = zero_positive
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return supcon_views_loss(features, labels, mask, temperature=self.temperature,
                                 contrast_mode=self.contrast_mode, base_temperature=self.base_temperature,
                                 nan_without_positive=self.zero_positive == "nan")

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, contrast_mode={self.contrast_mode!r}, "
                f"base_temperature={self.base_temperature}, zero_positive={self.zero_positive!r}")


class SimCLRLoss(SupConLoss):
    """Contrastive Poisoning's ``SimCLRLoss``: the 2020 ``SupConLoss`` under another name (its
    anchors without positives give NaN, as there). Its ``main.py`` builds it as
    ``SimCLRLoss(temperature=0.5)`` and calls it on ``[bsz, 2, 128]`` features without labels."""

    zero_positive = "nan"
