"""Replica of SupContrast's losses.py ``SupConLoss`` as of December 2023, written from reading it:
anchors without positives contribute 0 (their positive count is taken as 1)."""

import torch

from cp_losses import supcon_formula


class SupConLoss(torch.nn.Module):
    def __init__(self, temperature=0.07, contrast_mode="all", base_temperature=0.07):
        super().__init__()
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature

    def forward(self, features, labels=None, mask=None):
        # the guard of December 2023: mask_pos_pairs < 1e-6 -> 1
        return supcon_formula(features, labels, mask, self.temperature, self.contrast_mode, self.base_temperature,
                              guard=True)
