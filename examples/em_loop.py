"""A sample-wise, error-minimising crafting loop written the classic way (our own code, in
the style of the EM / REM / MI-UE codebases): a hand-written contrastive loss over all pairs
(B×B×D cosine broadcast) and a hand-written PGD update.

See accelerate_em_loop.py: three lines make miue's fused kernels run this loop unchanged.
"""

import torch
import torch.nn.functional as F


def nt_xent(x, y, t=0.1):
    """Supervised contrastive loss over cosine similarities (the MI-UE objective)."""
    sim = F.cosine_similarity(x.unsqueeze(1), x.unsqueeze(0), dim=2)
    e = torch.exp(sim / t) + 1e-8
    mask = (y.unsqueeze(1) == y.unsqueeze(0)).float()
    return -torch.log((e * mask).sum(1) / e.sum(1)).mean()


def pgd_update(delta, grad, data, alpha, eps, minimize=True):
    """One signed-gradient step, the L-inf projection and the [0, 1] box."""
    delta = delta - alpha * grad.sign() if minimize else delta + alpha * grad.sign()
    delta = torch.clamp(delta, -eps, eps)
    return torch.clamp(data + delta, 0, 1) - data


def craft(model, images, labels, eps=8 / 255, alpha=0.8 / 255, steps=10, batch_size=256):
    """Sample-wise perturbations minimising nt_xent of the model's features.

    model(x) must return (features, logits); images are float in [0, 1]."""
    delta = torch.zeros_like(images)
    for i0 in range(0, images.shape[0], batch_size):
        x, y = images[i0:i0 + batch_size], labels[i0:i0 + batch_size]
        d = delta[i0:i0 + batch_size].clone()
        for _ in range(steps):
            d.requires_grad_(True)
            feats, _ = model(x + d)
            loss = nt_xent(feats, y)
            (grad,) = torch.autograd.grad(loss, d)
            d = pgd_update(d.detach(), grad, x, alpha, eps)
        delta[i0:i0 + batch_size] = d
    return delta
