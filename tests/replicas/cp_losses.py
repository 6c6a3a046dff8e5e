"""Replica of Contrastive Poisoning's losses.py ``SimCLRLoss``, written from reading it: the 2020
SupConLoss formula (SupContrast), whose anchors without positives divide by zero."""

import torch


class SimCLRLoss(torch.nn.Module):
    def __init__(self, temperature=0.07, contrast_mode="all", base_temperature=0.07):
        super().__init__()
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature

    def forward(self, features, labels=None, mask=None):
        return supcon_formula(features, labels, mask, self.temperature, self.contrast_mode, self.base_temperature,
                              guard=False)


def supcon_formula(features, labels, mask, temperature, contrast_mode, base_temperature, guard):
    if features.dim() < 3:
        raise ValueError("features needs to be [bsz, n_views, ...]")
    bsz, n_views = features.shape[0], features.shape[1]
    features = features.view(bsz, n_views, -1)
    if labels is not None and mask is not None:
        raise ValueError("Cannot define both labels and mask")
    if labels is None and mask is None:
        mask = torch.eye(bsz, dtype=torch.float32, device=features.device)
    elif labels is not None:
        labels = labels.contiguous().view(-1, 1)
        mask = torch.eq(labels, labels.T).float().to(features.device)
    else:
        mask = mask.float().to(features.device)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    if contrast_mode == "one":
        anchor, anchor_count = features[:, 0], 1
    elif contrast_mode == "all":
        anchor, anchor_count = contrast, n_views
    else:
        raise ValueError(f"Unknown mode: {contrast_mode}")
    dot = torch.div(torch.matmul(anchor, contrast.T), temperature)
    row_max, _ = torch.max(dot, dim=1, keepdim=True)
    logits = dot - row_max.detach()
    mask = mask.repeat(anchor_count, n_views)
    logits_mask = torch.scatter(torch.ones_like(mask), 1,
                                torch.arange(bsz * anchor_count, device=features.device).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    npos = mask.sum(1)
    if guard:
        npos = torch.where(npos < 1e-6, 1, npos)
    mean_log_prob_pos = (mask * log_prob).sum(1) / npos
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, bsz).mean()
