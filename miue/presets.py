"""Crafting presets (docs/crafting.md) and the configuration they fill in.

``paper``  the official MI-UE schedule: ResNet-18 (CIFAR stem, ImageNet normalisation inside
           the model), 100 rounds of one cross-entropy epoch (SGD lr 0.1, momentum 0.9,
           weight decay 1e-4, batch 128, cosine to 1e-6) then 10 signed-gradient PGD steps
           on the supcon loss (batch 512, τ = 0.1, α ramping from 0.2/255 to 0.4/255),
           post-augmentation horizontal flips, eval-mode BN during PGD, fp32, no compilation.
``fast``   ``paper`` with the speed options on where they apply (CUDA): bf16 autocast,
           channels_last, torch.compile of the surrogate and CUDA graphs for the PGD step.
``cnn``    the cheapest CPU schedule: a small CNN surrogate (``cnn-small``), 5 rounds of 235
           surrogate SGD steps (one epoch of 60,000 images at batch 256, whatever the data's
           size) and 5 PGD steps per image (25 in all), fp32.
``demo``   the ResNet-8 surrogate (``resnet-small``) at 50 PGD steps per image: 5 rounds of 79
           surrogate SGD steps (one epoch of 20,000 images at batch 256) and 10 PGD steps, α from
           1/255 to 2/255, bf16 autocast where the CPU (or GPU) has native bf16.
``cpu``    the same surrogate at 200 PGD steps per image (20 rounds, α from 0.5/255 to
           1/255), bf16 where native.

What each costs and what it achieved: docs/crafting.md (presets) and docs/effectiveness.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from miue.objectives import NAMES as OBJECTIVES  # noqa: F401  (the registry: miue/objectives.py)
from miue.objectives import RECIPES, TRAINING_FREE, recipe_values  # noqa: F401

PRESETS = ("paper", "fast", "demo", "cpu", "cnn")


@dataclass
class CraftConfig:
    """Everything that determines a crafting run (saved with results and checkpoints)."""

    preset: str = "paper"
    objective: str = "miue"
    recipe: str = "published"  # "published": the objective's authors' recipe on the preset's surrogate
    #                            (miue/objectives.py); "matched": the objective's loss on the preset's schedule
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
    rem_step_size: float = 0.0  # REM's ρ step (0: rem_eps / 4)
    # the published recipes' schedule knobs (defaults: MI-UE's schedule, as every preset runs it)
    schedule: str = "rounds"  # "rounds": train, then a PGD pass over every δ; "per-batch": REM's published
    #                           loop (each step crafts one batch's δ, then one adversarial training step)
    train_order: str = "shuffle"  # "shuffle": a fresh permutation per round; "sequential": one fixed seeded
    #                               order, a cursor that carries over between rounds (an unshuffled loader)
    train_augment: str = "flip"  # "flip": as ``flip`` says (post-augmentation); "none", "crop-flip" (pad 4),
    #                              "shift-flip" (random shift up to H/4, bilinear): on the poisoned input
    attack_augment: str = "none"  # "shift-flip": differentiable shift + flip of x + δ in every PGD step (TAP)
    lr_schedule: str = "cosine"  # "cosine" (to lr_min over the rounds' epochs), "constant", "multistep"
    #                              (×lr_gamma at lr_milestones epochs) or "step" (×lr_gamma every lr_step_every steps)
    lr_milestones: tuple = ()
    lr_gamma: float = 0.1
    lr_step_every: int = 0
    nesterov: bool = False
    grad_clip: float = 0.0  # clip the surrogate's gradient norm (0: off)
    stop_eval_acc: float = 0.0  # EM's published stop: after each PGD pass the eval-mode surrogate classifies
    #                             the whole poisoned set; crafting ends once its accuracy exceeds this (0: off)
    input_norm: str = "imagenet"  # the surrogate's input normalisation: "imagenet", "cifar", "half" ((x-0.5)) or "none"
    delta_init: str = "zero"  # "zero", "uniform" (in ±ε) or "normal" (N(0, ε²) clipped to ±ε)
    restarts: int = 1  # attacks after training (TAP): keep the best of this many random starts per PGD batch
    eot_samples: int = 1  # REM's published loop: augmented samples per δ step
    pil_lambda: float = 0.9  # PIL: weight of CE(f(−δ), y) against KL(U ‖ f(x + δ))
    arch: str = "resnet18"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_min: float = 1e-6
    alpha_start: float = 0.2 / 255  # α_0, used in round 1
    alpha_end: float = 0.4 / 255  # α_end, approached in round E (the paper presets: 4/(255·pgd_steps))
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

    def alpha(self, round_index: int) -> float:
        """α_e = α_end + (E - e + 1)/E · (α_0 - α_end) for round e = 1..E (docs/crafting.md)."""
        E, e = self.rounds, round_index
        return self.alpha_end + (E - e + 1) / E * (self.alpha_start - self.alpha_end)

    def to_dict(self) -> dict:
        """The fields as JSON holds them (tuples as lists), so a saved config compares equal."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_PAPER = dict(
    arch="resnet18", rounds=100, pgd_steps=10, pgd_batch_size=512, train_batch_size=128, lr=0.1, momentum=0.9,
    weight_decay=1e-4, lr_min=1e-6, alpha_start=0.2 / 255, alpha_end=None, temperature=0.1, flip=True,
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


# what a published recipe leaves to the preset: how fast it runs (and the surrogate's architecture,
# which no recipe sets unless it defines the method, as PIL's linear model does)
PRESET_ONLY = ("amp", "channels_last", "compile", "cuda_graphs", "delta_dtype", "storage", "backend")


def make_config(preset: str, **overrides) -> CraftConfig:
    """The preset's values, then the objective's published recipe (unless ``recipe="matched"``;
    it keeps the preset's surrogate and speed options), then the non-None overrides. The
    ``paper``/``fast`` α_end is 4/(255·pgd_steps), as in the official code."""
    if not isinstance(preset, str) or preset not in PRESET_VALUES:  # (a list would be unhashable)
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    values = {**PRESET_VALUES[preset], "preset": preset}
    known = {f.name for f in dataclasses.fields(CraftConfig)}
    for key in overrides:
        if key not in known:
            raise TypeError(f"unknown crafting option {key!r}")
    given = {k: v for k, v in overrides.items() if v is not None}
    objective = given.get("objective", CraftConfig.objective)
    recipe = given.get("recipe", CraftConfig.recipe)
    eps = given.get("eps", CraftConfig.eps)
    recipe_set = recipe_values(objective, recipe, eps)  # validates objective and recipe
    values.update({k: v for k, v in recipe_set.items() if k not in PRESET_ONLY})
    values.update(given)
    if values.get("alpha_end") is None:  # the official code: α_end = 4/255 / K
        values["alpha_end"] = 4 / (255 * values.get("pgd_steps", CraftConfig.pgd_steps))
    return CraftConfig(**values)
