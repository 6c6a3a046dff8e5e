"""Effectiveness study (issue 13): whether, and when, MI-UE makes Fashion-MNIST unlearnable,
compared with EM and simple baselines, against victims that differ from the surrogate.

Every measurement is a *cell* (one poison × one victim × one seed × one defense), cached in
``results.json`` the moment it is done; ``--resume`` measures only what is missing, so a
killed run loses one cell at most. Crafted poisons are cached (``--cache-dir``, outside the
repository) with crafting checkpoints, so an interrupted 1,000-step craft resumes too.

Stages (``--stages`` picks some and sets their order; ``--budgets`` likewise):

``plateau``    clean-trained victims at their epoch budget E and at 2E: shows how far from
               the plateau E stops (the curves are in the JSON).
``budgets``    every method at every budget (PGD steps per image: 25 = the ``cnn`` preset,
               200, 1,000 = the paper's 100 rounds × 10 steps and α ramp) × every victim; 3 seeds
               on the SGD small-CNN victim.
``ablations``  one knob at a time on MI-UE (EM too for its own recipe and the surrogate depth) at the ablation budget.
``defenses``   MI-UE, EM and clean data under training-time defenses at the defense budget.

Writes ``results.json``, ``results.md`` (tables) and ``budget_curve.png`` /
``mi_scatter.png`` into ``--out`` (default ``benchmarks/results/<machine>-<date>/effectiveness``).

    python benchmarks/effectiveness.py --resume                 # the whole study (hours on 2 cores)
    python benchmarks/effectiveness.py --resume --stages budgets --budgets 25 200
    python benchmarks/effectiveness.py --resume --stages budgets --budgets 25 --methods rem miue em --victims cnn-sgd
    python benchmarks/effectiveness.py --report-only            # tables and plots from results.json
    python benchmarks/effectiveness.py --quick --out /tmp/eff   # CI smoke run (tiny everything)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

from miue.evaluation.victims import DEMO_VICTIMS, VICTIM_RECIPES

EPS = 8 / 255

# PGD steps per image -> crafting options on top of the ``cnn`` preset (cnn-small surrogate,
# SGD lr 0.01, one surrogate epoch per round). α ramps from alpha_start (round 1) to alpha_end.
BUDGETS = {
    "25": dict(rounds=5, pgd_steps=5, alpha_start=1.0 / 255, alpha_end=2.0 / 255),  # the cnn preset (the demo preset before issue 25)
    "50": dict(rounds=5, pgd_steps=10, alpha_start=1.0 / 255, alpha_end=2.0 / 255),  # the demo preset with the ResNet-8 surrogate
    "100": dict(rounds=10, pgd_steps=10, alpha_start=0.5 / 255, alpha_end=1.0 / 255),
    "200": dict(rounds=20, pgd_steps=10, alpha_start=0.5 / 255, alpha_end=1.0 / 255),  # the cpu preset
    "1000": dict(rounds=100, pgd_steps=10, alpha_start=0.2 / 255, alpha_end=0.4 / 255),  # the paper's schedule
}

# method -> (objective, classwise); "ref-cw" is crafted without a model (a fixed ±eps sign
# pattern per class), "clean" is no perturbation.
METHODS = {
    "miue": ("miue", False),
    "em": ("em", False),
    "ref-cw": (None, True),
    "miue-linear": ("miue-linear", False),
    "miue-cw": ("miue", True),
    "tap": ("tap", False),  # budget b: the budget's rounds of clean training, then b PGD steps at the end
    "rem": ("rem", False),  # about 8x EM's cost (7 inner steps for ρ per training batch and per PGD step)
    "random": ("random", False),
    "ar": ("ar", False),
    "lsp": ("lsp", False),
    "ops": ("ops", False),
}
BUDGET_FREE = ("random", "ref-cw", "ar", "lsp", "ops")  # no surrogate: the same poison at every budget

# victims: (evaluate preset, arch, epochs). They differ from the surrogate (cnn-small trained
# with SGD) in width or architecture and in recipe (SGD + crop + flip vs Adam, no augmentation).
VICTIMS = dict(VICTIM_RECIPES)  # miue/evaluation/victims.py
SEEDS = {"cnn-sgd": (0, 1, 2)}  # others: seed 0

# one knob at a time (applied to MI-UE unless the name says otherwise), at ABLATION_BUDGET
ABLATION_BUDGET = "200"
ABLATIONS = {
    "train_steps=10": dict(train_steps=10),  # EM's surrogate schedule: 10 SGD steps per round
    "em-recipe": dict(train_steps=10, stop_train_acc=0.99),  # ... and its stopping rule
    "tau=0.05": dict(temperature=0.05),
    "tau=0.5": dict(temperature=0.5),
    "pgd_batch=256": dict(batch_size=256),
    "pgd_batch=1024": dict(batch_size=1024),
    "bn=train": dict(pgd_bn="train"),
    "flip=off": dict(flip=False),
    "alpha=const": dict(alpha_start=0.75 / 255, alpha_end=0.75 / 255),
    "surrogate=cnn": dict(arch="cnn"),
    "surrogate=resnet-small": dict(arch="resnet-small"),
    # the same ResNet-8 surrogate with bf16 autocast on the CPU (AMX / avx512_bf16): about 1.8x faster crafting
    "surrogate=resnet-small+bf16": dict(arch="resnet-small", amp=True),
    # the ResNet-8 at half width (8 / 16 / 32): the same depth, residuals and BN at about a third of the cost
    "surrogate=resnet-narrow": dict(arch="resnet-narrow"),
    # ... in bf16: on an Intel CPU with AMX 2.8x the ResNet-8's bf16 throughput (4,247 vs 1,510 img/s,
    # forward + backward to the input, one thread, batch 256), so 200 steps cost about 70 of the ResNet-8's
    "surrogate=resnet-narrow+bf16": dict(arch="resnet-narrow", amp=True),
}
# also measured for EM: its own recipe, and the surrogate depth (does a deeper surrogate help MI-UE more than EM?)
ABLATION_EM = ("em-recipe", "train_steps=10", "surrogate=resnet-small", "surrogate=resnet-small+bf16",
               "surrogate=resnet-narrow", "surrogate=resnet-narrow+bf16")

# the cost-effectiveness frontier (issue 25): MI-UE and EM on the ResNet-8 surrogate in bf16 at
# these budgets, every victim, one victim seed; the small-CNN and fp32 ResNet-8 cells of the
# budgets stage are reused beside them. --craft-seeds repeats the crafts with other seeds.
FRONTIER_BUDGETS = ("25", "50", "100", "200")
FRONTIER_VARIANT = "surrogate=resnet-small+bf16"
FRONTIER_METHODS = ("miue", "em")
# the lines of the frontier plot and table: (label, variant of the poison ids)
SURROGATES = (("small CNN, fp32", None), ("ResNet-8, fp32", "surrogate=resnet-small"),
              ("ResNet-8, bf16", "surrogate=resnet-small+bf16"),
              ("ResNet-8 half width, fp32", "surrogate=resnet-narrow"),
              ("ResNet-8 half width, bf16", "surrogate=resnet-narrow+bf16"))
ABLATION_VICTIMS = ("cnn-sgd", "cnn-adam", "mlp-adam")

DEFENSE_BUDGET = "200"
DEFENSES = ("jpeg", "at", "cutout", "mixup", "ueraser", "blur")
DEFENSE_METHODS = ("miue", "em", "clean")

# the seeded comparison (issue 38): MI-UE against the baselines as their authors published them,
# every row crafted with ``craft_fast`` as a user calls it. row -> (preset, objective, recipe, options);
# the baselines run their published recipe on the CPU presets' ResNet-8 surrogate (only the
# architecture and precision come from the preset). ``em-matched`` is EM's loss on MI-UE's demo
# schedule (the demo's EM row before recipes existed).
COMPARE = {
    "miue-demo": ("demo", "miue", "published", {}),
    "miue-cpu": ("cpu", "miue", "published", {}),
    "em-published": ("demo", "em", "published", {}),
    "em-matched": ("demo", "em", "matched", {}),
    # EM's loss on the cpu preset's 200-step schedule: the loss-only ablation at MI-UE cpu's budget (issue 46)
    "em-matched-cpu": ("cpu", "em", "matched", {}),
    "pil": ("demo", "pil", "published", {}),
    # the authors' TAP with one restart instead of 8 (their README's cheaper setting): 8 restarts of
    # 250 steps are 2,000 steps per image, about 3 h per craft of 10,000 images on 2 cores
    "tap-published-r1": ("demo", "tap", "published", {"restarts": 1}),
    "rem-published": ("demo", "rem", "published", {}),
    "random": ("demo", "random", "published", {}),
}
COMPARE_REFERENCE = ("miue-demo", "miue-cpu")  # Welch's p of every other row against these
COMPARE_VICTIMS = ("cnn-sgd", "cnn-adam", "resnet-sgd", "mlp-adam")
COMPARE_DEFENSES = ("jpeg", "jpeg75", "resize", "coin")  # on COMPARE_DEFENDED victims
COMPARE_DEFENDED = DEMO_VICTIMS
# the declared comparison's headline defenses (issue 46, docs/effectiveness.md): on every victim, not
# only COMPARE_DEFENDED; the other COMPARE_DEFENSES stay on COMPARE_DEFENDED (secondary)
COMPARE_HEADLINE_DEFENSES = ("jpeg", "jpeg75")
DEFENSE_LABELS = {"jpeg": "JPEG-10", "jpeg75": "JPEG-75", "jpeg90": "JPEG-90", "resize": "the 2x resize", "coin": "COIN"}

QUICK_COMPARE_ROWS = ("miue-demo", "em-published", "em-matched", "pil", "tap-published-r1", "random")
QUICK_COMPARE = {"*": dict(rounds=2, pgd_steps=2), "tap": dict(train_epochs=1, pgd_steps=2),
                 "pil": dict(train_epochs=1, pgd_steps=2)}

QUICK = dict(train_per_class=60, test_per_class=30, budgets={"25": dict(rounds=2, pgd_steps=2, alpha_start=2 / 255,
                                                                        alpha_end=2 / 255)},
             epochs=1, ablations=("train_steps=10", "bn=train"), defenses=("jpeg", "cutout"))


# ----------------------------------------------------------------------------- bookkeeping


class Results:
    """results.json: setup, per-poison crafting records and per-cell victim records,
    rewritten atomically after every cell."""

    def __init__(self, path: str, setup: dict, resume: bool):
        self.path = path
        self.data = {"setup": setup, "poisons": {}, "cells": {}}
        if os.path.exists(path):
            if not resume:
                raise SystemExit(f"{path} exists: pass --resume to continue it, or choose another --out")
            with open(path) as fh:
                old = json.load(fh)
            keep = ("dataset", "train_per_class", "test_per_class", "eps", "quick", "surrogate_steps")
            missing = {"surrogate_steps": 0}  # keys added since: the value runs without them had
            if any(old["setup"].get(k, missing.get(k)) != setup.get(k, missing.get(k)) for k in keep):
                raise SystemExit(f"--resume: {path} was measured with another setup ({[old['setup'].get(k) for k in keep]})")
            self.data["poisons"] = old.get("poisons", {})
            self.data["cells"] = old.get("cells", {})
            self._merge_budgets(old)

    def _merge_budgets(self, other: dict):
        """The setup records every budget any run of this file measured, not only this run's
        ``--budgets`` (runs with different ``--budgets`` share one file)."""
        mine = self.data["setup"].get("budgets", {})
        self.data["setup"]["budgets"] = {**other.get("setup", {}).get("budgets", {}), **mine}

    def save(self):
        """Merge with what is on disk, then replace it atomically, under a lock file.

        Two runs may share one results.json (e.g. a slow craft on one core beside short cells on
        the other): each keeps every cell the other wrote, so no result is lost. Cells and poison
        records are write-once, so the union is the answer; this run's copy wins a clash."""
        import fcntl

        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(self.path):
                with open(self.path) as fh:
                    disk = json.load(fh)
                for key in ("poisons", "cells"):
                    self.data[key] = {**disk.get(key, {}), **self.data[key]}
                self._merge_budgets(disk)
            self._write()

    def _write(self):
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.data, fh, indent=1)
        os.replace(tmp, self.path)

    def drop_poison(self, pid: str) -> int:
        """Remove a poison's record and its cells, here and on disk (``--drop-poison``; save()
        would bring them back from disk). Another run still writing this file would bring them
        back too: stop it first. Returns the number of cells removed."""
        import fcntl

        with open(self.path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            n = drop_poison(self.data, pid)
            if os.path.exists(self.path):
                with open(self.path) as fh:
                    disk = json.load(fh)
                drop_poison(disk, pid)
                for key in ("poisons", "cells"):
                    self.data[key] = {**disk.get(key, {}), **self.data[key]}
            self._write()
        return n


def cell_id(poison: str, victim: str, seed: int, defense: str | None) -> str:
    return f"{poison}|{victim}|s{seed}|{defense or 'none'}"


def poison_id(method: str, budget: str | None, ablation: str | None = None, craft_seed: int = 0) -> str:
    """``method@budget[+ablation][+csN]``: N the crafting seed, where it is not 0."""
    if method in BUDGET_FREE or method == "clean":
        return method
    return f"{method}@{budget}" + (f"+{ablation}" if ablation else "") + (f"+cs{craft_seed}" if craft_seed else "")


def compare_id(row: str, craft_seed: int) -> str:
    """``cmp-ROW[+csN]``: a poison of the compare stage."""
    return f"cmp-{row}" + (f"+cs{craft_seed}" if craft_seed else "")


def split_craft_seed(pid: str) -> tuple[str, int]:
    """``miue@50+x+cs2`` -> (``miue@50+x``, 2); ids without a crafting seed have seed 0."""
    head, sep, tail = pid.rpartition("+cs")
    if sep and tail.isdigit():
        return head, int(tail)
    return pid, 0


# ----------------------------------------------------------------------------- the study


class Study:
    def __init__(self, args):
        from miue.data import class_balanced_subset, load_dataset

        self.args = args
        self.quick = args.quick
        q = QUICK if args.quick else None
        self.budgets = q["budgets"] if q else {b: BUDGETS[b] for b in args.budgets}
        self.victims_given = args.victims is not None  # the ablations stage has its own default victims
        self.victims = list(dict.fromkeys(args.victims or VICTIMS))  # in the order given
        self.seed_filter = set(args.seeds) if args.seeds is not None else None
        self.epochs_scale = args.epoch_scale
        train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
        tpc = q["train_per_class"] if q else args.train_per_class
        self.train = class_balanced_subset(train, tpc, seed=0)
        self.test = class_balanced_subset(test, q["test_per_class"], seed=0) if q else test
        setup = {"dataset": "fashion-mnist", "train_per_class": tpc, "test_per_class": q["test_per_class"] if q else None,
                 "train_images": len(self.train), "test_images": len(self.test), "eps": EPS, "quick": args.quick,
                 "budgets": self.budgets, "victims": VICTIMS, "seeds": SEEDS, "ablations": ABLATIONS,
                 "ablation_budget": ABLATION_BUDGET, "defense_budget": DEFENSE_BUDGET,
                 "surrogate": "cnn preset (cnn-small, SGD lr 0.01, "
                              + (f"{args.surrogate_steps} SGD steps per round)" if args.surrogate_steps
                                 else "one epoch per round)"),
                 "surrogate_steps": args.surrogate_steps,
                 "environment": _environment()}
        self.res = Results(os.path.join(args.out, "results.json"), setup, args.resume)
        self.res.data["setup"]["environment"] = setup["environment"]
        self.cache = os.path.join(args.cache_dir, ("quick" if args.quick else f"fmnist-{tpc}pc")
                                  + (f"-ts{args.surrogate_steps}" if args.surrogate_steps else ""))
        self.deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
        self._poison_cache = {}
        self.craft_seed = 0  # set per pass of the budgets and frontier stages (--craft-seeds)

    # -- poisons
    def poison_images(self, pid: str, method: str, budget: str | None, overrides: dict) -> np.ndarray:
        if method == "clean":
            return self.train.images
        if pid in self._poison_cache:
            return self._poison_cache[pid]
        from miue.craft import CraftResult, craft_fast, quantize_images

        path = os.path.join(self.cache, "poisons", pid.replace("/", "_") + ".npz")
        if os.path.exists(path):
            images = CraftResult.load(path).images.numpy()
        else:
            t0 = time.perf_counter()
            objective, classwise = METHODS[method] if method in METHODS else (None, False)
            if method in COMPARE:  # as a user calls it: the preset, the objective and its recipe
                preset, objective, recipe, opts = COMPARE[method]
                if self.quick:
                    opts = {**opts, **QUICK_COMPARE.get(objective, QUICK_COMPARE["*"])}
                result = craft_fast(self.train.images, self.train.labels, preset=preset, objective=objective,
                                    recipe=recipe, eps=EPS, seed=self.craft_seed, progress=self.args.progress,
                                    checkpoint_dir=os.path.join(self.cache, "ckpt", pid), **opts)
            elif objective is None:  # ref-cw: a fixed random ±eps sign pattern per class
                g = torch.Generator().manual_seed(0)
                C = int(self.train.labels.max()) + 1
                pattern = (torch.randint(0, 2, (C,) + self.train.images.shape[1:], generator=g).float() * 2 - 1) * EPS
                labels = torch.from_numpy(self.train.labels)
                delta = pattern[labels]
                clean = torch.from_numpy(self.train.images)
                result = CraftResult(delta=delta, images=quantize_images(clean, delta, EPS), labels=labels,
                                     config={"method": "ref-cw", "eps": EPS}, history=[])
            else:
                # the surrogate's schedule is pinned here, not left to the preset's current default
                opts = {"train_steps": getattr(self.args, "surrogate_steps", 0), "train_epochs": 1}
                opts.update(self.budgets.get(budget, {}) if budget else {})
                if objective == "tap" and budget:  # all of TAP's steps come after its training
                    opts["pgd_steps"] = opts["rounds"] * opts["pgd_steps"]
                opts.update(overrides)
                # the budgets, ablations and frontier stages measured the objectives on MI-UE's schedule
                opts.setdefault("recipe", "matched")
                result = craft_fast(self.train.images, self.train.labels, preset="cnn", objective=objective,
                                    classwise=classwise, eps=EPS, seed=self.craft_seed, progress=self.args.progress,
                                    checkpoint_dir=None if method in BUDGET_FREE else os.path.join(self.cache, "ckpt", pid),
                                    **opts)
            seconds = time.perf_counter() - t0
            images = result.images.numpy()
            _check_same_poison(self.res.data, pid, images)  # before anything is written
            os.makedirs(os.path.dirname(path), exist_ok=True)
            result.save(path)
            self.res.data["poisons"][pid] = {
                "method": method, "budget": budget, "overrides": overrides, "craft_seconds": seconds,
                "recipe": result.config.get("recipe"), "precision": result.config.get("precision"),
                "craft_seed": self.craft_seed, "threads": torch.get_num_threads(),
                "config": result.config, "history": result.history,
                "pgd_steps_per_image": _pgd_steps(result), "linf_uint8": int(np.abs(
                    images.astype(np.int16) - self.train.images.astype(np.int16)).max()),
                "images_sha256": _images_sha256(images),
                "cpu": _environment().get("cpu"),
            }
            self.res.save()
            print(f"  crafted {pid:34} {seconds:7.0f} s", flush=True)
        self._poison_cache = {pid: images}  # keep one poison in memory
        return images

    # -- victims
    def run_cell(self, pid: str, method: str, budget: str | None, victim: str, seed: int, defense: str | None = None,
                 overrides: dict | None = None, epochs: int | None = None, tag: str | None = None):
        cid = cell_id(pid, victim, seed, defense) + (f"|{tag}" if tag else "")
        if cid in self.res.data["cells"]:
            return
        if self.deadline and time.time() > self.deadline:
            raise _OutOfTime()
        from miue.evaluation.victims import evaluate

        images = self.poison_images(pid, method, budget, overrides or {})
        preset, arch, default_epochs = VICTIMS[victim]
        E = epochs or (1 if self.quick else max(1, round(default_epochs * self.epochs_scale)))
        v = evaluate(images, self.train.labels, self.test.images, self.test.labels, preset=preset, arch=arch, epochs=E,
                     seed=seed, defense=defense, progress=self.args.progress)
        rec = {"poison": pid, "method": method, "budget": budget, "victim": victim, "seed": seed, "defense": defense,
               "epochs": E, "test_acc": v.test_acc, "peak_test_acc": v.peak_test_acc,
               "test_acc_history": v.test_acc_history,
               "train_acc_final": v.train_acc_history[-1], "seconds": v.seconds}
        if method != "clean" and defense is None:
            rec.update(_lens(v.model, self.train, images, n=2000 if self.quick else 5000))
        self.res.data["cells"][cid] = rec
        self.res.save()
        mi = f"  MI {rec['mi_nats']:6.2f}" if "mi_nats" in rec else ""
        print(f"  {cid:58} acc {v.test_acc:.4f}{mi}  ({v.seconds:.0f} s)", flush=True)

    def stage_plateau(self):
        print("== plateau: clean victims at E and 2E epochs", flush=True)
        for victim in self.victims:
            E = 1 if self.quick else max(1, round(VICTIMS[victim][2] * self.epochs_scale))
            self.run_cell("clean", "clean", None, victim, 0)
            self.run_cell("clean", "clean", None, victim, 0, epochs=2 * E, tag=f"epochs={2 * E}")

    def stage_budgets(self):
        for cs in self._craft_seeds():
            self.craft_seed = cs
            self._stage_budgets()
        self.craft_seed = 0

    def _craft_seeds(self):
        return list(dict.fromkeys(getattr(self.args, "craft_seeds", None) or [0]))

    def stage_frontier(self):
        """MI-UE and EM on the ResNet-8 surrogate in bf16 (``--budget-variant`` picks another
        setting) at FRONTIER_BUDGETS (filtered by ``--budgets``), every victim, victim seed 0
        (``--seeds`` for more), for each of ``--craft-seeds``."""
        variant = getattr(self.args, "budget_variant", None) or FRONTIER_VARIANT
        budgets = [b for b in self.budgets if b in FRONTIER_BUDGETS] or list(self.budgets)  # in --budgets' order
        methods = [m for m in self.args.methods if m in FRONTIER_METHODS] or list(FRONTIER_METHODS)
        print(f"== frontier: {' '.join(methods)} crafted with {variant} at budgets {' '.join(budgets)}, "
              f"crafting seeds {self._craft_seeds()}", flush=True)
        for victim in self.victims:
            self.run_cell("clean", "clean", None, victim, 0)
        for cs in self._craft_seeds():
            self.craft_seed = cs
            for b in budgets:
                for m in methods:
                    for victim in self.victims:
                        for seed in (self._seeds(victim) if self.seed_filter is not None else (0,)):
                            self.run_cell(poison_id(m, b, variant, cs), m, b, victim, seed,
                                          overrides=ABLATIONS[variant])
        self.craft_seed = 0

    def _stage_budgets(self):
        # --budget-variant: every budget's poisons crafted with one ablation's setting (e.g. the
        # ResNet-8 surrogate at 1,000 steps); the training-free rows do not depend on it
        variant = getattr(self.args, "budget_variant", None)
        overrides = ABLATIONS[variant] if variant else None
        print("== budgets: every method at every budget, every victim"
              + (f", crafted with {variant}" if variant else ""), flush=True)
        methods = [m for m in self.args.methods if m in METHODS and not (variant and m in BUDGET_FREE)]
        for victim in self.victims:  # the clean reference first
            if 0 in self._seeds(victim):
                self.run_cell("clean", "clean", None, victim, 0)
        for b in self.budgets:  # seed 0 of every cell of a budget first, then the extra seeds
            cells = [(m, v) for m in methods for v in self.victims
                     if not (m in BUDGET_FREE and b != next(iter(self.budgets)))]
            for first in (True, False):
                for m, victim in cells:
                    for seed in self._seeds(victim)[:1] if first else self._seeds(victim)[1:]:
                        if m in BUDGET_FREE and self.craft_seed:
                            continue  # the training-free rows have no crafting seed here
                        self.run_cell(poison_id(m, b, variant, self.craft_seed), m, None if m in BUDGET_FREE else b,
                                      victim, seed, overrides=overrides)
        for victim in self.victims:
            for seed in self._seeds(victim):
                if seed != 0:
                    self.run_cell("clean", "clean", None, victim, seed)

    def stage_ablations(self):
        budget = next(iter(self.budgets)) if self.quick else ABLATION_BUDGET
        names = QUICK["ablations"] if self.quick else (getattr(self.args, "ablations", None) or list(ABLATIONS))
        print(f"== ablations at budget {budget}", flush=True)
        for name in names:
            methods = ("miue", "em") if name in ABLATION_EM else ("miue",)
            for method in [m for m in methods if m in getattr(self.args, "methods", methods)]:
                pid = poison_id(method, budget, name)
                victims = self.victims if getattr(self, "victims_given", False) else \
                    [v for v in ABLATION_VICTIMS if v in self.victims]
                for victim in victims:  # seed 0 unless --seeds asks for the victim's others
                    for seed in (self._seeds(victim) if self.seed_filter is not None else (0,)):
                        self.run_cell(pid, method, budget, victim, seed, overrides=ABLATIONS[name])

    def stage_defenses(self):
        budget = next(iter(self.budgets)) if self.quick else DEFENSE_BUDGET
        print(f"== defenses at budget {budget}", flush=True)
        names = QUICK["defenses"] if self.quick else (getattr(self.args, "defenses", None) or list(DEFENSES))
        methods = getattr(self.args, "methods", None) or list(METHODS)
        variant = getattr(self.args, "defense_variant", None)  # e.g. poisons crafted on the ResNet-8 surrogate
        for defense in names:
            for m in [m for m in DEFENSE_METHODS if m == "clean" or m in methods]:
                if m == "clean":
                    self.run_cell("clean", m, None, "cnn-sgd", 0, defense=defense)
                else:
                    self.run_cell(poison_id(m, budget, variant), m, budget, "cnn-sgd", 0, defense=defense,
                                  overrides=ABLATIONS[variant] if variant else None)

    def stage_compare(self):
        """The seeded comparison: every COMPARE row (``--compare-rows``) for every crafting seed,
        judged by the victims (``--victims``, default COMPARE_VICTIMS) without a defense and under
        COMPARE_HEADLINE_DEFENSES, and by COMPARE_DEFENDED under the other ``--defenses`` (default
        COMPARE_DEFENSES), each for every victim seed (``--victim-seeds``, default 0). Crafting seed
        by crafting seed, victim seed 0 of a poison before its others, so that a cut run has whole
        seeds."""
        rows = getattr(self.args, "compare_rows", None) or list(COMPARE)
        victims = self.victims if self.victims_given else list(COMPARE_VICTIMS)
        defenses = QUICK["defenses"] if self.quick else (getattr(self.args, "defenses", None) or list(COMPARE_DEFENSES))
        vseeds = list(dict.fromkeys(getattr(self.args, "victim_seeds", None) or [0]))
        if self.quick:
            rows = [r for r in rows if r in QUICK_COMPARE_ROWS]

        def judged(d):  # the victims that judge a poison under defense d
            return [v for v in victims if d in COMPARE_HEADLINE_DEFENSES or v in COMPARE_DEFENDED]

        print(f"== compare: {' '.join(rows)}; crafting seeds {self._craft_seeds()}; victim seeds {vseeds}; "
              f"victims {' '.join(victims)}; defenses "
              + "; ".join(f"{d} on {' '.join(judged(d))}" for d in defenses), flush=True)
        for seed in vseeds:
            for victim in victims:
                self.run_cell("clean", "clean", None, victim, seed)
            for d in defenses:
                for victim in judged(d):
                    self.run_cell("clean", "clean", None, victim, seed, defense=d)
        for cs in self._craft_seeds():
            self.craft_seed = cs
            for row in rows:
                pid = compare_id(row, cs)
                for seed in vseeds:
                    for victim in victims:
                        self.run_cell(pid, row, None, victim, seed)
                    for d in defenses:
                        for victim in judged(d):
                            self.run_cell(pid, row, None, victim, seed, defense=d)
        self.craft_seed = 0

    def _seeds(self, victim):
        seeds = (0,) if self.quick else SEEDS.get(victim, (0,))
        return tuple(s for s in seeds if s in self.seed_filter) if self.seed_filter is not None else seeds


class _OutOfTime(Exception):
    pass


def _images_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _check_same_poison(data: dict, pid: str, images: np.ndarray) -> None:
    """A poison crafted again (its cached file is gone, e.g. with its machine) may only join the
    cells measured on the first craft if it is the same poison: the same sha256 as recorded. A
    different or unverifiable craft would mix two draws in one crafting seed, so the run stops
    and says how to go on (``--drop-poison``, or another crafting seed)."""
    cells = [cid for cid, c in data["cells"].items() if c.get("poison") == pid]
    if not cells:
        return
    first = data["poisons"].get(pid, {}).get("images_sha256")
    if first is not None and first == _images_sha256(images):
        return
    why = "differs from the first craft" if first is not None else "cannot be checked (no sha256 recorded)"
    raise SystemExit(f"effectiveness: poison {pid} was crafted again and {why}; its {len(cells)} measured cells "
                     f"belong to the first craft. Rerun with --drop-poison {pid} to remove them and measure the new "
                     f"craft, or use another crafting seed.")


def drop_poison(data: dict, pid: str) -> int:
    """Remove a poison's record and every cell measured on it (``--drop-poison``); returns the
    number of cells removed."""
    cells = [cid for cid, c in data["cells"].items() if c.get("poison") == pid]
    for cid in cells:
        del data["cells"][cid]
    data["poisons"].pop(pid, None)
    return len(cells)


def _pgd_steps(result) -> int:
    cfg = result.config
    if cfg.get("method") == "ref-cw" or cfg.get("objective") in ("random", "ar", "lsp", "ops"):
        return 0
    return _pgd_rounds(result.history) * int(cfg.get("pgd_steps", 0))


def _pgd_rounds(history) -> int:
    """How many crafting rounds ran a PGD pass."""
    return sum("objective_loss" in h for h in history or [])


def _lens(model, train, poisoned: np.ndarray, n: int) -> dict:
    """The paper's lens on this victim: Gaussian I(clean; poisoned) of its features, the
    intra-class covariance trace and cosine of the poisoned features (first n images)."""
    from miue.evaluation.metrics import extract_features, gaussian_mutual_information, intra_class_covariance_trace, \
        mean_intra_class_cosine

    n = min(n, len(train))
    f_clean = extract_features(model, train.images[:n])
    f_pois = extract_features(model, poisoned[:n])
    labels = torch.from_numpy(train.labels[:n])
    return {"mi_nats": gaussian_mutual_information(f_clean, f_pois),
            "intra_cov_trace": intra_class_covariance_trace(f_pois, labels),
            "intra_cos": mean_intra_class_cosine(f_pois, labels)}


def _environment() -> dict:
    from miue.env import environment

    return environment()


# ----------------------------------------------------------------------------- report


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0  # sample std over seeds


def _fmt(mean, std=None):
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std else "")


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def summarize(data: dict) -> dict:
    """Per (poison, victim): mean ± std test accuracy over seeds (no defense)."""
    table = {}
    for cid, c in data["cells"].items():
        if c["defense"] is not None or cid.count("|") > 3:  # plateau extras carry a tag
            continue
        table.setdefault(c["poison"], {}).setdefault(c["victim"], []).append(c["test_acc"])
    return {p: {v: _mean_std(xs) + (len(xs),) for v, xs in row.items()} for p, row in table.items()}


def targets(data: dict, summary: dict, budget: str, variant: str | None = None) -> dict:
    """Issue 13's targets at ``budget`` for the main rows, or for the poisons crafted with an
    ablation's setting (``variant``, e.g. surrogate=resnet-small); a target whose cells are
    missing is left out."""
    def acc(pid, v):
        return summary.get(pid, {}).get(v, (None,))[0]

    victims = list(VICTIMS)
    out = {}
    mi = [acc(poison_id("miue", budget, variant), v) for v in victims]
    em = [acc(poison_id("em", budget, variant), v) for v in victims]
    clean = [acc("clean", v) for v in victims]
    ref = [acc("ref-cw", v) for v in victims]
    if None not in mi + em:
        out["miue_mean_le_em_mean"] = (float(np.mean(mi)), float(np.mean(em)), bool(np.mean(mi) <= np.mean(em)))
    if mi[0] is not None:
        out["miue_cnn_sgd_le_20pct"] = (mi[0], bool(mi[0] <= 0.20))
    if None not in mi + clean:
        ok = []
        for v, m, c, r in zip(victims, mi, clean, ref):
            half = m <= c / 2
            ref_drop = (r is not None) and (c - m >= c - r)
            ok.append((v, m, c, bool(half or ((r is not None and r > c / 2) and ref_drop))))
        out["miue_le_half_clean_every_victim"] = ok
    if None not in clean and out:  # only beside measured poisons of this budget
        out["clean_ge_88pct"] = [(v, c, bool(c >= 0.88)) for v, c in zip(victims, clean)]
    if budget == DEFENSE_BUDGET:
        cells = {(c["poison"], c["defense"]): c["test_acc"] for c in data["cells"].values()
                 if c["defense"] and c["seed"] == 0 and c["victim"] == "cnn-sgd"}
        mp, ep = poison_id("miue", budget, variant), poison_id("em", budget, variant)
        pairs = [(d, cells[(mp, d)], cells[(ep, d)]) for d in DEFENSES if (mp, d) in cells and (ep, d) in cells]
        if pairs:
            wins = sum(m <= e for _, m, e in pairs)
            out["miue_le_em_under_3_defenses"] = (pairs, wins, bool(wins >= 3))
    return out


def _target_lines(t: dict, budget: str, variant: str | None = None) -> list[str]:
    if not t:
        return []
    ok = {True: "met", False: "MISSED"}
    out = ["", f"Targets at budget {budget}" + (f", poisons crafted with {variant}" if variant else "") + ":", ""]
    if "miue_mean_le_em_mean" in t:
        m, e, good = t["miue_mean_le_em_mean"]
        out.append(f"- MI-UE mean over victims ≤ EM's: {100 * m:.1f}% vs {100 * e:.1f}%: {ok[good]}")
    if "miue_cnn_sgd_le_20pct" in t:
        a, good = t["miue_cnn_sgd_le_20pct"]
        out.append(f"- MI-UE ≤ 20% on cnn-sgd: {100 * a:.1f}%: {ok[good]}")
    if "miue_le_half_clean_every_victim" in t:
        cells = ", ".join(f"{v} {100 * m:.1f}% vs clean {100 * c:.1f}% {ok[g]}" for v, m, c, g in
                          t["miue_le_half_clean_every_victim"])
        out.append(f"- MI-UE ≤ half the clean accuracy (or the class-wise reference's drop where that cannot): {cells}")
    if "clean_ge_88pct" in t:
        out.append("- clean-trained victims ≥ 88%: " + ", ".join(f"{v} {100 * c:.1f}% {ok[g]}" for v, c, g in
                                                              t["clean_ge_88pct"]))
    if "miue_le_em_under_3_defenses" in t:
        pairs, wins, good = t["miue_le_em_under_3_defenses"]
        cells = ", ".join(f"{d} {100 * m:.1f}% vs {100 * e:.1f}%" for d, m, e in pairs)
        out.append(f"- MI-UE ≤ EM under at least 3 defenses (cnn-sgd, seed 0): {wins} of {len(pairs)} measured "
                   f"({cells}): {ok[good] if good or len(pairs) == len(DEFENSES) else 'not yet'}")
    return out


def measured_budgets(data: dict) -> list[str]:
    """Every budget of the file, in increasing order: those its setup records and those of its
    crafted poisons (a file written before the setup merged its runs' budgets lists only the
    last run's)."""
    found = set(data["setup"].get("budgets", {})) | {p["budget"] for p in data["poisons"].values() if p.get("budget")}
    return sorted(found, key=int)


def craft_seconds(poison: dict) -> float:
    """Crafting time of a poison summed over its rounds' own timings: unlike the wall time of
    the process that finished it (``craft_seconds``), this survives a craft resumed from a
    checkpoint. Poisons without rounds (training-free, ``ref-cw``) give their wall time."""
    rounds = [h.get("seconds") for h in poison.get("history") or [] if h.get("seconds") is not None]
    return float(sum(rounds)) if rounds else float(poison.get("craft_seconds", 0.0))


def _craft_cost_lines(data: dict) -> list[str]:
    crafted = {pid: p for pid, p in data["poisons"].items() if p.get("pgd_steps_per_image")}
    if not crafted:
        return []
    n = data["setup"]["train_images"]
    out = ["", f"Crafting cost ({n:,} images; seconds summed over the rounds, so a resumed craft counts whole; "
                "one or two torch threads on the CPU, as each run had):", "",
           "| poison | rounds | PGD steps per image | seconds | ms per image and PGD step, surrogate training included |", "|---|---:|---:|---:|---:|"]
    for pid in sorted(crafted, key=lambda q: (int(crafted[q].get("budget") or 0), "+" in q, q)):
        p = crafted[pid]
        sec, steps = craft_seconds(p), p["pgd_steps_per_image"]
        rounds = _pgd_rounds(p.get("history"))
        out.append(f"| {pid} | {rounds} | {steps} | {sec:,.0f} | {1000 * sec / (n * steps):.3f} |")
    return out


def markdown(data: dict) -> str:
    s = summarize(data)
    setup = data["setup"]
    lines = [f"# Effectiveness study — Fashion-MNIST, {setup['train_images']:,} training / {setup['test_images']:,} test "
             f"images, ε = 8/255", "",
             "Clean test accuracy (%) of each victim trained on the released images (lower = more unlearnable); "
             "mean ± sample std over seeds where there are several (cnn-sgd: 3 seeds). Budget = PGD steps per image.", ""]
    victims = list(VICTIMS)
    lines.append("| poison | budget | " + " | ".join(victims) + " | mean |")
    lines.append("|---|---:|" + "---:|" * (len(victims) + 1))

    def order(pid):
        p = data["poisons"].get(pid, {})
        b = p.get("budget")
        return (pid != "clean", int(b) if b else 0, "+" in pid, pid)

    for pid in sorted(s, key=order):
        row = s[pid]
        means = [row.get(v, (None,))[0] for v in victims]
        m = np.mean(means) if None not in means else None
        budget = data["poisons"].get(pid, {}).get("budget") or "–"
        lines.append(f"| {pid} | {budget} | " + " | ".join(_fmt(*row[v][:2]) if v in row else "–" for v in victims)
                     + f" | {_fmt(m)} |")
    lines += _craft_cost_lines(data)
    lines += _frontier_lines(data)
    plateau = [(c["victim"], c["epochs"], c["test_acc"]) for cid, c in data["cells"].items() if c["poison"] == "clean"
               and c["defense"] is None and c["seed"] == 0]
    if plateau:
        lines += ["", "Plateau check (clean data, seed 0): test accuracy at the victim's epochs E and, once measured, "
                  "at 2E (the per-epoch curves are in results.json).", "",
                  "| victim | epochs | clean acc |", "|---|---:|---:|"]
        for v, e, a in sorted(plateau):
            lines.append(f"| {v} | {e} | {100 * a:.1f} |")
    defended = [c for c in data["cells"].values() if c["defense"]]
    if defended:
        lines += ["", "Under defenses (cnn-sgd victim, seed 0):", ""]
        methods = sorted({c["poison"] for c in defended}, key=lambda p: (p == "clean", p))
        lines.append("| defense | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---:|" * len(methods))
        plain = {c["poison"]: c["test_acc"] for cid, c in data["cells"].items()
                 if c["defense"] is None and c["victim"] == "cnn-sgd" and c["seed"] == 0 and c["poison"] in methods
                 and cid.count("|") == 3}  # not the plateau check's 2E cell (its id carries a tag)
        lines.append("| none | " + " | ".join(_fmt(plain.get(p)) for p in methods) + " |")
        for d in [d for d in DEFENSES if d in {c["defense"] for c in defended}]:
            row = {c["poison"]: c["test_acc"] for c in defended if c["defense"] == d}
            lines.append(f"| {d} | " + " | ".join(_fmt(row.get(p)) for p in methods) + " |")
    lens = [(c["mi_nats"], c["test_acc"]) for c in data["cells"].values() if "mi_nats" in c]
    if len(lens) > 2:
        rho = _spearman([x for x, _ in lens], [y for _, y in lens])
        lines += ["", f"Gaussian I(clean; poisoned) of the victim's features vs its test accuracy over {len(lens)} "
                  f"cells: Spearman ρ = {rho:.2f}."]
    for b in measured_budgets(data):
        lines += _target_lines(targets(data, s, b), b)
    for variant in ABLATION_EM:  # the settings measured for both methods (e.g. the deeper surrogate), at every budget
        for b in measured_budgets(data):
            t = targets(data, s, b, variant)
            if "miue_mean_le_em_mean" in t or "miue_le_em_under_3_defenses" in t or \
                    (b != setup.get("ablation_budget", ABLATION_BUDGET) and t):  # a --budget-variant row
                lines += _target_lines(t, b, variant)
    return "\n".join(lines) + "\n"




def frontier_rows(data: dict) -> list[dict]:
    """One row per (method, surrogate, budget) of MI-UE and EM: crafting seconds and each
    victim's accuracy, the mean and sample std over crafting seeds where several were crafted
    (each crafting seed's cell is first averaged over its victim seeds); the mean over all
    victims and over the demo's two, where every one is measured for every crafting seed."""
    s = summarize(data)
    variants = {v: label for label, v in SURROGATES}
    groups = {}
    for pid, p in data["poisons"].items():
        base, cs = split_craft_seed(pid)
        method, budget = p.get("method"), p.get("budget")
        if method not in FRONTIER_METHODS or not budget or not p.get("pgd_steps_per_image"):
            continue
        variant = base.split("+", 1)[1] if "+" in base else None
        if variant not in variants:
            continue
        groups.setdefault((method, variant, budget), {})[cs] = pid
    rows = []
    for (method, variant, budget), seeds in groups.items():
        row = {"method": method, "surrogate": variants[variant], "variant": variant, "budget": budget,
               "craft_seeds": sorted(seeds),
               # the median: one craft that ran beside other jobs must not move the line's cost
               "craft_seconds": float(np.median([craft_seconds(data["poisons"][q]) for q in seeds.values()])),
               "threads": sorted({data["poisons"][q].get("threads") for q in seeds.values()} - {None}),
               "victims": {}}
        def measured(q, vs):
            return all(s.get(q, {}).get(v, (None,))[0] is not None for v in vs)

        # a victim (or a mean over victims) is reported over the crafting seeds that have it: the
        # expensive victims may be measured on some crafting seeds only, and n (and which seeds)
        # says so wherever it is fewer than the row's
        row["victim_seeds"] = {}
        for v in VICTIMS:
            have = [(cs, q) for cs, q in sorted(seeds.items()) if measured(q, (v,))]
            if have:
                row["victims"][v] = _mean_std([s[q][v][0] for _cs, q in have]) + (len(have),)
                row["victim_seeds"][v] = [cs for cs, _q in have]
        for key, vs in (("mean_all", tuple(VICTIMS)), ("mean_demo", DEMO_VICTIMS)):
            have = [(cs, q) for cs, q in sorted(seeds.items()) if measured(q, vs)]
            if have:
                per_seed = [float(np.mean([s[q][v][0] for v in vs])) for _cs, q in have]
                row[key] = _mean_std(per_seed) + (len(per_seed),)
                row[key + "_seeds"] = [cs for cs, _q in have]
                row[key + "_per_seed"] = per_seed
        rows.append(row)
    rows.sort(key=lambda r: ([label for label, _ in SURROGATES].index(r["surrogate"]), r["method"], int(r["budget"])))
    return rows


def _fmt_n(r, seeds=None, all_seeds=None):
    """mean ± std (n=k); where the k crafting seeds are fewer than the row's, also which ones."""
    if r is None:
        return "–"
    mean, std, n = r
    if seeds is not None and all_seeds is not None and len(seeds) < len(all_seeds):
        return _fmt(mean, std) + f" (n={n}: seed{'s' if n > 1 else ''} {','.join(map(str, seeds))})"
    return _fmt(mean, std) + (f" (n={n})" if n > 1 else "")


def welch_p(a, b):
    """Two-sided p of Welch's t-test between two samples (crafting seeds), None where it is undefined
    (fewer than two values on a side, or no spread on either)."""
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return None
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _frontier_lines(data: dict) -> list[str]:
    rows = frontier_rows(data)
    if not rows:
        return []
    victims = list(VICTIMS)
    out = ["", "Cost-effectiveness frontier (MI-UE and EM; victim accuracy %, lower = better; ± = sample std over "
           "crafting seeds where n > 1, each crafting seed's cell averaged over its victim seeds; a victim measured on "
           "fewer crafting seeds than its row says which). Crafting seconds are "
           "those of the run that made the poison (1 torch thread beside a second 1-thread process unless noted; the "
           "median over crafting seeds): compare rows by ratio, and see bench_craft for 2-core timings.", "",
           "| method | surrogate | steps | crafting seeds | craft s | " + " | ".join(victims)
           + " | mean (4 victims) | mean (cnn-sgd, cnn-adam) |",
           "|---|---|---:|---|---:|" + "---:|" * (len(victims) + 2)]
    for r in rows:
        out.append(f"| {r['method']} | {r['surrogate']} | {r['budget']} | {','.join(map(str, r['craft_seeds']))} | "
                   f"{r['craft_seconds']:,.0f} | "
                   + " | ".join(_fmt_n(r["victims"].get(v), r["victim_seeds"].get(v), r["craft_seeds"]) for v in victims)
                   + f" | {_fmt_n(r.get('mean_all'), r.get('mean_all_seeds'), r['craft_seeds'])}"
                   + f" | {_fmt_n(r.get('mean_demo'), r.get('mean_demo_seeds'), r['craft_seeds'])} |")
    # MI-UE vs EM at each (surrogate, budget): the difference and the crafting-seed spread
    pairs = {}
    for r in rows:
        pairs.setdefault((r["surrogate"], r["budget"]), {})[r["method"]] = r
    verdicts = []
    for (sur, b), pr in pairs.items():
        if "miue" not in pr or "em" not in pr:
            continue
        for key, what in (("mean_demo", "cnn-sgd + cnn-adam"), ("mean_all", "4 victims")):
            m, e = pr["miue"].get(key), pr["em"].get(key)
            if m is None or e is None:
                continue
            diff = e[0] - m[0]
            spread = max(m[1], e[1])
            n = min(m[2], e[2])
            if n < 2:
                word = "one crafting seed: no spread measured"
            elif diff > spread:
                word = "MI-UE below EM beyond the crafting-seed spread"
            elif diff < -spread:
                word = "EM below MI-UE beyond the crafting-seed spread"
            else:
                word = "a tie within the crafting-seed spread"
            p = welch_p(pr["miue"][key + "_per_seed"], pr["em"][key + "_per_seed"])
            ns = f"n = {n}" if m[2] == e[2] else f"n = {m[2]} / {e[2]}"
            if (pr["miue"][key + "_seeds"] != pr["miue"]["craft_seeds"]
                    or pr["em"][key + "_seeds"] != pr["em"]["craft_seeds"]):
                ns += (f", crafting seeds {','.join(map(str, pr['miue'][key + '_seeds']))} / "
                       f"{','.join(map(str, pr['em'][key + '_seeds']))}")
            ps = f", Welch p = {p:.2f}" if p is not None else ""
            verdicts.append(f"- {sur}, {b} steps, mean over {what}: MI-UE {100 * m[0]:.1f}, EM {100 * e[0]:.1f} "
                            f"(EM − MI-UE = {100 * diff:+.1f}, larger std {100 * spread:.1f}, {ns}{ps}): {word}")
    if verdicts:
        out += ["", "MI-UE against EM, same surrogate and budget:", ""] + verdicts
    out += _precision_lines(rows)
    return out


def _precision_lines(rows: list[dict]) -> list[str]:
    """bf16 against fp32 crafting on the same surrogate (every SURROGATES line ``X, bf16`` that has
    an ``X, fp32`` twin: the ResNet-8 and its half width), same budget and method: each victim's
    accuracy in both, the difference, and the bf16 crafting-seed std it is to be read against."""
    by = {(r["method"], r["budget"], r["surrogate"]): r for r in rows}
    lines = []
    for (method, budget, sur), r16 in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][0], int(kv[0][1]))):
        twin = sur[: -len(", bf16")] + ", fp32" if sur.endswith(", bf16") else None
        if twin is None or (method, budget, twin) not in by:
            continue
        r32 = by[(method, budget, twin)]
        for v in VICTIMS:
            a32, a16 = r32["victims"].get(v), r16["victims"].get(v)
            if a32 is None or a16 is None:
                continue
            spread = f"{100 * a16[1]:.1f} (n={a16[2]})" if a16[2] > 1 else "not measured"
            seeds = " / ".join(",".join(map(str, r.get("victim_seeds", {}).get(v, r.get("craft_seeds", [0]))))
                               for r in (r32, r16))
            lines.append(f"| {sur[: -len(', bf16')]} | {method} | {budget} | {v} | {100 * a32[0]:.1f} | "
                         f"{100 * a16[0]:.1f} | {100 * (a16[0] - a32[0]):+.1f} | {spread} | {seeds} |")
    if not lines:
        return []
    return ["", "Precision check: each surrogate crafted in fp32 and in bf16 autocast, everything else the same "
            "(each side: the mean over its crafting seeds, listed in the last column). A difference within the bf16 "
            "crafting-seed spread is what another seed would do; where the two sides have different crafting seeds the "
            "difference also holds the seed's effect.", "",
            "| surrogate | method | steps | victim | fp32 | bf16 | bf16 − fp32 | bf16 crafting-seed std | "
            "crafting seeds fp32 / bf16 |",
            "|---|---|---:|---|---:|---:|---:|---:|---|"] + lines


def _points(s: dict, budgets, victim: str, pid_at) -> list:
    """(budget, (mean, std)) of the poison ``pid_at(budget)`` against ``victim``, where measured."""
    pts = [(b, s.get(pid_at(b), {}).get(victim)) for b in budgets]
    return [(b, r) for b, r in pts if r is not None and r[0] is not None]


def plots(data: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize(data)
    written = []
    # one colour per method in both plots (11 methods: more than the default cycle's 10)
    colors = {m: plt.cm.tab20(2 * i % 20 + (i >= 10)) for i, m in enumerate(METHODS)}
    budgets = sorted({int(p["budget"]) for p in data["poisons"].values() if p.get("budget")})
    if budgets:
        victims = list(VICTIMS)
        fig, axes = plt.subplots(1, len(victims), figsize=(4 * len(victims), 3.9), sharey=True)
        free_styles = dict(zip(BUDGET_FREE, (":", "-.", (0, (1, 3)), (0, (5, 2)), (0, (3, 1, 1, 1)))))
        handles = {}
        for ax, v in zip(np.atleast_1d(axes), victims):
            for m in METHODS:
                if m in BUDGET_FREE:  # the same poison at every budget: a horizontal line
                    if m in s and v in s[m]:
                        handles[m] = ax.axhline(100 * s[m][v][0], ls=free_styles[m], lw=1.2, color=colors[m],
                                                label=f"{m} (no budget)")
                    continue
                pts = _points(s, budgets, v, lambda b, m=m: poison_id(m, str(b)))
                if pts:
                    handles[m] = ax.errorbar([b for b, _ in pts], [100 * r[0] for _, r in pts],
                                             yerr=[100 * r[1] for _, r in pts], marker="o", capsize=3, color=colors[m],
                                             label=m)
            for variant in ABLATION_EM:  # both methods crafted with one other setting: stars in the method's colour
                for m in ("miue", "em"):
                    pts = _points(s, budgets, v, lambda b, m=m, variant=variant: poison_id(m, str(b), variant))
                    if pts:
                        handles[f"{m}+{variant}"] = ax.errorbar(
                            [b for b, _ in pts], [100 * r[0] for _, r in pts], yerr=[100 * r[1] for _, r in pts],
                            marker="*", markersize=11, ls="none", capsize=3, color=colors[m], mec="k", mew=0.5,
                            label=f"{m}, {variant}")
            if "clean" in s and v in s["clean"]:
                handles["clean"] = ax.axhline(100 * s["clean"][v][0], ls="--", lw=1, color="k", label="clean")
            ax.set_xscale("log")
            ax.set_xticks(budgets)
            ax.set_xticklabels([str(b) for b in budgets])
            ax.minorticks_off()
            ax.set_xlim(budgets[0] / 1.5, budgets[-1] * 1.5)
            ax.set_xlabel("PGD steps per image")
            ax.set_title(v, fontsize=9)
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("victim clean test accuracy (%)")
        fig.legend(list(handles.values()), [h.get_label() for h in handles.values()], loc="lower center",
                   ncol=min(len(handles), 7), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        path = os.path.join(out, "budget_curve.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    rows = frontier_rows(data)
    panels = [(key, title) for key, title in (("mean_all", "mean over the 4 victims"),
                                              ("mean_demo", "mean over cnn-sgd and cnn-adam (the demo's victims)"))
              if any(r.get(key) for r in rows)]  # a panel only where some cell has its victims
    if panels:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        markers = dict(zip((label for label, _v in SURROGATES), "os*^Dv"))  # one per line of SURROGATES
        # one x range for both panels: a panel with few points (e.g. only the 1,000-step cells have all
        # four victims) otherwise spans a few seconds on its own and reads as a linear axis
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 0.5, 4.2), sharex=True, sharey=True,
                                 squeeze=False)
        axes = list(axes[0])
        for ax, (key, title) in zip(axes, panels):
            for (label, _v) in SURROGATES:
                for m in FRONTIER_METHODS:
                    pts = sorted((r["craft_seconds"], r[key], r["budget"]) for r in rows
                                 if r["surrogate"] == label and r["method"] == m and r.get(key))
                    if not pts:
                        continue
                    ax.errorbar([p[0] for p in pts], [100 * p[1][0] for p in pts], yerr=[100 * p[1][1] for p in pts],
                                marker=markers[label], markersize=9 if markers[label] == "*" else 6, capsize=3,
                                color=colors[m], ls="-" if label.startswith("ResNet-8, bf16") else ":",
                                label=f"{m}, {label}")
                    for x, (y, _sd, n), b in pts:
                        ax.annotate(b if n < 2 else f"{b} (n={n})", (x, 100 * y), textcoords="offset points",
                                    xytext=(4, 4), fontsize=6)
            if "clean" in s:
                vs = list(VICTIMS) if key == "mean_all" else list(DEMO_VICTIMS)
                if all(v in s["clean"] for v in vs):
                    ax.axhline(100 * np.mean([s["clean"][v][0] for v in vs]), ls="--", lw=1, color="k", label="clean")
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}"))
            ax.xaxis.set_minor_formatter(NullFormatter())  # the log axis's minor labels overlap
            ax.set_xlabel("crafting seconds (point labels: PGD steps per image)")
            ax.set_title(title, fontsize=9)
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("victim clean test accuracy (%)")
        both = {}
        for ax in axes:
            h, lab = ax.get_legend_handles_labels()
            both.update(zip(lab, h))
        # two legend columns per panel (at most 4), and room below the axes for every legend row:
        # four columns on a one-panel figure ran off both edges once there were ten lines
        ncol = min(4, 2 * len(panels))
        rows = -(-len(both) // ncol)
        fig.set_figheight(4.2 + 0.17 * rows)
        fig.legend(list(both.values()), list(both), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
        fig.suptitle(f"Cost-effectiveness frontier, {data['setup']['train_images']:,} Fashion-MNIST images"
                     + ("\n" if len(panels) == 1 else " ") + "(error bars: std over crafting seeds)", fontsize=10)
        fig.tight_layout(rect=(0, min(0.45, 0.03 + 0.04 * rows), 1, 0.95))
        path = os.path.join(out, "frontier.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    lens = [(c["mi_nats"], c["test_acc"], c["method"]) for c in data["cells"].values() if "mi_nats" in c]
    if len(lens) > 2:
        fig, ax = plt.subplots(figsize=(5, 4))
        for m in sorted({x[2] for x in lens}):
            pts = [(x, y) for x, y, mm in lens if mm == m]
            ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], s=14, label=m, color=colors.get(m, "k"))
        rho = _spearman([x[0] for x in lens], [x[1] for x in lens])
        ax.set_xlabel("Gaussian I(clean; poisoned) of victim features (nats)")
        ax.set_ylabel("victim clean test accuracy (%)")
        ax.set_title(f"all cells: Spearman ρ = {rho:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out, "mi_scatter.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def compare_rows(data: dict) -> dict:
    """row -> column -> {crafting seed: accuracy} for the compare stage's poisons (and clean); a
    column is a victim (no defense) or ``victim+defense``; also ``peak:`` columns (the best epoch's
    accuracy). This is the earlier (2026-12-05) three-seed study: crafting seeds below
    DECLARED_FIRST_CRAFT_SEED with victim seed 0, so that the cells of the declared comparison
    (its own tables: ``declared_lines``) never change these tables when they are regenerated."""
    runs = {}
    for cid, c in data["cells"].items():
        pid = c["poison"]
        if cid.count("|") > 3 or c.get("seed", 0) != 0:  # (the plateau check's 2E cells carry a tag)
            continue
        if pid == "clean":
            row, cs = "clean", 0
        elif pid.startswith("cmp-"):
            row, cs = split_craft_seed(pid[4:])
        else:
            continue
        if cs >= DECLARED_FIRST_CRAFT_SEED:
            continue
        col = c["victim"] + (f"+{c['defense']}" if c["defense"] else "")
        runs.setdefault((row, col, cs), []).append(c["test_acc"])
        if "peak_test_acc" in c:
            runs.setdefault((row, "peak:" + col, cs), []).append(c["peak_test_acc"])
    out = {}
    for (row, col, cs), vals in runs.items():
        out.setdefault(row, {}).setdefault(col, {})[cs] = float(np.mean(vals))
    # the mean over the defended victims (the demo's two), per crafting seed that has both, per defense
    for r in out.values():
        for d in [None] + sorted({c.split("+", 1)[1] for c in r if "+" in c and not c.startswith("peak:")}):
            cols = [v + (f"+{d}" if d else "") for v in COMPARE_DEFENDED]
            if all(c in r for c in cols):
                seeds = set.intersection(*(set(r[c]) for c in cols))
                if seeds:
                    r["mean" + (f"+{d}" if d else "")] = {cs: float(np.mean([r[c][cs] for c in cols]))
                                                          for cs in sorted(seeds)}
    return out


# ----------------------------------------------------------------------------- the declared comparison (issue 46)
# Declared in docs/effectiveness.md ("The declared comparison") before its results. The endpoint:
# per crafting seed, the victims' clean-test accuracy averaged over the four COMPARE_VICTIMS and
# the DECLARED_VICTIM_SEEDS (a crafting seed counts only once all of them are measured), without a
# defense and under JPEG-10 (primary), under JPEG-75 (secondary). The family: DECLARED_PAIRS x the
# primary columns, Holm-corrected; Welch's t on the crafting seeds decides, an exact permutation
# test is reported beside it, and the effect is the difference in points with Welch's 95% interval.
DECLARED_VICTIM_SEEDS = (0, 1)
DECLARED_PRIMARY = (None, "jpeg")
DECLARED_SECONDARY = ("jpeg75",)
DECLARED_PAIRS = (("miue-cpu", "em-published"), ("miue-cpu", "em-matched-cpu"), ("miue-cpu", "pil"),
                  ("miue-demo", "em-published"), ("miue-demo", "em-matched"), ("miue-demo", "pil"))
DECLARED_MIN_SEEDS = 5
# Crafting seeds 0-2 were crafted on 2026-12-05 and their poisons went with that machine's cache:
# their cells (victim seed 0 only, JPEG on two victims) can never be completed from the same
# poison, so the declared comparison draws its crafting seeds from 3 on (decided 2026-12-07,
# before any cell of crafting seeds 5 and later existed); seeds 0-2 stay the earlier study's.
DECLARED_FIRST_CRAFT_SEED = 3


def declared_values(data: dict) -> dict:
    """row -> defense (None, "jpeg", "jpeg75") -> {crafting seed: endpoint value}: the mean over the
    four victims and both victim seeds, for the crafting seeds that have all eight cells."""
    cells = {}
    for c in data["cells"].values():
        pid = c["poison"]
        if not pid.startswith("cmp-") or c.get("seed") not in DECLARED_VICTIM_SEEDS:
            continue
        row, cs = split_craft_seed(pid[4:])
        if cs < DECLARED_FIRST_CRAFT_SEED:
            continue
        cells[(row, c["defense"], cs, c["victim"], c["seed"])] = c["test_acc"]
    out = {}
    for (row, d, cs) in {(r, d, cs) for r, d, cs, _, _ in cells}:
        keys = [(row, d, cs, v, s) for v in COMPARE_VICTIMS for s in DECLARED_VICTIM_SEEDS]
        if all(k in cells for k in keys):
            out.setdefault(row, {}).setdefault(d, {})[cs] = float(np.mean([cells[k] for k in keys]))
    return out


def permutation_p(a, b) -> float | None:
    """Exact two-sided permutation p of the difference in means (every split of the pooled values)."""
    import itertools

    if len(a) < 2 or len(b) < 2:
        return None
    pooled, n = list(a) + list(b), len(a)
    obs = abs(np.mean(a) - np.mean(b))
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), n):
        rest = [pooled[i] for i in range(len(pooled)) if i not in idx]
        total += 1
        hits += abs(np.mean([pooled[i] for i in idx]) - np.mean(rest)) >= obs - 1e-12
    return hits / total


def welch_interval(a, b, level: float = 0.95) -> tuple[float, float] | None:
    """Welch's interval for mean(b) - mean(a) (Satterthwaite degrees of freedom)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = np.sqrt(va + vb)
    if se == 0:
        return None
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    t = stats.t.ppf(0.5 + level / 2, df)
    d = np.mean(b) - np.mean(a)
    return float(d - t * se), float(d + t * se)


def holm(ps: list) -> list:
    """Holm's step-down adjusted p-values (None stays None and is not counted in the family)."""
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    m, out, run = len(idx), [None] * len(ps), 0.0
    for k, i in enumerate(idx):
        run = max(run, min(1.0, (m - k) * ps[i]))
        out[i] = run
    return out


def declared_comparison(data: dict) -> dict:
    """Every declared test: the primary family (Holm-corrected) and the secondary column (Holm
    within itself), each with both sides' values, the difference with its interval, Welch's and
    the permutation p, and the verdict the words must follow."""
    vals = declared_values(data)
    tests = []
    for d in DECLARED_PRIMARY + DECLARED_SECONDARY:
        for ref, row in DECLARED_PAIRS:
            a = list(vals.get(ref, {}).get(d, {}).values())
            b = list(vals.get(row, {}).get(d, {}).values())
            tests.append({"ref": ref, "row": row, "defense": d, "primary": d in DECLARED_PRIMARY,
                          "a": a, "b": b, "welch_p": welch_p(a, b), "perm_p": permutation_p(a, b),
                          "diff": float(np.mean(b) - np.mean(a)) if a and b else None,
                          "ci": welch_interval(a, b),
                          "complete": len(a) >= DECLARED_MIN_SEEDS and len(b) >= DECLARED_MIN_SEEDS})
    # Holm runs over the whole declared family. A test that is not complete yet (or has no p) enters
    # as p = 1: that can only raise the others' adjusted p, so while the family is unfinished a
    # complete test's Holm p is an upper bound on its final one, and "better" is never said early.
    for primary in (True, False):
        group = [t for t in tests if t["primary"] == primary]
        counted = [t["welch_p"] if t["complete"] and t["welch_p"] is not None else 1.0 for t in group]
        done = sum(t["complete"] for t in group)
        for t, adj in zip(group, holm(counted)):
            t["holm_p"] = adj if t["complete"] and t["welch_p"] is not None else None
            t["family_done"], t["family_size"] = done, len(group)
    for t in tests:
        me, them = SUMMARY_LABELS.get(t["ref"], t["ref"]), SUMMARY_LABELS.get(t["row"], t["row"])
        if not t["complete"]:
            t["verdict"] = f"not judged yet (n = {len(t['a'])} and {len(t['b'])} of {DECLARED_MIN_SEEDS} crafting seeds)"
        elif t["holm_p"] is None or t["holm_p"] >= 0.05:
            # Holm never lowers a p: with Welch's p >= 0.05 the verdict is final whatever the rest gives
            final = t["family_done"] == t["family_size"] or t["welch_p"] is None or t["welch_p"] >= 0.05
            t["verdict"] = "not separated" + ("" if final else
                                             f" so far ({t['family_done']} of {t['family_size']} tests of its "
                                             f"family complete; Holm p is an upper bound)")
        else:
            t["verdict"] = f"{me} better" if t["diff"] > 0 else f"{them} better than {me}"
    return {"values": vals, "tests": tests}


def _fmt_seeds(xs) -> str:
    """Per-crafting-seed values as ``mean ± std (n=…)`` in %, or – when there are none."""
    m, sd = _mean_std(xs)
    if m is None:
        return "–"
    return f"{100 * m:.1f}" + (f" ± {100 * sd:.1f}" if len(xs) > 1 else "") + f" (n={len(xs)})"


def _fmt_holm(t: dict) -> str:
    """A test's Holm p, marked ≤ while its family is unfinished (an upper bound then)."""
    return ("≤ " if t["family_done"] < t["family_size"] else "") + _fmt_p(t["holm_p"])


def declared_lines(data: dict) -> list[str]:
    res = declared_comparison(data)
    if not any(res["values"].values()):
        return []
    names = {None: "no defense", "jpeg": "JPEG-10", "jpeg75": "JPEG-75"}
    lines = [f"Endpoint: victim clean-test accuracy (%), per crafting seed the mean over "
             f"{', '.join(COMPARE_VICTIMS)} and victim seeds {' and '.join(map(str, DECLARED_VICTIM_SEEDS))}; "
             f"mean ± std over crafting seeds (n). Difference: the row minus MI-UE in points, with Welch's 95% "
             f"interval (positive: MI-UE lower, i.e. better). Holm over the {len(DECLARED_PAIRS) * len(DECLARED_PRIMARY)} "
             f"primary tests (no defense, JPEG-10); JPEG-75 is secondary (Holm within it). A verdict needs "
             f"n >= {DECLARED_MIN_SEEDS} on both sides. Until every test of a family is complete, each "
             f"unfinished one enters Holm as p = 1, so a Holm p shown is an upper bound on its final value "
             f"(shown only for complete tests; the Welch and permutation p of an unfinished test are interim).", "",
             "| column | MI-UE row | baseline | MI-UE | baseline | difference [95% CI] | Welch p | Holm p | "
             "permutation p | verdict |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for t in res["tests"]:
        diff = "–" if t["diff"] is None else _fmt_effect(t)
        lines.append(f"| {names[t['defense']]}{'' if t['primary'] else ' (secondary)'} | "
                     f"{SUMMARY_LABELS.get(t['ref'], t['ref'])} | {SUMMARY_LABELS.get(t['row'], t['row'])} | "
                     f"{_fmt_seeds(t['a'])} | {_fmt_seeds(t['b'])} | {diff} | "
                     + " | ".join("–" if t[k] is None else _fmt_holm(t) if k == "holm_p" else _fmt_p(t[k])
                                  for k in ("welch_p", "holm_p", "perm_p"))
                     + f" | {t['verdict']} |")
    return lines


def declared_summary(data: dict) -> str:
    """The README's short form of the declared comparison: each declared row's endpoint per column,
    then one verdict line per pair with both primary effects and their Holm p (``--write-docs``)."""
    res = declared_comparison(data)
    rows = list(dict.fromkeys(r for pair in DECLARED_PAIRS for r in pair))
    names = {None: "no defense", "jpeg": "JPEG-10", "jpeg75": "JPEG-75 (secondary)"}
    cols = DECLARED_PRIMARY + DECLARED_SECONDARY
    lines = ["| release | " + " | ".join(names[d] for d in cols) + " |", "|---|" + "---:|" * len(cols)]
    for row in rows:
        lines.append(f"| {SUMMARY_LABELS.get(row, row)} | "
                     + " | ".join(_fmt_seeds(list(res["values"].get(row, {}).get(d, {}).values())) for d in cols) + " |")
    return "\n".join(lines + [""] + declared_verdicts(res))


def declared_verdicts(res: dict) -> list[str]:
    """One line per declared pair: both primary effects with their intervals and Holm p, and the
    verdict (the words README and docs use)."""
    names = {None: "no defense", "jpeg": "JPEG-10"}
    lines = []
    for ref, row in DECLARED_PAIRS:
        tests = [t for t in res["tests"] if (t["ref"], t["row"]) == (ref, row) and t["primary"]]
        verdicts = list(dict.fromkeys(t["verdict"] for t in tests))
        parts = []
        for t in tests:
            if t["diff"] is None:
                continue
            holm_p = "" if t["holm_p"] is None else f", Welch p {_fmt_p(t['welch_p'])}, Holm p {_fmt_holm(t)}"
            own = "" if len(verdicts) == 1 else f": {t['verdict']}"
            parts.append(f"{names[t['defense']]} {_fmt_effect(t)}{holm_p}{own}")
        body = "; ".join(parts) + (f": {verdicts[0]}" if len(verdicts) == 1 and parts else "") \
            if parts else verdicts[0]
        lines.append(f"- {SUMMARY_LABELS.get(ref, ref)} vs {SUMMARY_LABELS.get(row, row)}: {body}")
    return lines


# a row without a craft yet is costed like the row on the same crafting schedule
COMPARE_SAME_SCHEDULE = {"em-matched-cpu": "miue-cpu", "em-matched": "miue-demo"}


def declared_progress(data: dict) -> list[str]:
    """How far the declared comparison is: per declared row, each crafting seed's measured cells
    out of the 24 (four victims x the declared victim seeds x no defense, JPEG-10, JPEG-75), and
    whether its poison was crafted; the next session starts the rows with the fewest complete
    seeds (``--declared-status``)."""
    rows = list(dict.fromkeys(r for pair in DECLARED_PAIRS for r in pair))
    columns = DECLARED_PRIMARY + DECLARED_SECONDARY
    need = len(COMPARE_VICTIMS) * len(DECLARED_VICTIM_SEEDS) * len(columns)
    measured = {}
    for c in data["cells"].values():
        pid = c["poison"]
        if pid.startswith("cmp-") and c.get("seed") in DECLARED_VICTIM_SEEDS and c["defense"] in columns \
                and c["victim"] in COMPARE_VICTIMS:
            row, cs = split_craft_seed(pid[4:])
            if cs >= DECLARED_FIRST_CRAFT_SEED:
                measured.setdefault((row, cs), set()).add((c["victim"], c["seed"], c["defense"]))
    last = max([DECLARED_FIRST_CRAFT_SEED + DECLARED_MIN_SEEDS - 1] + [cs for _, cs in measured])
    seeds = list(range(DECLARED_FIRST_CRAFT_SEED, last + 1))
    crafted = {split_craft_seed(p[4:]) for p in data.get("poisons", {}) if p.startswith("cmp-")}
    craft_cost = {}
    for pid, p in data.get("poisons", {}).items():
        if pid.startswith("cmp-") and craft_seconds(p) > 0:
            craft_cost.setdefault(split_craft_seed(pid[4:])[0], []).append(craft_seconds(p))
    craft_cost = {row: float(np.median(v)) for row, v in craft_cost.items()}
    secs = [c["seconds"] for c in data["cells"].values() if c["poison"].startswith("cmp-") and c.get("seconds")]
    cell_cost = float(np.median(secs)) if secs else np.nan
    lines = [f"Declared comparison: measured cells per crafting seed (of {need}; * = poison crafted, "
             f"no cell yet)", "", "| row | complete | " + " | ".join(f"seed {cs}" for cs in seeds)
             + " | core-h left |", "|---|---:|" + "---:|" * (len(seeds) + 1)]
    total = 0.0
    for row in rows:
        counts = [len(measured.get((row, cs), ())) for cs in seeds]
        cells = [str(n) if n else ("*" if (row, cs) in crafted else "–") for n, cs in zip(counts, seeds)]
        complete = sum(n == need for n in counts)
        todo = [cs for cs, n in zip(seeds, counts) if n < need][:max(0, DECLARED_MIN_SEEDS - complete)]
        crafts = sum((row, cs) not in crafted for cs in todo)
        left = crafts * craft_cost.get(row, craft_cost.get(COMPARE_SAME_SCHEDULE.get(row), np.nan)) \
            + sum(need - n for cs, n in zip(seeds, counts) if cs in todo) * cell_cost
        total += 0.0 if np.isnan(left) else left
        hours = "?" if np.isnan(left) else f"{left / 3600:.1f}"
        lines.append(f"| {row} | {complete} of {DECLARED_MIN_SEEDS} | " + " | ".join(cells) + f" | {hours} |")
    lines += ["", f"Left to reach {DECLARED_MIN_SEEDS} crafting seeds per row: about {total / 3600:.1f} core-hours "
              f"(crafts at each row's median so far, {need} cells a seed at {cell_cost / 60:.1f} min each: the "
              f"median measured cell, one torch thread; rows marked ? not counted)."]
    return lines


def earlier_craft_seconds(data: dict) -> dict:
    """row -> crafting seconds of each poison of the earlier study (crafting seeds below
    DECLARED_FIRST_CRAFT_SEED, like ``compare_rows``)."""
    secs = {}
    for pid, p in data["poisons"].items():
        if pid.startswith("cmp-"):
            row, cs = split_craft_seed(pid[4:])
            if cs < DECLARED_FIRST_CRAFT_SEED:
                secs.setdefault(row, []).append(craft_seconds(p))
    return secs


def compare_lines(data: dict) -> list[str]:
    table = compare_rows(data)
    if len(table) < 2:
        return []
    cols = ["mean"] + [v for v in COMPARE_VICTIMS] + [x for d in COMPARE_DEFENSES
                                                     for x in [f"mean+{d}"] + [f"{v}+{d}" for v in COMPARE_DEFENDED]]
    extra = sorted({c for r in table.values() for c in r if not c.startswith("peak:")} - set(cols))
    cols = [c for c in cols + extra if any(c in r for k, r in table.items() if k != "clean")]
    order = ["clean"] + [r for r in COMPARE if r in table]
    secs = earlier_craft_seconds(data)
    lines = ["", "## The seeded comparison (compare stage)", "",
             "Victim clean test accuracy (%, lower = more unlearnable): mean ± sample std over crafting seeds "
             "(n = crafting seeds; victim seed 0). Columns: victim, or victim + the defense applied to its training "
             f"set; mean: over {' and '.join(COMPARE_DEFENDED)} per crafting seed, then over seeds. Crafting seconds: "
             "the median over crafting seeds, summed over rounds (one torch thread, beside other jobs).", "",
             "| poison | crafting seeds | craft s | " + " | ".join(cols) + " |",
             "|---|---|---:|" + "---:|" * len(cols)]
    for row in order:
        r = table[row]
        seeds = sorted({cs for col in r.values() for cs in col})
        cells = []
        for col in cols:
            vals = list(r.get(col, {}).values())
            m, sd = _mean_std(vals)
            cells.append(_fmt(m, sd) + (f" (n={len(vals)})" if len(vals) > 1 and len(vals) != len(seeds) else "")
                         if vals else "–")
        sec = f"{np.median(secs[row]):,.0f}" if row in secs else "–"
        lines.append(f"| {row} | {','.join(map(str, seeds))} | {sec} | " + " | ".join(cells) + " |")
    for ref in [r for r in COMPARE_REFERENCE if r in table]:
        lines += ["", f"Welch's p of {ref} against each row, per column (two-sided, crafting seeds as samples; "
                      "'−': MI-UE lower, i.e. better; '+': MI-UE higher; p is uncorrected for the many columns):", "",
                  "| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for row in [r for r in order if r not in ("clean", ref)]:
            cells = []
            for col in cols:
                a, b = list(table[ref].get(col, {}).values()), list(table[row].get(col, {}).values())
                p = welch_p(a, b)
                cells.append("–" if p is None else f"{'−' if np.mean(a) < np.mean(b) else '+'} {_fmt_p(p)}")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    for ref in COMPARE_REFERENCE:
        verdicts = compare_verdicts(data, ref)
        if verdicts:
            lines += ["", f"{SUMMARY_LABELS[ref].replace('`', '')} against each row, on the mean of the defended "
                          "victims:", ""] + verdicts
    peaks = [c for c in cols if any("peak:" + c in r for r in table.values())]
    if peaks:
        lines += ["", "Peak accuracy over the victim's epochs (what an early-stopping defense reports), mean over "
                      "crafting seeds:", "", "| poison | " + " | ".join(peaks) + " |", "|---|" + "---:|" * len(peaks)]
        for row in order:
            lines.append(f"| {row} | " + " | ".join(_fmt(_mean_std(list(table[row].get('peak:' + c, {}).values()))[0])
                                                     for c in peaks) + " |")
    return lines


def compare_verdicts(data: dict, ref: str = "miue-demo") -> list[str]:
    """One line per baseline row and judged column ("mean", "mean+<defense>"): MI-UE's and the
    row's mean ± std (n), the difference, Welch's p and what it says at p < 0.05. ``ref`` is the
    MI-UE row judged (a reference other than the demo's is named in every line)."""
    table = compare_rows(data)
    if ref not in table:
        return []
    me = "MI-UE" if ref == "miue-demo" else SUMMARY_LABELS.get(ref, ref).replace("`", "")
    names = {"mean": "no defense"}
    out = []
    for row in [r for r in COMPARE if r in table and r != ref]:
        for col in [c for c in table[ref] if c == "mean" or c.startswith("mean+")]:
            a, b = list(table[ref].get(col, {}).values()), list(table[row].get(col, {}).values())
            if not a or not b:
                continue
            (ma, sa), (mb, sb) = _mean_std(a), _mean_std(b)
            p = welch_p(a, b)
            if p is None:
                word = "no spread measured on one side"
            elif p >= 0.05:
                word = "not separated at p < 0.05 (" + (me if ma < mb else row) + " lower on these seeds)"
            else:
                word = f"{me} lower (better)" if ma < mb else f"{row} lower (better than {me})"
            what = names[col] if col in names else "under " + DEFENSE_LABELS.get(col.split("+", 1)[1], col)
            out.append(f"- {what}, {row}: {me} {100 * ma:.1f} ± {100 * sa:.1f} (n = {len(a)}) vs "
                       f"{100 * mb:.1f} ± {100 * sb:.1f} (n = {len(b)}), difference {100 * (mb - ma):+.1f}"
                       + (f", Welch p = {_fmt_p(p)}" if p is not None else "") + f": {word}")
    return out


SUMMARY_LABELS = {"miue-demo": "MI-UE (`demo`)", "miue-cpu": "MI-UE (`cpu`)", "em-published": "EM (published)",
                  "em-matched": "EM (MI-UE `demo`'s schedule)",
                  "em-matched-cpu": "EM (MI-UE `cpu`'s schedule)", "pil": "PIL (published)",
                  "tap-published-r1": "TAP (1 of 8 restarts)", "rem-published": "REM (published)",
                  "random": "random noise", "clean": "clean"}


def compare_summary(data: dict, ref: str = "miue-demo") -> str:
    """The short table of the README and the docs' summary: each row's mean over the defended
    victims without a defense and under each defense, ± std (n), and Welch's p against ``ref``."""
    table = compare_rows(data)
    cols = [c for c in ["mean"] + [f"mean+{d}" for d in COMPARE_DEFENSES] if c in table.get(ref, {})]
    head = ["no defense" if c == "mean" else DEFENSE_LABELS.get(c.split("+", 1)[1], c) for c in cols]
    lines = ["| training data | crafting s | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(cols)]
    secs = earlier_craft_seconds(data)
    for row in ["clean"] + [r for r in COMPARE if r in table]:
        cells = []
        for c in cols:
            vals = list(table[row].get(c, {}).values())
            if not vals:
                cells.append("–")
                continue
            m, sd = _mean_std(vals)
            cell = f"{100 * m:.1f}" + (f" ± {100 * sd:.1f}" if len(vals) > 1 else "") + f" (n={len(vals)})"
            if row not in ("clean", ref):
                p = welch_p(list(table[ref].get(c, {}).values()), vals)
                cell += f", p = {_fmt_p(p)}" if p is not None else ""
            cells.append(f"**{cell}**" if row == ref else cell)
        sec = f"{np.median(secs[row]):,.0f}" if row in secs else "–"
        lines.append(f"| {SUMMARY_LABELS.get(row, row)} | {sec} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def all_verdicts(data: dict) -> str:
    """The demo preset's verdicts, then (once measured) the `cpu` preset's under a heading line."""
    out = compare_verdicts(data)
    for ref in COMPARE_REFERENCE[1:]:
        more = compare_verdicts(data, ref)
        if more:
            out += ["", f"{SUMMARY_LABELS[ref]} against each row:", ""] + more
    return "\n".join(out)


def write_docs(data: dict, root: str) -> list[str]:
    """Splice the compare stage's summary, tables and verdicts into README.md and
    docs/effectiveness.md between their markers (``--write-docs``)."""
    parts = {"compare-summary": compare_summary(data),
             "readme-declared": declared_summary(data),
             "declared-verdicts": "\n".join(declared_verdicts(declared_comparison(data))),
             "declared-results": "\n".join(declared_lines(data)) or "(no crafting seed complete yet)",
             "compare-table": "\n".join(compare_lines(data)[2:]),
             "compare-verdicts": all_verdicts(data)}
    written = []
    for rel in ("README.md", os.path.join("docs", "effectiveness.md")):
        path = os.path.join(root, rel)
        text = open(path, encoding="utf-8").read()
        for name, body in parts.items():
            start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
            if start in text:
                a, b = text.index(start) + len(start), text.index(end)
                text = text[:a] + "\n" + body + "\n" + text[b:]
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(path)
    return written


def _fmt_pts(frac: float) -> str:
    """A signed difference of accuracies in points, one decimal; one that rounds to zero reads +0.0,
    never -0.0."""
    return f"{round(100 * frac, 1) + 0.0:+.1f}"


def _fmt_effect(t: dict) -> str:
    """A declared test's difference in points, with its 95% interval where there is one."""
    return _fmt_pts(t["diff"]) + (f" [{_fmt_pts(t['ci'][0])}, {_fmt_pts(t['ci'][1])}]" if t["ci"] else "")


def _fmt_p(p: float) -> str:
    """Two decimals, three below 0.01 and wherever two would round across 0.05 (0.048 stays 0.048,
    not 0.05, beside a verdict that reads it as below 0.05)."""
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.01 or 0.045 <= p < 0.055 else f"{p:.2f}"


def compare_plot(data: dict, out: str) -> str | None:
    table = compare_rows(data)
    if len(table) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in list(COMPARE_VICTIMS) + [f"{v}+{d}" for d in COMPARE_DEFENSES for v in COMPARE_DEFENDED]
            if any(c in r for k, r in table.items() if k != "clean")]
    rows = ["clean"] + [r for r in COMPARE if r in table]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cols) * len(rows) / 4), 4.5))
    w = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs, ms, sds = [], [], []
        for j, col in enumerate(cols):
            vals = list(table[row].get(col, {}).values())
            if vals:
                m, sd = _mean_std(vals)
                xs.append(j + (i - (len(rows) - 1) / 2) * w)
                ms.append(100 * m)
                sds.append(100 * sd)
        ax.bar(xs, ms, width=w, yerr=sds, capsize=2, label=row, color=plt.cm.tab10(i % 10))
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([c.replace("+", "\n") for c in cols], fontsize=7)
    ax.set_ylabel("victim clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(5, len(rows)), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.set_title(f"MI-UE against the published baselines, {data['setup']['train_images']:,} Fashion-MNIST images "
                 "(error bars: std over crafting seeds)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, "compare.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(out: str) -> None:
    with open(os.path.join(out, "results.json")) as fh:
        data = json.load(fh)
    md = markdown(data) + "\n".join(compare_lines(data)) + "\n"
    declared = declared_lines(data)
    if declared:
        md += "\n## The declared comparison (issue 46; docs/effectiveness.md declares it)\n\n" + "\n".join(declared) + "\n"
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(md)
    written = plots(data, out)
    cp = compare_plot(data, out)
    if cp:
        written.append(cp)
    print(md)
    print("wrote", ", ".join([os.path.join(out, "results.md"), *written]))


# ----------------------------------------------------------------------------- main

STAGES = ("plateau", "budgets", "ablations", "defenses", "frontier", "compare")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                               f"cpu-{os.cpu_count()}cores-{datetime.date.today().isoformat()}", "effectiveness")
    p.add_argument("--out", default=None, help=f"results folder (default {os.path.relpath(default_out)}; with --quick a new "
                                               "temporary folder: a smoke run never writes into the checkout)")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/miue-effectiveness"),
                   help="crafted poisons and crafting checkpoints (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the results.json in --out: measure only what is missing")
    p.add_argument("--quick", action="store_true", help="CI smoke run: tiny subsets, one tiny budget, 1 victim epoch")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="rows of the budgets stage, in this order; also filters the miue/em of the ablations and "
                        "defenses stages (default: all)")
    p.add_argument("--victims", nargs="+", choices=list(VICTIMS),
                   help="victims of the plateau, budgets and ablations stages, in this order (default: all; "
                        f"the ablations: {' '.join(ABLATION_VICTIMS)}; the defenses use cnn-sgd)")
    p.add_argument("--ablations", nargs="+", choices=list(ABLATIONS),
                   help="knobs of the ablations stage, in this order (default: all); with --seeds, their "
                        "cells on cnn-sgd get those seeds too")
    p.add_argument("--compare-rows", nargs="+", choices=list(COMPARE),
                   help="rows of the compare stage, in this order (default: all)")
    p.add_argument("--defenses", nargs="+", choices=list(dict.fromkeys(DEFENSES + COMPARE_DEFENSES)),
                   help="defenses of the defenses stage, in this order (default: all; 'at' trains with PGD-10, "
                        "about 11x the cost of the others)")
    p.add_argument("--budget-variant", choices=list(ABLATION_EM),
                   help="craft the budgets stage's poisons with this setting (poison ids get '+NAME'; the "
                        "training-free rows are skipped), e.g. surrogate=resnet-small for the deeper surrogate "
                        "at 25 or 1,000 steps; the frontier stage: default " + FRONTIER_VARIANT + ")")
    p.add_argument("--defense-variant", choices=list(ABLATIONS),
                   help="defend poisons crafted with this ablation's setting instead of the main rows' "
                        "(e.g. surrogate=resnet-small)")
    p.add_argument("--seeds", nargs="+", type=int,
                   help="measure only these of each victim's seeds (default: all; e.g. --seeds 0 for one pass, "
                        "--seeds 1 2 for the extra seeds of the small-CNN victim)")
    p.add_argument("--craft-seeds", nargs="+", type=int, default=[0],
                   help="crafting seeds of the budgets and frontier stages' poisons (default 0; ids of the "
                        "others get '+csN'): the spread over crafting seeds, not only victim seeds")
    p.add_argument("--victim-seeds", nargs="+", type=int, default=[0],
                   help="victim seeds of the compare stage's cells (default 0; issue 46 declares 0 1: the victim's "
                        "own variance, averaged within a crafting seed)")
    p.add_argument("--train-per-class", type=int, default=2000, help="class-balanced training subset (default 2000/class)")
    p.add_argument("--surrogate-steps", type=int, default=0,
                   help="surrogate SGD steps per crafting round (default 0: one epoch of the subset per round, "
                        "so the surrogate's training grows with the data; e.g. 235 = one epoch of all 60,000 "
                        "images at batch 256, whatever the subset)")
    p.add_argument("--epoch-scale", type=float, default=1.0, help="scale every victim's epoch budget")
    p.add_argument("--max-minutes", type=float, default=0, help="stop cleanly before the first cell that starts later")
    p.add_argument("--report-only", action="store_true", help="only rewrite tables and plots from results.json")
    p.add_argument("--write-docs", action="store_true",
                   help="with --report-only: also splice the compare stage's summary, tables and verdicts into "
                        "README.md and docs/effectiveness.md (between their markers)")
    p.add_argument("--progress", action="store_true", help="tqdm bars for crafting and victims")
    p.add_argument("--drop-poison", action="append", default=[], metavar="PID",
                   help="with --resume: remove this poison's record and cells from results.json first (a poison "
                        "whose cache was lost and that crafts differently; repeatable)")
    p.add_argument("--declared-status", action="store_true",
                   help="print how far the declared comparison is (cells per row and crafting seed) and exit")
    args = p.parse_args(argv)
    if args.out is None:
        import tempfile

        args.out = tempfile.mkdtemp(prefix="miue-effectiveness-quick-") if args.quick else default_out
    if args.declared_status:
        if not os.path.isfile(os.path.join(args.out, "results.json")):
            p.error(f"--declared-status: no results.json in --out {args.out!r}")
        with open(os.path.join(args.out, "results.json")) as fh:
            print("\n".join(declared_progress(json.load(fh))))
        return 0
    if args.report_only:
        if not os.path.isfile(os.path.join(args.out, "results.json")):
            p.error(f"--report-only: no results.json in --out {args.out!r}")
        report(args.out)
        if args.write_docs:
            with open(os.path.join(args.out, "results.json")) as fh:
                data = json.load(fh)
            print("wrote", ", ".join(write_docs(data, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))))
        return 0
    if args.train_per_class < 1 or args.epoch_scale <= 0 or args.max_minutes < 0 or args.surrogate_steps < 0:
        p.error("--train-per-class and --epoch-scale must be positive, --max-minutes and --surrogate-steps >= 0")
    os.makedirs(args.out, exist_ok=True)
    from miue._malloc import opt_in_for_this_process

    opt_in_for_this_process()  # a script's own process: the malloc tuning the CLI has (miue/_malloc.py)
    study = Study(args)
    for pid in args.drop_poison:
        if not args.resume:
            p.error("--drop-poison edits the results.json of --resume")
        print(f"--drop-poison {pid}: removed {study.res.drop_poison(pid)} cells", flush=True)
    t0 = time.perf_counter()
    print(f"effectiveness study: {len(study.train)} training / {len(study.test)} test images"
          f"{' (QUICK smoke run: not evidence)' if args.quick else ''}; results in {args.out}", flush=True)
    try:
        for stage in dict.fromkeys(args.stages):  # in the order given
            getattr(study, f"stage_{stage}")()
    except _OutOfTime:
        print(f"--max-minutes {args.max_minutes} reached: stopping between cells (rerun with --resume)", flush=True)
    print(f"study ran {time.perf_counter() - t0:.0f} s", flush=True)
    report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
