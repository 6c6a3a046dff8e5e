"""This process's share of a crafting run: its images and δ (in the :class:`~miue.craft.store.DeltaStore`,
or C class rows for class-wise δ), its labels on the device, and the orders batches are drawn in.

Every random draw (shuffles, flips) comes from the run's one generator, passed in, so that a
checkpointed generator state reproduces an uninterrupted run.
"""

from __future__ import annotations

import logging
import os

import torch

from miue._quantize import eps_steps
from miue.craft.store import DeltaStore, fits_on_device
from miue.presets import CraftConfig

log = logging.getLogger("miue.craft")


def as_float01(c: torch.Tensor) -> torch.Tensor:
    return c.float().div_(255.0) if c.dtype == torch.uint8 else c


class Shard:
    """Rank r of W owns the images r, r+W, r+2W, ... (``clean``/``labels`` are that shard); the
    surrogate's batch per rank is ceil(train_batch_size / W), and every rank takes the same
    number of SGD steps per round (DDP)."""

    def __init__(self, cfg: CraftConfig, clean: torch.Tensor, labels: torch.Tensor, device, gen: torch.Generator,
                 rank: int = 0, world: int = 1, n_global: int | None = None, delta_dir: str | None = None):
        self.cfg, self.device, self.gen = cfg, device, gen
        self.rank, self.world = rank, world
        self.labels = labels
        self.labels_dev = labels.to(device)
        self.N = clean.shape[0]
        self.C = cfg.num_classes
        self.n_global = n_global or self.N
        self.train_bs = -(-cfg.train_batch_size // world)
        # SGD steps per round, equal on every rank (DDP): cfg.train_steps, or the epochs' worth
        per_rank = -(-self.n_global // world)  # ceil division
        epoch_steps = -(-per_rank // self.train_bs)
        self.train_steps = cfg.train_steps if cfg.train_steps > 0 else epoch_steps
        self.train_passes = 1 if cfg.train_steps > 0 else cfg.train_epochs  # train_epoch() calls per round
        self.train_images_per_round = (self.train_steps * self.train_bs * world if cfg.train_steps > 0
                                       else self.n_global * cfg.train_epochs)
        self.cursor = 0  # train_order="sequential": the next position in the fixed order; per-batch: the step
        self._order = None  # train_order="sequential": the run's fixed order, drawn on first use
        self._epoch_perm = (None, None)  # per-batch: (epoch, its permutation)
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

    # ---------------------------------------------------------------- batches
    def labels_of(self, idx: torch.Tensor) -> torch.Tensor:
        return self.labels_dev.index_select(0, idx.to(self.device))

    def batches(self, batch_size: int) -> list:
        """One shuffled pass over the shard, in batches."""
        perm = torch.randperm(self.N, generator=self.gen)
        return [perm[i:i + batch_size] for i in range(0, self.N, batch_size)]

    def flips(self, n: int):
        """Which of n images to flip horizontally (None when the recipe does not flip)."""
        if not self.cfg.flip:
            return None
        return (torch.rand(n, generator=self.gen) < 0.5)

    def delta_for(self, idx: torch.Tensor) -> torch.Tensor:
        """The batch's δ: its rows of the store, or its classes' rows (class-wise)."""
        if self.cfg.classwise:
            return self.class_delta_dev.index_select(0, self.labels_of(idx))
        return self.store.delta_batch(idx)

    def train_batches(self) -> list:
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

    def next_batch(self) -> torch.Tensor:
        """The next full training batch of the per-batch schedule: step t takes batch t mod (N // B)
        of the permutation drawn for epoch t // (N // B) from the seed (resumable from the step count)."""
        bs = min(self.train_bs, self.N)
        per_epoch = self.N // bs
        epoch, pos = divmod(self.cursor, per_epoch)
        if self._epoch_perm[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1000003 + 7919 * self.rank + epoch)
            self._epoch_perm = (epoch, torch.randperm(self.N, generator=g))
        self.cursor += 1
        return self._epoch_perm[1][pos * bs:(pos + 1) * bs]

    # ---------------------------------------------------------------- δ as a whole
    def delta(self) -> torch.Tensor:
        """Every δ of the shard (the store's, or the C class rows)."""
        return self.class_delta_dev if self.cfg.classwise else self.store.delta
