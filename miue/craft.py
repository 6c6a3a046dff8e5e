"""The MI-UE crafting engine: :func:`craft_fast` (SPEC §3).

One round e = 1..E:
  1. train the surrogate one epoch with cross-entropy on clamp(flip(x) + δ, 0, 1) (the flip
     is applied to the clean image only: post-augmentation), SGD with a cosine schedule;
  2. with the surrogate in eval mode and frozen, K signed-gradient PGD steps on every δ in
     batches: δ ← Π(δ - α_e·sign ∇_δ L(features(flip(x) + δ), y)), Π the L∞ ball of radius ε
     and the [0, 1] box around the (flipped) clean image, by the fused ``pgd_linf_step_``.
L is the supcon loss (``miue``), the intra-class cosine loss (``miue-linear``) or
cross-entropy on the logits (``em``: error-minimising noise); ``random`` draws uniform noise.

Speed: the dataset stays on the device as uint8 when it fits (else in pinned host memory,
streamed batch by batch, so that GPU memory does not grow with N); flips happen on the
device; no per-sample Python loops; the only host synchronisation in a round is the
progress update at its end. All randomness (shuffles, flips, noise) comes from one seeded
generator whose state is checkpointed, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import numbers
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from miue import ops
from miue import _io
from miue._io import atomic_save, load_checkpoint
from miue.models import FeatureModel, build_model
from miue.presets import OBJECTIVES, CraftConfig, make_config

log = logging.getLogger("miue.craft")

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


# =========================================================================== inputs


def as_nchw_uint8_or_float(images, name: str = "images") -> torch.Tensor:
    """Images as a CPU tensor N×C×H×W: uint8 kept as is, floats as float32 in [0, 1].

    Accepts numpy arrays or tensors shaped N×H×W, N×H×W×C (channels last when the last dim is
    1, 3 or 4 and dim 1 is not) or N×C×H×W."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array, a torch.Tensor or a torch Dataset, got {type(images).__name__}")
    x = images.detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"{name} must be N×H×W, N×H×W×C or N×C×H×W, got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating point in [0, 1], got dtype {x.dtype}")
    x = x.float().contiguous()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"float {name} must lie in [0, 1], found values in [{lo:.4g}, {hi:.4g}] (pass uint8 for 0..255)")
    return x


def _from_dataset(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError("a Dataset passed as images must yield (image, label) pairs")
        img, lab = item[0], item[1]
        if not isinstance(img, (torch.Tensor, np.ndarray)):
            img = np.asarray(img)  # PIL image: H×W or H×W×C uint8
            if img.ndim == 2:
                img = img[None]
            else:
                img = img.transpose(2, 0, 1)
        xs.append(torch.as_tensor(np.asarray(img) if isinstance(img, np.ndarray) else img))
        ys.append(int(lab))
    if not xs:
        raise ValueError("images: the Dataset is empty")
    x = torch.stack(xs)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x, torch.tensor(ys, dtype=torch.int64)


def prepare_inputs(images, labels, num_classes: int | None):
    """(clean images N×C×H×W uint8 or float32, labels int64, num_classes), validated."""
    if isinstance(images, torch.utils.data.Dataset):
        x, ds_labels = _from_dataset(images)
        labels = ds_labels if labels is None else labels
        x = as_nchw_uint8_or_float(x)
    else:
        x = as_nchw_uint8_or_float(images)
    if labels is None:
        raise ValueError("labels are required (or pass a Dataset yielding (image, label))")
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).cpu()
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    y = y.reshape(-1).long()
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} entries but images has {x.shape[0]}")
    if y.min().item() < 0:
        raise ValueError(f"labels must be >= 0, found {y.min().item()}")
    inferred = int(y.max().item()) + 1
    if num_classes is None or num_classes == 0:
        num_classes = inferred
    elif num_classes < inferred:
        raise ValueError(f"num_classes={num_classes} but labels go up to {inferred - 1}")
    counts = torch.bincount(y, minlength=num_classes)
    if ((counts == 1)).any():
        log.warning("classes %s have a single sample: the supcon loss has no positive pair for them but the sample itself",
                    (counts == 1).nonzero().flatten().tolist()[:10])
    return x, y, int(num_classes)


# =========================================================================== storage


class _Store:
    """Clean images and δ, resident on the device or in (pinned) host memory.

    δ is kept as float32, float16, or int8 in units of 1/255. Batches are gathered by index
    into float32 device tensors and written back the same way.
    """

    def __init__(self, clean: torch.Tensor, delta: torch.Tensor, delta_dtype: str, device: torch.device, resident: bool,
                 int8_limit: int = 127):
        self.device = device
        self.resident = resident
        self.delta_dtype = delta_dtype
        self.int8_limit = int8_limit  # floor(eps·255): int8 δ never leaves the ε ball
        home = device if resident else torch.device("cpu")
        pin = (not resident) and device.type == "cuda"
        self.clean = clean.to(home)
        self.delta = self._encode(delta).to(home)
        if pin:
            self.clean = self.clean.pin_memory()
            self.delta = self.delta.pin_memory()

    # -- δ codecs
    def _encode(self, d: torch.Tensor) -> torch.Tensor:
        if self.delta_dtype == "float32":
            return d.float()
        if self.delta_dtype == "float16":
            return d.half()
        return torch.round(d.float() * 255).clamp_(-self.int8_limit, self.int8_limit).to(torch.int8)

    def _decode(self, d: torch.Tensor) -> torch.Tensor:
        if self.delta_dtype == "int8":
            return d.float() / 255
        return d.float()

    def _idx(self, idx: torch.Tensor) -> torch.Tensor:
        return idx.to(self.clean.device, non_blocking=True)

    def clean_batch(self, idx):
        return self.clean.index_select(0, self._idx(idx)).to(self.device, non_blocking=True)

    def delta_batch(self, idx):
        d = self.delta.index_select(0, self._idx(idx)).to(self.device, non_blocking=True)
        return self._decode(d)

    def write_delta(self, idx, values):
        self.delta.index_copy_(0, self._idx(idx), self._encode(values).to(self.delta.device, non_blocking=True))

    def delta_full(self) -> torch.Tensor:
        return self._decode(self.delta).cpu()


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < 0.5 * free


# =========================================================================== results


@dataclass
class CraftResult:
    """The outcome of :func:`craft_fast`.

    delta:   float32 N×C×H×W, |δ| ≤ eps (class-wise runs: each sample's class δ)
    images:  the released uint8 images N×C×H×W: rounding (default) or truncation of (x+δ)·255,
             never further than eps from a uint8 clean image
    labels:  int64 N
    history: per round: surrogate train loss/accuracy, objective loss, α, lr, seconds
    config:  the CraftConfig as a dict
    """

    delta: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def save(self, path: str) -> str:
        from miue._io import save_result

        return save_result(self, path)

    @classmethod
    def load(cls, path: str) -> "CraftResult":
        from miue._io import load_result

        return load_result(path)

    def export_png(self, directory: str, class_names=None) -> str:
        """Write the released images as PNGs in ImageFolder layout: directory/<class>/<index>.png."""
        from PIL import Image

        os.makedirs(directory, exist_ok=True)
        imgs = self.images.numpy()
        for i, (img, lab) in enumerate(zip(imgs, self.labels.tolist())):
            name = class_names[lab] if class_names is not None else f"{lab:03d}"
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
            sub = os.path.join(directory, safe)
            os.makedirs(sub, exist_ok=True)
            arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            Image.fromarray(np.ascontiguousarray(arr)).save(os.path.join(sub, f"{i:06d}.png"))
        return directory


def release(clean: torch.Tensor, delta: torch.Tensor, eps: float, rounding: str = "round") -> torch.Tensor:
    """Quantise clean + δ to uint8. For uint8 clean images the result stays within eps of
    them: the step in units of 1/255 is clamped to ±floor(eps·255)."""
    if rounding not in ("round", "trunc"):
        raise ValueError(f"release rounding must be 'round' or 'trunc', got {rounding!r}")
    if clean.dtype == torch.uint8:
        base = clean.float()
        scaled = base + delta.float() * 255
        q = torch.round(scaled) if rounding == "round" else torch.trunc(scaled)
        k = math.floor(eps * 255 + 1e-6)
        q = torch.minimum(torch.maximum(q, base - k), base + k)
    else:
        scaled = (clean.float() + delta.float()) * 255
        q = torch.round(scaled) if rounding == "round" else torch.trunc(scaled)
    return q.clamp_(0, 255).to(torch.uint8)


# =========================================================================== engine


def _flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def _as_float01(c: torch.Tensor) -> torch.Tensor:
    return c.float().div_(255.0) if c.dtype == torch.uint8 else c


def _dist_info() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    import torch.distributed as dist

    flat = torch.stack([v.detach().double().reshape(()) for v in values])
    dist.all_reduce(flat)
    return list(flat)


class _GraphedPGDStep:
    """One sample-wise PGD step (surrogate forward, objective, backward w.r.t. δ, fused signed
    step and projection) captured once as a CUDA graph on static batch buffers, then replayed
    ``pgd_steps`` times per full batch: the step's few hundred kernel launches become one.
    The step size is a device scalar, so one capture serves every round."""

    def __init__(self, eng: "_Engine", d, clean_f, c_box, y):
        self.d, self.clean_f, self.c_box, self.y = d.clone(), clean_f.clone(), c_box.clone(), y.clone()
        self.alpha = torch.zeros((), dtype=torch.float64, device=eng.device)  # 0 during warm-up: δ unchanged
        eps = torch.tensor(eng.cfg.eps, dtype=torch.float64)

        def step():
            return eng._pgd_step(self.d, self.clean_f, self.c_box, self.y, self.alpha, eps, (0.0, 1.0))

        side = torch.cuda.Stream(eng.device)
        side.wait_stream(torch.cuda.current_stream(eng.device))
        with torch.cuda.stream(side):  # warm-up (lazy initialisation, compilation) outside the capture
            for _ in range(3):
                step()
        torch.cuda.current_stream(eng.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = step()

    def run(self, d, clean_f, c_box, y, alpha: float, steps: int) -> torch.Tensor:
        """``steps`` steps on the batch δ ``d`` (updated in place); the summed objective."""
        self.d.copy_(d)
        self.clean_f.copy_(clean_f)
        self.c_box.copy_(c_box)
        self.y.copy_(y)
        self.alpha.fill_(alpha)
        total = torch.zeros((), device=d.device)
        for _ in range(steps):
            self.graph.replay()
            total += self.loss
        d.copy_(self.d)
        return total


class _Engine:
    """One process's share of a crafting run. With torch.distributed initialised, rank r of W
    owns the images r, r+W, r+2W, ... (``clean``/``labels`` here are that shard): it crafts δ
    for them only, and the surrogate trains with DistributedDataParallel on every shard with
    a per-rank batch of ceil(train_batch_size / W) (the global batch of one process)."""

    def __init__(self, cfg: CraftConfig, clean: torch.Tensor, labels: torch.Tensor, surrogate, device, progress: bool,
                 rank: int = 0, world: int = 1, n_global: int | None = None):
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
        self.train_steps = -(-(-(-n_global // world)) // self.train_bs)  # equal on every rank (DDP)
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 7919 * rank)
        cuda = device.type == "cuda"
        self.amp = bool(cfg.amp and cuda)
        self.channels_last = bool(cfg.channels_last)
        self.labels_dev = labels.to(device)
        shape = tuple(clean.shape[1:])
        # sample-wise δ lives in the store beside the images; class-wise δ (C rows) on the device
        delta0 = torch.zeros((0 if cfg.classwise else self.N,) + shape)
        bytes_needed = clean.numel() * clean.element_size() + delta0.numel() * 4
        if cfg.storage not in ("auto", "device", "host"):
            raise ValueError(f"storage must be 'auto', 'device' or 'host', got {cfg.storage!r}")
        resident = cfg.storage == "device" or (cfg.storage == "auto" and _fits_on_device(bytes_needed, device))
        if not resident:
            log.info("dataset does not fit on %s: streaming batches from pinned host memory", device)
        self.store = _Store(clean, delta0, cfg.delta_dtype, device, resident, int8_limit=math.floor(cfg.eps * 255 + 1e-6))
        if cfg.classwise:
            self.class_delta_dev = torch.zeros((self.C,) + shape, device=device)
            self.zero_clean = torch.zeros_like(self.class_delta_dev)
        self.model = None
        self._graph, self._graph_failed = None, False
        if cfg.objective != "random":
            self._build_surrogate(surrogate, clean)

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
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.rounds * cfg.train_epochs, eta_min=cfg.lr_min)
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
        if need > self.N and self.world > 1:
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
            x = (c + self._delta_for(idx)).clamp_(0, 1)
            y = self.labels_dev.index_select(0, idx.to(self.device))
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
            loss_sum, correct, seen_t = _all_reduce_sum(loss_sum, correct, torch.tensor(float(seen)))
            return loss_sum / seen_t, correct / seen_t
        return loss_sum / seen, correct.float() / seen

    def _objective(self, feats, logits, y):
        cfg = self.cfg
        if cfg.objective == "miue":
            return ops.supcon_loss(feats, y, cfg.temperature, backend=cfg.backend)
        if cfg.objective == "miue-linear":
            return ops.intra_class_cosine_loss(feats, y, self.C, backend=cfg.backend, validate=False)
        return F.cross_entropy(logits.float(), y)

    def _pgd_step(self, d, clean_f, c_box, y, alpha, eps, box):
        """One step on the batch δ ``d`` (float32, in place); returns the objective value."""
        dv = d.detach().requires_grad_(True)
        # inside a CUDA graph the autocast weight-cast cache would outlive its capture
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                            cache_enabled=not self.cfg.cuda_graphs):
            feats, logits = self.forward(self._input(clean_f + dv), return_features=True)
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
        model.eval()
        model.requires_grad_(False)
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
            total, steps_t = _all_reduce_sum(total, torch.tensor(float(steps)))
            return total / steps_t.clamp_min(1)
        return total / max(steps, 1)

    def _graphed_step(self, d, clean_f, c_box, y):
        """The CUDA graph of one sample-wise PGD step for full batches (``cuda_graphs``), built
        on first use; None when graphs are off or capture failed (the step then runs eagerly)."""
        if not (self.cfg.cuda_graphs and self.device.type == "cuda") or self._graph_failed:
            return None
        if self._graph is None or self._graph.c_box.dtype != c_box.dtype:
            try:
                self._graph = _GraphedPGDStep(self, d, clean_f, c_box, y)
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
            ops.project_linf_(noise, self.store.clean.cpu(), cfg.eps)
            self.store.write_delta(torch.arange(self.N), noise.to(self.device))

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


def _fingerprint(clean: torch.Tensor, labels: torch.Tensor) -> str:
    """Identifies the inputs of a checkpoint: all images up to 512 MiB, else every k-th one."""
    h = hashlib.sha256()
    h.update(str(tuple(clean.shape)).encode() + str(clean.dtype).encode())
    h.update(labels.numpy().tobytes())
    flat = clean.reshape(clean.shape[0], -1)
    step = max(1, -(-clean.numel() * clean.element_size() // 2**29))
    h.update(flat[::step].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


_CHECKED_KEYS = ("objective", "eps", "rounds", "pgd_steps", "pgd_batch_size", "train_batch_size", "arch", "seed",
                 "classwise", "temperature", "alpha_start", "alpha_end", "lr", "delta_dtype", "num_classes", "flip")


def craft_fast(
    images,
    labels=None,
    *,
    eps: float = 8 / 255,
    preset: str = "paper",
    objective: str = "miue",
    surrogate: nn.Module | None = None,
    rounds: int | None = None,
    pgd_steps: int | None = None,
    batch_size: int | None = None,
    train_batch_size: int | None = None,
    device=None,
    backend: str | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
    classwise: bool = False,
    num_classes: int | None = None,
    delta_dtype: str | None = None,
    release_rounding: str = "round",
    seed: int = 0,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 1,
    progress: bool = True,
    **options,
) -> CraftResult:
    """Craft unlearnable examples (MI-UE by default) for a labelled image set.

    images: uint8 (0..255) or float (in [0, 1]) numpy array or tensor, N×H×W, N×H×W×C or
        N×C×H×W, any channel count; or a torch Dataset yielding (image, label).
    labels: integer labels (N); optional with a Dataset.
    eps: L∞ budget in [0, 1] units (8/255 by default).
    preset: "paper" (SPEC §3 exactly), "fast" (paper + bf16/channels_last/compile/CUDA
        graphs on CUDA) or "demo" (small CNN, short schedule for CPUs).
    objective: "miue" (supcon loss), "miue-linear" (intra-class cosine loss), "em"
        (error-minimising cross-entropy) or "random" (uniform noise, no model).
    surrogate: an nn.Module returning logits (features = the input of its last nn.Linear)
        or (features, logits); a copy is trained. Default: the preset's architecture.
    rounds, pgd_steps, batch_size (PGD batch), train_batch_size, amp, channels_last, compile,
        cuda_graphs, delta_dtype ("float32" | "float16" | "int8"): override the preset.
    Other keyword options override CraftConfig fields (lr, temperature, alpha_start, ...).
    checkpoint_dir: write a checkpoint every ``checkpoint_every`` rounds (atomically) and
        per-round metrics (metrics.jsonl); calling again with the same directory resumes.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or not (0 < eps <= 1):
        raise ValueError(f"eps must be a number in (0, 1], got {eps!r}")
    for name, v in (("rounds", rounds), ("pgd_steps", pgd_steps), ("batch_size", batch_size),
                    ("train_batch_size", train_batch_size), ("checkpoint_every", checkpoint_every)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if delta_dtype is not None and delta_dtype not in ("float32", "float16", "int8"):
        raise ValueError(f"delta_dtype must be 'float32', 'float16' or 'int8', got {delta_dtype!r}")
    if release_rounding not in ("round", "trunc"):
        raise ValueError(f"release_rounding must be 'round' or 'trunc', got {release_rounding!r}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clean, y, C = prepare_inputs(images, labels, num_classes)
    cfg = make_config(
        preset, objective=objective, eps=float(eps), rounds=rounds, pgd_steps=pgd_steps, pgd_batch_size=batch_size,
        train_batch_size=train_batch_size, amp=amp, channels_last=channels_last, compile=compile,
        cuda_graphs=cuda_graphs, classwise=classwise, delta_dtype=delta_dtype, release_rounding=release_rounding,
        seed=seed, backend=backend, checkpoint_every=checkpoint_every, num_classes=C, **options,
    )
    if cfg.delta_dtype == "int8" and cfg.eps * 255 > 127:
        raise ValueError("delta_dtype='int8' holds |δ| ≤ 127/255; use float16/float32 for a larger eps")
    if device.type != "cuda":  # bf16 autocast and CUDA graphs are CUDA-only (channels_last helps oneDNN too)
        cfg.amp = cfg.cuda_graphs = False
    if cfg.classwise and _dist_info()[1] > 1 and cfg.objective != "random":
        raise ValueError("classwise crafting is not supported under torch.distributed (class perturbations would "
                         "need a collective per PGD step); run it in one process")
    return _run(cfg, clean, y, surrogate, device, checkpoint_dir, progress)


def _gather_delta(local: torch.Tensor, owned: torch.Tensor, n_global: int, world: int) -> torch.Tensor:
    """Every rank's δ shard, assembled in image order on every rank (one all_gather at the end)."""
    import torch.distributed as dist

    n_max = -(-n_global // world)
    pad = torch.zeros((n_max,) + tuple(local.shape[1:]), dtype=local.dtype)
    pad[: local.shape[0]] = local
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty_like(pad, device=backend_device) for _ in range(world)]
    dist.all_gather(parts, pad.to(backend_device))
    full = torch.empty((n_global,) + tuple(local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        idx = torch.arange(r, n_global, world)
        full[idx] = part[: idx.numel()].cpu()
    return full


def _load_resumable(ckpt_path: str, world: int):
    """The newest checkpoint all ranks have: with several ranks a kill during a save can leave
    one rank a round ahead, so the previous checkpoint is kept and the ranks agree on the
    oldest round (one all_reduce)."""
    candidates = [p for p in (ckpt_path, ckpt_path + ".prev") if os.path.exists(p)]
    states = [load_checkpoint(p) for p in candidates]
    if world == 1:
        return states[0] if states else None
    import torch.distributed as dist

    mine = torch.tensor([float(states[0]["round"]) if states else -1.0])
    dist.all_reduce(mine, op=dist.ReduceOp.MIN)
    agreed = int(mine.item())
    if agreed < 0:
        return None
    for st in states:
        if st["round"] == agreed:
            return st
    raise ValueError(f"checkpoint {ckpt_path}: no state for round {agreed} that the other ranks agreed on")


def _run(cfg: CraftConfig, clean, y, surrogate, device, checkpoint_dir, progress) -> CraftResult:
    from miue._io import check_writable

    rank, world = _dist_info()
    n_global = clean.shape[0]
    owned = torch.arange(rank, n_global, world) if world > 1 else None
    fingerprint = _fingerprint(clean, y) + (f"-rank{rank}of{world}" if world > 1 else "")
    ckpt_path = metrics_path = None
    if checkpoint_dir is not None:
        if world > 1:
            checkpoint_dir = os.path.join(checkpoint_dir, f"rank{rank}-of-{world}")
        check_writable(checkpoint_dir)
        ckpt_path = os.path.join(checkpoint_dir, CHECKPOINT_NAME)
        metrics_path = os.path.join(checkpoint_dir, METRICS_NAME)
    local_clean, local_y = (clean[owned], y[owned]) if world > 1 else (clean, y)
    eng = _Engine(cfg, local_clean, local_y, surrogate, device, progress and rank == 0, rank, world, n_global)
    if checkpoint_dir is not None:
        # fail now, not after hours: room for two checkpoints (the next one's temporary file
        # beside the last), each holding δ and the surrogate with its optimiser state
        params = sum(p.numel() * p.element_size() for p in eng.model.parameters()) if eng.model is not None else 0
        delta_bytes = eng.store.delta.numel() * eng.store.delta.element_size()
        if cfg.classwise:
            delta_bytes = eng.class_delta_dev.numel() * 4
        check_writable(checkpoint_dir, min_free_bytes=2 * (delta_bytes + 3 * params) + 2**24)
    start_round, history = 0, []
    st = _load_resumable(ckpt_path, world) if ckpt_path else None
    if st is not None:
        saved_cfg = json.loads(st["config"])
        diffs = [k for k in _CHECKED_KEYS if saved_cfg.get(k) != cfg.to_dict().get(k)]
        if diffs or st.get("fingerprint") != fingerprint:
            what = ", ".join(f"{k}: checkpoint {saved_cfg.get(k)!r} vs now {cfg.to_dict().get(k)!r}" for k in diffs)
            raise ValueError(
                f"checkpoint {ckpt_path} comes from an incompatible run ({what or 'different images or labels'}); "
                "use another checkpoint_dir or delete it"
            )
        start_round, history = eng.load_state(st)
        log.info("resuming from %s after round %d", ckpt_path, start_round)
    if metrics_path:  # one line per round in the checkpoint: drop rounds logged after it
        def write_metrics(tmp):
            with open(tmp, "w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in history)

        _io.atomic_write(metrics_path, write_metrics)

    def save(round_done):
        if ckpt_path is None:
            return
        state = eng.state(round_done, history)
        state["config"] = json.dumps(cfg.to_dict())
        state["fingerprint"] = fingerprint
        if world > 1 and os.path.exists(ckpt_path):
            os.replace(ckpt_path, ckpt_path + ".prev")
        atomic_save(state, ckpt_path)

    if cfg.objective == "random":
        if start_round == 0:
            eng.random_noise(owned, n_global)
            history.append({"round": 1, "objective": "random"})
            save(cfg.rounds)
    else:
        _rounds(eng, cfg, start_round, history, save, metrics_path, progress and rank == 0)

    if cfg.classwise:
        delta = eng.class_delta_dev.cpu()[y].clamp_(-cfg.eps, cfg.eps)
    else:
        delta = eng.store.delta_full()
        if world > 1:
            delta = _gather_delta(delta, owned, n_global, world)
        # PGD kept δ in the box around the flipped image it saw last; the result is projected
        # around the image as given (the released images are the same either way), then
        # clamped exactly to ±ε ((c + δ) - c may round a few ulps past ε)
        ops.project_linf_(delta, clean, cfg.eps).clamp_(-cfg.eps, cfg.eps)
    images_out = release(clean, delta, cfg.eps, cfg.release_rounding)
    config = cfg.to_dict()
    if world > 1:
        config["world_size"] = world
    return CraftResult(delta=delta, images=images_out, labels=y, history=history, config=config)


class CraftInterrupted(KeyboardInterrupt):
    """Ctrl-C during crafting: the current round was finished and checkpointed (when a
    checkpoint_dir was given); rerun with the same checkpoint_dir to resume."""

    def __init__(self, message: str, round_done: int, checkpoint_dir: str | None):
        super().__init__(message)
        self.round_done = round_done
        self.checkpoint_dir = checkpoint_dir


class _GracefulInterrupt:
    """While active (main thread only), the first SIGINT sets a flag that the round loop
    reads after each round; a second SIGINT interrupts at once."""

    def __init__(self, enabled: bool):
        import signal
        import threading

        self.requested = False
        self._old = None
        self._signal = signal
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt("second interrupt: aborting without a checkpoint for this round")
        self.requested = True
        log.warning("interrupt: finishing this round and saving a checkpoint (press Ctrl-C again to abort now)")

    def __enter__(self):
        if self.enabled:
            self._old = self._signal.signal(self._signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._signal.signal(self._signal.SIGINT, self._old)
        return False


def _rounds(eng: _Engine, cfg: CraftConfig, start_round: int, history: list, save, metrics_path, progress: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.rounds, initial=start_round, desc=f"miue craft ({cfg.objective})", unit="round",
               disable=not progress, dynamic_ncols=True)
    interrupt = _GracefulInterrupt(enabled=metrics_path is not None)
    try:
        with interrupt:
            for e in range(start_round + 1, cfg.rounds + 1):
                t0 = time.perf_counter()
                lr = eng.opt.param_groups[0]["lr"]
                for _ in range(cfg.train_epochs):
                    train_loss, train_acc = eng.train_epoch()
                t1 = time.perf_counter()
                alpha = cfg.alpha(e)
                obj = eng.pgd_pass(alpha)
                obj_value, train_loss = float(obj), float(train_loss)
                if not (math.isfinite(obj_value) and math.isfinite(train_loss)):
                    raise FloatingPointError(
                        f"round {e}: the surrogate produced NaN/Inf (objective {obj_value}, train loss {train_loss}); "
                        f"stopped, the last good checkpoint (round {history[-1]['round'] if history else 0}) is kept"
                    )
                t2 = time.perf_counter()
                rec = {
                    "round": e, "train_loss": train_loss, "train_acc": float(train_acc), "objective_loss": obj_value,
                    "alpha": alpha, "lr": lr, "seconds": t2 - t0,
                    "train_images_per_s": eng.n_global * cfg.train_epochs / (t1 - t0),
                    "pgd_images_per_s": eng.n_global * cfg.pgd_steps / (t2 - t1),
                }
                history.append(rec)
                log.info("round %d/%d: %s", e, cfg.rounds, rec)
                if metrics_path:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                if e % cfg.checkpoint_every == 0 or e == cfg.rounds or interrupt.requested:
                    save(e)
                bar.set_postfix(loss=f"{rec['objective_loss']:.4f}", acc=f"{rec['train_acc']:.3f}",
                                img_s=f"{rec['pgd_images_per_s']:.0f}")
                bar.update(1)
                if interrupt.requested and e < cfg.rounds:
                    where = os.path.dirname(metrics_path)
                    raise CraftInterrupted(
                        f"crafting interrupted after round {e}/{cfg.rounds}; checkpoint saved in {where} "
                        "(call again with the same checkpoint_dir to resume)", e, where)
    finally:
        bar.close()
