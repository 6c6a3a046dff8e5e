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
import math
import numbers
from dataclasses import dataclass, field

from miue._quantize import ROUNDINGS
from miue.objectives import NAMES as OBJECTIVES  # noqa: F401  (the registry: miue/objectives.py)
from miue.objectives import RECIPES, TRAINING_FREE, recipe_values  # noqa: F401
from miue.objectives import get as objective_info
from miue.ops._backend import AUTO, BACKENDS

PRESETS = ("paper", "fast", "demo", "cpu", "cnn")
DELTA_DTYPES = ("float32", "float16", "int8")


def _field(default, doc: str, kind: str | None = None, choices: tuple | None = None):
    """A CraftConfig field with its documentation (docs/crafting.md's table is generated from
    it by scripts/gen_docs.py) and its check: ``choices``, or a ``kind`` of :data:`CHECKS`."""
    return field(default=default, metadata={"doc": doc, "kind": kind, "choices": choices})


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# kind: (test, what the error says the value must be)
CHECKS = {
    "positive int": (lambda v: _int(v) and v >= 1, "a positive int"),
    "int >= 0": (lambda v: _int(v) and v >= 0, "an int >= 0"),
    "number >= 0": (lambda v: _real(v) and v >= 0, "a finite number >= 0"),
    "number > 0": (lambda v: _real(v) and v > 0, "a finite number > 0"),
    "fraction": (lambda v: _real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "budget": (lambda v: _real(v) and 0 < v <= 1, "a number in (0, 1]"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "int": (_int, "an int"),
}


@dataclass
class CraftConfig:
    """Everything that determines a crafting run (saved with results and checkpoints). Each
    field is checked where the configuration is made (``__post_init__``: every construction,
    :func:`make_config` and a checkpoint's saved configuration alike), so a bad value fails
    before any work, with an error that names the field."""

    preset: str = _field("paper", "the preset the values came from", choices=PRESETS)
    objective: str = _field("miue", "what δ optimises (objectives table below); default `miue`", choices=OBJECTIVES)
    recipe: str = _field("published", "`published`: the objective's authors' recipe on the preset's surrogate (em, "
                         "tap, rem, pil); `matched`: its loss on the preset's schedule", choices=RECIPES)
    eps: float = _field(8 / 255, "L∞ budget in [0, 1] units (the paper: 8/255)", "budget")
    rounds: int = _field(100, "rounds E: each trains the surrogate, then runs the PGD steps (official: 100)",
                         "positive int")
    pgd_steps: int = _field(10, "signed-gradient PGD steps on every δ per round (official: 10)", "positive int")
    pgd_batch_size: int = _field(512, "PGD batch (official: 512)", "positive int")
    train_batch_size: int = _field(128, "surrogate training batch (official: 128)", "positive int")
    train_epochs: int = _field(1, "surrogate epochs per round when `train_steps` is 0 (official: 1)", "positive int")
    train_steps: int = _field(0, "surrogate SGD steps per round (0: `train_epochs` epochs of the data, a "
                              "data-size dependent count)", "int >= 0")
    stop_train_acc: float = _field(0.0, "an ablation's rule: stop once the surrogate's running train accuracy of a "
                                   "round reaches it (0: off; EM's published rule is `stop_eval_acc`)", "fraction")
    pgd_bn: str = _field("eval", "batch norm during PGD: `eval` (running statistics, official) or `train` (batch "
                         "statistics, running statistics left unchanged)", choices=("eval", "train"))
    rem_eps: float = _field(0.0, "REM's adversarial radius ρ_a (0: ε/2, the REM paper's)", "number >= 0")
    rem_steps: int = _field(7, "REM's inner PGD steps for ρ (the REM code: 7 steps of ρ_a/4, random start)",
                            "int >= 0")
    rem_step_size: float = _field(0.0, "REM's ρ step (0: `rem_eps`/4; published: ε/10)", "number >= 0")
    schedule: str = _field("rounds", "`rounds` (train, then a PGD pass over every δ) or `per-batch` (REM's "
                           "published loop: each step crafts one batch's δ, then one adversarial training step)",
                           choices=("rounds", "per-batch"))
    train_order: str = _field("shuffle", "`shuffle` (a fresh permutation per round) or `sequential` (one fixed "
                              "seeded order, a cursor carried over between rounds: an unshuffled loader)",
                              choices=("shuffle", "sequential"))
    train_augment: str = _field("flip", "surrogate training augmentation of the poisoned input: `flip` (as `flip` "
                                "says), `none`, `crop-flip` (pad 4), `shift-flip` (shift up to H/4, bilinear)",
                                choices=("flip", "none", "crop-flip", "shift-flip"))
    attack_augment: str = _field("none", "differentiable augmentation of x + δ in every PGD step (TAP: `shift-flip`)",
                                 choices=("none", "crop-flip", "shift-flip"))
    lr_schedule: str = _field("cosine", "`cosine` (to `lr_min` over the rounds' epochs, official), `constant`, "
                              "`multistep` (×`lr_gamma` at `lr_milestones` epochs), `step` (×`lr_gamma` every "
                              "`lr_step_every` training steps)", choices=("cosine", "constant", "multistep", "step"))
    lr_milestones: tuple = _field((), "`multistep` milestones in surrogate epochs")
    lr_gamma: float = _field(0.1, "`multistep`/`step` factor", "number >= 0")
    lr_step_every: int = _field(0, "`step`: training steps between decays", "int >= 0")
    nesterov: bool = _field(False, "Nesterov momentum", "bool")
    grad_clip: float = _field(0.0, "clip the surrogate's gradient norm (0: off)", "number >= 0")
    stop_eval_acc: float = _field(0.0, "EM's published stop: end once the eval-mode surrogate classifies more than "
                                  "this of the poisoned set after a PGD pass (0: off)", "fraction")
    input_norm: str = _field("imagenet", "the surrogate's input normalisation: `imagenet` (official), `cifar`, "
                             "`half` ((x − 0.5)), `none`", choices=("imagenet", "cifar", "half", "none"))
    delta_init: str = _field("zero", "`zero` (official), `uniform` in ±ε or `normal` (N(0, ε²) clipped to ±ε)",
                             choices=("zero", "uniform", "normal"))
    restarts: int = _field(1, "attacks after training (TAP): the best of this many random starts per PGD batch",
                           "positive int")
    eot_samples: int = _field(1, "REM's published loop: augmented samples per δ step", "positive int")
    pil_lambda: float = _field(0.9, "PIL: weight of CE(f(−δ), y) against KL(U ‖ f(x + δ))", "fraction")
    arch: str = _field("resnet18", "surrogate architecture (official: ResNet-18)")
    lr: float = _field(0.1, "surrogate SGD learning rate (official: 0.1)", "number > 0")
    momentum: float = _field(0.9, "SGD momentum (official: 0.9)", "fraction")
    weight_decay: float = _field(1e-4, "SGD weight decay (official: 1e-4)", "number >= 0")
    lr_min: float = _field(1e-6, "end of the cosine schedule (official: 1e-6)", "number >= 0")
    alpha_start: float = _field(0.2 / 255, "PGD step α in round 1 (official: 0.2/255)", "number >= 0")
    alpha_end: float = _field(0.4 / 255, "α approached in round E (official: 4/(255·`pgd_steps`), 0.4/255 at 10 "
                              "steps)", "number >= 0")
    temperature: float = _field(0.1, "supcon τ (official: 0.1)", "number > 0")
    flip: bool = _field(True, "post-augmentation horizontal flips (official: on)", "bool")
    classwise: bool = _field(False, "one δ per class", "bool")
    amp: bool = _field(False, "bf16 autocast of the surrogate where native", "bool")
    channels_last: bool = _field(False, "channels_last memory format", "bool")
    compile: bool = _field(False, "`torch.compile` of the surrogate", "bool")
    cuda_graphs: bool = _field(False, "CUDA graph of the PGD step (CUDA only)", "bool")
    delta_dtype: str = _field("float32", "how δ is stored: float32, float16, int8 (1/255 units)",
                              choices=DELTA_DTYPES)
    storage: str = _field("auto", "where images and δ live: auto, device, host (streamed per batch), disk (δ "
                          "memory-mapped in the checkpoint directory, the images as given)",
                          choices=("auto", "device", "host", "disk"))
    release_rounding: str = _field("round", "uint8 release: round, or trunc (the official code)", choices=ROUNDINGS)
    seed: int = _field(0, "seed of every random choice", "int")
    backend: str | None = _field(None, "force an ops backend (None: automatic)", choices=(None, AUTO) + BACKENDS)
    checkpoint_every: int = _field(1, "checkpoint every k rounds", "positive int")
    num_classes: int = _field(0, "class count (0: from the labels)", "int >= 0")

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise a ValueError naming the field unless every value is one its field allows."""
        for f in dataclasses.fields(self):
            check_field(f.name, getattr(self, f.name))
        if self.lr_schedule == "step" and self.lr_step_every < 1:
            raise ValueError(f"lr_schedule='step' needs lr_step_every >= 1, got {self.lr_step_every!r}")
        if self.schedule == "per-batch" and not objective_info(self.objective).inner_max:
            raise ValueError(f"schedule='per-batch' is REM's published loop (an inner maximisation); objective "
                             f"{self.objective!r} runs in rounds")
        if self.delta_dtype == "int8":
            if self.eps * 255 > 127:
                raise ValueError("delta_dtype='int8' holds |δ| ≤ 127/255; use float16/float32 for a larger eps")
            small = [a for a in (self.alpha_start, self.alpha_end) if 0 < a < 1 / 255 - 1e-12]
            if small:
                raise ValueError(f"delta_dtype='int8' stores δ in units of 1/255 and would round a PGD step of "
                                 f"{min(small) * 255:.3g}/255 away every batch: use float16/float32, or steps >= "
                                 "1/255")

    def alpha(self, round_index: int) -> float:
        """α_e = α_end + (E - e + 1)/E · (α_0 - α_end) for round e = 1..E (docs/crafting.md)."""
        E, e = self.rounds, round_index
        return self.alpha_end + (E - e + 1) / E * (self.alpha_start - self.alpha_end)

    def to_dict(self) -> dict:
        """The fields as JSON holds them (tuples as lists), so a saved config compares equal."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_FIELDS = {f.name: f for f in dataclasses.fields(CraftConfig)}


def check_field(name: str, value) -> None:
    """The one check of a CraftConfig field's value (its ``choices`` or ``kind``)."""
    meta = _FIELDS[name].metadata
    if meta["choices"] is not None and not (isinstance(value, (str, type(None))) and value in meta["choices"]):
        raise ValueError(f"{name} must be one of {tuple(c for c in meta['choices'] if c is not None)}, got {value!r}")
    if meta["kind"] is not None:
        ok, what = CHECKS[meta["kind"]]
        if not ok(value):
            raise ValueError(f"{name} must be {what}, got {value!r}")


_PAPER = dict(
    arch="resnet18", rounds=100, pgd_steps=10, pgd_batch_size=512, train_batch_size=128, lr=0.1, momentum=0.9,
    weight_decay=1e-4, lr_min=1e-6, alpha_start=0.2 / 255, alpha_end=None, temperature=0.1, flip=True,
    amp=False, channels_last=False, compile=False, cuda_graphs=False,
)

PRESET_VALUES = {
    "paper": _PAPER,
    "fast": {**_PAPER, "amp": True, "channels_last": True, "compile": True, "cuda_graphs": True},
    # A small CNN, fewer and larger steps (the step budget rounds·steps·α still exceeds ε), a
    # small surrogate learning rate, and a fixed 235 SGD steps per round (one epoch of 60,000
    # images at batch 256) whatever the data set's size. Why these values: docs/effectiveness.md
    # (the learning rate and the steps-per-round studies).
    "cnn": dict(
        arch="cnn-small", rounds=5, pgd_steps=5, pgd_batch_size=512, train_batch_size=256, train_steps=235,
        lr=0.01, momentum=0.9,
        weight_decay=5e-4, lr_min=1e-4, alpha_start=1.0 / 255, alpha_end=2.0 / 255, temperature=0.1, flip=True,
        amp=False, channels_last=True, compile=False, cuda_graphs=False,
    ),
}


# ``cnn`` with the ResNet-8 surrogate in bf16, at 200 (``cpu``) and 50 (``demo``) PGD steps per image,
# and 79 surrogate steps per round (one epoch of 20,000 images at batch 256).
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
    check_field("eps", eps)  # before the recipe's values are computed from it
    recipe_set = recipe_values(objective, recipe, eps)  # validates objective and recipe
    values.update({k: v for k, v in recipe_set.items() if k not in PRESET_ONLY})
    values.update(given)
    if values.get("alpha_end") is None:  # the official code: α_end = 4/255 / K
        values["alpha_end"] = 4 / (255 * values.get("pgd_steps", CraftConfig.pgd_steps))
    return CraftConfig(**values)
