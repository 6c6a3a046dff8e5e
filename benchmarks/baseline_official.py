"""One MI-UE crafting round as the official code performs it, re-implemented in eager
PyTorch (our code, written from the description in SPEC §3), to be timed against miue.

Traits of the official implementation that this reproduces:
  * fp32 everywhere; cuDNN deterministic with benchmark off;
  * data through a torch DataLoader over a Dataset that converts each uint8 image to float
    on the host and flips it (per sample, in __getitem__); δ held as an fp32 tensor and
    added after the flip;
  * torch.cuda.empty_cache() after every training step;
  * the loss through the B×B×D broadcast of F.cosine_similarity (miue.ops.reference.official_supcon_loss);
  * the PGD update as separate eager ops on ``delta.data``.
It computes the same thing as miue's paper preset (same model, schedule, losses); its
loss values agree with miue's on the same inputs and weights (checked by bench_craft.py).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from miue.ops.reference import official_supcon_loss


class PoisonDataset(Dataset):
    """(float image in [0,1], index, label): uint8 -> float and the random flip per sample."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, flip: bool, seed: int = 0):
        self.images = images_u8
        self.labels = labels
        self.flip = flip
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        x = self.images[i].float() / 255
        if self.flip and torch.rand(1, generator=self.gen).item() < 0.5:
            x = x.flip(-1)
        return x, i, int(self.labels[i])


def official_round(model, opt, sched, images_u8, labels, delta, *, round_index, rounds, eps, alpha_start, alpha_end,
                   pgd_steps, train_batch_size=128, pgd_batch_size=512, temperature=0.1, device="cuda", flip=True,
                   objective="miue"):
    """One round: a cross-entropy epoch, then ``pgd_steps`` PGD steps on every δ. Returns timings."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    ds = PoisonDataset(images_u8, labels, flip, seed=round_index)
    t0 = time.perf_counter()
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    for x, idx, y in DataLoader(ds, batch_size=train_batch_size, shuffle=True, num_workers=0):
        x, y = x.to(device), y.to(device)
        x = torch.clamp(x + delta[idx.to(delta.device)].to(device), 0, 1)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.empty_cache()
    sched.step()
    if cuda:
        torch.cuda.synchronize()
    t1 = time.perf_counter()

    alpha = alpha_end + (rounds - round_index + 1) / rounds * (alpha_start - alpha_end)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    losses = []
    for x, idx, y in DataLoader(ds, batch_size=pgd_batch_size, shuffle=False, num_workers=0):
        x, y = x.to(device), y.to(device)
        d = delta[idx.to(delta.device)].to(device).clone()
        for _ in range(pgd_steps):
            d.requires_grad_(True)
            feats, logits = model(x + d, return_features=True)
            loss = official_supcon_loss(feats, y, temperature) if objective == "miue" else F.cross_entropy(logits, y)
            loss.backward()
            d.data = d.data - alpha * d.grad.sign()
            d.data = torch.clamp(d.data, -eps, eps)
            d.data = torch.clamp(x + d.data, 0, 1) - x
            d.grad.zero_()
            losses.append(loss.item())
        delta[idx.to(delta.device)] = d.detach().to(delta.device)
    if cuda:
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    return {"train_seconds": t1 - t0, "pgd_seconds": t2 - t1, "seconds": t2 - t0,
            "objective_loss": sum(losses) / max(len(losses), 1)}
