"""Class labels: the one rule every entry point applies (the ops, ``craft_fast``, ``evaluate``,
the dataset loaders, ``ImageData`` and the training-free shortcuts).

Labels are a 1-D sequence of integers (a tensor, an array or a list), one per image (or per
feature row), each in ``[0, num_classes)`` where the caller knows ``num_classes``. Booleans,
floats, strings and objects are refused, and so is any other shape: a ``(N, 1)`` column is an
error here, not a silent flatten. File formats that store labels as a column vector (MATLAB
files) reshape it while parsing, before this rule runs.

:func:`check_label_meta` checks what the metadata alone says (dtype, shape, length), so the ops
can apply it to a CUDA tensor without a synchronisation; :func:`label_range_message` is the one
wording of the range error, which the ops check only when validation is on.
:func:`class_labels` applies the whole rule and returns a CPU ``int64`` tensor.
"""

from __future__ import annotations

import numpy as np
import torch

_TORCH_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def is_integer_dtype(dtype) -> bool:
    """True for torch or numpy integer dtypes; False for bool, floats, complex, strings, objects."""
    if isinstance(dtype, torch.dtype):
        return dtype in _TORCH_INTS
    return np.dtype(dtype).kind in "iu"


def check_label_meta(name: str, dtype, shape, n: int | None = None, of: str = "images") -> None:
    """Raise TypeError/ValueError naming ``name`` unless the labels are a 1-D integer sequence
    of length ``n`` (when given; ``of`` names what they must match)."""
    if not is_integer_dtype(dtype):
        raise TypeError(f"{name} must be integers (class indices), got dtype {dtype}")
    shape = tuple(shape)
    if len(shape) != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class indices, got shape {shape}")
    if n is not None and shape[0] != n:
        raise ValueError(f"{name} has {shape[0]} entries but {of} has {n}")


def label_range_message(name: str, lo: int, hi: int, num_classes: int, what: str = "num_classes") -> str:
    return f"{name} must lie in [0, {what}={num_classes}), got values in [{lo}, {hi}]"


def _as_array(labels, name: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        if not is_integer_dtype(labels.dtype):  # before .numpy(): bf16 and complex have no numpy form
            raise TypeError(f"{name} must be integers (class indices), got dtype {labels.dtype}")
        return labels.detach().cpu().numpy()
    if labels is None:
        raise TypeError(f"{name} must be a 1-D sequence of class indices, got None")
    try:
        return np.asarray(labels)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise ValueError(f"{name} must be a 1-D sequence of class indices: {exc}") from None


def label_array(labels, name: str = "labels", *, n: int | None = None, of: str = "images",
                num_classes: int | None = None, what: str = "num_classes") -> np.ndarray:
    """The rule applied in full: labels as a contiguous ``int64`` numpy array, or a
    TypeError/ValueError that names ``name``."""
    arr = _as_array(labels, name)
    check_label_meta(name, arr.dtype, arr.shape, n, of)
    if len(arr):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            if num_classes is None:
                raise ValueError(f"{name} must be >= 0, got values in [{lo}, {hi}]")
            raise ValueError(label_range_message(name, lo, hi, num_classes, what))
    return np.ascontiguousarray(arr, dtype=np.int64)


def class_labels(labels, name: str = "labels", *, n: int | None = None, of: str = "images",
                 num_classes: int | None = None) -> torch.Tensor:
    """:func:`label_array` as a CPU ``int64`` tensor (what the crafting engine and the victims use)."""
    return torch.from_numpy(label_array(labels, name, n=n, of=of, num_classes=num_classes))
