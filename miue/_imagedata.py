"""The image-array layout rule (:func:`image_layout`, :func:`as_nchw_uint8_or_float`) and the two
types every loader returns or raises: :class:`ImageData` and :class:`DatasetError`
(in their own module so that :mod:`miue.data` and :mod:`miue.data.folder` can both use them without
importing each other; import them from :mod:`miue.data`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from miue._labels import label_array

CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what a channel axis can hold


def image_layout(shape: tuple, name: str = "images") -> str:
    """The one rule for an image array's layout: "nhw" (N×H×W, one channel), "nhwc" (channels
    last: the last dimension is 1, 3 or 4 and dimension 1 is not) or "nchw" (dimension 1 is 1, 3
    or 4). Anything else, e.g. N×32×32×5, is ambiguous and refused (ValueError naming ``name``)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return "nhw"
    if len(shape) != 4:
        raise ValueError(f"{name} must be N×H×W, N×H×W×C or N×C×H×W, got shape {shape}")
    if shape[-1] in CHANNELS and shape[1] not in CHANNELS:
        return "nhwc"
    if shape[1] in CHANNELS:
        return "nchw"
    raise ValueError(f"{name}: cannot tell the channel axis of images of shape {shape} "
                     f"(expected N×H×W×C or N×C×H×W with C in {', '.join(map(str, CHANNELS))})")


def as_nchw_uint8_or_float(images, name: str = "images") -> torch.Tensor:
    """Images as a CPU tensor N×C×H×W: uint8 kept as is, floats as float32 in [0, 1].

    Accepts numpy arrays or tensors shaped N×H×W, N×H×W×C (channels last when the last dim is
    1, 3 or 4 and dim 1 is not) or N×C×H×W."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array, a torch.Tensor or a torch Dataset, got {type(images).__name__}")
    x = images.detach().cpu()
    layout = image_layout(x.shape, name)  # the one layout rule (miue/_imagedata.py)
    if layout == "nhw":
        x = x.unsqueeze(1)
    elif layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if 0 in x.shape[1:]:
        raise ValueError(f"{name} have a zero-size channel, height or width: shape {tuple(x.shape)} (N×C×H×W)")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating point in [0, 1], got dtype {x.dtype}")
    x = x.float().contiguous()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"float {name} must lie in [0, 1], found values in [{lo:.4g}, {hi:.4g}] (pass uint8 for 0..255)")
    return x


class DatasetError(ValueError):
    """A dataset path/file that is missing, unreadable, truncated or malformed; the message names
    the path and what was expected."""


@dataclass
class ImageData:
    """An image classification dataset held in memory.

    ``images`` is uint8 ``(N, C, H, W)`` and C-contiguous, ``labels`` int64 ``(N,)`` with values in
    ``[0, len(classes))``. The constructor checks (and where harmless, coerces) these invariants.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    source: dict | None = None  # image folders: root, files, sizes, skipped, preprocess (miue.data.folder)

    def __post_init__(self):
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"ImageData {self.name!r}: images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        self.classes = [str(c) for c in self.classes]
        try:
            labels = label_array(labels, "labels", n=len(images), of="images", num_classes=len(self.classes),
                                 what="classes")
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"ImageData {self.name!r}: {exc}") from None
        self.images = np.ascontiguousarray(images)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Height H of the images (equal to the width for every built-in dataset)."""
        return self.images.shape[2]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])
