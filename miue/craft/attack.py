"""The attack on δ: signed-gradient PGD passes over the shard with the surrogate frozen, one step
(the objective's loss, its gradient, the fused ``pgd_linf_step_``), restarts, the CUDA-graphed
step, random starts, and REM's per-batch min-max δ. What the loss is, which box x + δ stays in
and whether an inner maximisation runs come from the objective's record (miue/objectives.py).
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from miue import ops
from miue.augment import AUGMENTS, flip
from miue.craft.distributed import all_reduce_sum
from miue.craft.graphs import GraphedPGDStep, graphs_possible
from miue.craft.shard import Shard, as_float01
from miue.craft.surrogate import Surrogate
from miue.objectives import LossContext, Objective
from miue.presets import CraftConfig

log = logging.getLogger("miue.craft")


class Attack:
    def __init__(self, cfg: CraftConfig, obj: Objective, shard: Shard, surrogate: Surrogate | None,
                 gen: torch.Generator):
        self.cfg, self.obj, self.shard, self.surrogate, self.gen = cfg, obj, shard, surrogate, gen
        self.device = shard.device
        self.ctx = LossContext.of(cfg)
        self._graph, self._graph_failed = None, False
        # what became of cuda_graphs (recorded with the result): None until a full batch asked
        # for a graph, then "captured" or "failed (Type: message)"
        self.graph_status: str | None = None

    @property
    def box(self):
        """The box x + δ is kept in during PGD: [0, 1], or none for PIL, whose authors clip only
        the released image ([-1, 2] never binds with |δ| ≤ ε)."""
        return self.obj.box

    def loss(self, feats, logits, y):
        return self.obj.loss(self.ctx, feats, logits, y)

    # ---------------------------------------------------------------- a pass over every δ
    def pgd_pass(self, alpha: float):
        """``pgd_steps`` steps of ``alpha`` on every δ of the shard, in shuffled batches, the
        surrogate frozen (eval mode, or batch statistics with frozen running ones for
        ``pgd_bn="train"``). Returns the mean objective over the steps."""
        cfg = self.cfg
        model = self.surrogate.model
        model.requires_grad_(False)
        bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if cfg.pgd_bn == "train":  # batch statistics, running statistics frozen (momentum 0)
            model.train()
            saved_momentum = [m.momentum for m in bn]
            for m in bn:
                m.momentum = 0.0
        else:
            model.eval()
        try:
            return self._pass(alpha)
        finally:
            if cfg.pgd_bn == "train":
                for m, mom in zip(bn, saved_momentum):
                    m.momentum = mom
                model.eval()

    def _pass(self, alpha: float):
        cfg, shard = self.cfg, self.shard
        total = torch.zeros((), device=self.device)
        steps = 0
        alpha_t = torch.tensor(alpha, dtype=torch.float64)
        eps_t = torch.tensor(cfg.eps, dtype=torch.float64)
        for idx in shard.batches(cfg.pgd_batch_size):
            flips = shard.flips(len(idx))
            c_box = shard.store.clean_batch(idx)  # uint8 or float32: the box is around the flipped clean
            if flips is not None:
                c_box = flip(c_box, flips.to(self.device))
            clean_f = as_float01(c_box)
            y = shard.labels_of(idx)
            if cfg.classwise:
                for _ in range(cfg.pgd_steps):
                    d = shard.delta_for(idx)
                    total += self.step(d, clean_f, c_box, y, alpha_t, eps_t, (0.0, 1.0))
                    steps += 1
                continue
            d = shard.store.delta_batch(idx)
            if cfg.restarts > 1 and self.obj.attack == "after_training":
                loss_sum, d = self.restarts(d, clean_f, c_box, y, alpha_t, eps_t)
                total += loss_sum
                steps += cfg.pgd_steps
                shard.store.write_delta(idx, d)
                continue
            graphed = self.graphed_step(d, clean_f, c_box, y) if len(idx) == cfg.pgd_batch_size else None
            if graphed is not None:
                total += graphed.run(d, clean_f, c_box, y, alpha, cfg.pgd_steps)
                steps += cfg.pgd_steps
            else:
                for _ in range(cfg.pgd_steps):
                    total += self.step(d, clean_f, c_box, y, alpha_t, eps_t, self.box)
                    steps += 1
            shard.store.write_delta(idx, d)
        if shard.world > 1:
            total, steps_t = all_reduce_sum(total, torch.tensor(float(steps)))
            return total / steps_t.clamp_min(1)
        return total / max(steps, 1)

    # ---------------------------------------------------------------- one step
    def step(self, d, clean_f, c_box, y, alpha, eps, box):
        """One step on the batch δ ``d`` (float32, in place); returns the objective value."""
        cfg, sur = self.cfg, self.surrogate
        # REM: the loss is taken at the worst ρ around x + δ (min over δ of max over ρ)
        rem = self.obj.inner_max
        rho = sur.worst_rho((clean_f + d).clamp(0, 1), y) if rem else None
        dv = d.detach().requires_grad_(True)
        # inside a CUDA graph the autocast weight-cast cache would outlive its capture
        with sur.autocast(cache_enabled=not cfg.cuda_graphs):
            if self.obj.input_loss is not None:  # PIL: δ alone, and x + δ: two forwards (miue/objectives.py)
                loss = self.obj.input_loss(lambda z: sur.forward(sur.input(z)), clean_f, dv, y, cfg)
            else:
                x = (clean_f + dv + rho).clamp(0, 1) if rem else clean_f + dv  # (x + δ is in the box already)
                if cfg.attack_augment in AUGMENTS:  # differentiable augmentation of x + δ (TAP)
                    x = AUGMENTS[cfg.attack_augment](x, self.gen)
                feats, logits = sur.forward(sur.input(x), return_features=True)
                loss = self.loss(feats, logits, y)
        (g,) = torch.autograd.grad(loss, dv)
        if cfg.classwise:
            shard = self.shard
            g_cls = torch.zeros_like(shard.class_delta_dev).index_add_(0, y, g)
            ops.pgd_linf_step_(shard.class_delta_dev, g_cls, shard.zero_clean, alpha, eps, -1.0, 1.0,
                               backend=cfg.backend)
        else:
            ops.pgd_linf_step_(d, g, c_box, alpha, eps, box[0], box[1], backend=cfg.backend)
        return loss.detach()

    # ---------------------------------------------------------------- starts and restarts
    def random_start(self, shape, clean):
        """A random start in the ε ball (and the box around ``clean``): uniform or clipped normal."""
        eps = self.cfg.eps
        if self.cfg.delta_init == "normal":
            d = (torch.randn(shape, generator=self.gen) * eps).clamp_(-eps, eps)
        else:
            d = (torch.rand(shape, generator=self.gen) * 2 - 1) * eps
        lo, hi = self.box
        return ops.project_linf_(d, clean.cpu(), eps, lo, hi)

    def restarts(self, d, clean_f, c_box, y, alpha_t, eps_t):
        """``restarts`` attacks of the batch, the first from δ as stored, the others from fresh
        random starts; keeps the one with the lowest final mean objective (the authors keep the
        best restart over the whole set; per batch is at least as strong). Returns (the summed
        objective of the kept attack's steps, its δ)."""
        best, best_loss, best_sum = None, math.inf, None
        for r in range(self.cfg.restarts):
            cur = d.clone() if r == 0 else self.random_start(tuple(d.shape), c_box).to(d.device)
            total = torch.zeros((), device=self.device)
            for _ in range(self.cfg.pgd_steps):
                total += self.step(cur, clean_f, c_box, y, alpha_t, eps_t, self.box)
            final = float(self.final_objective(cur, clean_f, y))
            if final < best_loss:
                best, best_loss, best_sum = cur, final, total
        return best_sum, best

    @torch.no_grad()
    def final_objective(self, d, clean_f, y):
        sur = self.surrogate
        with sur.autocast():
            feats, logits = sur.forward(sur.input(clean_f + d), return_features=True)
            return self.loss(feats, logits, y)

    # ---------------------------------------------------------------- the CUDA graph
    def graphed_step(self, d, clean_f, c_box, y):
        """The CUDA graph of one sample-wise PGD step for full batches (``cuda_graphs``), built
        on first use; None when graphs are off or capture failed (the step then runs eagerly)."""
        if not (self.cfg.cuda_graphs and graphs_possible(self.device)) or self._graph_failed or self.obj.inner_max \
                or self.cfg.attack_augment != "none":
            return None  # (REM's starts and the augmentations draw random numbers on the host: not capturable)
        if self._graph is None or self._graph.c_box.dtype != c_box.dtype:
            try:
                step = lambda *a: self.step(*a, self.box)  # noqa: E731  (the eager path's box)
                self._graph = GraphedPGDStep(step, self.device, self.cfg.eps, d, clean_f, c_box, y)
                self.graph_status = "captured"
            except Exception as exc:  # noqa: BLE001 - any capture failure: fall back, do not lose the run
                self._graph_failed = True
                self._graph = None
                self.graph_status = f"failed ({type(exc).__name__}: {exc})"
                msg = f"CUDA-graph capture of the PGD step failed ({type(exc).__name__}: {exc}); running it eagerly"
                log.warning(msg)
                warnings.warn("miue: " + msg + " (recorded as config['cuda_graphs_status'])", RuntimeWarning,
                              stacklevel=2)
                return None
        return self._graph

    # ---------------------------------------------------------------- REM's per-batch δ
    def minimax_delta(self, c_box, clean_f, y, alpha):
        """REM's δ for one batch: from a uniform random start, ``pgd_steps`` signed steps of
        ``alpha`` that descend the loss at the worst ρ: each step sums, over ``eot_samples``
        augmentations T, the gradient w.r.t. δ of T(x + δ)·g, g the loss gradient at
        T(x + δ) + ρ (ρ by :meth:`Surrogate.worst_rho`; Danskin's theorem, as the authors'
        code). Returns (δ, the last step's mean loss)."""
        cfg, sur = self.cfg, self.surrogate
        model = sur.model
        model.eval()
        model.requires_grad_(False)
        d = self.random_start(tuple(c_box.shape), c_box).to(self.device)
        aug = AUGMENTS.get(cfg.train_augment)
        last = 0.0
        for _ in range(cfg.pgd_steps):
            g_sum = torch.zeros_like(d)
            loss_sum = 0.0
            for _s in range(cfg.eot_samples):
                dv = d.detach().requires_grad_(True)
                xd = (clean_f + dv).clamp(0, 1)
                if aug is not None:
                    xd = aug(xd, self.gen)
                adv = (xd.detach() + sur.worst_rho(xd.detach(), y)).clamp_(0, 1).requires_grad_(True)
                with sur.autocast():
                    loss = F.cross_entropy(sur.forward(sur.input(adv)).float(), y)
                (g_adv,) = torch.autograd.grad(loss, adv)
                (g,) = torch.autograd.grad((xd * g_adv).sum(), dv)
                g_sum += g
                loss_sum += float(loss.detach())
            ops.pgd_linf_step_(d, g_sum, c_box, alpha, cfg.eps, 0.0, 1.0, backend=cfg.backend)
            last = loss_sum / cfg.eot_samples
        return d.detach(), last
