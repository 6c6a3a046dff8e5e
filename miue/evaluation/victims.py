"""Measuring unlearnability (docs/crafting.md): train a fresh victim on released images, report its
clean test accuracy (lower = more unlearnable) next to the same victim trained on clean data.

:func:`evaluate` trains one victim. Presets:

``paper``  ResNet-18 (CIFAR stem, no input normalisation), 200 epochs, SGD momentum 0.9,
           weight decay 1e-4, batch 128, lr 0.5 (the official script) with a cosine schedule,
           random crop (pad 4) + horizontal flip. With ``defense="at"``: PGD-10 adversarial
           training, 100 epochs, lr 0.1 divided by 10 at epochs 40 and 80, weight decay 5e-4.
``quick``  a small CNN, 7 epochs, batch 256, lr 0.05, cosine, crop (pad 2 below 32 px) + flip: sized for CPUs.
``adam``   a small CNN, 12 epochs, Adam lr 1e-3 (constant), batch 128, no augmentation: a user's everyday
           recipe, unlike the surrogate's.

``optimizer`` ("sgd" | "adam") and ``augment`` (crop + flip on/off) override the preset's recipe.

A victim's configuration is an :class:`EvalConfig` (frozen, checked once when built):
``EvalConfig.build(preset, defense, **overrides)`` resolves the preset, then the defense's
recipe for that preset, then the explicit arguments. Optimizers and learning-rate schedules
are registries of builders (:data:`OPTIMIZER_BUILDERS`, :data:`SCHEDULE_BUILDERS`); defenses
are records of :mod:`miue.evaluation.defenses`, applied by their kind, never by their name.

Data and augmentation stay on the device; bf16 autocast and channels_last when asked (CUDA).
"""

from __future__ import annotations

import inspect
import math
import operator
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

import torch
import torch.nn.functional as F

from miue.evaluation import defenses as Dfn
from miue.augment import random_crop, random_flip
from miue.evaluation.defenses import pgd_attack  # noqa: F401  (re-exported: miue.evaluation.victims.pgd_attack)
from miue._amp import resolve_amp
from miue._malloc import tune_if_opted_in
from miue._labels import class_labels
from miue._imagedata import as_nchw_uint8_or_float
from miue.models import ARCHS, build_model

# Named victim recipes of the demo and the studies: (evaluate preset, arch, epochs). They differ
# from the CPU presets' surrogates in width or architecture and in recipe (SGD + crop + flip vs
# Adam without augmentation). Defined here once; miue/demo.py, benchmarks/effectiveness.py and
# benchmarks/native_size.py take theirs from it.
VICTIM_RECIPES = {
    "cnn-sgd": ("quick", "cnn", 20),
    "cnn-adam": ("adam", "cnn", 15),
    "resnet-sgd": ("quick", "resnet-small", 15),
    "mlp-adam": ("adam", "mlp", 20),
}
# the demo's two victims (two training recipes), named once: the demo, the study's defended victims and
# the native-size benchmark read this
DEMO_VICTIMS = ("cnn-sgd", "cnn-adam")

EVAL_PRESETS = {
    "paper": dict(arch="resnet18", epochs=200, batch_size=128, lr=0.5, momentum=0.9, weight_decay=1e-4,
                  schedule="cosine", crop=True, flip=True),
    "quick": dict(arch="cnn", epochs=7, batch_size=256, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                  crop=True, flip=True),
    # a user's everyday recipe: Adam at its default rate, constant, no augmentation
    "adam": dict(arch="cnn", epochs=12, batch_size=128, lr=1e-3, momentum=0.9, weight_decay=0.0, schedule="constant",
                 crop=False, flip=False, optimizer="adam"),
}


# --------------------------------------------------------------------------- optimizers and schedules


def _sgd(params, cfg: EvalConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _adam(params, cfg: EvalConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# name -> fn(parameters, config) -> optimizer (EvalConfig.optimizer; `miue evaluate --optimizer`)
OPTIMIZER_BUILDERS: dict[str, Callable] = {"sgd": _sgd, "adam": _adam}
OPTIMIZERS = tuple(OPTIMIZER_BUILDERS)

# name -> fn(optimizer, epochs) -> scheduler, stepped once per epoch (EvalConfig.schedule)
SCHEDULE_BUILDERS: dict[str, Callable] = {
    "cosine": lambda opt, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
    "constant": lambda opt, epochs: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
    # divided by 10 at 40% and 80% of the epochs (epochs 40 and 80 of 100: the paper's adversarial training)
    "step40-80": lambda opt, epochs: torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(0.4 * epochs), int(0.8 * epochs)], gamma=0.1),
}
SCHEDULES = tuple(SCHEDULE_BUILDERS)


# --------------------------------------------------------------------------- the configuration


def _one_of(name: str, value, choices, none_ok: bool = False):
    """ValueError naming the argument and the choices unless ``value`` is one of ``choices``."""
    if none_ok and value is None:
        return
    if not isinstance(value, str) or value not in choices:  # (a list would be unhashable)
        raise ValueError(f"{name} must be {'None or ' if none_ok else ''}one of {tuple(choices)}, got {value!r}")


def _positive_int(name: str, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# the victim recipe: what EVAL_PRESETS and a defense's recipe set, and evaluate()'s result.config
# records first, in this order
RECIPE_FIELDS = ("arch", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "crop", "flip",
                 "optimizer")


@dataclass(frozen=True)
class EvalConfig:
    """One victim's configuration: the resolved recipe (``arch`` ... ``optimizer``: the preset,
    then the defense's recipe for it, then the caller's overrides) and the study's settings.
    Every value is checked here, once; an unknown name is refused with a ValueError naming the
    argument and its choices. Build one with :meth:`build`; :func:`evaluate` takes it as
    ``config=`` or builds it from its keywords.

    ``preset`` is the preset the recipe started from (recorded); ``at_eps`` is used, checked and
    recorded only under an adversarial defense; ``eval_every`` is not recorded in result.config.
    """

    preset: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    crop: bool
    flip: bool
    optimizer: str = "sgd"
    defense: str | None = None
    at_eps: float = 4 / 255
    poison_ratio: float = 1.0
    seed: int = 0
    eval_every: int = 1

    def __post_init__(self):
        _one_of("preset", self.preset, EVAL_PRESETS)
        _one_of("defense", self.defense, Dfn.REGISTRY, none_ok=True)
        if not (0 <= self.poison_ratio <= 1):
            raise ValueError(f"poison_ratio must lie in [0, 1], got {self.poison_ratio}")
        if self.adversarial and not (0 < self.at_eps <= 1):
            raise ValueError(f"at_eps must lie in (0, 1], got {self.at_eps}")
        _one_of("optimizer", self.optimizer, OPTIMIZER_BUILDERS)
        _one_of("arch", self.arch, ARCHS)
        for key in ("epochs", "batch_size", "eval_every"):
            _positive_int(key, getattr(self, key))
        if not (_number(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        _one_of("schedule", self.schedule, SCHEDULE_BUILDERS)
        for key in ("momentum", "weight_decay"):
            if not (_number(getattr(self, key)) and getattr(self, key) >= 0):
                raise ValueError(f"{key} must be a non-negative number, got {getattr(self, key)!r}")
        for key in ("crop", "flip"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be True or False, got {getattr(self, key)!r}")
        try:
            operator.index(self.seed)
        except TypeError:
            raise ValueError(f"seed must be an int, got {self.seed!r}") from None

    @classmethod
    def build(cls, preset: str = "paper", defense: str | None = None, *, augment: bool | None = None,
              **overrides) -> EvalConfig:
        """The configuration of ``preset`` (EVAL_PRESETS), changed by ``defense``'s recipe for that
        preset (e.g. the paper's adversarial-training schedule), then by ``overrides``: any field
        (a recipe field given as None keeps the recipe's value); ``augment`` sets crop and flip."""
        _one_of("preset", preset, EVAL_PRESETS)
        _one_of("defense", defense, Dfn.REGISTRY, none_ok=True)
        names = {f.name for f in fields(cls)} - {"preset", "defense"}
        values = {"optimizer": "sgd", **EVAL_PRESETS[preset]}
        if defense is not None:
            values.update(Dfn.REGISTRY[defense].recipe.get(preset, {}))
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"the recipe of preset {preset!r} (defense {defense!r}) sets unknown fields {unknown}")
        for key, value in overrides.items():
            if key not in names:
                raise TypeError(f"EvalConfig.build() got an unexpected keyword argument {key!r}")
            if value is not None or key not in RECIPE_FIELDS:
                values[key] = value
        if augment is not None:
            if overrides.get("crop") is not None or overrides.get("flip") is not None:
                raise ValueError("give augment or crop/flip, not both")
            values["crop"] = values["flip"] = bool(augment)
        return cls(preset=preset, defense=defense, **values)

    @property
    def defense_record(self) -> Dfn.Defense | None:
        """The defense's record (miue.evaluation.defenses.REGISTRY), or None."""
        return None if self.defense is None else Dfn.REGISTRY[self.defense]

    @property
    def adversarial(self) -> bool:
        return self.defense is not None and Dfn.REGISTRY[self.defense].kind == "adversarial"

    def record(self, device, amp: bool) -> dict:
        """result.config: the recipe, the study's settings, the device and amp."""
        return {**{k: getattr(self, k) for k in RECIPE_FIELDS}, "defense": self.defense,
                "poison_ratio": self.poison_ratio, "seed": self.seed,
                "at_eps": self.at_eps if self.adversarial else None, "preset": self.preset,
                "device": str(device), "amp": amp}


@dataclass
class EvalResult:
    test_acc: float  # final clean test accuracy
    test_acc_history: list = field(default_factory=list)  # per evaluated epoch
    peak_test_acc: float = 0.0  # the best evaluated epoch's (what an early-stopping defense reports)
    train_acc_history: list = field(default_factory=list)
    train_loss_history: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    # the trained victim (for feature extraction: the MI lens); not part of to_dict() or comparisons
    model: object = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(replace(self, model=None))
        del d["model"]
        return d


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.uint8 else torch.round(x * 255).clamp_(0, 255).to(torch.uint8)


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, device, batch_size=1024, amp=False) -> float:
    model.eval()
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        xb = images[i:i + batch_size].to(device, non_blocking=True)
        xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(xb)
        correct += (out.argmax(1) == labels[i:i + batch_size].to(device)).sum().item()
    return correct / images.shape[0]


def evaluate(
    train_images,
    train_labels,
    test_images,
    test_labels,
    *,
    arch: str | None = None,
    epochs: int | None = None,
    preset: str = "paper",
    defense: str | None = None,
    at_eps: float = 4 / 255,
    poison_ratio: float = 1.0,
    clean_images=None,
    seed: int = 0,
    device=None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    eval_every: int = 1,
    progress: bool = True,
    num_classes: int | None = None,
    optimizer: str | None = None,
    augment: bool | None = None,
    config: EvalConfig | None = None,
) -> EvalResult:
    """Train a fresh victim on ``train_images`` and test it on clean ``test_images``.

    train_images: the released (poisoned) images, uint8 or float in [0, 1], any layout
        accepted by craft_fast; train_labels their labels.
    poison_ratio < 1: only that (seeded, random) fraction of the training set is taken from
        ``train_images``; the rest comes from ``clean_images`` (required then).
    defense: None or one of miue.evaluation.defenses.DEFENSES.
    config: an :class:`EvalConfig`, instead of the recipe keywords (arch, epochs, preset, defense,
        at_eps, poison_ratio, seed, batch_size, lr, eval_every, optimizer, augment), which then
        stay at their defaults.
    """
    recipe = dict(arch=arch, epochs=epochs, preset=preset, defense=defense, at_eps=at_eps, poison_ratio=poison_ratio,
                  seed=seed, batch_size=batch_size, lr=lr, eval_every=eval_every, optimizer=optimizer, augment=augment)
    cfg = _config(config, recipe)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    amp = resolve_amp(bool(amp), device, "victim amp")  # CUDA, or a CPU with native bf16
    if device.type == "cpu":
        tune_if_opted_in()  # no mmap/munmap of every step's activations, where the process opted in (miue/_malloc.py)
    channels_last = bool(channels_last) if channels_last is not None else device.type == "cpu"

    gen = torch.Generator().manual_seed(cfg.seed)  # the poison mixing, then every epoch's batches and augmentation
    x_train, y_train, x_test, y_test, C = _prepare_data(cfg, train_images, train_labels, test_images, test_labels,
                                                        clean_images, num_classes, gen)
    model, opt, sched = _build_victim(cfg, C, x_train.shape[1:], device, channels_last)
    defend = _batch_defense(cfg, model, C, gen)

    resident = device.type != "cuda" or x_train.numel() < 0.3 * torch.cuda.mem_get_info(device)[0]
    xs = x_train.to(device) if resident else x_train.pin_memory()
    ys = y_train.to(device)
    result = EvalResult(test_acc=0.0, config=cfg.record(device, amp))
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"victim {cfg.arch}" + (f" [{cfg.defense}]" if cfg.defense else ""),
               unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        train_loss, train_acc = _train_epoch(model, opt, xs, ys, cfg, gen, device, amp, channels_last, defend)
        sched.step()
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"victim training diverged at epoch {epoch} (loss {train_loss})")
        result.train_loss_history.append(train_loss)
        result.train_acc_history.append(train_acc)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            acc = accuracy(model, x_test, y_test, device, amp=amp)
            result.test_acc_history.append(acc)
            result.epochs.append(epoch)
            bar.set_postfix(train_acc=f"{train_acc:.3f}", test_acc=f"{acc:.3f}")
    result.test_acc = result.test_acc_history[-1]
    result.peak_test_acc = max(result.test_acc_history)
    result.seconds = time.perf_counter() - t_start
    result.model = model
    return result


def _config(config: EvalConfig | None, recipe: dict) -> EvalConfig:
    """evaluate()'s configuration: ``config``, or one built from its recipe keywords (not both)."""
    if config is None:
        return EvalConfig.build(**recipe)
    if not isinstance(config, EvalConfig):
        raise TypeError(f"config must be an EvalConfig, got {type(config).__name__}")
    defaults = inspect.signature(evaluate).parameters
    given = [k for k, v in recipe.items() if v is not defaults[k].default and v != defaults[k].default]
    if given:
        raise TypeError(f"evaluate() takes config= or the recipe keywords, not both; got also {given}")
    return config


def _prepare_data(cfg: EvalConfig, train_images, train_labels, test_images, test_labels, clean_images, num_classes,
                  gen: torch.Generator):
    """(x_train, y_train, x_test, y_test, number of classes): uint8 N×C×H×W images and checked
    labels; the training set mixed with ``clean_images`` (poison_ratio < 1, drawn from ``gen``)
    and passed through a preprocessing defense."""
    x_train = _to_uint8(as_nchw_uint8_or_float(train_images, "train_images"))
    y_train = class_labels(train_labels, "train_labels", n=x_train.shape[0], of="train_images")
    x_test = _to_uint8(as_nchw_uint8_or_float(test_images, "test_images"))
    y_test = class_labels(test_labels, "test_labels", n=x_test.shape[0], of="test_images")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"test_images {tuple(x_test.shape[1:])} differ in shape from train_images "
                         f"{tuple(x_train.shape[1:])}")
    if cfg.poison_ratio < 1:
        if clean_images is None:
            raise ValueError("poison_ratio < 1 needs clean_images (the unpoisoned training images)")
        x_clean = _to_uint8(as_nchw_uint8_or_float(clean_images, "clean_images"))
        if x_clean.shape != x_train.shape:
            raise ValueError(f"clean_images has shape {tuple(x_clean.shape)}, train_images {tuple(x_train.shape)}")
        poisoned = torch.rand(x_train.shape[0], generator=gen) < cfg.poison_ratio
        x_train = torch.where(poisoned.view(-1, 1, 1, 1), x_train, x_clean)
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise ValueError("train_images and test_images must not be empty")
    highest = max(y_train.max().item(), y_test.max().item())
    C = num_classes or int(highest) + 1
    if highest >= C:
        raise ValueError(f"num_classes={C} but labels go up to {highest}")
    dfn = cfg.defense_record
    if dfn is not None and dfn.kind == "preprocess":
        x_train = dfn.fn(x_train)
    return x_train, y_train, x_test, y_test, C


def _build_victim(cfg: EvalConfig, num_classes: int, image_shape, device, channels_last: bool):
    """(model, optimizer, schedule): a fresh victim, its weights drawn from ``cfg.seed`` (the global
    RNG untouched), on the device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, num_classes, channels=image_shape[0], image_size=image_shape[1], normalize=False)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = OPTIMIZER_BUILDERS[cfg.optimizer](model.parameters(), cfg)
    return model, opt, SCHEDULE_BUILDERS[cfg.schedule](opt, cfg.epochs)


def _batch_defense(cfg: EvalConfig, model, num_classes: int, gen: torch.Generator):
    """The defense applied to every training batch, as fn(x, y) -> (x, soft targets or None), or
    None: a ``batch`` defense's transform, or an ``adversarial`` one's attack on the victim."""
    dfn = cfg.defense_record
    if dfn is None or dfn.kind == "preprocess":
        return None
    if dfn.kind == "batch":
        return lambda x, y: dfn.fn(x, y, num_classes, gen)

    def adversarial(x, y):
        x = dfn.fn(model, x, y, gen, cfg.at_eps)
        model.train()
        return x, None

    return adversarial


def _train_epoch(model, opt, xs, ys, cfg: EvalConfig, gen, device, amp, channels_last, defend):
    """One epoch over a fresh permutation: crop, flip, the batch defense, a step per batch.
    (mean training loss, training accuracy)."""
    model.train()
    N = xs.shape[0]
    perm = torch.randperm(N, generator=gen)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for i0 in range(0, N, cfg.batch_size):
        idx = perm[i0:i0 + cfg.batch_size]
        xb = xs.index_select(0, idx.to(xs.device)).to(device, non_blocking=True).float().div_(255)
        yb = ys.index_select(0, idx.to(device))
        if cfg.crop:
            xb = random_crop(xb, 4 if xb.shape[-1] >= 32 else 2, gen)
        if cfg.flip:
            xb = random_flip(xb, gen)
        soft = None
        if defend is not None:
            xb, soft = defend(xb, yb)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(xb).float()
        loss = F.cross_entropy(out, yb) if soft is None else torch.sum(-soft * F.log_softmax(out, 1), 1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(idx)
        correct += (out.detach().argmax(1) == yb).sum()
    return (loss_sum / N).item(), (correct / N).item()
