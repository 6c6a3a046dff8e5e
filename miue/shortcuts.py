"""Training-free availability poisons: perturbations drawn from a class-structured generator,
with no surrogate network (docs/crafting.md: shortcut baselines).

``ar``   autoregressive noise (Sandoval-Segura et al., NeurIPS 2022): each class owns a
         random 3×3 causal AR filter per channel; every image draws its own noise from its
         class's process, so a conv filter that "predicts" the process identifies the class.
         The paper bounds the noise in ℓ2 (ε = 1 on CIFAR-10); here every sample is scaled to
         the L∞ budget (δ = ε·x/‖x‖∞), the package's threat model.
``lsp``  linear-separable synthetic patches (Yu et al., KDD 2022): one point per image from
         scikit-learn's ``make_classification`` (one well-separated Gaussian cluster per class,
         at the vertices of a hypercube) in a space of (H/p)·(W/p)·C patch values, each value
         filling a p×p patch (4×4 patch grid by default, p = ⌈H/4⌉), scaled to ε in L∞.
``ops``  one-pixel shortcut (Wu et al., ICLR 2023), an L0 attack: per class, the pixel position
         and extreme colour (each channel 0 or 1) that deviate most, and most consistently,
         from that class's clean pixels (score: mean minus standard deviation of the per-image
         L1 deviation), each class at a position no earlier class took (on data with a constant
         background every class would otherwise pick the same corner, which tells them
         apart by nothing); that one pixel is set in every image of the class. It ignores ε.

Every function is deterministic for its seed and returns float32 tensors; the released uint8
images are made by :func:`miue.craft.quantize_images` (L∞ methods never leave ε) or, for ``ops``,
by :func:`ops_images`.
"""

from __future__ import annotations

import torch

from miue._labels import class_labels

SHORTCUTS = ("ar", "lsp", "ops")


def _check(labels, shape, eps: float | None) -> torch.Tensor:
    """The labels under the one label rule (miue/_labels.py), non-empty; the image shape and eps."""
    labels = class_labels(labels, "labels")
    if labels.numel() == 0:
        raise ValueError("labels must not be empty")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
    if eps is not None and not (0 < eps <= 1):
        raise ValueError(f"eps must lie in (0, 1], got {eps}")
    return labels


def ar_filters(num_classes: int, channels: int, seed: int = 0, max_gain: float = 1e3) -> torch.Tensor:
    """(num_classes, channels, 3, 3) causal AR filters: Gaussian draws, the current position
    (bottom right) zero, each channel's taps normalised to sum to 1; a draw whose process
    grows by more than ``max_gain`` over a 36×36 trial is replaced (the process must stay
    bounded to look like texture rather than one bright corner)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(num_classes, channels, 3, 3, dtype=torch.float64)
    for c in range(num_classes):
        for ch in range(channels):
            for _ in range(1000):
                b = torch.randn(3, 3, generator=g, dtype=torch.float64)
                b[2, 2] = 0
                s = b.sum()
                if abs(s) < 1e-3:
                    continue
                b /= s
                trial = _ar_process(b.view(1, 1, 3, 3), torch.randn(1, 1, 36, 36, generator=g, dtype=torch.float64))
                if torch.isfinite(trial).all() and trial.abs().max() < max_gain:
                    break
            else:  # pragma: no cover - practically unreachable
                raise RuntimeError("ar_filters: no stable AR filter found")
            out[c, ch] = b
    return out


def _ar_process(b: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """Run the causal process on n independent fields: x[i, j] = Σ b ⊙ x[i-2..i, j-2..j]
    (the tap on x[i, j] itself is 0) for i, j ≥ 2; the first two rows and columns keep their
    Gaussian start values. b: (n, C, 3, 3), init: (n, C, S, S) float64."""
    x = init.clone()
    S = x.shape[-1]
    for i in range(2, S):
        for j in range(2, S):
            x[:, :, i, j] = (b * x[:, :, i - 2:i + 1, j - 2:j + 1]).sum((-1, -2))
    return x


def ar_noise(labels: torch.Tensor, shape, eps: float, seed: int = 0, filters: torch.Tensor | None = None) -> torch.Tensor:
    """δ for every image (N, C, H, W), |δ| ≤ eps, from its class's AR process."""
    labels = _check(labels, shape, eps)
    C, H, W = shape
    K = int(labels.max()) + 1
    b = ar_filters(K, C, seed) if filters is None else filters.double()
    S = max(H, W) + 4  # 4 rows and columns of start-up transient are cropped away
    g = torch.Generator().manual_seed(seed + 1)
    out = torch.empty((labels.numel(), C, H, W), dtype=torch.float32)
    for i0 in range(0, labels.numel(), 4096):
        lab = labels[i0:i0 + 4096]
        x = _ar_process(b[lab], torch.randn(lab.numel(), C, S, S, generator=g, dtype=torch.float64))
        x = x[:, :, S - H:, S - W:]
        peak = x.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
        out[i0:i0 + 4096] = (eps * x / peak).float()
    return out


def lsp_noise(labels: torch.Tensor, shape, eps: float, seed: int = 0, grid: int = 4) -> torch.Tensor:
    """δ for every image (N, C, H, W), |δ| ≤ eps: patch-constant, linearly separable by class."""
    from sklearn.datasets import make_classification

    labels = _check(labels, shape, eps)
    C, H, W = shape
    K = int(labels.max()) + 1
    p_h, p_w = -(-H // grid), -(-W // grid)
    dims = C * grid * grid
    counts = torch.bincount(labels, minlength=K).numpy()
    # enough points for the largest class in every class, then assign them in order
    n_per = int(max(counts.max(), 2))
    if K > 2 ** dims:
        raise ValueError(f"lsp: {K} classes need more than {dims} patch values (use a finer grid)")
    pts, y = make_classification(n_samples=n_per * K, n_features=dims, n_informative=dims, n_redundant=0, n_repeated=0,
                                 n_classes=K, n_clusters_per_class=1, class_sep=4.0, flip_y=0.0, weights=None,
                                 shuffle=False, random_state=seed)
    out = torch.empty((labels.numel(), C, H, W), dtype=torch.float32)
    for k in range(K):
        idx = torch.nonzero(labels == k).flatten()
        if idx.numel() == 0:
            continue
        v = torch.from_numpy(pts[y == k][: idx.numel()]).float().view(-1, C, grid, grid)
        v = v.repeat_interleave(p_h, 2).repeat_interleave(p_w, 3)[:, :, :H, :W]
        out[idx] = eps * v / v.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
    return out


def ops_pixels(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: the (row, col) position and the extreme colour (C values, each 0 or 1) of its
    one-pixel shortcut. images: N×C×H×W uint8 or float in [0, 1]."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.dim() != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(x.shape)}")
    labels = class_labels(labels, "labels", n=x.shape[0], of="images")
    N, C, H, W = x.shape
    K = int(labels.max()) + 1
    if C > 10:
        raise ValueError(f"ops: {C} channels give 2^{C} candidate colours; at most 10 channels are supported")
    colours = torch.tensor([[(k >> c) & 1 for c in range(C)] for k in range(2 ** C)], dtype=torch.float32)  # (2^C, C)
    pos = torch.zeros(K, 2, dtype=torch.long)
    col = torch.zeros(K, C)
    taken = torch.zeros(H * W, dtype=torch.bool)  # one position per class, or the pixel would not tell them apart
    if K > H * W:
        raise ValueError(f"ops: {K} classes need {K} distinct pixel positions, the images have {H * W}")
    for k in range(K):
        xs = x[labels == k]
        if xs.shape[0] == 0:
            continue
        best, best_score = None, -float("inf")
        for ci, colour in enumerate(colours):
            dev = (xs - colour.view(1, C, 1, 1)).abs().sum(1)  # (n, H, W): L1 deviation per image
            score = dev.mean(0) - (dev.std(0, unbiased=False) if xs.shape[0] > 1 else 0)
            s, flat = score.flatten().masked_fill(taken, -float("inf")).max(0)
            if s.item() > best_score:
                best_score, best = s.item(), (ci, int(flat))
        ci, flat = best
        taken[flat] = True
        pos[k] = torch.tensor([flat // W, flat % W])
        col[k] = colours[ci]
    return pos, col


def ops_images(images: torch.Tensor, labels: torch.Tensor, pos=None, col=None) -> torch.Tensor:
    """The released uint8 images with each class's one pixel set (N×C×H×W uint8 in, out)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"ops_images expects uint8 images, got {images.dtype}")
    labels = class_labels(labels, "labels", n=images.shape[0], of="images")
    if pos is None or col is None:
        pos, col = ops_pixels(images, labels)
    out = images.clone()
    rows, cols = pos[labels, 0], pos[labels, 1]
    ar = torch.arange(labels.numel())
    out[ar, :, rows, cols] = (col[labels] * 255).round().to(torch.uint8)
    return out
