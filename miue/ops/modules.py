"""``torch.nn.Module`` forms of the loss ops: the constructor holds the op's settings,
``forward(features, labels)`` calls the functional op (the same op, the same bits and gradient).

These take miue's ``(features, labels)`` signature; ``miue.compat.SupConLoss`` / ``SimCLRLoss``
are the other signature, SupContrast's ``forward(features[bsz, n_views, ...], labels, mask)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from miue.ops.intra_class_cosine_loss import intra_class_cosine_loss
from miue.ops.supcon_loss import supcon_loss

__all__ = ["MIUESupConLoss", "IntraClassCosineLoss"]


class MIUESupConLoss(nn.Module):
    """``miue.ops.supcon_loss`` as a module: ``MIUESupConLoss(temperature=0.1)(features, labels)``.

    ``temperature``, ``eps`` and ``backend`` (None: the usual choice, :func:`miue.resolve_backend`)
    are checked by the op on each call, as the functional form checks them."""

    def __init__(self, temperature: float = 0.1, eps: float = 1e-8, *, backend: str | None = None):
        super().__init__()
        self.temperature = temperature
        self.eps = eps
        self.backend = backend

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return supcon_loss(features, labels, self.temperature, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, eps={self.eps}, backend={self.backend!r}"


class IntraClassCosineLoss(nn.Module):
    """``miue.ops.intra_class_cosine_loss`` as a module:
    ``IntraClassCosineLoss(num_classes)(features, labels)``; ``backend`` and ``validate`` as the op's."""

    def __init__(self, num_classes: int, *, backend: str | None = None, validate: bool | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.backend = backend
        self.validate = validate

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return intra_class_cosine_loss(features, labels, self.num_classes, backend=self.backend,
                                       validate=self.validate)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, backend={self.backend!r}"
