"""One label rule (miue/_labels.py) at every entry point that takes class labels.

Before the rule was written once, the entry points disagreed: ``craft_fast`` and
``evaluate`` flattened an (N, 1) column (and an (N, 2) array, reported later as a length
mismatch) while the ops refused it; ``ImageData`` called float labels a ValueError and the ops
a TypeError; the loaders worded each error their own way. Here the same bad labels go to each
entry point and must meet the same exception type and the same words.
"""

import numpy as np
import pytest
import torch

import miue
import miue.data
from miue._imagedata import DatasetError, ImageData
from miue._labels import class_labels, label_array
from miue.craft.inputs import prepare_inputs
from miue.shortcuts import lsp_noise

N = 6
_IMG = torch.zeros(N, 1, 4, 4, dtype=torch.uint8)
_FEAT = torch.randn(N, 3, dtype=torch.float64)


def _ops(y):
    return miue.supcon_loss(_FEAT, y)


def _ops_classes(y):
    return miue.grouped_normalize(_FEAT, y, 3)


def _craft(y):
    return prepare_inputs(_IMG, y, 3)


def _evaluate(y):
    return miue.evaluate(_IMG, y, _IMG, torch.zeros(N, dtype=torch.long), epochs=1, num_classes=3)


def _imagedata(y):
    return ImageData(_IMG.numpy(), np.asarray(y), ["a", "b", "c"], "t")


def _shortcut(y):
    return lsp_noise(y, (1, 4, 4), 0.1)


def _npz(tmp_path):
    def load(y):
        path = tmp_path / "d.npz"
        np.savez(path, images=np.zeros((N, 4, 4), np.uint8), labels=np.asarray(y))
        return miue.data.load_dataset(str(path))
    return load


Y = torch.tensor([0, 1, 2, 0, 1, 2])

# (bad labels, the exception type, the words): one row per way labels can be wrong
BAD = {
    "float": (Y.float(), TypeError, "must be integers"),
    "bool": (Y.bool(), TypeError, "must be integers"),
    "column": (Y[:, None], ValueError, "must be a 1-D sequence"),
    "two columns": (torch.stack([Y, Y], 1), ValueError, "must be a 1-D sequence"),
    "short": (Y[:4], ValueError, "has 4 entries but"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("entry", ["ops", "craft", "evaluate", "imagedata", "npz", "shortcut"])
def test_every_entry_point_applies_the_one_rule(entry, case, tmp_path):
    y, exc, words = BAD[case]
    if entry == "shortcut" and case == "short":
        pytest.skip("the shortcuts take no images to count against")
    if entry == "npz" and case == "column":
        pytest.skip("a stored (N, 1) column is the file format's layout: the loader flattens it")
    call = {"ops": _ops, "craft": _craft, "evaluate": _evaluate, "imagedata": _imagedata, "npz": _npz(tmp_path),
            "shortcut": _shortcut}[entry]
    arg = y.numpy() if entry in ("imagedata", "npz") else y
    if entry == "npz":
        exc = DatasetError  # a ValueError that names the file
    with pytest.raises(exc, match=words):
        call(arg)


@pytest.mark.parametrize("entry", ["ops", "craft", "imagedata", "npz"])
def test_range_errors_share_one_wording(entry, tmp_path):
    y = torch.tensor([0, 1, 3, 0, 1, 2])
    call = {"ops": _ops_classes, "craft": lambda y: label_array(y, n=N, num_classes=3),
            "imagedata": _imagedata, "npz": lambda y: ImageData(_IMG.numpy(), y, ["a", "b", "c"], "t")}[entry]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, (num_classes|classes)=3\), got values in \[0, 3\]"):
        call(y.numpy() if entry in ("imagedata", "npz") else y)


def test_negative_labels_refused_everywhere():
    y = Y - 1
    for call in (_ops_classes, _craft, _evaluate):
        with pytest.raises(ValueError, match=r"must (lie in|be >= 0)"):
            call(y)


@pytest.mark.parametrize("labels", [[0, 2, 1], np.array([0, 2, 1], np.int16), torch.tensor([0, 2, 1], dtype=torch.uint8),
                                    torch.tensor([0, 1, 2, 2])[[0, 2, 1]], torch.tensor([[0, 2, 1]])[0]])
def test_good_labels_in_any_form(labels):
    out = class_labels(labels, n=3, num_classes=3)
    assert out.dtype == torch.int64 and out.tolist() == [0, 2, 1] and out.is_contiguous()


@pytest.mark.parametrize("labels", [["a", "b"], [0.5, 1.0], [[0, 1], [2]], None, np.array([object(), object()])])
def test_non_labels_named(labels):
    with pytest.raises((TypeError, ValueError), match="train_labels"):
        class_labels(labels, "train_labels")
