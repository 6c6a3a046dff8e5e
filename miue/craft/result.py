"""The result type, :class:`CraftResult`, and the release of δ as uint8 images."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from miue._io import read_result_file, write_result_file
from miue._quantize import quantize


@dataclass
class CraftResult:
    """The outcome of :func:`craft_fast`.

    delta:   float32 N×C×H×W, |δ| ≤ eps (class-wise runs: each sample's class δ)
    images:  the released uint8 images N×C×H×W: rounding (default) or truncation of (x+δ)·255,
             never further than eps from a uint8 clean image
    labels:  int64 N
    history: per round: surrogate train loss/accuracy, objective loss, α, lr, seconds
    config:  the CraftConfig as a dict
    """

    delta: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def save(self, path: str) -> str:
        """Write a checksummed result file (``.npz``, or ``.pt``; a path without a suffix gets
        ``.npz``, as with ``numpy.savez``). Returns the path written."""
        return write_result_file(path, self.delta, self.images, self.labels, self.config, self.history)

    @classmethod
    def load(cls, path: str) -> "CraftResult":
        """Read a file written by :meth:`save` (no unpickling; the checksum is verified)."""
        delta, images, labels, meta = read_result_file(path)
        return cls(delta=delta, images=images, labels=labels, history=meta.get("history", []),
                   config=meta.get("config", {}))

    def export_png(self, directory: str, class_names=None) -> str:
        """Write the released images as PNGs in ImageFolder layout: directory/<class>/<index>.png."""
        from PIL import Image

        os.makedirs(directory, exist_ok=True)
        imgs = self.images.numpy()
        for i, (img, lab) in enumerate(zip(imgs, self.labels.tolist())):
            name = class_names[lab] if class_names is not None else f"{lab:03d}"
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
            sub = os.path.join(directory, safe)
            os.makedirs(sub, exist_ok=True)
            arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            Image.fromarray(np.ascontiguousarray(arr)).save(os.path.join(sub, f"{i:06d}.png"))
        return directory


def quantize_images(clean: torch.Tensor, delta: torch.Tensor, eps: float, rounding: str = "round") -> torch.Tensor:
    """The protected uint8 images: clean + δ quantised to uint8 (miue/_quantize.py, the one rule): for uint8 clean images the
    result stays within eps of them, the step in units of 1/255 clamped to ±floor(eps·255)."""
    return quantize(clean, delta, eps, rounding)
