"""Replica of the official MI-UE crafting loop (hala64/mi-ue gen_miue.py ``perturb`` and
``error_minimizing``), written from reading it: one dataset-sized poison; per batch of 512 a leaf
δ = poison[index]; ``iters`` times: features of the eval-mode model on x + δ,
``utils.nt_xent(features, target, t)``, backward, then the inline update
``δ = δ - α·sign(g); δ = clamp(δ, -ε, ε); δ = clamp(x + δ, 0, 1) - x``.

``update`` is the module-level hook for those lines, so that a test can put the accelerated
one-liner (docs/compat.md) in its place; ``python -m miue.compat`` replaces ``utils.nt_xent``
(here ``miue_utils``) on import.

    python miue_gen.py --out poison.pt [--n 1024 ...]
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _data import SmallResNet, make_images  # noqa: E402
from miue_utils import nt_xent  # noqa: E402


class FeatureNet(SmallResNet):
    """The official models return (features, logits); the features are widened to ResNet-18's 512
    (the loss's B×B×D cost depends on D), the body stays narrow for the CPU."""

    def __init__(self, width=16, classes=10, dim=512):
        super().__init__(width, classes)
        self.widen = torch.nn.Linear(2 * width, dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x):
        f = self.widen(self.features(x))
        return f, self.head(f)


def update(delta, data, alpha, eps):
    """The original lines, on the leaf's .data."""
    delta.data = delta.data - alpha * delta.grad.sign()
    delta.grad = None
    delta.data = torch.clamp(delta.data, min=-eps, max=eps)
    delta.data = torch.clamp(data + delta.data, min=0, max=1) - data


def error_minimizing(model, data, target, index, poison, eps=8 / 255, alpha=0.2 / 255, iters=10, t=0.1):
    delta = torch.nn.Parameter(poison[index])
    for _ in range(iters):
        features, _ = model.eval()(data + delta)
        model.zero_grad()
        loss = nt_xent(features, target, t=t)
        loss.backward()
        update(delta, data, alpha, eps)
    return delta.detach()


def run(n=1024, size=32, batch=512, iters=10, width=16, seed=0, dtype=torch.float32, threads=None):
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, labels = make_images(n, size, seed=seed)
    images = images.to(dtype)
    model = FeatureNet(width).to(dtype)
    model.requires_grad_(False)
    poison = torch.zeros_like(images)
    for i0 in range(0, n, batch):
        index = torch.arange(i0, min(n, i0 + batch))
        poison[index] = error_minimizing(model, images[index], labels[index], index, poison, iters=iters)
    return poison


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--width", type=int, default=16)
    a = p.parse_args()
    t0 = time.perf_counter()
    poison = run(a.n, a.size, a.batch, a.iters, a.width)
    seconds = time.perf_counter() - t0
    torch.save({"noise": poison, "seconds": seconds}, a.out)
    print(f"miue_gen: {seconds:.2f} s")


if __name__ == "__main__":
    main()
