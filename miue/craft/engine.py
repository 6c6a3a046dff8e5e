"""The crafting engine: one process's share of a run, and what happens in one round (docs/crafting.md).

Round e = 1..E (:meth:`Engine.run_round`):
  1. train the surrogate with cross-entropy on clamp(flip(x) + δ, 0, 1) (the flip is applied
     to the clean image only: post-augmentation), SGD with a cosine schedule;
  2. with the surrogate frozen, K signed-gradient PGD steps on every δ in batches:
     δ ← Π(δ - α_e·sign ∇_δ L(features(flip(x) + δ), y)), Π the L∞ ball of radius ε and the
     [0, 1] box around the (flipped) clean image, by the fused ``pgd_linf_step_``.
L is the supcon loss (``miue``), the intra-class cosine loss (``miue-linear``) or
cross-entropy on the logits (``em``: error-minimising noise); ``random`` draws uniform noise.
``tap`` (targeted adversarial poisoning) trains the surrogate on the clean data for every
round and runs its K PGD steps once, after the last round, towards the target class y + 1.
``rem`` (robust error-minimising noise) is EM with an adversarially trained surrogate: every
training batch and every PGD step first finds ρ (radius ``rem_eps``, eps/2 by default) that
maximises the loss at x + δ + ρ, and trains on / descends the loss there.

Speed: the dataset stays on the device as uint8 when it fits (else in pinned host memory,
streamed batch by batch, so that GPU memory does not grow with N: :mod:`.store`); flips
happen on the device; no per-sample Python loops; full PGD batches can replay a CUDA graph
(:mod:`.graphs`). All randomness (shuffles, flips, noise) comes from one seeded generator
whose state is checkpointed, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from miue import objectives, ops
from miue._amp import resolve_amp
from miue._malloc import tune_if_opted_in
from miue._quantize import eps_steps
from miue.craft.distributed import all_reduce_sum
from miue.craft.graphs import GraphedPGDStep, graphs_possible
from miue.craft.store import DeltaStore, fits_on_device
from miue.models import FeatureModel, build_model
from miue.presets import CraftConfig
from miue.augment import AUGMENTS, crop_flip, flip, shift_flip  # noqa: F401  (re-exported)

log = logging.getLogger("miue.craft")


def _as_float01(c: torch.Tensor) -> torch.Tensor:
    return c.float().div_(255.0) if c.dtype == torch.uint8 else c


tap_target = objectives.tap_target
tap_step_size = objectives.tap_step_size


class Engine:
    """One process's share of a crafting run. With torch.distributed initialised, rank r of W
    owns the images r, r+W, r+2W, ... (``clean``/``labels`` here are that shard): it crafts δ
    for them only, and the surrogate trains with DistributedDataParallel on every shard with
    a per-rank batch of ceil(train_batch_size / W) (the global batch of one process)."""

    def __init__(self, cfg: CraftConfig, clean: torch.Tensor, labels: torch.Tensor, surrogate, device, progress: bool,
                 rank: int = 0, world: int = 1, n_global: int | None = None, delta_dir: str | None = None):
        self.cfg = cfg
        self.device = device
        self.labels = labels
        self.N = clean.shape[0]
        self.C = cfg.num_classes
        self.progress = progress
        self.rank, self.world = rank, world
        n_global = n_global or self.N
        self.n_global = n_global
        self.train_bs = -(-cfg.train_batch_size // world)
        # SGD steps per round, equal on every rank (DDP): cfg.train_steps, or the epochs' worth
        per_rank = -(-n_global // world)  # ceil division
        epoch_steps = -(-per_rank // self.train_bs)
        self.train_steps = cfg.train_steps if cfg.train_steps > 0 else epoch_steps
        self.train_passes = 1 if cfg.train_steps > 0 else cfg.train_epochs  # train_epoch() calls per round
        self.train_images_per_round = (self.train_steps * self.train_bs * world if cfg.train_steps > 0
                                       else n_global * cfg.train_epochs)
        self.obj = objectives.get(cfg.objective)  # cfg's values were checked where it was made (CraftConfig)
        self.cursor = 0  # train_order="sequential": the next position in the fixed order; per-batch: the step
        self._order = None  # train_order="sequential": the run's fixed order, drawn on first use
        self._epoch_perm = (None, None)  # per-batch: (epoch, its permutation)
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 7919 * rank)
        self.amp = resolve_amp(cfg.amp, device)  # bf16 autocast on CUDA, and on CPUs with native bf16
        if torch.device(device).type == "cpu" and cfg.storage != "disk":
            # no mmap/munmap of every step's activations (miue/_malloc.py); storage="disk" is the
            # memory-frugal mode, and the tuning keeps freed memory (about +130 MiB peak there);
            # process-wide, so only where the process opted in (the CLI does)
            tune_if_opted_in()
        self.channels_last = bool(cfg.channels_last)
        self.labels_dev = labels.to(device)
        shape = tuple(clean.shape[1:])
        # sample-wise δ lives in the store beside the images; class-wise δ (C rows) on the device
        # (storage="disk": only the shape; the store makes δ a zero-filled memory-mapped file)
        disk = cfg.storage == "disk" and not cfg.classwise
        delta0 = torch.empty((self.N,) + shape, device="meta") if disk else torch.zeros((0 if cfg.classwise else self.N,) + shape)
        bytes_needed = clean.numel() * clean.element_size() + delta0.numel() * 4
        resident = cfg.storage == "device" or (cfg.storage == "auto" and fits_on_device(bytes_needed, device))
        if not resident and cfg.storage != "disk":
            log.info("dataset does not fit on %s: streaming batches from pinned host memory", device)
        delta_file = None
        if disk:
            if delta_dir is None:
                raise ValueError("storage='disk' keeps δ in a file beside the checkpoints: pass checkpoint_dir")
            delta_file = os.path.join(delta_dir, "delta.bin")
        self.store = DeltaStore(clean, delta0, cfg.delta_dtype, device, resident, int8_limit=eps_steps(cfg.eps),
                                delta_file=delta_file)
        if cfg.classwise:
            self.class_delta_dev = torch.zeros((self.C,) + shape, device=device)
            self.zero_clean = torch.zeros_like(self.class_delta_dev)
        self.model = None
        self._graph, self._graph_failed = None, False
        # what became of cuda_graphs (recorded with the result): None until a full batch asked
        # for a graph, then "captured" or "failed (Type: message)"
        self.graph_status: str | None = None
        if self.obj.surrogate != "none":
            self._build_surrogate(surrogate, clean)
        if cfg.delta_init != "zero" and not cfg.classwise:
            self._init_delta()

    # ---------------------------------------------------------------- one round
    def run_round(self, e: int) -> dict:
        """Round ``e``: train the surrogate on the poisoned data, then PGD on every δ. Returns
        the round's record (EM's stopping rule ends the run with ``"stopped": True``)."""
        cfg = self.cfg
        if cfg.schedule == "per-batch":
            return self._run_per_batch(e)
        t0 = time.perf_counter()
        lr = self.opt.param_groups[0]["lr"]
        for _ in range(self.train_passes):  # 1. cross-entropy on clamp(flip(x) + δ), SGD steps
            train_loss, train_acc = self.train_epoch()
        train_loss, train_acc = float(train_loss), float(train_acc)
        t1 = time.perf_counter()
        rec = {"round": e, "train_loss": train_loss, "train_acc": train_acc}
        if cfg.stop_train_acc > 0 and train_acc >= cfg.stop_train_acc:
            # an ablation's rule: the surrogate's running train accuracy already fits the poisoned data
            log.info("round %d: surrogate accuracy %.4f >= stop_train_acc %.4f: crafting ends", e, train_acc,
                     cfg.stop_train_acc)
            return {**rec, "stopped": True, "stop": "stop_train_acc", "lr": lr, "seconds": t1 - t0}
        if self.obj.attack == "after_training" and e < cfg.rounds:  # TAP, PIL: train first, attack at the end
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"round {e}: the surrogate produced NaN/Inf (train loss {train_loss})")
            return {**rec, "lr": lr, "seconds": t1 - t0, "train_images_per_s": self.train_images_per_round / (t1 - t0)}
        matched = cfg.recipe == "matched" and self.obj.matched_step is not None
        alpha = self.obj.matched_step(cfg) if matched else cfg.alpha(e)
        objective = float(self.pgd_pass(alpha))  # 2. K signed-gradient steps on every δ, frozen surrogate
        t2 = time.perf_counter()
        if not (math.isfinite(objective) and math.isfinite(train_loss)):
            raise FloatingPointError(f"round {e}: the surrogate produced NaN/Inf (objective {objective}, "
                                     f"train loss {train_loss})")
        rec = {**rec, "objective_loss": objective, "alpha": alpha, "lr": lr, "seconds": t2 - t0,
               "train_images_per_s": self.train_images_per_round / (t1 - t0),
               "pgd_images_per_s": self.n_global * cfg.pgd_steps * max(1, cfg.restarts) / (t2 - t1)}
        if cfg.stop_eval_acc > 0:  # 3. EM's published stop: the eval-mode surrogate on the whole poisoned set
            acc = self.poisoned_accuracy()
            rec.update(eval_acc=acc, seconds=time.perf_counter() - t0)
            if acc > cfg.stop_eval_acc:
                log.info("round %d: the surrogate classifies %.4f of the poisoned set (> %.4f): crafting ends", e,
                         acc, cfg.stop_eval_acc)
                rec.update(stopped=True, stop="stop_eval_acc")
            elif e == cfg.rounds:
                log.warning("round %d: the cap on rounds was hit before the stop rule (accuracy %.4f <= %.4f)", e,
                            acc, cfg.stop_eval_acc)
                rec["stop"] = "cap"
        return rec

    # ---------------------------------------------------------------- REM's published loop
    def _run_per_batch(self, e: int) -> dict:
        """Round ``e`` of ``schedule="per-batch"`` (REM's published loop, Fu et al. 2022): the run's
        ``train_steps`` steps in ``rounds`` equal parts. Each step draws a batch (fresh shuffles,
        full batches only), crafts its δ from a new random start (:meth:`_minimax_delta`), stores
        it, then takes one adversarial training step on augment(x + δ) + ρ. The last round then
        crafts every δ again with the final surrogate."""
        cfg = self.cfg
        t0 = time.perf_counter()
        lr = self.opt.param_groups[0]["lr"]
        per = -(-cfg.train_steps // cfg.rounds)
        steps = max(0, min(per, cfg.train_steps - (e - 1) * per))
        loss_sum, correct, seen, objective = 0.0, 0, 0, 0.0
        alpha = cfg.alpha(e)
        for _ in range(steps):
            idx = self._next_batch()
            c_box = self.store.clean_batch(idx)
            clean_f = _as_float01(c_box)
            y = self.labels_dev.index_select(0, idx.to(self.device))
            d, obj = self._minimax_delta(c_box, clean_f, y, alpha)
            self.store.write_delta(idx, d)
            objective += obj
            x = (clean_f + d).clamp_(0, 1)
            if cfg.train_augment in AUGMENTS:
                x = AUGMENTS[cfg.train_augment](x, self.gen)
            self.model.train()
            self.model.requires_grad_(True)
            loss, logits = self._train_step(x, y)
            self.sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(idx)
        t1 = time.perf_counter()
        rec = {"round": e, "train_steps": steps, "train_loss": loss_sum / max(seen, 1),
               "train_acc": correct / max(seen, 1), "objective_loss": objective / max(steps, 1), "alpha": alpha,
               "lr": lr}
        if e == cfg.rounds:  # every δ crafted again with the final surrogate
            total = 0.0
            for idx in self._batches(cfg.pgd_batch_size):
                c_box = self.store.clean_batch(idx)
                y = self.labels_dev.index_select(0, idx.to(self.device))
                d, obj = self._minimax_delta(c_box, _as_float01(c_box), y, alpha)
                self.store.write_delta(idx, d)
                total += obj * len(idx)
            rec["final_objective_loss"] = total / self.N
        t2 = time.perf_counter()
        if not (math.isfinite(rec["train_loss"]) and math.isfinite(rec["objective_loss"])):
            raise FloatingPointError(f"round {e}: the surrogate produced NaN/Inf ({rec})")
        return {**rec, "seconds": t2 - t0, "train_seconds": t1 - t0}

    def _next_batch(self):
        """The next full training batch of the per-batch loop: step t takes batch t mod (N // B) of
        the permutation drawn for epoch t // (N // B) from the seed (resumable from the step count)."""
        bs = min(self.train_bs, self.N)
        per_epoch = self.N // bs
        epoch, pos = divmod(self.cursor, per_epoch)
        if self._epoch_perm[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1000003 + 7919 * self.rank + epoch)
            self._epoch_perm = (epoch, torch.randperm(self.N, generator=g))
        self.cursor += 1
        return self._epoch_perm[1][pos * bs:(pos + 1) * bs]

    def _minimax_delta(self, c_box, clean_f, y, alpha):
        """REM's δ for one batch: from a uniform random start, ``pgd_steps`` signed steps of
        ``alpha`` that descend the loss at the worst ρ: each step sums, over ``eot_samples``
        augmentations T, the gradient w.r.t. δ of T(x + δ)·g, g the loss gradient at
        T(x + δ) + ρ (ρ by :meth:`_rem_rho`; Danskin's theorem, as the authors' code). Returns
        (δ, the last step's mean loss)."""
        cfg = self.cfg
        model = self.model
        model.eval()
        model.requires_grad_(False)
        d = self._random_delta(tuple(c_box.shape), c_box).to(self.device)
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
                adv = (xd.detach() + self._rem_rho(xd.detach(), y)).clamp_(0, 1).requires_grad_(True)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    loss = F.cross_entropy(self.forward(self._input(adv)).float(), y)
                (g_adv,) = torch.autograd.grad(loss, adv)
                (g,) = torch.autograd.grad((xd * g_adv).sum(), dv)
                g_sum += g
                loss_sum += float(loss.detach())
            ops.pgd_linf_step_(d, g_sum, c_box, alpha, cfg.eps, 0.0, 1.0, backend=cfg.backend)
            last = loss_sum / cfg.eot_samples
        return d.detach(), last

    @torch.no_grad()
    def poisoned_accuracy(self) -> float:
        """The surrogate's accuracy, in eval mode, on every image of the shard plus its δ (all
        ranks' images under torch.distributed): EM's published stopping criterion."""
        model = self.model
        model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for s in range(0, self.N, self.cfg.pgd_batch_size):
            idx = torch.arange(s, min(s + self.cfg.pgd_batch_size, self.N))
            x = (_as_float01(self.store.clean_batch(idx)) + self._delta_for(idx)).clamp_(0, 1)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.forward(self._input(x))
            correct += (logits.argmax(1) == self.labels_dev.index_select(0, idx.to(self.device))).sum()
        seen = torch.tensor(float(self.N))
        if self.world > 1:
            correct, seen = all_reduce_sum(correct.float(), seen)
        return float(correct.float() / seen)

    # ---------------------------------------------------------------- surrogate
    def _build_surrogate(self, surrogate, clean):
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if surrogate is None:
                model = build_model(cfg.arch, self.C, channels=clean.shape[1], image_size=clean.shape[2],
                                    normalize=cfg.input_norm)
            else:
                model = FeatureModel(copy.deepcopy(surrogate))
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if self.obj.needs_features:  # fail now, not after an epoch, if there are no features
            model.eval()
            with torch.no_grad():
                model(_as_float01(clean[:2].to(self.device)), return_features=True)
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   nesterov=cfg.nesterov)
        sched = torch.optim.lr_scheduler
        if cfg.lr_schedule == "cosine":  # stepped once per surrogate epoch (train_epoch call)
            self.sched = sched.CosineAnnealingLR(self.opt, T_max=cfg.rounds * self.train_passes, eta_min=cfg.lr_min)
        elif cfg.lr_schedule == "multistep":  # milestones in surrogate epochs
            self.sched = sched.MultiStepLR(self.opt, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma)
        elif cfg.lr_schedule == "step":  # stepped once per training step (the per-batch schedule)
            self.sched = sched.StepLR(self.opt, step_size=cfg.lr_step_every, gamma=cfg.lr_gamma)
        else:  # constant
            self.sched = sched.MultiplicativeLR(self.opt, lr_lambda=_one)
        self.forward = model
        if cfg.compile:
            self.forward = torch.compile(model)
        self.train_forward = self.forward
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.train_forward = torch.compile(ddp) if cfg.compile else ddp

    def _input(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # ---------------------------------------------------------------- one round
    def _batches(self, batch_size):
        perm = torch.randperm(self.N, generator=self.gen)
        return [perm[i:i + batch_size] for i in range(0, self.N, batch_size)]

    def _flips(self, n):
        if not self.cfg.flip:
            return None
        return (torch.rand(n, generator=self.gen) < 0.5)

    def _delta_for(self, idx):
        if self.cfg.classwise:
            return self.class_delta_dev.index_select(0, self.labels_dev.index_select(0, idx.to(self.device)))
        return self.store.delta_batch(idx)

    def _train_batches(self):
        """train_steps batches of train_bs local indices (wrapping around when this rank's
        shard is shorter, so that every rank takes the same number of DDP steps)."""
        need = self.train_steps * self.train_bs
        if self.cfg.train_order == "sequential":  # an unshuffled loader whose iterator carries over
            order = self._fixed_order()
            pos = (self.cursor + torch.arange(need)) % self.N
            self.cursor = int((self.cursor + need) % self.N)
            if self.cfg.train_steps > 0:
                return [order[pos[i:i + self.train_bs]] for i in range(0, need, self.train_bs)]
            order = order.roll(-int(pos[0]))  # one epoch: every image once, batches in the fixed order
            return [order[i:i + self.train_bs] for i in range(0, self.N, self.train_bs)]
        perm = torch.randperm(self.N, generator=self.gen)
        if need > self.N and self.cfg.train_steps > 0:  # fixed step count: continue with fresh permutations
            perm = torch.cat([perm] + [torch.randperm(self.N, generator=self.gen) for _ in range(-(-need // self.N) - 1)])
        elif need > self.N and self.world > 1:
            perm = perm.repeat(-(-need // self.N))[:need]
        return [perm[i:i + self.train_bs] for i in range(0, min(need, perm.numel()), self.train_bs)]

    def _fixed_order(self):
        """train_order="sequential": one order of the images for the whole run (seeded; the images'
        own order could be sorted by class, which an unshuffled CIFAR loader never is)."""
        if self._order is None:
            self._order = torch.randperm(self.N, generator=torch.Generator().manual_seed(self.cfg.seed + 104729))
        return self._order

    def train_epoch(self):
        model = self.model
        model.train()
        model.requires_grad_(True)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for idx in self._train_batches():
            seen += len(idx)
            x, y = self._train_input(idx)
            loss, logits = self._train_step(x, y)
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
        self.sched.step()
        if self.world > 1:
            loss_sum, correct, seen_t = all_reduce_sum(loss_sum, correct, torch.tensor(float(seen)))
            return loss_sum / seen_t, correct / seen_t
        return loss_sum / seen, correct.float() / seen

    def _train_input(self, idx):
        """The surrogate's training batch: the poisoned images clamp(flip(x) + δ) (the clean ones
        for TAP and PIL), with the recipe's augmentation; REM's ρ is added by _train_step."""
        cfg = self.cfg
        flips = self._flips(len(idx)) if cfg.train_augment == "flip" else None
        c = _as_float01(self.store.clean_batch(idx))
        if flips is not None:
            c = flip(c, flips.to(self.device))
        x = c if self.obj.surrogate == "clean" else (c + self._delta_for(idx)).clamp_(0, 1)
        if cfg.train_augment in AUGMENTS:
            x = AUGMENTS[cfg.train_augment](x, self.gen)
        return x, self.labels_dev.index_select(0, idx.to(self.device))

    def _train_step(self, x, y):
        """One SGD step of the surrogate on (x, y); REM trains adversarially, on x + ρ."""
        model = self.model
        if self.obj.inner_max:  # adversarial training: on x + ρ, ρ maximising the loss
            model.eval()
            model.requires_grad_(False)
            x = (x + self._rem_rho(x, y)).clamp_(0, 1)
            model.train()
            model.requires_grad_(True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.train_forward(self._input(x))
            loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return loss, logits

    def _objective(self, feats, logits, y):
        return self.obj.loss(self, feats, logits, y)

    def _rem_rho(self, x, y):
        """REM's inner maximisation: ρ in the L∞ ball of radius rem_eps (eps/2 by default) that
        raises the cross-entropy of the current surrogate at x + ρ, by rem_steps signed steps of
        rem_eps/4 from a uniform random start (drawn from the run's generator). Detached."""
        cfg = self.cfg
        r = cfg.rem_eps or cfg.eps / 2
        step = cfg.rem_step_size or r / 4
        rho = ((torch.rand(x.shape, generator=self.gen) * 2 - 1) * r).to(x.device)
        for _ in range(cfg.rem_steps):
            rho.requires_grad_(True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = F.cross_entropy(self.forward(self._input((x + rho).clamp(0, 1))).float(), y)
            (g,) = torch.autograd.grad(loss, rho)
            rho = (rho.detach() + step * g.sign()).clamp_(-r, r)
        return rho.detach()

    def _pgd_step(self, d, clean_f, c_box, y, alpha, eps, box):
        """One step on the batch δ ``d`` (float32, in place); returns the objective value."""
        # REM: the loss is taken at the worst ρ around x + δ (min over δ of max over ρ)
        rem = self.obj.inner_max
        rho = self._rem_rho((clean_f + d).clamp(0, 1), y) if rem else None
        dv = d.detach().requires_grad_(True)
        # inside a CUDA graph the autocast weight-cast cache would outlive its capture
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                            cache_enabled=not self.cfg.cuda_graphs):
            if self.obj.input_loss is not None:  # PIL: δ alone, and x + δ: two forwards (miue/objectives.py)
                loss = self.obj.input_loss(lambda z: self.forward(self._input(z)), clean_f, dv, y, self.cfg)
            else:
                x = (clean_f + dv + rho).clamp(0, 1) if rem else clean_f + dv  # (x + δ is in the box already)
                if self.cfg.attack_augment in AUGMENTS:  # differentiable augmentation of x + δ (TAP)
                    x = AUGMENTS[self.cfg.attack_augment](x, self.gen)
                feats, logits = self.forward(self._input(x), return_features=True)
                loss = self._objective(feats, logits, y)
        (g,) = torch.autograd.grad(loss, dv)
        if self.cfg.classwise:
            g_cls = torch.zeros_like(self.class_delta_dev).index_add_(0, y, g)
            ops.pgd_linf_step_(self.class_delta_dev, g_cls, self.zero_clean, alpha, eps, -1.0, 1.0, backend=self.cfg.backend)
        else:
            ops.pgd_linf_step_(d, g, c_box, alpha, eps, box[0], box[1], backend=self.cfg.backend)
        return loss.detach()

    def pgd_pass(self, alpha: float):
        cfg = self.cfg
        model = self.model
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
            return self._pgd_batches(alpha)
        finally:
            if cfg.pgd_bn == "train":
                for m, mom in zip(bn, saved_momentum):
                    m.momentum = mom
                model.eval()

    def _pgd_batches(self, alpha: float):
        cfg = self.cfg
        total = torch.zeros((), device=self.device)
        steps = 0
        alpha_t = torch.tensor(alpha, dtype=torch.float64)
        eps_t = torch.tensor(cfg.eps, dtype=torch.float64)
        for idx in self._batches(cfg.pgd_batch_size):
            flips = self._flips(len(idx))
            c_box = self.store.clean_batch(idx)  # uint8 or float32: the box is around the flipped clean
            if flips is not None:
                c_box = flip(c_box, flips.to(self.device))
            clean_f = _as_float01(c_box)
            y = self.labels_dev.index_select(0, idx.to(self.device))
            if cfg.classwise:
                for _ in range(cfg.pgd_steps):
                    d = self._delta_for(idx)
                    total += self._pgd_step(d, clean_f, c_box, y, alpha_t, eps_t, (0.0, 1.0))
                    steps += 1
                continue
            d = self.store.delta_batch(idx)
            if cfg.restarts > 1 and self.obj.attack == "after_training":
                loss_sum, d = self._restarts(d, clean_f, c_box, y, alpha_t, eps_t)
                total += loss_sum
                steps += cfg.pgd_steps
                self.store.write_delta(idx, d)
                continue
            graphed = self._graphed_step(d, clean_f, c_box, y) if len(idx) == cfg.pgd_batch_size else None
            if graphed is not None:
                total += graphed.run(d, clean_f, c_box, y, alpha, cfg.pgd_steps)
                steps += cfg.pgd_steps
            else:
                for _ in range(cfg.pgd_steps):
                    total += self._pgd_step(d, clean_f, c_box, y, alpha_t, eps_t, self._box)
                    steps += 1
            self.store.write_delta(idx, d)
        if self.world > 1:
            total, steps_t = all_reduce_sum(total, torch.tensor(float(steps)))
            return total / steps_t.clamp_min(1)
        return total / max(steps, 1)

    @property
    def _box(self):
        """The box x + δ is kept in during PGD: [0, 1], or none for PIL, whose authors clip only
        the released image ([-1, 2] never binds with |δ| ≤ ε)."""
        return self.obj.box

    def _random_delta(self, shape, clean):
        """A random start in the ε ball (and the box around ``clean``): uniform or clipped normal."""
        eps = self.cfg.eps
        if self.cfg.delta_init == "normal":
            d = (torch.randn(shape, generator=self.gen) * eps).clamp_(-eps, eps)
        else:
            d = (torch.rand(shape, generator=self.gen) * 2 - 1) * eps
        lo, hi = self._box
        return ops.project_linf_(d, clean.cpu(), eps, lo, hi)

    def _init_delta(self):
        """delta_init "uniform" / "normal": every δ from the run's generator, in chunks."""
        for s in range(0, self.N, 4096):
            idx = torch.arange(s, min(s + 4096, self.N))
            c = self.store.clean[s:s + 4096]
            self.store.write_delta(idx, self._random_delta((len(idx),) + tuple(c.shape[1:]), c).to(self.device))

    def _restarts(self, d, clean_f, c_box, y, alpha_t, eps_t):
        """``restarts`` attacks of the batch, the first from δ as stored, the others from fresh
        random starts; keeps the one with the lowest final mean objective (the authors keep the
        best restart over the whole set; per batch is at least as strong). Returns (the summed
        objective of the kept attack's steps, its δ)."""
        best, best_loss, best_sum = None, math.inf, None
        for r in range(self.cfg.restarts):
            cur = d.clone() if r == 0 else self._random_delta(tuple(d.shape), c_box).to(d.device)
            total = torch.zeros((), device=self.device)
            for _ in range(self.cfg.pgd_steps):
                total += self._pgd_step(cur, clean_f, c_box, y, alpha_t, eps_t, self._box)
            final = float(self._final_objective(cur, clean_f, y))
            if final < best_loss:
                best, best_loss, best_sum = cur, final, total
        return best_sum, best

    @torch.no_grad()
    def _final_objective(self, d, clean_f, y):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            feats, logits = self.forward(self._input(clean_f + d), return_features=True)
            return self._objective(feats, logits, y)

    def _graphed_step(self, d, clean_f, c_box, y):
        """The CUDA graph of one sample-wise PGD step for full batches (``cuda_graphs``), built
        on first use; None when graphs are off or capture failed (the step then runs eagerly)."""
        if not (self.cfg.cuda_graphs and graphs_possible(self.device)) or self._graph_failed or self.obj.inner_max \
                or self.cfg.attack_augment != "none":
            return None  # (REM's starts and the augmentations draw random numbers on the host: not capturable)
        if self._graph is None or self._graph.c_box.dtype != c_box.dtype:
            try:
                step = lambda *a: self._pgd_step(*a, self._box)  # noqa: E731  (the eager path's box)
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

    # ---------------------------------------------------------------- random noise
    def random_noise(self, owned: torch.Tensor | None = None, n_global: int | None = None):
        """Uniform noise in [-eps, eps], projected into the box around each clean image. Drawn
        for all images from the seed, then sharded: the same noise for any number of ranks."""
        cfg = self.cfg
        n = self.C if cfg.classwise else (n_global or self.N)
        shape = (n,) + tuple(self.store.clean.shape[1:])
        noise = (torch.rand(shape, generator=torch.Generator().manual_seed(cfg.seed)) * 2 - 1) * cfg.eps
        if owned is not None and not cfg.classwise:
            noise = noise[owned]
        if cfg.classwise:
            self.class_delta_dev.copy_(noise.to(self.device))
        else:
            for s in range(0, self.N, 4096):  # in chunks: the clean images may be a memory-mapped cache
                idx = torch.arange(s, min(s + 4096, self.N))
                part = noise[s:s + 4096]
                ops.project_linf_(part, self.store.clean[s:s + 4096].cpu(), cfg.eps)
                self.store.write_delta(idx, part.to(self.device))

    # ---------------------------------------------------------------- state
    def state(self, round_done: int, history: list) -> dict:
        st = {
            "round": round_done,
            "history": json.dumps(history),
            "generator": self.gen.get_state(),
            "delta": self.store.delta.cpu() if not self.cfg.classwise else self.class_delta_dev.cpu(),
        }
        if self.cfg.train_order == "sequential" or self.cfg.schedule == "per-batch":
            st["cursor"] = self.cursor
        if self.model is not None:
            st["model"] = self.model.state_dict()
            st["optimizer"] = self.opt.state_dict()
            st["scheduler"] = self.sched.state_dict()
        return st

    def load_state(self, st: dict):
        self.gen.set_state(st["generator"])
        self.cursor = int(st.get("cursor", 0))
        if self.cfg.classwise:
            self.class_delta_dev.copy_(st["delta"].to(self.device))
        else:
            self.store.delta.copy_(st["delta"].to(self.store.delta.device))
        if self.model is not None:
            self.model.load_state_dict(st["model"])
            self.opt.load_state_dict(st["optimizer"])
            self.sched.load_state_dict(st["scheduler"])
        return st["round"], json.loads(st["history"])

    def extend_schedule(self) -> None:
        """After :meth:`load_state` of a run with fewer rounds: the cosine learning-rate
        schedule continues from the checkpoint's step as if it had been planned for
        ``cfg.rounds`` rounds (the α schedule reads ``cfg.rounds`` itself)."""
        if self.model is None:
            return
        s = self.sched
        s.T_max = self.cfg.rounds * self.train_passes
        for group, base in zip(self.opt.param_groups, s.base_lrs):
            group["lr"] = s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * s.last_epoch / s.T_max)) / 2
        s._last_lr = [group["lr"] for group in self.opt.param_groups]


def _one(_epoch):
    return 1.0
