"""The two types every loader returns or raises: :class:`ImageData` and :class:`DatasetError`
(in their own module so that :mod:`miue.data` and :mod:`miue.folder` can both use them without
importing each other; import them from :mod:`miue.data`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    source: dict | None = None  # image folders: root, files, sizes, skipped, preprocess (miue.folder)

    def __post_init__(self):
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"ImageData {self.name!r}: images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"ImageData {self.name!r}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if len(labels) != len(images):
            raise ValueError(f"ImageData {self.name!r}: {len(labels)} labels for {len(images)} images")
        self.classes = [str(c) for c in self.classes]
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"ImageData {self.name!r}: labels must lie in [0, {len(self.classes)}), "
                             f"got [{labels.min()}, {labels.max()}]")
        self.images = np.ascontiguousarray(images)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)

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
