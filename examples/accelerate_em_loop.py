"""Accelerate the classic loop of em_loop.py with miue, changing three lines:

    import em_loop                           # the classic code, untouched
    handle = miue.compat.patch(em_loop)      # 1. its nt_xent and pgd_update become fused
    delta = em_loop.craft(model, x, y)       #    (the same call as before)
    handle.undo()                            # 2. restore the originals (or use `with`)
plus ``import miue.compat`` (3).

Run it to time both versions on random data:  python examples/accelerate_em_loop.py
"""

import os
import sys
import time

import torch

import miue.compat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import em_loop  # noqa: E402


class Net(torch.nn.Module):
    """A small CNN returning (features, logits)."""

    def __init__(self, channels=3, num_classes=10, dtype=torch.float32):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 32, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ).to(dtype)
        self.head = torch.nn.Linear(64, num_classes).to(dtype)

    def forward(self, x):
        f = self.body(x)
        return f, self.head(f)


def main(n=2048, steps=5):
    torch.manual_seed(0)
    model = Net().eval().requires_grad_(False)
    x = torch.rand(n, 3, 32, 32)
    y = torch.randint(0, 10, (n,))
    t0 = time.perf_counter()
    classic = em_loop.craft(model, x, y, steps=steps, batch_size=512)
    t1 = time.perf_counter()
    with miue.compat.patch(em_loop):
        fused = em_loop.craft(model, x, y, steps=steps, batch_size=512)
    t2 = time.perf_counter()
    same = (classic != fused).float().mean().item()
    print(f"classic loop: {t1 - t0:.2f} s; with miue.compat.patch: {t2 - t1:.2f} s "
          f"({(t1 - t0) / (t2 - t1):.2f}x); elements that differ: {100 * same:.3f}%")


if __name__ == "__main__":
    main()
