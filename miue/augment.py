"""The image augmentations written once (issue 48): crafting (the surrogate's training and TAP's
differentiable attack augmentation), the victims' crop + flip, and the defenses read them.

All take float N×C×H×W batches on any device and draw every random number from the seeded
CPU generator ``gen`` (so that a run is reproducible whatever the device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTS", "crop_flip", "flip", "random_crop", "random_flip", "shift_flip"]


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the images where ``mask`` (N booleans) is True."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image flipped horizontally with probability 1/2."""
    return flip(x, (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device))


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch back to the original size, vectorised."""
    N, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (N,), generator=gen).to(x.device)
    j = torch.randint(0, 2 * pad + 1, (N,), generator=gen).to(x.device)
    rows = (i.view(N, 1, 1, 1) + torch.arange(H, device=x.device).view(1, 1, H, 1)).expand(N, C, H, W + 2 * pad)
    cols = (j.view(N, 1, 1, 1) + torch.arange(W, device=x.device).view(1, 1, 1, W)).expand(N, C, H, W)
    return xp.gather(2, rows).gather(3, cols)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded image (pad 4) and a horizontal flip with probability 1/2."""
    return random_flip(random_crop(x, pad, gen), gen)


def shift_flip(x: torch.Tensor, gen: torch.Generator, shift: float = 0.25) -> torch.Tensor:
    """Differentiable augmentation (TAP's): per image a random translation of up to ``shift`` in
    normalised coordinates (±H/8 pixels at 0.25), bilinear with zero padding, and a horizontal
    flip with probability 1/2."""
    n = x.shape[0]
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift
    flips = torch.rand(n, generator=gen) < 0.5
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flips, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# the crafting engine's named augmentations (CraftConfig.train_augment, attack_augment)
AUGMENTS = {"shift-flip": shift_flip, "crop-flip": crop_flip}
