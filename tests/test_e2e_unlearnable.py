"""End to end on real data: each objective's released images lower a victim's clean test
accuracy on a small Fashion-MNIST subset (issue 16), and random noise does not.

Setup (small enough for CI, about 8 minutes on one CPU thread): a class-balanced subset of
2,000 training and 1,000 test images, ε = 8/255; surrogate objectives crafted with the
``cnn`` preset (the demo preset before issue 25) as shipped (235 surrogate SGD steps per round) shortened to 4 rounds × 5 PGD
steps (20 steps per image); victim ``cnn-small`` trained 12 epochs with batch 32 and seed 0,
either with Adam and no augmentation (``adam``) or with SGD, crop and flip (``quick``).
REM's surrogate trains one epoch per round instead (``train_steps=0``): its adversarial
training makes 235 steps per round cost about 10 minutes here, and leaves δ less to do
(Adam victim 74.0% against 68.9% with one epoch per round).

Measured here (torch 2.14.1, 2 cores, 2026-11-30), victim test accuracy %:
  Adam victim: clean 79.5 | EM 33.5 | MI-UE 46.3 | TAP 61.0 | OPS 62.1 | REM 68.9 | random 78.3
  SGD victim:  clean 76.1 | EM 34.8 | MI-UE 37.5 | TAP 42.7 | LSP 56.7 (OPS 76.6: flips move its pixel)
With one surrogate epoch per round (the preset before 2026-11-30) the Adam victim saw EM 46.4,
MI-UE 53.6 and TAP 59.6.
Published recipes (``recipe="published"``, the default since issue 38; the rows above are the
matched recipes, each objective's loss on the ``cnn`` preset's schedule), measured here on
2026-12-05 with 2 cores shared by other jobs:
  EM (the authors' recipe on the cnn-small surrogate: 6 passes until 99%, 81 s): Adam 22.6, SGD 73.3
  PIL (its linear surrogate, 2 s): Adam 61.6, SGD 26.1
EM's published noise is crafted without augmentation and the SGD victim's crop + flip undo most of
it here; PIL's the other way round.
Each test asks for about half the measured drop, so a broken objective fails and numerical
noise across machines does not. AR has no test here: at this scale neither victim notices it
(Adam 77.8, SGD 75.4); the effectiveness study measures it on 20,000 images.
"""

from __future__ import annotations

import pytest
import torch

from miue.craft import craft_fast
from miue.demo import method_spec

pytestmark = pytest.mark.slow  # the preset as shipped (235 surrogate steps per round): no epoch_rounds fixture

# method (an objective, with "-matched" for its loss on the preset's schedule) -> (victim preset,
# minimum drop in accuracy points below the clean victim; measured drop)
DROPS = {
    "em-matched": ("adam", 22.0),  # 46.0
    "miue": ("adam", 16.0),  # 33.2
    "tap-matched": ("adam", 9.0),  # 18.5
    "rem-matched": ("adam", 5.0),  # 10.6
    "ops": ("adam", 8.0),  # 17.4
    "lsp": ("quick", 10.0),  # 19.4
    "em": ("adam", 28.0),  # 56.9 (published)
    "pil": ("quick", 25.0),  # 50.0 (published)
}
EPS = 8 / 255


@pytest.fixture(scope="module")
def fmnist(one_thread):
    from miue.data import DatasetError, class_balanced_subset, load_dataset

    try:
        train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    except DatasetError as exc:
        pytest.skip(f"Fashion-MNIST not available (apt-get install dataset-fashion-mnist): {exc}")
    return class_balanced_subset(train, 200, seed=0), class_balanced_subset(test, 100, seed=0), {}


def _victim_acc(fmnist, images, preset: str) -> float:
    from miue.evaluation.victims import evaluate

    train, test, _ = fmnist
    v = evaluate(images, train.labels, test.images, test.labels, preset=preset, arch="cnn-small", epochs=12,
                 batch_size=32, seed=0, progress=False, device="cpu")
    return 100 * v.test_acc


def _clean_acc(fmnist, preset: str) -> float:
    cache = fmnist[2]
    if preset not in cache:
        cache[preset] = _victim_acc(fmnist, fmnist[0].images, preset)
    return cache[preset]


def _released(fmnist, method: str):
    train = fmnist[0]
    objective, recipe = method_spec(method)
    kw = {} if objective in ("random", "ar", "lsp", "ops", "em", "pil") else dict(rounds=4, pgd_steps=5)
    if objective == "rem":  # one surrogate epoch per round (see the module docstring)
        kw["train_steps"] = 0
    res = craft_fast(train.images, train.labels, objective=objective, recipe=recipe, preset="cnn", eps=EPS, seed=0,
                     device="cpu", progress=False, **kw)
    images = res.images.numpy()
    if objective != "ops":  # the L∞ objectives stay in budget after the uint8 release
        assert abs(images.astype(int) - train.images.astype(int)).max() <= round(EPS * 255)
    return images


@pytest.mark.parametrize("objective", list(DROPS))
def test_victim_accuracy_drops(fmnist, objective):
    preset, min_drop = DROPS[objective]
    clean = _clean_acc(fmnist, preset)
    poisoned = _victim_acc(fmnist, _released(fmnist, objective), preset)
    assert clean >= 70, f"the clean {preset} victim is too weak to judge ({clean:.1f}%)"
    assert clean - poisoned >= min_drop, (
        f"{objective}: victim ({preset}) {clean:.1f}% on clean data, {poisoned:.1f}% on released data: "
        f"drop {clean - poisoned:.1f} < {min_drop} points")


def test_random_noise_does_not_protect(fmnist):
    """The negative control: uniform noise in the same budget leaves the victim within 4 points
    (measured 1.2), so the drops above come from the objectives, not from the pipeline."""
    clean = _clean_acc(fmnist, "adam")
    poisoned = _victim_acc(fmnist, _released(fmnist, "random"), "adam")
    assert abs(clean - poisoned) <= 4.0, (clean, poisoned)
    assert torch.get_num_threads() == 1
