"""The surrogate of a crafting run: built from the preset's architecture (or the caller's
module), trained by SGD with the recipe's learning-rate schedule, and its forward pass for the
attack. REM's inner maximisation (the ρ that raises its loss) is here too: it trains on x + ρ
and the attack descends the loss at x + δ + ρ.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from miue.craft.distributed import all_reduce_sum
from miue.models import FeatureModel, build_model
from miue.presets import CraftConfig


def _one(_epoch):
    return 1.0


# lr_schedule -> the scheduler (``passes``: surrogate epochs per round, the cosine's unit)
LR_SCHEDULES = {
    # stepped once per surrogate epoch (train_epoch call)
    "cosine": lambda opt, cfg, passes: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=cfg.rounds * passes, eta_min=cfg.lr_min),
    # milestones in surrogate epochs
    "multistep": lambda opt, cfg, passes: torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma),
    # stepped once per training step (the per-batch schedule)
    "step": lambda opt, cfg, passes: torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_every,
                                                                     gamma=cfg.lr_gamma),
    "constant": lambda opt, cfg, passes: torch.optim.lr_scheduler.MultiplicativeLR(opt, lr_lambda=_one),
}


class Surrogate:
    """The model, its optimiser and schedule, and the forwards that use them (compiled, or
    wrapped in DistributedDataParallel for training under torch.distributed)."""

    def __init__(self, cfg: CraftConfig, module, clean: torch.Tensor, device, amp: bool, gen: torch.Generator,
                 world: int = 1, passes: int = 1, needs_features: bool = False):
        self.cfg, self.device, self.amp, self.gen, self.passes = cfg, device, amp, gen, passes
        self.channels_last = bool(cfg.channels_last)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if module is None:
                model = build_model(cfg.arch, cfg.num_classes, channels=clean.shape[1], image_size=clean.shape[2],
                                    normalize=cfg.input_norm)
            else:
                model = FeatureModel(copy.deepcopy(module))
        model = model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if needs_features:  # fail now, not after an epoch, if there are no features
            model.eval()
            with torch.no_grad():
                x = clean[:2].to(device)
                model(x.float().div_(255.0) if x.dtype == torch.uint8 else x, return_features=True)
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   nesterov=cfg.nesterov)
        self.sched = LR_SCHEDULES[cfg.lr_schedule](self.opt, cfg, passes)
        self.forward = torch.compile(model) if cfg.compile else model
        self.train_forward = self.forward
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            self.train_forward = torch.compile(ddp) if cfg.compile else ddp
        self.world = world

    def input(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self, **kw):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp, **kw)

    # ---------------------------------------------------------------- training
    def train_epoch(self, batches, batch_input, adversarial: bool = False):
        """One pass of SGD steps over ``batches`` (index tensors; ``batch_input(idx) -> (x, y)``),
        then one step of the learning-rate schedule. Returns (mean loss, accuracy) as tensors."""
        model = self.model
        model.train()
        model.requires_grad_(True)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for idx in batches:
            seen += len(idx)
            x, y = batch_input(idx)
            loss, logits = self.step(x, y, adversarial)
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
        self.sched.step()
        if self.world > 1:
            loss_sum, correct, seen_t = all_reduce_sum(loss_sum, correct, torch.tensor(float(seen)))
            return loss_sum / seen_t, correct / seen_t
        return loss_sum / seen, correct.float() / seen

    def step(self, x, y, adversarial: bool = False):
        """One SGD step on (x, y); adversarial (REM): on x + ρ, ρ maximising the loss."""
        model = self.model
        if adversarial:
            model.eval()
            model.requires_grad_(False)
            x = (x + self.worst_rho(x, y)).clamp_(0, 1)
            model.train()
            model.requires_grad_(True)
        with self.autocast():
            logits = self.train_forward(self.input(x))
            loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return loss, logits

    def worst_rho(self, x, y):
        """REM's inner maximisation: ρ in the L∞ ball of radius rem_eps (eps/2 by default) that
        raises the cross-entropy at x + ρ, by rem_steps signed steps of rem_step_size (rem_eps/4
        by default) from a uniform random start drawn from the run's generator. Detached."""
        cfg = self.cfg
        r = cfg.rem_eps or cfg.eps / 2
        step = cfg.rem_step_size or r / 4
        rho = ((torch.rand(x.shape, generator=self.gen) * 2 - 1) * r).to(x.device)
        for _ in range(cfg.rem_steps):
            rho.requires_grad_(True)
            with self.autocast():
                loss = F.cross_entropy(self.forward(self.input((x + rho).clamp(0, 1))).float(), y)
            (g,) = torch.autograd.grad(loss, rho)
            rho = (rho.detach() + step * g.sign()).clamp_(-r, r)
        return rho.detach()

    # ---------------------------------------------------------------- state
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict()}

    def load_state(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])

    def extend_schedule(self, rounds: int) -> None:
        """The cosine learning-rate schedule continues from its step as if it had been planned
        for ``rounds`` rounds (after resuming a run with fewer)."""
        s = self.sched
        s.T_max = rounds * self.passes
        for group, base in zip(self.opt.param_groups, s.base_lrs):
            group["lr"] = s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * s.last_epoch / s.T_max)) / 2
        s._last_lr = [group["lr"] for group in self.opt.param_groups]
