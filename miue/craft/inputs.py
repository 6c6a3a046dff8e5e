"""Input preparation: images in any common layout and dtype, labels, class count, validated."""

from __future__ import annotations

import logging

import numpy as np
import torch

from miue._imagedata import as_nchw_uint8_or_float  # noqa: F401  (re-exported by miue.craft)
from miue._labels import class_labels

log = logging.getLogger("miue.craft")


def _from_dataset(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError("a Dataset passed as images must yield (image, label) pairs")
        img, lab = item[0], item[1]
        if not isinstance(img, (torch.Tensor, np.ndarray)):
            img = np.asarray(img)  # PIL image: H×W or H×W×C uint8
            if img.ndim == 2:
                img = img[None]
            else:
                img = img.transpose(2, 0, 1)
        xs.append(torch.as_tensor(np.asarray(img) if isinstance(img, np.ndarray) else img))
        ys.append(int(lab))
    if not xs:
        raise ValueError("images: the Dataset is empty")
    x = torch.stack(xs)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x, torch.tensor(ys, dtype=torch.int64)


def prepare_inputs(images, labels, num_classes: int | None):
    """(clean images N×C×H×W uint8 or float32, labels int64, num_classes), validated."""
    if isinstance(images, torch.utils.data.Dataset):
        x, ds_labels = _from_dataset(images)
        labels = ds_labels if labels is None else labels
        x = as_nchw_uint8_or_float(x)
    else:
        x = as_nchw_uint8_or_float(images)
    if labels is None:
        raise ValueError("labels are required (or pass a Dataset yielding (image, label))")
    y = class_labels(labels, "labels", n=x.shape[0], of="images")
    inferred = int(y.max().item()) + 1
    if num_classes is None or num_classes == 0:
        num_classes = inferred
    elif num_classes < inferred:
        raise ValueError(f"num_classes={num_classes} but labels go up to {inferred - 1}")
    counts = torch.bincount(y, minlength=num_classes)
    if ((counts == 1)).any():
        log.warning("classes %s have a single sample: the supcon loss has no positive pair for them but the sample itself",
                    (counts == 1).nonzero().flatten().tolist()[:10])
    return x, y, int(num_classes)
