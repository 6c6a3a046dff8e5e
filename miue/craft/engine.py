"""The crafting engine: one process's share of a run, and what happens in one round (SPEC §3).

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

import torch
import torch.nn as nn
import torch.nn.functional as F

from miue import ops
from miue._amp import resolve_amp
from miue._malloc import tune_cpu_allocator
from miue.craft.distributed import all_reduce_sum
from miue.craft.graphs import GraphedPGDStep
from miue.craft.store import DeltaStore, fits_on_device
from miue.models import FeatureModel, build_model
from miue.presets import CraftConfig

log = logging.getLogger("miue.craft")


def _flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def _as_float01(c: torch.Tensor) -> torch.Tensor:
    return c.float().div_(255.0) if c.dtype == torch.uint8 else c


def tap_target(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """TAP's target class: the next class, (y + 1) mod C (Fowl et al. 2021 use a fixed permutation)."""
    return torch.remainder(y + 1, num_classes)


def tap_step_size(cfg: CraftConfig) -> float:
    """TAP's constant PGD step: 2.5·ε / K for its K steps (the usual choice for a K-step L∞ attack
    that may reach the ball's surface from anywhere inside it)."""
    return 2.5 * cfg.eps / cfg.pgd_steps


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
        epoch_steps = -(-(-(-n_global // world)) // self.train_bs)
        self.train_steps = cfg.train_steps if cfg.train_steps > 0 else epoch_steps
        self.train_passes = 1 if cfg.train_steps > 0 else cfg.train_epochs  # train_epoch() calls per round
        self.train_images_per_round = (self.train_steps * self.train_bs * world if cfg.train_steps > 0
                                       else n_global * cfg.train_epochs)
        if cfg.pgd_bn not in ("eval", "train"):
            raise ValueError(f"pgd_bn must be 'eval' or 'train', got {cfg.pgd_bn!r}")
        if cfg.train_steps < 0 or not (0 <= cfg.stop_train_acc <= 1):
            raise ValueError(f"train_steps must be >= 0 and stop_train_acc in [0, 1], got {cfg.train_steps!r}, "
                             f"{cfg.stop_train_acc!r}")
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 7919 * rank)
        self.amp = resolve_amp(cfg.amp, device)  # bf16 autocast on CUDA, and on CPUs with native bf16
        if torch.device(device).type == "cpu" and cfg.storage != "disk":
            # no mmap/munmap of every step's activations (miue/_malloc.py); storage="disk" is the
            # memory-frugal mode, and the tuning keeps freed memory (about +130 MiB peak there)
            tune_cpu_allocator()
        self.channels_last = bool(cfg.channels_last)
        self.labels_dev = labels.to(device)
        shape = tuple(clean.shape[1:])
        # sample-wise δ lives in the store beside the images; class-wise δ (C rows) on the device
        # (storage="disk": only the shape; the store makes δ a zero-filled memory-mapped file)
        disk = cfg.storage == "disk" and not cfg.classwise
        delta0 = torch.empty((self.N,) + shape, device="meta") if disk else torch.zeros((0 if cfg.classwise else self.N,) + shape)
        bytes_needed = clean.numel() * clean.element_size() + delta0.numel() * 4
        if cfg.storage not in ("auto", "device", "host", "disk"):
            raise ValueError(f"storage must be 'auto', 'device', 'host' or 'disk', got {cfg.storage!r}")
        resident = cfg.storage == "device" or (cfg.storage == "auto" and fits_on_device(bytes_needed, device))
        if not resident and cfg.storage != "disk":
            log.info("dataset does not fit on %s: streaming batches from pinned host memory", device)
        delta_file = None
        if disk:
            if delta_dir is None:
                raise ValueError("storage='disk' keeps δ in a file beside the checkpoints: pass checkpoint_dir")
            delta_file = os.path.join(delta_dir, "delta.bin")
        self.store = DeltaStore(clean, delta0, cfg.delta_dtype, device, resident, int8_limit=math.floor(cfg.eps * 255 + 1e-6),
                                delta_file=delta_file)
        if cfg.classwise:
            self.class_delta_dev = torch.zeros((self.C,) + shape, device=device)
            self.zero_clean = torch.zeros_like(self.class_delta_dev)
        self.model = None
        self._graph, self._graph_failed = None, False
        if cfg.objective != "random":
            self._build_surrogate(surrogate, clean)

    # ---------------------------------------------------------------- one round
    def run_round(self, e: int) -> dict:
        """Round ``e``: train the surrogate on the poisoned data, then PGD on every δ. Returns
        the round's record (EM's stopping rule ends the run with ``"stopped": True``)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        lr = self.opt.param_groups[0]["lr"]
        for _ in range(self.train_passes):  # 1. cross-entropy on clamp(flip(x) + δ), SGD steps
            train_loss, train_acc = self.train_epoch()
        train_loss, train_acc = float(train_loss), float(train_acc)
        t1 = time.perf_counter()
        rec = {"round": e, "train_loss": train_loss, "train_acc": train_acc}
        if cfg.stop_train_acc > 0 and train_acc >= cfg.stop_train_acc:
            # EM's rule: the surrogate already fits the poisoned data, so δ stops changing
            log.info("round %d: surrogate accuracy %.4f >= stop_train_acc %.4f: crafting ends", e, train_acc,
                     cfg.stop_train_acc)
            return {**rec, "stopped": True, "lr": lr, "seconds": t1 - t0}
        if cfg.objective == "tap" and e < cfg.rounds:  # TAP: train on clean data first, attack once at the end
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"round {e}: the surrogate produced NaN/Inf (train loss {train_loss})")
            return {**rec, "lr": lr, "seconds": t1 - t0, "train_images_per_s": self.train_images_per_round / (t1 - t0)}
        alpha = tap_step_size(cfg) if cfg.objective == "tap" else cfg.alpha(e)
        objective = float(self.pgd_pass(alpha))  # 2. K signed-gradient steps on every δ, frozen surrogate
        t2 = time.perf_counter()
        if not (math.isfinite(objective) and math.isfinite(train_loss)):
            raise FloatingPointError(f"round {e}: the surrogate produced NaN/Inf (objective {objective}, "
                                     f"train loss {train_loss})")
        return {**rec, "objective_loss": objective, "alpha": alpha, "lr": lr, "seconds": t2 - t0,
                "train_images_per_s": self.train_images_per_round / (t1 - t0),
                "pgd_images_per_s": self.n_global * cfg.pgd_steps / (t2 - t1)}

    # ---------------------------------------------------------------- surrogate
    def _build_surrogate(self, surrogate, clean):
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if surrogate is None:
                model = build_model(cfg.arch, self.C, channels=clean.shape[1], image_size=clean.shape[2], normalize=True)
            else:
                model = FeatureModel(copy.deepcopy(surrogate))
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if cfg.objective in ("miue", "miue-linear"):  # fail now, not after an epoch, if there are no features
            model.eval()
            with torch.no_grad():
                model(_as_float01(clean[:2].to(self.device)), return_features=True)
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.rounds * self.train_passes,
                                                                eta_min=cfg.lr_min)
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
        perm = torch.randperm(self.N, generator=self.gen)
        need = self.train_steps * self.train_bs
        if need > self.N and self.cfg.train_steps > 0:  # fixed step count: continue with fresh permutations
            perm = torch.cat([perm] + [torch.randperm(self.N, generator=self.gen) for _ in range(-(-need // self.N) - 1)])
        elif need > self.N and self.world > 1:
            perm = perm.repeat(-(-need // self.N))[:need]
        return [perm[i:i + self.train_bs] for i in range(0, min(need, perm.numel()), self.train_bs)]

    def train_epoch(self):
        model = self.model
        model.train()
        model.requires_grad_(True)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for idx in self._train_batches():
            seen += len(idx)
            flips = self._flips(len(idx))
            c = _as_float01(self.store.clean_batch(idx))
            if flips is not None:
                c = _flip(c, flips.to(self.device))
            # TAP's surrogate learns the clean data; the min-min objectives train on the poisoned data
            x = c if self.cfg.objective == "tap" else (c + self._delta_for(idx)).clamp_(0, 1)
            y = self.labels_dev.index_select(0, idx.to(self.device))
            if self.cfg.objective == "rem":  # adversarial training: on x + ρ, ρ maximising the loss
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
            self.opt.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
        self.sched.step()
        if self.world > 1:
            loss_sum, correct, seen_t = all_reduce_sum(loss_sum, correct, torch.tensor(float(seen)))
            return loss_sum / seen_t, correct / seen_t
        return loss_sum / seen, correct.float() / seen

    def _objective(self, feats, logits, y):
        cfg = self.cfg
        if cfg.objective == "miue":
            return ops.supcon_loss(feats, y, cfg.temperature, backend=cfg.backend)
        if cfg.objective == "miue-linear":
            return ops.intra_class_cosine_loss(feats, y, self.C, backend=cfg.backend, validate=False)
        if cfg.objective == "tap":  # descend cross-entropy to the target class: raise p(target | x + δ)
            return F.cross_entropy(logits.float(), tap_target(y, self.C))
        return F.cross_entropy(logits.float(), y)

    def _rem_rho(self, x, y):
        """REM's inner maximisation: ρ in the L∞ ball of radius rem_eps (eps/2 by default) that
        raises the cross-entropy of the current surrogate at x + ρ, by rem_steps signed steps of
        rem_eps/4 from a uniform random start (drawn from the run's generator). Detached."""
        cfg = self.cfg
        r = cfg.rem_eps or cfg.eps / 2
        rho = ((torch.rand(x.shape, generator=self.gen) * 2 - 1) * r).to(x.device)
        for _ in range(cfg.rem_steps):
            rho.requires_grad_(True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = F.cross_entropy(self.forward(self._input((x + rho).clamp(0, 1))).float(), y)
            (g,) = torch.autograd.grad(loss, rho)
            rho = (rho.detach() + (r / 4) * g.sign()).clamp_(-r, r)
        return rho.detach()

    def _pgd_step(self, d, clean_f, c_box, y, alpha, eps, box):
        """One step on the batch δ ``d`` (float32, in place); returns the objective value."""
        # REM: the loss is taken at the worst ρ around x + δ (min over δ of max over ρ)
        rem = self.cfg.objective == "rem"
        rho = self._rem_rho((clean_f + d).clamp(0, 1), y) if rem else None
        dv = d.detach().requires_grad_(True)
        # inside a CUDA graph the autocast weight-cast cache would outlive its capture
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                            cache_enabled=not self.cfg.cuda_graphs):
            x = (clean_f + dv + rho).clamp(0, 1) if rem else clean_f + dv  # (x + δ is in the box already)
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
                c_box = _flip(c_box, flips.to(self.device))
            clean_f = _as_float01(c_box)
            y = self.labels_dev.index_select(0, idx.to(self.device))
            if cfg.classwise:
                for _ in range(cfg.pgd_steps):
                    d = self._delta_for(idx)
                    total += self._pgd_step(d, clean_f, c_box, y, alpha_t, eps_t, (0.0, 1.0))
                    steps += 1
                continue
            d = self.store.delta_batch(idx)
            graphed = self._graphed_step(d, clean_f, c_box, y) if len(idx) == cfg.pgd_batch_size else None
            if graphed is not None:
                total += graphed.run(d, clean_f, c_box, y, alpha, cfg.pgd_steps)
                steps += cfg.pgd_steps
            else:
                for _ in range(cfg.pgd_steps):
                    total += self._pgd_step(d, clean_f, c_box, y, alpha_t, eps_t, (0.0, 1.0))
                    steps += 1
            self.store.write_delta(idx, d)
        if self.world > 1:
            total, steps_t = all_reduce_sum(total, torch.tensor(float(steps)))
            return total / steps_t.clamp_min(1)
        return total / max(steps, 1)

    def _graphed_step(self, d, clean_f, c_box, y):
        """The CUDA graph of one sample-wise PGD step for full batches (``cuda_graphs``), built
        on first use; None when graphs are off or capture failed (the step then runs eagerly)."""
        if not (self.cfg.cuda_graphs and self.device.type == "cuda") or self._graph_failed or self.cfg.objective == "rem":
            return None  # (REM draws its random starts on the host: not capturable)
        if self._graph is None or self._graph.c_box.dtype != c_box.dtype:
            try:
                step = lambda *a: self._pgd_step(*a, (0.0, 1.0))  # noqa: E731
                self._graph = GraphedPGDStep(step, self.device, self.cfg.eps, d, clean_f, c_box, y)
            except Exception as exc:  # noqa: BLE001 - any capture failure: fall back, do not lose the run
                self._graph_failed = True
                self._graph = None
                log.warning("CUDA-graph capture of the PGD step failed (%s: %s); running it eagerly",
                            type(exc).__name__, exc)
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
        if self.model is not None:
            st["model"] = self.model.state_dict()
            st["optimizer"] = self.opt.state_dict()
            st["scheduler"] = self.sched.state_dict()
        return st

    def load_state(self, st: dict):
        self.gen.set_state(st["generator"])
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
