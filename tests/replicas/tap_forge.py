"""Replica of APBench TAP's forging loop (attack/data/tap_base/shop/forgemaster_base.py), written
from reading it. The poison δ lives in *normalised* units (the data are normalised with per-channel
mean dm and std ds, both [1, C, 1, 1]); ε and the step are per channel (``eps/255/ds`` and
``tau0 = eps/255/ds·tau``). Each minibatch: δ_slice joins the normalised clean batch, the
untargeted loss is −CE of a clean-trained model, and ``_pgd_step`` updates δ_slice in place:
``δ -= tau0·sign(g)``, then ``max(min(δ, eps/ds/255), -eps/ds/255)``, then
``max(min(δ, (1-dm)/ds - x_n), -dm/ds - x_n)``.

``pgd_step`` is the module-level hook the loop calls, so that a test can put the accelerated
one-liner (docs/compat.md) in its place.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _data import SmallResNet, make_images  # noqa: E402

DM = torch.tensor([0.49147, 0.48226, 0.44677]).view(1, 3, 1, 1)  # APBench's CIFAR-10 constants
DS = torch.tensor([0.24703, 0.24349, 0.26159]).view(1, 3, 1, 1)


def pgd_step(delta_slice, poison_imgs, tau, dm, ds, eps):
    """The original ``_pgd_step`` (PGD branch), in place on ``delta_slice.data``."""
    with torch.no_grad():
        delta_slice.data -= tau * delta_slice.grad.sign()
        delta_slice.data = torch.max(torch.min(delta_slice, eps / ds / 255), -eps / ds / 255)
        delta_slice.data = torch.max(torch.min(delta_slice, (1 - dm) / ds - poison_imgs), -dm / ds - poison_imgs)
    return delta_slice


def forge(n=256, size=32, attackiter=4, pbatch=64, eps=8.0, tau=0.05, width=16, seed=0, train_epochs=1,
          dtype=torch.float32):
    torch.manual_seed(seed)
    images, labels = make_images(n, size, seed=seed)
    x_n = ((images - DM) / DS).to(dtype)
    dm, ds = DM.to(dtype), DS.to(dtype)
    model = SmallResNet(width).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(train_epochs):  # the clean-trained model TAP attacks
        for i0 in range(0, n, pbatch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_n[i0:i0 + pbatch]), labels[i0:i0 + pbatch]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    tau0 = eps / 255 / ds * tau
    poison_delta = (torch.randn(x_n.shape, dtype=dtype) * eps / ds / 255)  # init "randn"
    poison_delta = torch.max(torch.min(poison_delta, eps / ds / 255), -eps / ds / 255)
    for _ in range(attackiter):
        for i0 in range(0, n, pbatch):
            delta_slice = poison_delta[i0:i0 + pbatch].detach().clone().requires_grad_(True)
            inputs = x_n[i0:i0 + pbatch] + delta_slice
            loss = -torch.nn.functional.cross_entropy(model(inputs), labels[i0:i0 + pbatch])
            loss.backward()
            delta_slice = pgd_step(delta_slice, x_n[i0:i0 + pbatch], tau0, dm, ds, eps)
            poison_delta[i0:i0 + pbatch] = delta_slice.detach()
    return poison_delta
