"""Argument checks shared by the public ops.

Shape, dtype and device checks are free (metadata only) and always run. The label-range
check of ops that take ``num_classes`` reads the labels' min/max, a host synchronisation on
CUDA; it runs unless switched off (``validate=False`` on the op, ``miue.set_validation(False)``
or ``MIUE_VALIDATE=0``) and is skipped while ``torch.compile`` traces. With it off, kernels
still never read or write out of bounds: rows whose label lies outside [0, num_classes) are
ignored by the per-class sums.
"""

from __future__ import annotations

import math
import os

import torch

from miue._labels import check_label_meta, label_range_message

_state = {"validate": os.environ.get("MIUE_VALIDATE", "1").lower() not in ("0", "false", "no", "off")}


def set_validation(enabled: bool) -> bool:
    """Switch the label-range check (the only check that synchronises) on or off; returns the old value."""
    old = _state["validate"]
    _state["validate"] = bool(enabled)
    return old


def validation_enabled(validate: bool | None = None) -> bool:
    if validate is not None:
        return bool(validate)
    return _state["validate"]


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - old torch
        return False


def check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_features(features, *, min_rows: int = 0) -> torch.Tensor:
    check_tensor(features, "features")
    if features.dim() != 2:
        raise ValueError(f"features must be a 2-D (B, D) tensor, got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got dtype {features.dtype}")
    if features.shape[1] < 1:
        raise ValueError(f"features must have at least one column (D >= 1), got shape {tuple(features.shape)}")
    if features.shape[0] < min_rows:
        raise ValueError(f"features must have at least {min_rows} row(s), got shape {tuple(features.shape)}")
    return features


def check_labels(labels, features: torch.Tensor) -> torch.Tensor:
    """Labels: 1-D integer tensor of length B on the features' device (the rule of
    :mod:`miue._labels`, metadata only); returned as int32/int64."""
    check_tensor(labels, "labels")
    check_label_meta("labels", labels.dtype, labels.shape, features.shape[0], of="features")
    if labels.device != features.device:
        raise ValueError(f"labels are on {labels.device} but features are on {features.device}; move them to one device")
    if labels.dtype not in (torch.int32, torch.int64):
        labels = labels.to(torch.int64)
    # the kernels index labels as a dense array: a strided view (targets[:, 0]) or an expanded
    # tensor (stride 0) is copied here, once for every backend
    return labels.contiguous()


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        if isinstance(num_classes, torch.Tensor) or not hasattr(num_classes, "__index__"):
            raise TypeError(f"num_classes must be a Python int, got {type(num_classes).__name__}")
        num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


def check_label_range(labels: torch.Tensor, num_classes: int, validate: bool | None) -> None:
    if not validation_enabled(validate) or labels.numel() == 0 or _is_compiling():
        return
    lo, hi = (int(v) for v in torch.aminmax(labels))
    if lo < 0 or hi >= num_classes:
        raise ValueError(label_range_message("labels", lo, hi, num_classes)
                         + ". Pass validate=False to ignore such rows instead.")


def check_positive(value, name: str) -> float:
    if _symbolic(value):
        return value
    value = _as_float(value, name)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_nonnegative(value, name: str) -> float:
    if _symbolic(value):
        return value
    value = _as_float(value, name)
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_finite(value, name: str) -> float:
    if _symbolic(value):
        return value
    value = _as_float(value, name)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _symbolic(value) -> bool:
    """While torch.compile traces, floats may be symbolic: their values are not checked then
    (the eager call path checks them)."""
    return _is_compiling() or isinstance(value, (torch.SymFloat, torch.SymInt))


def _as_float(value, name: str) -> float:
    if isinstance(value, bool) or isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}") from None


_NO_GRAD = object()


def check_pgd_args(delta, clean, grad=_NO_GRAD):
    """delta: floating, mutated in place; grad: floating, same shape (not passed by
    project_linf_; None is refused); clean: uint8 or floating, same shape."""
    check_tensor(delta, "delta")
    if not delta.is_floating_point():
        raise TypeError(f"delta must be a floating-point tensor, got dtype {delta.dtype}")
    if grad is not _NO_GRAD:
        check_tensor(grad, "grad")
        if not grad.is_floating_point():
            raise TypeError(f"grad must be a floating-point tensor, got dtype {grad.dtype}")
        if grad.shape != delta.shape:
            raise ValueError(f"grad has shape {tuple(grad.shape)} but delta has shape {tuple(delta.shape)}")
        if grad.device != delta.device:
            raise ValueError(f"grad is on {grad.device} but delta is on {delta.device}")
    check_tensor(clean, "clean")
    if clean.dtype != torch.uint8 and not clean.is_floating_point():
        raise TypeError(f"clean must be uint8 or floating point, got dtype {clean.dtype}")
    if clean.shape != delta.shape:
        raise ValueError(f"clean has shape {tuple(clean.shape)} but delta has shape {tuple(delta.shape)}")
    if clean.device != delta.device:
        raise ValueError(f"clean is on {clean.device} but delta is on {delta.device}")


def check_box(lo, hi) -> tuple[float, float]:
    lo = check_finite(lo, "lo")
    hi = check_finite(hi, "hi")
    if not (_symbolic(lo) or _symbolic(hi)) and lo > hi:
        raise ValueError(f"lo must be <= hi, got lo={lo}, hi={hi}")
    return lo, hi
