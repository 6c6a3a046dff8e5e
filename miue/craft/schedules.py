"""What one round of crafting does, by ``CraftConfig.schedule`` (a recipe value): the round
schedule (train the surrogate, then a PGD pass over every δ; MI-UE, EM, TAP, PIL) or REM's
per-batch loop. Each takes the engine and the round number and returns the round's record;
``"stopped": True`` ends the run. A new schedule is one function here and its name in
``SCHEDULES`` (and in CraftConfig's checked values).
"""

from __future__ import annotations

import logging
import math
import time

from miue.augment import AUGMENTS
from miue.craft.shard import as_float01

log = logging.getLogger("miue.craft")


def rounds(eng, e: int) -> dict:
    """Round ``e``: train the surrogate (on the poisoned data, or the clean data for objectives
    whose surrogate trains on it), then PGD on every δ (every round, or after the last round
    only for ``attack="after_training"``), then the recipe's stop rules."""
    cfg, obj = eng.cfg, eng.obj
    t0 = time.perf_counter()
    lr = eng.surrogate.opt.param_groups[0]["lr"]
    for _ in range(eng.shard.train_passes):  # 1. cross-entropy on clamp(flip(x) + δ), SGD steps
        train_loss, train_acc = eng.train_epoch()
    train_loss, train_acc = float(train_loss), float(train_acc)
    t1 = time.perf_counter()
    rec = {"round": e, "train_loss": train_loss, "train_acc": train_acc}
    if cfg.stop_train_acc > 0 and train_acc >= cfg.stop_train_acc:
        # an ablation's rule: the surrogate's running train accuracy already fits the poisoned data
        log.info("round %d: surrogate accuracy %.4f >= stop_train_acc %.4f: crafting ends", e, train_acc,
                 cfg.stop_train_acc)
        return {**rec, "stopped": True, "stop": "stop_train_acc", "lr": lr, "seconds": t1 - t0}
    images_per_round = eng.shard.train_images_per_round
    if obj.attack == "after_training" and e < cfg.rounds:  # TAP, PIL: train first, attack at the end
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"round {e}: the surrogate produced NaN/Inf (train loss {train_loss})")
        return {**rec, "lr": lr, "seconds": t1 - t0, "train_images_per_s": images_per_round / (t1 - t0)}
    matched = cfg.recipe == "matched" and obj.matched_step is not None
    alpha = obj.matched_step(cfg) if matched else cfg.alpha(e)
    objective = float(eng.attack.pgd_pass(alpha))  # 2. K signed-gradient steps on every δ, frozen surrogate
    t2 = time.perf_counter()
    if not (math.isfinite(objective) and math.isfinite(train_loss)):
        raise FloatingPointError(f"round {e}: the surrogate produced NaN/Inf (objective {objective}, "
                                 f"train loss {train_loss})")
    rec = {**rec, "objective_loss": objective, "alpha": alpha, "lr": lr, "seconds": t2 - t0,
           "train_images_per_s": images_per_round / (t1 - t0),
           "pgd_images_per_s": eng.shard.n_global * cfg.pgd_steps * max(1, cfg.restarts) / (t2 - t1)}
    if cfg.stop_eval_acc > 0:  # 3. EM's published stop: the eval-mode surrogate on the whole poisoned set
        acc = eng.poisoned_accuracy()
        rec.update(eval_acc=acc, seconds=time.perf_counter() - t0)
        if acc > cfg.stop_eval_acc:
            log.info("round %d: the surrogate classifies %.4f of the poisoned set (> %.4f): crafting ends", e,
                     acc, cfg.stop_eval_acc)
            rec.update(stopped=True, stop="stop_eval_acc")
        elif e == cfg.rounds:
            log.warning("round %d: the cap on rounds was hit before the stop rule (accuracy %.4f <= %.4f)", e,
                        acc, cfg.stop_eval_acc)
            rec["stop"] = "cap"
    return rec


def per_batch(eng, e: int) -> dict:
    """Round ``e`` of REM's published loop (Fu et al. 2022): the run's ``train_steps`` steps in
    ``rounds`` equal parts. Each step draws a batch (fresh shuffles, full batches only), crafts
    its δ from a new random start (:meth:`Attack.minimax_delta`), stores it, then takes one
    adversarial training step on augment(x + δ) + ρ. The last round then crafts every δ again
    with the final surrogate."""
    cfg, shard, sur, attack = eng.cfg, eng.shard, eng.surrogate, eng.attack
    t0 = time.perf_counter()
    lr = sur.opt.param_groups[0]["lr"]
    per = -(-cfg.train_steps // cfg.rounds)
    steps = max(0, min(per, cfg.train_steps - (e - 1) * per))
    loss_sum, correct, seen, objective = 0.0, 0, 0, 0.0
    alpha = cfg.alpha(e)
    for _ in range(steps):
        idx = shard.next_batch()
        c_box = shard.store.clean_batch(idx)
        clean_f = as_float01(c_box)
        y = shard.labels_of(idx)
        d, obj = attack.minimax_delta(c_box, clean_f, y, alpha)
        shard.store.write_delta(idx, d)
        objective += obj
        x = (clean_f + d).clamp_(0, 1)
        if cfg.train_augment in AUGMENTS:
            x = AUGMENTS[cfg.train_augment](x, eng.gen)
        sur.model.train()
        sur.model.requires_grad_(True)
        loss, logits = sur.step(x, y, eng.obj.inner_max)
        sur.sched.step()
        loss_sum += float(loss.detach()) * len(idx)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(idx)
    t1 = time.perf_counter()
    rec = {"round": e, "train_steps": steps, "train_loss": loss_sum / max(seen, 1),
           "train_acc": correct / max(seen, 1), "objective_loss": objective / max(steps, 1), "alpha": alpha,
           "lr": lr}
    if e == cfg.rounds:  # every δ crafted again with the final surrogate
        total = 0.0
        for idx in shard.batches(cfg.pgd_batch_size):
            c_box = shard.store.clean_batch(idx)
            y = shard.labels_of(idx)
            d, obj = attack.minimax_delta(c_box, as_float01(c_box), y, alpha)
            shard.store.write_delta(idx, d)
            total += obj * len(idx)
        rec["final_objective_loss"] = total / shard.N
    t2 = time.perf_counter()
    if not (math.isfinite(rec["train_loss"]) and math.isfinite(rec["objective_loss"])):
        raise FloatingPointError(f"round {e}: the surrogate produced NaN/Inf ({rec})")
    return {**rec, "seconds": t2 - t0, "train_seconds": t1 - t0}


SCHEDULES = {"rounds": rounds, "per-batch": per_batch}
