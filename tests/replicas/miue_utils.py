"""Replica of the official MI-UE code's ``utils.nt_xent`` (hala64/mi-ue), written from reading it:
all-pairs cosine similarity through a B×B×D broadcast, exp(·/t), + 1e-8, the same-label mask
with the diagonal, -log(pos_sum / all_sum).mean()."""

import torch
import torch.nn.functional as F


def nt_xent(x, y, t=0.1):
    sim = torch.exp(F.cosine_similarity(x.unsqueeze(1), x.unsqueeze(0), dim=2) / t)
    same = y.unsqueeze(1) == y.unsqueeze(0)
    sim = sim + 1e-8
    pos_sum = torch.where(same, sim, torch.zeros_like(sim)).sum(dim=1)
    return -torch.log(pos_sum / sim.sum(dim=1)).mean()
