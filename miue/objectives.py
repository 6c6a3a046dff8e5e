"""The crafting objectives, one record each, in one registry.

An :class:`Objective` says what δ optimises (its loss on the surrogate's features or logits),
what the surrogate trains on (the poisoned data, the clean data, or nothing), whether an inner
maximisation runs (REM), when the PGD steps run (every round, or once after training), and
its authors' published recipe (:class:`Recipe`): the schedule, step sizes, initialisation,
augmentation, stop rule and surrogate optimiser, as :class:`~miue.presets.CraftConfig` values.

``recipe="published"`` (the default) crafts an objective with its published recipe on top of
the preset, which then only contributes the surrogate architecture and the speed options
(precision, memory layout, compilation, CUDA graphs, δ storage, backend). ``recipe="matched"``
runs the objective's loss on the preset's own schedule (MI-UE's rounds, α ramp, flips and cosine
learning rate): a loss-only ablation, the behaviour of every objective before recipes existed.
MI-UE's presets are its schedule, so both recipes are the same for ``miue`` and ``miue-linear``.

Each hyperparameter's source (file and line of the authors' code or APBench) is in
``docs/crafting.md`` ("Published recipes"); a new objective is one entry in ``OBJECTIVES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

RECIPES = ("published", "matched")


@dataclass(frozen=True)
class Recipe:
    """A published crafting recipe: ``values(eps)`` gives the CraftConfig fields it sets (step
    sizes scale with ε as the authors' code does); ``source`` names the code it comes from."""

    source: str
    values: Callable[[float], dict]
    summary: str


@dataclass(frozen=True)
class LossContext:
    """What an objective's loss may read besides the batch: the number of classes, the supcon
    temperature and the op backend (a loss never sees the crafting engine)."""

    num_classes: int
    temperature: float
    backend: str | None

    @classmethod
    def of(cls, cfg) -> "LossContext":
        return cls(cfg.num_classes, cfg.temperature, cfg.backend)


@dataclass(frozen=True)
class Objective:
    """One crafting objective and all its behaviour; the engine reads these fields and never
    the name. Its schedule (rounds or REM's per-batch loop), step sizes and restarts are
    CraftConfig values its ``published`` recipe sets (``matched_step`` under ``recipe="matched"``)."""

    name: str
    summary: str
    paper: str
    # loss(ctx: LossContext, feats, logits, y) -> scalar, minimised by signed-gradient descent on δ
    loss: Callable | None = None
    needs_features: bool = False
    surrogate: str = "poisoned"  # what the surrogate trains on: "poisoned", "clean" or "none"
    inner_max: bool = False  # REM: the loss is taken at the worst ρ around x + δ, training too
    attack: str = "every_round"  # "every_round" or "after_training" (the last round only)
    training_free: bool = False  # class-structured generators (miue.shortcuts): no surrogate, no rounds
    published: Recipe | None = None  # None: the preset's schedule is the objective's own
    tags: tuple = field(default_factory=tuple)
    # input_loss(model_fn, clean, delta, y, cfg) -> scalar: a loss built from the model's outputs on
    # inputs of its own (PIL's δ alone and x + δ), used instead of ``loss`` on features(x + δ)
    input_loss: Callable | None = None
    box: tuple = (0.0, 1.0)  # the box x + δ is kept in during PGD
    # matched_step(cfg) -> float: the constant PGD step under recipe="matched" (None: the preset's α ramp)
    matched_step: Callable | None = None
    # generator(cfg, clean, y) -> (delta, images, extra config): a training-free objective's poison
    generator: Callable | None = None


def _supcon(ctx, feats, logits, y):
    from miue import ops

    return ops.supcon_loss(feats, y, ctx.temperature, backend=ctx.backend)


def _intra_class(ctx, feats, logits, y):
    from miue import ops

    return ops.intra_class_cosine_loss(feats, y, ctx.num_classes, backend=ctx.backend, validate=False)


def _cross_entropy(ctx, feats, logits, y):
    return F.cross_entropy(logits.float(), y)


def tap_target(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """TAP's target class: (y + 1) mod C (the authors' targeted recipe's label map)."""
    return torch.remainder(y + 1, num_classes)


def _targeted(ctx, feats, logits, y):  # descend cross-entropy to the target class: raise p(target | x + δ)
    return F.cross_entropy(logits.float(), tap_target(y, ctx.num_classes))


def tap_step_size(cfg) -> float:
    """TAP's constant PGD step under ``recipe="matched"``: 2.5·ε / K for its K steps (the usual
    choice for a K-step L∞ attack; the published recipe's is 0.05·ε)."""
    return 2.5 * cfg.eps / cfg.pgd_steps


def _pil_input_loss(model_fn, clean, delta, y, cfg):
    return pil_loss(model_fn, clean, delta, y, cfg.pil_lambda)


def _shortcut(make_name: str):
    """ar / lsp: δ from the class's generator (miue.shortcuts), in the ε ball and the [0, 1] box."""
    def generate(cfg, clean, y):
        from miue import ops, shortcuts
        from miue.craft.result import quantize_images

        delta = getattr(shortcuts, make_name)(y, tuple(clean.shape[1:]), cfg.eps, seed=cfg.seed)
        ops.project_linf_(delta, clean, cfg.eps).clamp_(-cfg.eps, cfg.eps)
        return delta, quantize_images(clean, delta, cfg.eps, cfg.release_rounding), {"norm": "Linf"}
    return generate


def _one_pixel(cfg, clean, y):
    """ops: each class's one pixel set (δ is then what it is at that pixel, up to ±1)."""
    from miue import shortcuts

    base = clean if clean.dtype == torch.uint8 else torch.round(clean * 255).to(torch.uint8)
    pos, col = shortcuts.ops_pixels(base, y)
    images = shortcuts.ops_images(base, y, pos, col)
    clean01 = clean.float() / 255 if clean.dtype == torch.uint8 else clean
    return images.float() / 255 - clean01, images, {"norm": "L0", "pixels": pos.tolist(), "colours": col.tolist()}


def pil_loss(model_fn, x, delta, y, lam: float):
    """PIL's crafting loss for the released image x + δ (the authors release x − noise, δ = −noise):
    λ·CE(f(−δ), y), the perturbation alone classified as its label, plus (1 − λ)·KL(U ‖ p(x + δ)),
    the poisoned image pushed to a uniform prediction (``F.kl_div(log p, U, 'batchmean')``)."""
    logits_noise = model_fn(-delta).float()
    logp = F.log_softmax(model_fn(x + delta).float(), dim=1)
    uniform = torch.full_like(logp, 1.0 / logp.shape[1])
    kl = F.kl_div(logp, uniform, reduction="batchmean")
    return lam * F.cross_entropy(logits_noise, y) + (1 - lam) * kl


# --------------------------------------------------------------------------- published recipes

def _em_published(eps: float) -> dict:
    # Huang et al. 2021, sample-wise min-min on CIFAR-10 (HanxunH/Unlearnable-Examples)
    return dict(
        train_steps=10, train_batch_size=512, train_order="sequential", lr=0.1, lr_schedule="constant",
        momentum=0.9, weight_decay=5e-4, grad_clip=5.0, flip=False, input_norm="none", delta_init="zero",
        pgd_steps=20, pgd_batch_size=512, alpha_start=eps / 10, alpha_end=eps / 10, pgd_bn="eval",
        stop_eval_acc=0.99, stop_train_acc=0.0, rounds=100,
    )


def _tap_published(eps: float) -> dict:
    # Fowl et al. 2021, targeted adversarial poisoning (lhfowl/adversarial_poisons)
    return dict(
        train_epochs=40, train_steps=0, rounds=1, train_batch_size=128, lr=0.1, lr_schedule="multistep",
        lr_milestones=(14, 25, 35), lr_gamma=0.1, nesterov=True, momentum=0.9, weight_decay=5e-4, grad_clip=0.0,
        train_order="shuffle", train_augment="shift-flip", attack_augment="shift-flip", flip=False,
        input_norm="cifar", delta_init="normal", pgd_steps=250, pgd_batch_size=512,
        alpha_start=0.05 * eps, alpha_end=0.05 * eps, pgd_bn="eval", restarts=8, stop_eval_acc=0.0,
        stop_train_acc=0.0,
    )


def _rem_published(eps: float) -> dict:
    # Fu et al. 2022, robust error-minimising noise (fshp971/robust-unlearnable-examples, gen_rem.sh)
    return dict(
        schedule="per-batch", train_steps=5000, train_batch_size=128, rounds=10, pgd_batch_size=512, lr=0.1, lr_schedule="step",
        lr_step_every=2000, lr_gamma=0.1, momentum=0.9, weight_decay=5e-4, grad_clip=0.0, flip=False,
        train_augment="crop-flip", input_norm="half", delta_init="uniform", pgd_steps=10,
        alpha_start=eps / 5, alpha_end=eps / 5, rem_eps=eps / 2, rem_steps=10, rem_step_size=eps / 10,
        eot_samples=5, pgd_bn="eval", stop_eval_acc=0.0, stop_train_acc=0.0,
    )


def _pil_published(eps: float) -> dict:
    # PIL (ICLR 2026, jinlinll/pil): a bias-free two-layer linear surrogate trained on clean data
    return dict(
        arch="pil-linear", train_epochs=30, train_steps=0, rounds=1, train_batch_size=512,
        train_order="sequential", lr=0.003, lr_schedule="cosine", lr_min=0.0, momentum=0.9, weight_decay=0.0,
        grad_clip=0.0, flip=False, train_augment="none", input_norm="none", delta_init="uniform", pgd_steps=30,
        pgd_batch_size=512, alpha_start=eps / 10, alpha_end=eps / 10, pgd_bn="eval", pil_lambda=0.9,
        stop_eval_acc=0.0, stop_train_acc=0.0,
    )


EM_PAPER = "Huang et al. 2021, Unlearnable Examples (ICLR)"
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("miue", "the supcon loss on the surrogate's features (same-class features collapse)",
              "Zhu et al. 2026, MI-UE (ICLR)", loss=_supcon, needs_features=True),
    Objective("miue-linear", "−(mean same-class cosine similarity) of the features, O(B·D)",
              "the MI-UE paper's literal objective", loss=_intra_class, needs_features=True),
    Objective("em", "error-minimising noise: min over δ of the cross-entropy, min-min with the surrogate",
              EM_PAPER, loss=_cross_entropy,
              published=Recipe("HanxunH/Unlearnable-Examples: perturbation.py, toolbox.py, "
                               "configs/cifar10/resnet18.yaml", _em_published,
                               "10 surrogate SGD steps (batch 512, lr 0.1 constant, clip 5), then 20 steps of "
                               "ε/10 on every δ; stop once the eval-mode surrogate classifies > 99% of the "
                               "poisoned set")),
    Objective("tap", "targeted adversarial poisoning: a surrogate trained on clean data, δ towards class y + 1",
              "Fowl et al. 2021, Adversarial Examples Make Strong Poisons (NeurIPS)", loss=_targeted,
              surrogate="clean", attack="after_training", matched_step=tap_step_size,
              published=Recipe("lhfowl/adversarial_poisons: anneal.py, forest/ (ConservativeStrategy, "
                               "forgemaster_targeted.py, forgemaster_base.py)", _tap_published,
                               "40 clean epochs (nesterov SGD, lr 0.1 ×0.1 at 14/25/35, shift + flip), then "
                               "250 steps of 0.05·ε towards y + 1 with differentiable shift + flip, 8 restarts")),
    Objective("rem", "robust error-minimising noise: EM against an adversarially trained surrogate",
              "Fu et al. 2022, Robust Unlearnable Examples (ICLR)", loss=_cross_entropy, inner_max=True,
              published=Recipe("fshp971/robust-unlearnable-examples: scripts/cifar10/gen_rem.sh, "
                               "generate_robust_em.py, attacks/robust_workers.py", _rem_published,
                               "5,000 steps of batch 128: δ of the batch (10 steps of ε/5, 5 crop + flip "
                               "samples, ρ 10 steps of ε/10 in ε/2), then one adversarial training step")),
    Objective("pil", "a bias-free linear surrogate on clean data; δ alone classified as y, x + δ uniform",
              "PIL, ICLR 2026 (jinlinll/pil)", surrogate="clean", attack="after_training",
              input_loss=_pil_input_loss, box=(-1.0, 2.0),  # its authors clip only the released image
              published=Recipe("jinlinll/pil: main.py, trainer.py, attacks.py, models/linearmodel.py",
                               _pil_published,
                               "a 2-layer bias-free linear model, 30 clean epochs (lr 0.003, cosine), then 30 "
                               "steps of ε/10 on 0.9·CE(f(−δ), y) + 0.1·KL(U ‖ f(x + δ))")),
    Objective("random", "uniform noise in [−ε, ε], no model", "a baseline", surrogate="none"),
    Objective("ar", "autoregressive noise per class (training-free)", "Sandoval-Segura et al. 2022",
              surrogate="none", training_free=True, generator=_shortcut("ar_noise")),
    Objective("lsp", "linear-separable patches per class (training-free)", "Yu et al. 2022",
              surrogate="none", training_free=True, generator=_shortcut("lsp_noise")),
    Objective("ops", "one pixel per class (an L0 attack; ignores ε)", "Wu et al. 2023",
              surrogate="none", training_free=True, generator=_one_pixel),
)}
NAMES = tuple(OBJECTIVES)
DEFAULT = NAMES[0]  # MI-UE: what craft_fast crafts unless told otherwise
TRAINING_FREE = tuple(n for n, o in OBJECTIVES.items() if o.training_free)


def get(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"objective must be one of {NAMES}, got {name!r}") from None


def recipe_values(name: str, recipe: str, eps: float) -> dict:
    """The CraftConfig values the objective's recipe sets ({} for ``matched`` or an objective
    whose preset is its own schedule)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    obj = get(name)
    if recipe == "matched" or obj.published is None:
        return {}
    return obj.published.values(eps)
