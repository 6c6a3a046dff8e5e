"""Crafting presets (SPEC §3) and the configuration they fill in.

``paper``  the official MI-UE schedule: ResNet-18 (CIFAR stem, ImageNet normalisation inside
           the model), 100 rounds of one cross-entropy epoch (SGD lr 0.1, momentum 0.9,
           weight decay 1e-4, batch 128, cosine to 1e-6) then 10 signed-gradient PGD steps
           on the supcon loss (batch 512, τ = 0.1, α ramping from 0.2/255 to 0.4/255),
           post-augmentation horizontal flips, eval-mode BN during PGD, fp32, no compilation.
``fast``   ``paper`` with the speed options on where they apply (CUDA): bf16 autocast,
           channels_last, torch.compile of the surrogate and CUDA graphs for the PGD step.
``cnn``    the cheapest CPU schedule: a small CNN surrogate (``cnn-small``), 5 rounds of 235
           surrogate SGD steps (one epoch of 60,000 images at batch 256, whatever the data's
           size) and 5 PGD steps per image (25 in all), fp32. This was the ``demo`` preset until
           issue 25: about 90 s for 60,000 Fashion-MNIST images on 2 cores, but EM crafted the
           same way beats MI-UE with this surrogate at every budget the effectiveness study tried.
``demo``   the ResNet-8 surrogate (``resnet-small``) at 50 PGD steps per image: 5 rounds of 79
           surrogate SGD steps (one epoch of 20,000 images at batch 256) and 10 PGD steps, α from
           1/255 to 2/255, bf16 autocast where the CPU (or GPU) has native bf16. The cheapest
           point of the study's cost-effectiveness frontier that was measured against EM
           (docs/effectiveness.md); about 2.5 min for 10,000 Fashion-MNIST images on 2 cores.
``cpu``    the same surrogate at 200 PGD steps per image (20 rounds, α from 0.5/255 to
           1/255), bf16 where native: the strongest MI-UE the CPU study measured, though EM
           crafted the same way ties it within the crafting-seed spread (docs/effectiveness.md);
           about 45-50 min per method for all 60,000 Fashion-MNIST images on 2 cores in bf16.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

OBJECTIVES = ("miue", "miue-linear", "em", "tap", "rem", "random", "ar", "lsp", "ops")
TRAINING_FREE = ("ar", "lsp", "ops")  # class-structured generators from miue.shortcuts: no surrogate, no rounds
PRESETS = ("paper", "fast", "demo", "cpu", "cnn")


@dataclass
class CraftConfig:
    """Everything that determines a crafting run (saved with results and checkpoints)."""

    preset: str = "paper"
    objective: str = "miue"
    eps: float = 8 / 255
    rounds: int = 100
    pgd_steps: int = 10
    pgd_batch_size: int = 512
    train_batch_size: int = 128
    train_epochs: int = 1  # surrogate epochs per round (ignored when train_steps > 0)
    train_steps: int = 0  # surrogate SGD steps per round; 0: train_epochs full epochs (data-size dependent)
    stop_train_acc: float = 0.0  # EM's stopping rule: end crafting once the surrogate's accuracy on the
    #                              poisoned data reaches this (0: off, run every round)
    pgd_bn: str = "eval"  # batch norm during PGD: "eval" (running statistics) or "train" (batch statistics,
    #                       running statistics left unchanged)
    rem_eps: float = 0.0  # REM's adversarial radius ρ_a (0: eps / 2, the REM paper's choice)
    rem_steps: int = 7  # REM's inner PGD steps for ρ (the REM code: 7 steps of ρ_a / 4, random start)
    arch: str = "resnet18"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_min: float = 1e-6
    alpha_start: float = 0.2 / 255  # α_0, used in round 1
    alpha_end: float = 0.4 / 255  # α_end, approached in round E
    temperature: float = 0.1
    flip: bool = True
    classwise: bool = False
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    delta_dtype: str = "float32"  # float32 | float16 | int8 (units of 1/255)
    storage: str = "auto"  # auto | device | host | disk: where images and δ live (host: streamed per batch;
    #                        disk: δ memory-mapped in checkpoint_dir, the images as given, e.g. a memory-mapped cache)
    release_rounding: str = "round"  # round | trunc (the official code truncates)
    seed: int = 0
    backend: str | None = None
    checkpoint_every: int = 1
    num_classes: int = 0
    extra: dict = field(default_factory=dict)

    def alpha(self, round_index: int) -> float:
        """α_e = α_end + (E - e + 1)/E · (α_0 - α_end) for round e = 1..E (SPEC §3)."""
        E, e = self.rounds, round_index
        return self.alpha_end + (E - e + 1) / E * (self.alpha_start - self.alpha_end)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_PAPER = dict(
    arch="resnet18", rounds=100, pgd_steps=10, pgd_batch_size=512, train_batch_size=128, lr=0.1, momentum=0.9,
    weight_decay=1e-4, lr_min=1e-6, alpha_start=0.2 / 255, alpha_end=0.4 / 255, temperature=0.1, flip=True,
    amp=False, channels_last=False, compile=False, cuda_graphs=False,
)

PRESET_VALUES = {
    "paper": _PAPER,
    "fast": {**_PAPER, "amp": True, "channels_last": True, "compile": True, "cuda_graphs": True},
    # A small CNN, fewer and larger steps (the step budget rounds·steps·α still exceeds ε)
    # and a small surrogate learning rate (a surrogate that learns the clean features fast
    # leaves weaker shortcuts: on Fashion-MNIST lr 0.01 gave victims 24.5% vs 31% at 0.05).
    # One round over the 60k 28×28 Fashion-MNIST images takes about 30 s on 2 cores.
    # The surrogate trains 235 SGD steps per round, one epoch of 60,000 images at
    # batch 256, whatever the data set's size: with one epoch per round instead, a 10,000-image
    # set gets a sixth of the surrogate training and weaker noise (effectiveness study,
    # 25 steps per image, victim accuracy: MI-UE 54.5/36.0% → 47.4/33.3% on 10k, 35.4 → 29.4%
    # on 20k).
    "cnn": dict(
        arch="cnn-small", rounds=5, pgd_steps=5, pgd_batch_size=512, train_batch_size=256, train_steps=235,
        lr=0.01, momentum=0.9,
        weight_decay=5e-4, lr_min=1e-4, alpha_start=1.0 / 255, alpha_end=2.0 / 255, temperature=0.1, flip=True,
        amp=False, channels_last=True, compile=False, cuda_graphs=False,
    ),
}


# The effectiveness study's budgets with its ResNet-8 surrogate in bf16 (benchmarks/effectiveness.py:
# BUDGETS["50"] / BUDGETS["200"] with ABLATIONS["surrogate=resnet-small+bf16"] on top of ``cnn``);
# the study trained the surrogate one epoch of its 20,000 images per round, i.e. 79 steps at batch 256.
PRESET_VALUES["cpu"] = {**PRESET_VALUES["cnn"], "arch": "resnet-small", "rounds": 20, "pgd_steps": 10,
                        "train_steps": 79, "alpha_start": 0.5 / 255, "alpha_end": 1.0 / 255, "amp": True}
PRESET_VALUES["demo"] = {**PRESET_VALUES["cpu"], "rounds": 5, "pgd_steps": 10,
                         "alpha_start": 1.0 / 255, "alpha_end": 2.0 / 255}


def make_config(preset: str, **overrides) -> CraftConfig:
    """The preset's values, then the non-None overrides."""
    if preset not in PRESET_VALUES:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    values = {**PRESET_VALUES[preset], "preset": preset}
    known = {f.name for f in dataclasses.fields(CraftConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise TypeError(f"unknown crafting option {key!r}")
        if value is not None:
            values[key] = value
    return CraftConfig(**values)
