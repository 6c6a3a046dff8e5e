"""The crafting engine: one process's share of a run, put together (docs/crafting.md).

Round e = 1..E (:meth:`Engine.run_round`, by the schedule in :mod:`.schedules`):
  1. train the surrogate with cross-entropy on clamp(flip(x) + δ, 0, 1) (the flip is applied
     to the clean image only: post-augmentation), SGD with a cosine schedule;
  2. with the surrogate frozen, K signed-gradient PGD steps on every δ in batches:
     δ ← Π(δ - α_e·sign ∇_δ L(features(flip(x) + δ), y)), Π the L∞ ball of radius ε and the
     [0, 1] box around the (flipped) clean image, by the fused ``pgd_linf_step_``.
L is the objective's loss (its record in miue/objectives.py): the supcon loss (``miue``), the
intra-class cosine loss, cross-entropy (EM), towards a target class (TAP); an objective may
train its surrogate on the clean data, attack once after training, take its loss at the worst
ρ (REM, whose published recipe runs the per-batch schedule) or bring a loss of its own inputs
(PIL). Objectives without a surrogate draw uniform noise here or are generated elsewhere.

The parts:
  :mod:`.shard`      this process's images, labels and δ, and the batch orders;
  :mod:`.surrogate`  the model: build, SGD steps, REM's ρ, its state;
  :mod:`.attack`     PGD passes, one step, restarts, the CUDA-graphed step, random starts;
  :mod:`.schedules`  what one round does (the round schedule, REM's per-batch loop).

Speed: the dataset stays on the device as uint8 when it fits (else in pinned host memory,
streamed batch by batch, so that GPU memory does not grow with N: :mod:`.store`); flips
happen on the device; no per-sample Python loops; full PGD batches can replay a CUDA graph
(:mod:`.graphs`). All randomness (shuffles, flips, noise) comes from one seeded generator
whose state is checkpointed, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import json

import torch

from miue import objectives, ops
from miue._amp import resolve_amp
from miue._malloc import tune_if_opted_in
from miue.augment import AUGMENTS, crop_flip, flip, shift_flip  # noqa: F401  (re-exported)
from miue.craft.attack import Attack
from miue.craft.schedules import SCHEDULES
from miue.craft.shard import Shard, as_float01
from miue.craft.surrogate import Surrogate
from miue.presets import CraftConfig

tap_target = objectives.tap_target
tap_step_size = objectives.tap_step_size


class Engine:
    """One process's share of a crafting run: its :class:`~.shard.Shard`, the
    :class:`~.surrogate.Surrogate` (None for objectives without one), the :class:`~.attack.Attack`
    and the objective's record. With torch.distributed initialised, rank r of W owns the images
    r, r+W, r+2W, ... (``clean``/``labels`` here are that shard)."""

    def __init__(self, cfg: CraftConfig, clean: torch.Tensor, labels: torch.Tensor, surrogate, device, progress: bool,
                 rank: int = 0, world: int = 1, n_global: int | None = None, delta_dir: str | None = None):
        self.cfg = cfg
        self.device = device
        self.progress = progress
        self.obj = objectives.get(cfg.objective)  # cfg's values were checked where it was made (CraftConfig)
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 7919 * rank)
        self.amp = resolve_amp(cfg.amp, device)  # bf16 autocast on CUDA, and on CPUs with native bf16
        if torch.device(device).type == "cpu" and cfg.storage != "disk":
            # no mmap/munmap of every step's activations (miue/_malloc.py); storage="disk" is the
            # memory-frugal mode, and the tuning keeps freed memory (about +130 MiB peak there);
            # process-wide, so only where the process opted in (the CLI does)
            tune_if_opted_in()
        self.shard = Shard(cfg, clean, labels, device, self.gen, rank, world, n_global, delta_dir)
        self.surrogate = None
        if self.obj.surrogate != "none":
            self.surrogate = Surrogate(cfg, surrogate, clean, device, self.amp, self.gen, world,
                                       self.shard.train_passes, self.obj.needs_features)
        self.attack = Attack(cfg, self.obj, self.shard, self.surrogate, self.gen)
        if cfg.delta_init != "zero" and not cfg.classwise:
            self._init_delta()

    # the parts' state, under the names the run loop and the tests read
    @property
    def model(self):
        return self.surrogate.model if self.surrogate is not None else None

    @property
    def store(self):
        return self.shard.store

    @property
    def class_delta_dev(self):
        return self.shard.class_delta_dev

    @property
    def graph_status(self):
        return self.attack.graph_status

    # ---------------------------------------------------------------- one round
    def run_round(self, e: int) -> dict:
        """Round ``e`` by the configured schedule (:mod:`.schedules`). Returns the round's record
        (a stop rule ends the run with ``"stopped": True``)."""
        return SCHEDULES[self.cfg.schedule](self, e)

    def train_epoch(self):
        """One surrogate epoch (train_steps batches) on :meth:`_train_input`."""
        return self.surrogate.train_epoch(self.shard.train_batches(), self._train_input, self.obj.inner_max)

    def _train_input(self, idx):
        """The surrogate's training batch: the poisoned images clamp(flip(x) + δ) (the clean ones
        for objectives whose surrogate trains on clean data), with the recipe's augmentation;
        REM's ρ is added by the surrogate's step."""
        cfg, shard = self.cfg, self.shard
        flips = shard.flips(len(idx)) if cfg.train_augment == "flip" else None
        c = as_float01(shard.store.clean_batch(idx))
        if flips is not None:
            c = flip(c, flips.to(self.device))
        x = c if self.obj.surrogate == "clean" else (c + shard.delta_for(idx)).clamp_(0, 1)
        if cfg.train_augment in AUGMENTS:
            x = AUGMENTS[cfg.train_augment](x, self.gen)
        return x, shard.labels_of(idx)

    @torch.no_grad()
    def poisoned_accuracy(self) -> float:
        """The surrogate's accuracy, in eval mode, on every image of the shard plus its δ (all
        ranks' images under torch.distributed): EM's published stopping criterion."""
        from miue.craft.distributed import all_reduce_sum

        shard, sur = self.shard, self.surrogate
        sur.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for s in range(0, shard.N, self.cfg.pgd_batch_size):
            idx = torch.arange(s, min(s + self.cfg.pgd_batch_size, shard.N))
            x = (as_float01(shard.store.clean_batch(idx)) + shard.delta_for(idx)).clamp_(0, 1)
            with sur.autocast():
                logits = sur.forward(sur.input(x))
            correct += (logits.argmax(1) == shard.labels_of(idx)).sum()
        seen = torch.tensor(float(shard.N))
        if shard.world > 1:
            correct, seen = all_reduce_sum(correct.float(), seen)
        return float(correct.float() / seen)

    def _init_delta(self):
        """delta_init "uniform" / "normal": every δ from the run's generator, in chunks."""
        store = self.shard.store
        for s in range(0, self.shard.N, 4096):
            idx = torch.arange(s, min(s + 4096, self.shard.N))
            c = store.clean[s:s + 4096]
            store.write_delta(idx, self.attack.random_start((len(idx),) + tuple(c.shape[1:]), c).to(self.device))

    # ---------------------------------------------------------------- random noise
    def random_noise(self, owned: torch.Tensor | None = None, n_global: int | None = None):
        """Uniform noise in [-eps, eps], projected into the box around each clean image. Drawn
        for all images from the seed, then sharded: the same noise for any number of ranks."""
        cfg, shard = self.cfg, self.shard
        n = shard.C if cfg.classwise else (n_global or shard.N)
        shape = (n,) + tuple(shard.store.clean.shape[1:])
        noise = (torch.rand(shape, generator=torch.Generator().manual_seed(cfg.seed)) * 2 - 1) * cfg.eps
        if owned is not None and not cfg.classwise:
            noise = noise[owned]
        if cfg.classwise:
            shard.class_delta_dev.copy_(noise.to(self.device))
        else:
            for s in range(0, shard.N, 4096):  # in chunks: the clean images may be a memory-mapped cache
                idx = torch.arange(s, min(s + 4096, shard.N))
                part = noise[s:s + 4096]
                ops.project_linf_(part, shard.store.clean[s:s + 4096].cpu(), cfg.eps)
                shard.store.write_delta(idx, part.to(self.device))

    # ---------------------------------------------------------------- state
    def state(self, round_done: int, history: list) -> dict:
        st = {
            "round": round_done,
            "history": json.dumps(history),
            "generator": self.gen.get_state(),
            "delta": self.shard.delta().cpu(),
        }
        if self.cfg.train_order == "sequential" or self.cfg.schedule == "per-batch":
            st["cursor"] = self.shard.cursor
        if self.surrogate is not None:
            st.update(self.surrogate.state())
        return st

    def load_state(self, st: dict):
        self.gen.set_state(st["generator"])
        self.shard.cursor = int(st.get("cursor", 0))
        self.shard.delta().copy_(st["delta"].to(self.shard.delta().device))
        if self.surrogate is not None:
            self.surrogate.load_state(st)
        return st["round"], json.loads(st["history"])

    def extend_schedule(self) -> None:
        """After :meth:`load_state` of a run with fewer rounds: the cosine learning-rate
        schedule continues from the checkpoint's step as if it had been planned for
        ``cfg.rounds`` rounds (the α schedule reads ``cfg.rounds`` itself)."""
        if self.surrogate is not None:
            self.surrogate.extend_schedule(self.cfg.rounds)
