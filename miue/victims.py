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

Data and augmentation stay on the device; bf16 autocast and channels_last when asked (CUDA).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from miue import defenses as Dfn
from miue.augment import random_crop, random_flip
from miue.defenses import pgd_attack  # noqa: F401  (re-exported: miue.victims.pgd_attack)
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
    "paper": dict(arch="resnet18", epochs=200, batch_size=128, lr=0.5, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                  crop=True, flip=True),
    "quick": dict(arch="cnn", epochs=7, batch_size=256, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                  crop=True, flip=True),
    # a user's everyday recipe: Adam at its default rate, constant, no augmentation
    "adam": dict(arch="cnn", epochs=12, batch_size=128, lr=1e-3, momentum=0.9, weight_decay=0.0, schedule="constant",
                 crop=False, flip=False, optimizer="adam"),
}
OPTIMIZERS = ("sgd", "adam")


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
) -> EvalResult:
    """Train a fresh victim on ``train_images`` and test it on clean ``test_images``.

    train_images: the released (poisoned) images, uint8 or float in [0, 1], any layout
        accepted by craft_fast; train_labels their labels.
    poison_ratio < 1: only that (seeded, random) fraction of the training set is taken from
        ``train_images``; the rest comes from ``clean_images`` (required then).
    defense: None or one of miue.defenses.DEFENSES.
    """
    if not isinstance(preset, str) or preset not in EVAL_PRESETS:  # (a list would be unhashable)
        raise ValueError(f"preset must be one of {tuple(EVAL_PRESETS)}, got {preset!r}")
    if defense is not None and (not isinstance(defense, str) or defense not in Dfn.REGISTRY):
        raise ValueError(f"defense must be None or one of {Dfn.DEFENSES}, got {defense!r}")
    dfn = Dfn.REGISTRY[defense] if defense is not None else None
    adversarial = dfn is not None and dfn.kind == "adversarial"
    if not (0 <= poison_ratio <= 1):
        raise ValueError(f"poison_ratio must lie in [0, 1], got {poison_ratio}")
    if adversarial and at_eps not in (4 / 255, 8 / 255):
        if not (0 < at_eps <= 1):
            raise ValueError(f"at_eps must lie in (0, 1], got {at_eps}")
    cfg = dict(EVAL_PRESETS[preset])
    if dfn is not None:
        cfg.update(dfn.recipe.get(preset, {}))  # e.g. the paper's adversarial-training schedule
    cfg.setdefault("optimizer", "sgd")
    for k, v in (("arch", arch), ("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("optimizer", optimizer)):
        if v is not None:
            cfg[k] = v
    if augment is not None:
        cfg["crop"] = cfg["flip"] = bool(augment)
    if cfg["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg['optimizer']!r}")
    if cfg["arch"] not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {cfg['arch']!r}")
    for key, value in (("epochs", cfg["epochs"]), ("batch_size", cfg["batch_size"]), ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    if not (isinstance(cfg["lr"], (int, float)) and cfg["lr"] > 0 and math.isfinite(cfg["lr"])):
        raise ValueError(f"lr must be a positive number, got {cfg['lr']!r}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = resolve_amp(bool(amp), device, "victim amp")  # CUDA, or a CPU with native bf16
    if device.type == "cpu":
        tune_if_opted_in()  # no mmap/munmap of every step's activations, where the process opted in (miue/_malloc.py)
    channels_last = bool(channels_last) if channels_last is not None else device.type == "cpu"

    x_train = _to_uint8(as_nchw_uint8_or_float(train_images, "train_images"))
    y_train = class_labels(train_labels, "train_labels", n=x_train.shape[0], of="train_images")
    x_test = _to_uint8(as_nchw_uint8_or_float(test_images, "test_images"))
    y_test = class_labels(test_labels, "test_labels", n=x_test.shape[0], of="test_images")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"test_images {tuple(x_test.shape[1:])} differ in shape from train_images "
                         f"{tuple(x_train.shape[1:])}")
    gen = torch.Generator().manual_seed(seed)
    if poison_ratio < 1:
        if clean_images is None:
            raise ValueError("poison_ratio < 1 needs clean_images (the unpoisoned training images)")
        x_clean = _to_uint8(as_nchw_uint8_or_float(clean_images, "clean_images"))
        if x_clean.shape != x_train.shape:
            raise ValueError(f"clean_images has shape {tuple(x_clean.shape)}, train_images {tuple(x_train.shape)}")
        poisoned = torch.rand(x_train.shape[0], generator=gen) < poison_ratio
        x_train = torch.where(poisoned.view(-1, 1, 1, 1), x_train, x_clean)
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise ValueError("train_images and test_images must not be empty")
    highest = max(y_train.max().item(), y_test.max().item())
    C = num_classes or int(highest) + 1
    if highest >= C:
        raise ValueError(f"num_classes={C} but labels go up to {highest}")
    if dfn is not None and dfn.kind == "preprocess":
        x_train = dfn.fn(x_train)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg["arch"], C, channels=x_train.shape[1], image_size=x_train.shape[2], normalize=False)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg["optimizer"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    E = cfg["epochs"]
    if cfg["schedule"] == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=E)
    elif cfg["schedule"] == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    elif cfg["schedule"] == "step40-80":  # divide by 10 at 40% and 80% of the epochs (epochs 40 and 80 of 100)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.4 * E), int(0.8 * E)], gamma=0.1)
    else:
        raise ValueError(f"schedule must be one of ('cosine', 'constant', 'step40-80'), got {cfg['schedule']!r}")

    resident = device.type != "cuda" or x_train.numel() < 0.3 * torch.cuda.mem_get_info(device)[0]
    xs = x_train.to(device) if resident else x_train.pin_memory()
    ys = y_train.to(device)
    result = EvalResult(test_acc=0.0, config={**cfg, "defense": defense, "poison_ratio": poison_ratio, "seed": seed,
                                               "at_eps": at_eps if adversarial else None, "preset": preset,
                                               "device": str(device), "amp": amp})
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    N = x_train.shape[0]
    bs = cfg["batch_size"]
    bar = tqdm(range(1, E + 1), desc=f"victim {cfg['arch']}" + (f" [{defense}]" if defense else ""), unit="epoch",
               disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        model.train()
        perm = torch.randperm(N, generator=gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for i0 in range(0, N, bs):
            idx = perm[i0:i0 + bs]
            xb = xs.index_select(0, idx.to(xs.device)).to(device, non_blocking=True).float().div_(255)
            yb = ys.index_select(0, idx.to(device))
            if cfg["crop"]:
                xb = random_crop(xb, 4 if xb.shape[-1] >= 32 else 2, gen)
            if cfg["flip"]:
                xb = random_flip(xb, gen)
            soft = None
            if dfn is not None and dfn.kind == "batch":
                xb, soft = dfn.fn(xb, yb, C, gen)
            if adversarial:
                xb = dfn.fn(model, xb, yb, gen, at_eps)
                model.train()
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
        sched.step()
        train_loss = (loss_sum / N).item()
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"victim training diverged at epoch {epoch} (loss {train_loss})")
        result.train_loss_history.append(train_loss)
        result.train_acc_history.append((correct / N).item())
        if epoch % eval_every == 0 or epoch == E:
            acc = accuracy(model, x_test, y_test, device, amp=amp)
            result.test_acc_history.append(acc)
            result.epochs.append(epoch)
            bar.set_postfix(train_acc=f"{result.train_acc_history[-1]:.3f}", test_acc=f"{acc:.3f}")
    result.test_acc = result.test_acc_history[-1]
    result.peak_test_acc = max(result.test_acc_history)
    result.seconds = time.perf_counter() - t_start
    result.model = model
    return result
