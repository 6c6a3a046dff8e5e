"""Defenses against unlearnable examples (docs/crafting.md), applied while a victim trains.

Three kinds:

* preprocessing, applied once to the whole (uint8) training set before training:
  ``jpeg``       JPEG compression at quality 10 (ISS: Liu et al. 2023, liuzrcc/ImageShortcutSqueezing,
                 augmentations.py: PIL JPEG at ``--jpeg 10`` on each training image), through Pillow;
  ``jpeg75``, ``jpeg90``  the re-encoding a platform applies to an upload: JPEG at quality 75 / 90;
  ``resize``     a 2× downscale (antialiased bilinear) and upscale back (bilinear), as a platform's
                 thumbnailing does;
  ``grayscale``  ITU-R 601 luma replicated over the channels (ISS's ``Grayscale(3)``; for colour data);
  ``bitdepth``   bit-depth reduction to 2 bits per channel (values k·85);
  ``blur``       Gaussian blur, kernel 3, sigma 1 (torchvision).
* batch augmentations, applied on the device to every training batch (float in [0, 1]):
  ``cutout``     one 16×16 square (clipped at the border) set to 0 per image;
  ``cutmix``     one box per batch (λ ~ β(1, 1), one λ per batch as in Yun et al. 2019 and torchvision's
                 CutMix) pasted from a permutation of the batch, labels mixed by the box's area;
  ``mixup``      convex combination with a permutation of the batch, one λ ~ β(1, 1) per batch (Zhang
                 et al. 2018, torchvision's MixUp);
  ``coin``       COIN (Wang et al., AAAI 2025, wxldragon/COIN train.py): every pixel resampled at a random
                 displacement U(−2, 2) px in x and y (shared over channels), bilinear with wrap-around,
                 a fresh draw per image and epoch, after crop + flip; no weights, no training;
  ``noise``      additive Gaussian noise, std 8/255, clamped to [0, 1];
  ``ueraser``    strong random augmentation in the spirit of UEraser: per image a random
                 channel shuffle, a random brightness/contrast change, a random posterize
                 and a random erasing; applied on the device.
* ``at``: PGD-10 adversarial training (ε 4/255 or 8/255, step 2/255), in miue.evaluation.victims.

Batch augmentations return (images, soft_targets or None): cutmix and mixup produce mixed
label distributions, trained with soft-target cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision

from miue.augment import random_crop  # noqa: F401  (re-exported: miue.evaluation.defenses.random_crop)

KINDS = ("preprocess", "batch", "adversarial")


@dataclass(frozen=True)
class Defense:
    """One defense: its ``name``, its ``kind`` and its function, called as the kind says:

    * ``"preprocess"``: ``fn(images) -> images`` once on the whole uint8 N×C×H×W training set;
    * ``"batch"``: ``fn(x, y, num_classes, gen) -> (x, soft targets or None)`` on every float
      training batch, on the device;
    * ``"adversarial"``: ``fn(model, x, y, gen, eps) -> x`` on every batch, given the victim.

    ``summary`` is the one-line description (help texts read it), ``source`` where its
    hyperparameters come from, ``recipe`` the victim recipe changes it brings to a preset (e.g.
    the paper's adversarial-training schedule)."""

    name: str
    kind: str
    fn: Callable
    summary: str
    source: str = ""
    recipe: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


# --------------------------------------------------------------------------- preprocessing (uint8 N×C×H×W)


def jpeg(images: torch.Tensor, quality: int = 10) -> torch.Tensor:
    """Encode and decode every image as a baseline JPEG at ``quality`` (Pillow, libjpeg;
    4:2:0 chroma subsampling for colour images, as ISS's JPEG defense uses)."""
    import io

    import numpy as np
    from PIL import Image

    x = images.cpu()
    if x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg needs 1 or 3 channels, got {x.shape[1]}")
    if not 1 <= int(quality) <= 95:
        raise ValueError(f"quality must lie in [1, 95], got {quality!r}")
    hwc = x.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty_like(hwc)
    buf = io.BytesIO()
    for i, img in enumerate(hwc):
        buf.seek(0)
        buf.truncate()
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as dec:
            arr = np.asarray(dec.convert("L" if img.shape[2] == 1 else "RGB"))
        out[i] = arr.reshape(img.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def grayscale(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images.clone()
    if images.shape[1] != 3:
        raise ValueError(f"grayscale needs 1 or 3 channels, got {images.shape[1]}")
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    luma = torch.round((images.float() * w).sum(1, keepdim=True)).clamp_(0, 255).to(torch.uint8)
    return luma.expand_as(images).contiguous()


def bitdepth(images: torch.Tensor, bits: int = 2) -> torch.Tensor:
    levels = 2**bits - 1
    return (torch.round(images.float() / 255 * levels) * (255 / levels)).round_().clamp_(0, 255).to(torch.uint8)


def blur(images: torch.Tensor, kernel: int = 3, sigma: float = 1.0) -> torch.Tensor:
    x = torchvision.transforms.functional.gaussian_blur(images.float(), [kernel, kernel], [sigma, sigma])
    return torch.round(x).clamp_(0, 255).to(torch.uint8)


def resize(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Downscale by ``factor`` (antialiased bilinear) and upscale back to the original size (bilinear)."""
    H, W = images.shape[-2:]
    small = torchvision.transforms.functional.resize(images.float(), [max(1, H // factor), max(1, W // factor)],
                                                     antialias=True)
    back = torchvision.transforms.functional.resize(small, [H, W], antialias=False)
    return torch.round(back).clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- batch augmentations (float [0,1], on device)


def cutout(x: torch.Tensor, gen: torch.Generator, size: int = 16) -> torch.Tensor:
    N, _, H, W = x.shape
    cy = (torch.rand(N, generator=gen) * H).long().to(x.device)
    cx = (torch.rand(N, generator=gen) * W).long().to(x.device)
    ys = torch.arange(H, device=x.device).view(1, H, 1)
    xs = torch.arange(W, device=x.device).view(1, 1, W)
    lo = size // 2  # the square covers [c - size//2, c - size//2 + size): exactly size × size inside the image
    dy = ys - cy.view(-1, 1, 1) + lo
    dx = xs - cx.view(-1, 1, 1) + lo
    inside = (dy >= 0) & (dy < size) & (dx >= 0) & (dx < size)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def _beta(n, gen):
    # Beta(1, 1) = Uniform(0, 1)
    return torch.rand(n, generator=gen)


def mixup(x, y_onehot, gen):
    """One λ ~ β(1, 1) for the whole batch, mixed with a permutation of it."""
    N = x.shape[0]
    lam = float(_beta(1, gen))
    perm = torch.randperm(N, generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * y_onehot + (1 - lam) * y_onehot[perm]


def cutmix(x, y_onehot, gen):
    """One λ ~ β(1, 1) and one box (area about 1 − λ, clipped at the border) for the whole batch,
    pasted from a permutation of it; labels mixed by the pasted area."""
    N, _, H, W = x.shape
    lam = float(_beta(1, gen))
    perm = torch.randperm(N, generator=gen).to(x.device)
    rh, rw = int(H * (1 - lam) ** 0.5), int(W * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(0, H, (1,), generator=gen)), int(torch.randint(0, W, (1,), generator=gen))
    y0, y1 = max(cy - rh // 2, 0), min(cy + rh // 2, H)
    x0, x1 = max(cx - rw // 2, 0), min(cx + rw // 2, W)
    xm = x.clone()
    xm[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    area = (y1 - y0) * (x1 - x0) / (H * W)
    return xm, (1 - area) * y_onehot + area * y_onehot[perm]


def coin(x: torch.Tensor, gen: torch.Generator, alpha: float = 2.0) -> torch.Tensor:
    """COIN: each pixel (i, j) takes the bilinear value at (i + dy, j + dx), dx, dy ~ U(−alpha, alpha)
    per pixel and image (shared over channels), indices wrapping around the border."""
    N, C, H, W = x.shape
    dev = x.device
    dy = ((torch.rand(N, H, W, generator=gen) * 2 - 1) * alpha).to(dev)
    dx = ((torch.rand(N, H, W, generator=gen) * 2 - 1) * alpha).to(dev)
    yy = torch.arange(H, device=dev).view(1, H, 1) + dy
    xx = torch.arange(W, device=dev).view(1, 1, W) + dx
    y0, x0 = torch.floor(yy), torch.floor(xx)
    wy, wx = (yy - y0).unsqueeze(1), (xx - x0).unsqueeze(1)
    y0, x0 = y0.long(), x0.long()
    flat = x.reshape(N, C, H * W)

    def at(yi, xi):
        idx = ((yi % H) * W + (xi % W)).view(N, 1, H * W).expand(N, C, H * W)
        return flat.gather(2, idx).view(N, C, H, W)

    top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
    bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
    return (top * (1 - wy) + bottom * wy).clamp_(0, 1)


def gaussian_noise(x, gen, std: float = 8 / 255):
    return (x + torch.randn(x.shape, generator=gen).to(x.device) * std).clamp_(0, 1)


def ueraser(x, gen):
    """Strong augmentation after UEraser (Qin et al. 2023), written with plain tensor ops."""
    N, C, H, W = x.shape
    dev = x.device
    # random channel permutation per image
    if C > 1:
        perms = torch.argsort(torch.rand(N, C, generator=gen), dim=1).to(dev)
        x = torch.gather(x, 1, perms.view(N, C, 1, 1).expand_as(x))
    # random brightness and contrast
    b = (torch.rand(N, generator=gen) * 0.6 - 0.3).to(dev).view(-1, 1, 1, 1)
    c = (torch.rand(N, generator=gen) * 1.0 + 0.5).to(dev).view(-1, 1, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean + b).clamp_(0, 1)
    # random posterize to 2..5 bits
    bits = torch.randint(2, 6, (N,), generator=gen).to(dev).view(-1, 1, 1, 1).float()
    levels = 2**bits - 1
    x = torch.round(x * levels) / levels
    # random erasing: one rectangle of 5-20% of the area filled with noise
    area = (torch.rand(N, generator=gen) * 0.15 + 0.05) * H * W
    aspect = torch.exp(torch.rand(N, generator=gen) * 1.6 - 0.8)
    eh = torch.sqrt(area * aspect).clamp(1, H).long()
    ew = torch.sqrt(area / aspect).clamp(1, W).long()
    ey = (torch.rand(N, generator=gen) * (H - eh + 1).float()).long()
    ex = (torch.rand(N, generator=gen) * (W - ew + 1).float()).long()
    ys = torch.arange(H).view(1, H, 1)
    xs = torch.arange(W).view(1, 1, W)
    box = (ys >= ey.view(-1, 1, 1)) & (ys < (ey + eh).view(-1, 1, 1)) & (xs >= ex.view(-1, 1, 1)) & (xs < (ex + ew).view(-1, 1, 1))
    fill = torch.rand(x.shape, generator=gen).to(dev)
    return torch.where(box.unsqueeze(1).to(dev), fill, x)


def pgd_attack(model, x, y, eps, step, iters, gen):
    """PGD-ε L∞ attack from a uniform random start (for adversarial training)."""
    delta = ((torch.rand(x.shape, generator=gen) * 2 - 1) * eps).to(x.device)
    delta = (x + delta).clamp_(0, 1) - x
    for _ in range(iters):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta).float(), y)
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * g.sign()).clamp_(-eps, eps)
        delta = (x + delta).clamp_(0, 1) - x
    return (x + delta).detach()


# --------------------------------------------------------------------------- the registry


def _plain(f):
    """A batch transform that leaves the labels alone, as a ``batch`` defense."""
    return lambda x, y, num_classes, gen: (f(x, gen), None)


def _mixing(f):
    """A batch transform that mixes labels (soft targets), as a ``batch`` defense."""
    return lambda x, y, num_classes, gen: f(x, F.one_hot(y, num_classes).float(), gen)


REGISTRY: dict[str, Defense] = {d.name: d for d in (
    Defense("jpeg", "preprocess", jpeg, "JPEG at quality 10 (ISS)", "Liu et al. 2023, ImageShortcutSqueezing"),
    Defense("jpeg75", "preprocess", lambda x: jpeg(x, 75), "JPEG at quality 75 (a platform's re-encoding)"),
    Defense("jpeg90", "preprocess", lambda x: jpeg(x, 90), "JPEG at quality 90"),
    Defense("resize", "preprocess", resize, "2x downscale and upscale back (a platform's thumbnailing)"),
    Defense("grayscale", "preprocess", grayscale, "ITU-R 601 luma on every channel (ISS)",
            "Liu et al. 2023, ImageShortcutSqueezing"),
    Defense("bitdepth", "preprocess", bitdepth, "2 bits per channel"),
    Defense("blur", "preprocess", blur, "Gaussian blur, kernel 3, sigma 1"),
    Defense("cutout", "batch", _plain(cutout), "one 16x16 square set to 0 per image"),
    Defense("cutmix", "batch", _mixing(cutmix), "a box from another image, labels mixed by area",
            "Yun et al. 2019"),
    Defense("mixup", "batch", _mixing(mixup), "a convex combination with another image and its label",
            "Zhang et al. 2018"),
    Defense("noise", "batch", _plain(gaussian_noise), "additive Gaussian noise, std 8/255"),
    Defense("ueraser", "batch", _plain(ueraser), "strong random augmentation in the spirit of UEraser"),
    Defense("coin", "batch", _plain(coin), "random sub-pixel resampling, U(-2, 2) px", "Wang et al., AAAI 2025"),
    Defense("at", "adversarial", lambda model, x, y, gen, eps: pgd_attack(model, x, y, eps, 2 / 255, 10, gen),
            "PGD-10 adversarial training (step 2/255)", "Madry et al. 2018; the paper's protocol",
            recipe={"paper": dict(epochs=100, lr=0.1, weight_decay=5e-4, schedule="step40-80")}),
)}
PREPROCESS = tuple(n for n, d in REGISTRY.items() if d.kind == "preprocess")
AUGMENT = tuple(n for n, d in REGISTRY.items() if d.kind == "batch")
DEFENSES = tuple(REGISTRY)


def get(name: str) -> Defense:
    """The registered defense ``name``; ValueError naming the choices otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"defense must be one of {DEFENSES}, got {name!r}")
    return REGISTRY[name]


def preprocess(name: str, images: torch.Tensor) -> torch.Tensor:
    """Apply the preprocessing defense ``name`` to a uint8 training set."""
    d = REGISTRY.get(name)
    if d is None or d.kind != "preprocess":
        raise ValueError(f"unknown preprocessing defense {name!r}; expected one of {PREPROCESS}")
    return d.fn(images)


def augment(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, gen: torch.Generator):
    """(images, soft targets or None) for batch defense ``name``."""
    d = REGISTRY.get(name)
    if d is None or d.kind != "batch":
        raise ValueError(f"unknown augmentation {name!r}; expected one of {AUGMENT}")
    return d.fn(x, y, num_classes, gen)
