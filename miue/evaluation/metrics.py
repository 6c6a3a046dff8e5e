"""The paper's lens (docs/crafting.md): mutual information between clean and poisoned features, and
the intra-class statistics that MI-UE shrinks.

``gaussian_mutual_information(x, y)``
    I(X; Y) in nats for paired samples (row i of x and of y come from the same image),
    under a joint Gaussian model: I = ½ (log det Σ_xx + log det Σ_yy - log det Σ), which
    equals -½ Σ_k log(1 - ρ_k²) over the canonical correlations ρ_k. The covariance of the
    joint vector [x, y] is estimated with Ledoit-Wolf shrinkage (scikit-learn), which keeps
    it well conditioned when the dimension is not small next to the sample count; features
    of more than ``max_dim`` dimensions are first projected on their leading principal
    components (each side separately). Shrinkage biases the estimate slightly downwards.
``intra_class_covariance_trace(features, labels)``
    Σ_c (n_c/N) tr Cov(features of class c): how spread the classes are.
``mean_intra_class_cosine(features, labels)``
    the mean cosine similarity over same-class pairs i ≠ j (minus miue's
    intra_class_cosine_loss).
``extract_features(model, images)``
    the features (input of the final linear layer) of a miue model for uint8/float images.
"""

from __future__ import annotations

import numpy as np
import torch

from miue import ops


def _as_np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _pca(a: np.ndarray, k: int) -> np.ndarray:
    a = a - a.mean(0, keepdims=True)
    if a.shape[1] <= k:
        return a
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    return a @ vt[:k].T


def gaussian_mutual_information(x, y, max_dim: int = 32, shrinkage: bool = True) -> float:
    """Gaussian (canonical-correlation) estimate of I(X; Y) in nats; see the module docstring."""
    from sklearn.covariance import ledoit_wolf

    x, y = _as_np(x), _as_np(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be 2-D with the same number of rows, got {x.shape} and {y.shape}")
    if x.shape[0] < 3:
        raise ValueError("need at least 3 paired samples")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("features contain NaN or Inf")
    x, y = _pca(x, max_dim), _pca(y, max_dim)
    # standardise each coordinate so that shrinkage towards a scaled identity is sensible
    x = x / np.maximum(x.std(0, keepdims=True), 1e-12)
    y = y / np.maximum(y.std(0, keepdims=True), 1e-12)
    z = np.concatenate([x, y], axis=1)
    cov = ledoit_wolf(z)[0] if shrinkage else np.cov(z, rowvar=False)
    dx = x.shape[1]
    _, ld_x = np.linalg.slogdet(cov[:dx, :dx])
    _, ld_y = np.linalg.slogdet(cov[dx:, dx:])
    _, ld = np.linalg.slogdet(cov)
    return float(max(0.0, 0.5 * (ld_x + ld_y - ld)))


def intra_class_covariance_trace(features, labels) -> float:
    f = _as_np(features)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    total = 0.0
    for c in np.unique(y):
        fc = f[y == c]
        if len(fc) > 1:
            total += len(fc) / len(f) * float(np.trace(np.cov(fc, rowvar=False).reshape(f.shape[1], -1)))
    return total


def mean_intra_class_cosine(features, labels) -> float:
    f = torch.as_tensor(features).detach().float().cpu()
    y = torch.as_tensor(labels).cpu().long()
    C = int(y.max().item()) + 1
    return float(-ops.intra_class_cosine_loss(f, y, C))


@torch.no_grad()
def extract_features(model, images, device=None, batch_size: int = 1024) -> torch.Tensor:
    """Features of ``model`` (a miue model or FeatureModel) for uint8 or float images, in eval mode."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        xb = torch.as_tensor(images[i:i + batch_size]).to(device)
        xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
        feats, _ = model(xb, return_features=True)
        out.append(feats.float().cpu())
    return torch.cat(out)
