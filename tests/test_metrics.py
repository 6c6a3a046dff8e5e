"""Tests of miue.evaluation.metrics: the Gaussian mutual-information estimator against Gaussians with a
known MI, the intra-class statistics against direct computations, and extract_features."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from miue.evaluation.metrics import (
    extract_features,
    gaussian_mutual_information,
    intra_class_covariance_trace,
    mean_intra_class_cosine,
)
from miue.models import build_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def correlated(n, d, rho, seed):
    """X ~ N(0, I_d), Y = ρX + √(1-ρ²)Z: I(X; Y) = -(d/2) log(1 - ρ²) nats."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, d))
    return x, y, -(d / 2) * math.log(1 - rho**2)


# --------------------------------------------------------------------------- gaussian_mutual_information


@pytest.mark.parametrize("d,rho", list(itertools.product([1, 4, 8], [0.3, 0.8, 0.95])))
@pytest.mark.parametrize("shrinkage", [True, False])
def test_mi_known_gaussians(d, rho, shrinkage):
    x, y, truth = correlated(20000, d, rho, seed=d * 1000 + int(rho * 100))
    est = gaussian_mutual_information(x, y, shrinkage=shrinkage)
    assert isinstance(est, float)
    assert abs(est - truth) <= 0.05 * truth, (est, truth)


def test_mi_independent_near_zero():
    rng = np.random.default_rng(1)
    for d in (1, 8):
        x, y = rng.standard_normal((20000, d)), rng.standard_normal((20000, d))
        for shrink in (True, False):
            est = gaussian_mutual_information(x, y, shrinkage=shrink)
            assert 0 <= est < 0.01, (d, shrink, est)


def test_mi_monotone_in_correlation():
    vals = [gaussian_mutual_information(*correlated(5000, 4, r, seed=7)[:2]) for r in (0.1, 0.5, 0.9, 0.99)]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals


def test_mi_symmetric_and_accepts_tensors():
    x, y, _ = correlated(4000, 3, 0.7, seed=2)
    a = gaussian_mutual_information(x, y)
    b = gaussian_mutual_information(y, x)
    assert abs(a - b) < 1e-9 * max(1, a)
    c = gaussian_mutual_information(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert abs(a - c) < 1e-4 * a


def test_mi_different_dimensions():
    # Y depends on the first 2 coordinates of X only: I = -(2/2) log(1 - ρ²)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20000, 5))
    rho = 0.8
    y = rho * x[:, :2] + math.sqrt(1 - rho**2) * rng.standard_normal((20000, 2))
    truth = -math.log(1 - rho**2)
    assert abs(gaussian_mutual_information(x, y) - truth) < 0.05 * truth


def test_mi_invariant_to_invertible_linear_maps():
    x, y, truth = correlated(20000, 6, 0.8, seed=4)
    rng = np.random.default_rng(5)
    A = rng.standard_normal((6, 6)) + 3 * np.eye(6)  # well conditioned, invertible
    B = rng.standard_normal((6, 6)) * np.array([100.0, 1, 0.01, 5, 1, 1])  # badly scaled columns
    assert abs(np.linalg.det(A)) > 1e-3 and abs(np.linalg.det(B)) > 1e-6
    base = gaussian_mutual_information(x, y)
    for xt, yt in ((x @ A, y), (x, y @ B), (x @ A + 10.0, y @ B - 3.0)):
        est = gaussian_mutual_information(xt, yt)
        assert abs(est - base) < 0.03 * base, (est, base)
        assert abs(est - truth) < 0.05 * truth
        # without shrinkage the estimate is exactly invariant (up to float rounding)
        exact = gaussian_mutual_information(xt, yt, shrinkage=False)
        assert abs(exact - gaussian_mutual_information(x, y, shrinkage=False)) < 1e-6 * truth


def test_mi_max_dim_truncation_lowers_high_dimensional_mi():
    x, y, truth = correlated(4000, 40, 0.8, seed=6)
    full = gaussian_mutual_information(x, y, max_dim=40, shrinkage=False)
    trunc = gaussian_mutual_information(x, y, max_dim=8, shrinkage=False)
    assert abs(full - truth) < 0.05 * truth
    assert trunc < 0.5 * full, (trunc, full)
    # the default max_dim (32) truncates 40-D features too
    assert gaussian_mutual_information(x, y, shrinkage=False) < full


def test_mi_constant_column_does_not_break():
    x, y, _ = correlated(3000, 3, 0.8, seed=8)
    x = np.concatenate([x, np.ones((3000, 1))], 1)  # a dead feature, as ReLU networks produce
    est = gaussian_mutual_information(x, y)
    assert math.isfinite(est) and est >= 0


@pytest.mark.parametrize(
    "x,y,match",
    [
        (np.zeros((10, 2)), np.zeros((9, 2)), "same number of rows"),
        (np.zeros(10), np.zeros((10, 2)), "2-D"),
        (np.ones((2, 2)), np.ones((2, 2)), "at least 3"),
        (np.array([[0.0], [1.0], [np.nan], [2.0]]), np.arange(4.0).reshape(4, 1), "NaN"),
        (np.arange(4.0).reshape(4, 1), np.array([[0.0], [1.0], [np.inf], [2.0]]), "NaN or Inf"),
    ],
)
def test_mi_errors(x, y, match):
    with pytest.raises(ValueError, match=match):
        gaussian_mutual_information(x, y)


# --------------------------------------------------------------------------- intra-class statistics


def _clustered(n=60, d=5, classes=4, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, d)) * 3
    f = centres[y] + spread * rng.standard_normal((n, d))
    return f, y


def _direct_trace(f, y):
    total = 0.0
    for c in np.unique(y):
        fc = f[y == c]
        if len(fc) < 2:
            continue
        centred = fc - fc.mean(0)
        total += len(fc) / len(f) * (centred**2).sum() / (len(fc) - 1)
    return total


@pytest.mark.parametrize("d", [1, 5])
def test_intra_class_covariance_trace(d):
    f, y = _clustered(d=d, seed=d)
    got = intra_class_covariance_trace(f, y)
    assert got == pytest.approx(_direct_trace(f, y), rel=1e-10)
    # torch inputs give the same number
    assert intra_class_covariance_trace(torch.from_numpy(f), torch.from_numpy(y)) == pytest.approx(got, rel=1e-10)
    # tighter clusters, smaller trace; one class with one sample contributes nothing
    f2, _ = _clustered(d=d, seed=d, spread=0.1)
    assert intra_class_covariance_trace(f2, y) < 0.1 * got
    y1 = np.concatenate([y, [99]])
    f1 = np.concatenate([f, np.full((1, d), 1e6)])
    assert intra_class_covariance_trace(f1, y1) == pytest.approx(_direct_trace(f1, y1), rel=1e-10)


def _brute_cosine(f, y):
    f = np.asarray(f, dtype=np.float64)
    z = f / np.linalg.norm(f, axis=1, keepdims=True)
    total, pairs = 0.0, 0
    for i in range(len(f)):
        for j in range(len(f)):
            if i != j and y[i] == y[j]:
                total += z[i] @ z[j]
                pairs += 1
    return total / pairs


@pytest.mark.parametrize("seed,classes,spread", [(0, 4, 1.0), (1, 3, 0.2), (2, 7, 3.0)])
def test_mean_intra_class_cosine(seed, classes, spread):
    f, y = _clustered(n=40, d=6, classes=classes, seed=seed, spread=spread)
    got = mean_intra_class_cosine(torch.from_numpy(f).float(), torch.from_numpy(y))
    assert got == pytest.approx(_brute_cosine(f, y), abs=1e-5)
    # numpy inputs too
    assert mean_intra_class_cosine(f.astype(np.float32), y) == pytest.approx(got, abs=1e-6)


def test_mean_intra_class_cosine_extremes():
    y = np.array([0, 0, 0, 1, 1])
    same = np.tile(np.array([[1.0, 2.0, 3.0]]), (5, 1)) * np.array([[1], [2], [3], [1], [5]])
    assert mean_intra_class_cosine(torch.tensor(same, dtype=torch.float32), torch.tensor(y)) == pytest.approx(1.0, abs=1e-6)
    opposite = np.array([[1.0, 0], [-1.0, 0], [0, 1.0], [0, -1.0]])
    assert mean_intra_class_cosine(torch.tensor(opposite, dtype=torch.float32), torch.tensor([0, 0, 1, 1])) == pytest.approx(-1.0, abs=1e-6)


# --------------------------------------------------------------------------- extract_features


@pytest.mark.parametrize("channels,size,arch", [(1, 12, "cnn-small"), (3, 8, "cnn")])
def test_extract_features(channels, size, arch):
    torch.manual_seed(0)
    model = build_model(arch, 5, channels=channels, image_size=size)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, channels, size, size), dtype=np.uint8)
    model.train()
    feats = extract_features(model, imgs, batch_size=3)
    assert feats.shape == (7, model.feature_dim) and feats.dtype == torch.float32
    assert not model.training, "features are extracted in eval mode"
    # uint8 input is scaled to [0, 1]: same as the model on float/255, in eval mode
    with torch.no_grad():
        ref, _ = model(torch.from_numpy(imgs).float() / 255, return_features=True)
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    # float input in [0, 1] and a torch uint8 tensor give the same features
    torch.testing.assert_close(extract_features(model, torch.from_numpy(imgs).float() / 255), feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(extract_features(model, torch.from_numpy(imgs)), feats, atol=1e-5, rtol=1e-5)
