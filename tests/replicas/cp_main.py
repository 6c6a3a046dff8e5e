"""Replica of Contrastive Poisoning's sample-wise poisoning loop (main.py
``train_contrastive_poisoning`` and model.py ``AttackModel``), written from reading it.

δ is one dataset-sized parameter in unit space, initialised U[-1, 1); an image is used as
``clamp(x + w·clamp(δ[idx], -1, 1), 0, 1)`` with w = 8/255, then two augmented views (a
differentiable random flip and brightness here, standing in for kornia's), normalised, go
through the encoder and a projection head, L2-normalised: features ``[bsz, 2, D]``. The loss is
``SimCLRLoss(temperature=0.5)`` (base temperature 0.07) without labels. For each batch, ``num_steps``
times: clear δ's gradient, forward, backward, then the whole δ is updated in place:
``δ.data.add_(-step·sign(δ.grad)).clamp_(-1, 1)`` (rows outside the batch have a zero gradient).
Between poisoning epochs the encoder trains on the poisoned views.

``update_delta`` is the module-level hook for that line, so that a test can put the accelerated
one-liner (docs/compat.md) in its place.
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cp_losses  # noqa: E402
from _data import make_images  # noqa: E402

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)


class Encoder(torch.nn.Module):
    def __init__(self, width=16, dim=128):
        super().__init__()
        w = width
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, w, 3, 1, 1), torch.nn.BatchNorm2d(w), torch.nn.ReLU(),
            torch.nn.Conv2d(w, 2 * w, 3, 2, 1), torch.nn.BatchNorm2d(2 * w), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Sequential(torch.nn.Linear(2 * w, 2 * w), torch.nn.ReLU(), torch.nn.Linear(2 * w, dim))

    def forward(self, x):
        return torch.nn.functional.normalize(self.head(self.body(x)), dim=1)


class AttackModel(torch.nn.Module):
    def __init__(self, n, size, width=16, delta_weight=8 / 255):
        super().__init__()
        self.backbone = Encoder(width)
        self.delta = torch.nn.Parameter(torch.rand(n, 3, size, size) * 2 - 1)
        self.delta_weight = delta_weight

    def views(self, img, index, g):
        mixed = torch.clamp(img + self.delta_weight * torch.clamp(self.delta[index], -1, 1), 0, 1)
        out = []
        for _ in range(2):
            flip = torch.rand(img.shape[0], 1, 1, 1, generator=g) < 0.5
            v = torch.where(flip, mixed.flip(3), mixed)
            v = v * (0.6 + 0.8 * torch.rand(img.shape[0], 1, 1, 1, generator=g))
            out.append((v - MEAN) / STD)
        return out

    def forward(self, img, index, g):
        v1, v2 = self.views(img, index, g)
        return torch.stack([self.backbone(v1), self.backbone(v2)], dim=1)


def update_delta(delta, step_size):
    """The original line: the whole δ, in place."""
    delta.data.add_(-step_size * torch.sign(delta.grad)).clamp_(-1, 1)


def run(n=1024, size=32, epochs=1, batch=128, num_steps=5, step_size=0.1, width=16, seed=0, model_steps=2,
        threads=None, timings=None, max_batches=None):
    """``max_batches`` (a benchmark's bound, not the original's): poison only the first batches of
    each epoch; each batch does the same work as in the whole epoch."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, _ = make_images(n, size, seed=seed)
    model = AttackModel(n, size, width)
    criterion = cp_losses.SimCLRLoss(temperature=0.5)
    opt = torch.optim.SGD(model.backbone.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    delta_optimizer = torch.optim.Adam([model.delta], lr=1e-3)  # only clears δ's gradient, as there
    g = torch.Generator().manual_seed(seed)
    update_seconds = 0.0
    for _ in range(epochs):
        model.train()
        model.delta.requires_grad = False
        for s in range(model_steps):
            idx = torch.arange(s * batch, (s + 1) * batch) % n
            opt.zero_grad()
            criterion(model(images[idx], idx, g)).backward()
            opt.step()
        model.eval()
        for p in model.backbone.parameters():
            p.requires_grad = False
        model.delta.requires_grad = True
        for i0 in range(0, n if max_batches is None else min(n, max_batches * batch), batch):
            idx = torch.arange(i0, min(n, i0 + batch))
            for _ in range(num_steps):
                delta_optimizer.zero_grad()
                loss = criterion(model(images[idx], idx, g))
                loss.backward()
                t0 = time.perf_counter()
                update_delta(model.delta, step_size)
                update_seconds += time.perf_counter() - t0
        for p in model.backbone.parameters():
            p.requires_grad = True
    if timings is not None:
        timings["update_s"] = update_seconds
    return model.delta.detach()
