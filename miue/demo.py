"""The demo (README's main job): MI-UE against EM (as its authors published it, and on MI-UE's
schedule) and random noise on Fashion-MNIST, judged by victims of two training recipes and by
one trained on the JPEG-compressed release.

1. Craft, at ε = 8/255 on the same ResNet-8 surrogate, MI-UE (the ``demo`` preset: 50 PGD steps
   per image, bf16 autocast where the CPU has native bf16), EM with its authors' published
   recipe (``recipe="published"``: 10 surrogate steps, then 20 steps of ε/10 on every δ, until
   the surrogate classifies more than 99% of the poisoned set), EM's loss on MI-UE's demo
   schedule (``em-matched``) and uniform random noise, for a class-balanced subset of 10,000
   Fashion-MNIST training images (1,000 per class). ``--quick``: smaller subsets and fewer
   rounds, see ``QUICK``.
2. Train two victims that differ from the surrogate and from each other (in the preset's
   precision: bf16 autocast where the CPU has it; the effectiveness study's victims run in fp32)
   on clean data and on each released set (``VICTIMS``: the study's ``cnn-sgd``, a CNN trained with SGD + crop +
   flip, and ``cnn-adam``, the same CNN with Adam and no augmentation), and ``cnn-sgd`` once
   more on the release compressed as JPEG at quality 10 (ISS, ``DEFENDED``); test every victim
   on the full clean test set (10,000 images).
3. The paper's lens: for each poison, the SGD victim trained on it embeds the clean and the
   poisoned training images; we report the Gaussian estimate of the mutual information
   between the paired clean and poisoned features, the intra-class covariance trace and
   the mean intra-class cosine similarity of the poisoned features.
Writes ``report.json``, ``figure.png`` (clean / perturbation / released images and test-
accuracy curves) and the poisons (``<method>.npz``) into ``out_dir``; prints a table. One run
is one crafting seed: the spread over seeds is in docs/effectiveness.md.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from miue import objectives
from miue._amp import precision
from miue.craft import craft_fast
from miue.data import class_balanced_subset, load_dataset
from miue.env import environment
from miue.evaluation.victims import DEMO_VICTIMS, VICTIM_RECIPES, evaluate
from miue.evaluation.metrics import extract_features, gaussian_mutual_information, intra_class_covariance_trace, mean_intra_class_cosine

EPS = 8 / 255
# method -> the name the report, table and figure use: an objective (with its published recipe),
# or an objective with "-matched" (its loss on the preset's own schedule)
_DISPLAY = {"miue": "MI-UE", "miue-linear": "MI-UE-linear", "random": "random"}
NAMES = {}
for _name, _obj in objectives.OBJECTIVES.items():
    NAMES[_name] = _DISPLAY.get(_name, _name.upper())
    if _obj.published is not None:
        NAMES[_name + "-matched"] = NAMES[_name] + " (MI-UE sched.)"
        NAMES[_name] += " (published)"
DEFAULT_METHODS = ("miue", "em", "em-matched", "random")  # keeps the full demo within 15 minutes on 2 CPU cores
DEMO_PRESETS = ("demo", "cpu", "cnn")  # crafting presets the demo offers (paper/fast: GPU-sized, use miue craft)
TARGETS = {"clean_min": 0.88}
# the victims: (evaluate preset, architecture, epochs): the effectiveness study's cnn-sgd and
# cnn-adam (miue.evaluation.victims.VICTIM_RECIPES)
VICTIMS = {v: VICTIM_RECIPES[v] for v in DEMO_VICTIMS}
DEFENDED = {"cnn-sgd+jpeg10": ("cnn-sgd", "jpeg")}  # column -> (victim, defense applied to its training set)
LENS_VICTIM = "cnn-sgd"


def method_spec(method: str) -> tuple[str, str]:
    """``em`` -> ("em", "published"); ``em-matched`` -> ("em", "matched")."""
    if method.endswith("-matched"):
        return method[: -len("-matched")], "matched"
    return method, "published"


TRAIN_PER_CLASS = 1000  # the full demo's class-balanced training subset (10,000 images)

# the shortened configuration (``--quick``, run by CI): smaller subsets, fewer rounds and epochs
QUICK = dict(train_per_class=300, test_per_class=200, rounds=2, victim_epochs=4)
QUICK_TEXT = (f"{10 * QUICK['train_per_class']:,} training / {10 * QUICK['test_per_class']:,} test images, "
              f"{QUICK['rounds']} rounds, {QUICK['victim_epochs']} victim epochs")


def run_demo(out_dir: str = "demo_out", quick: bool = False, device=None, progress: bool = True, seed: int = 0,
             victim_epochs: int | None = None, methods=DEFAULT_METHODS, preset: str = "demo",
             train_per_class: int | None = None, workers: int = 1) -> dict:
    """methods: what to craft, each on the preset's surrogate: an objective of
    ``miue.objectives`` with its published recipe (``em``, ``tap``, ``rem``, ``pil``: the authors'
    schedule; ``miue``: the preset's), or ``<objective>-matched``, its loss on the preset's own
    schedule (see ``NAMES``; REM's published recipe takes hours on a CPU).
    preset: the crafting preset, ``demo`` (ResNet-8, 50 PGD steps per image: minutes on 2 CPU
    cores), ``cpu`` (ResNet-8, 200 steps: about 4x the crafting time) or ``cnn`` (the small-CNN
    25-step schedule: cheaper; docs/effectiveness.md says how it compares).
    train_per_class: the class-balanced training subset (default 1,000 per class; 6,000 is the
    whole training set). seed: the crafting, subset and victim seed. workers: jobs (crafts, victims)
    run in this many processes at once, each with cores / workers threads (1: one after the other
    in this process; the CLI uses 2 on 2 or more cores)."""
    from miue.presets import make_config

    if preset not in DEMO_PRESETS:
        raise ValueError(f"preset must be one of {DEMO_PRESETS}, got {preset!r}")
    methods = tuple(dict.fromkeys(methods))  # order kept, duplicates dropped
    if not methods:
        raise ValueError("methods must name at least one objective")
    bad = [m for m in methods if m not in NAMES]
    if bad:
        raise ValueError(f"methods: unknown objective(s) {bad}; choose from {tuple(NAMES)}")
    tpc = train_per_class or (QUICK["train_per_class"] if quick else TRAIN_PER_CLASS)
    if isinstance(tpc, bool) or not isinstance(tpc, int) or tpc < 1:
        raise ValueError(f"train_per_class must be a positive int, got {tpc!r}")

    os.makedirs(out_dir, exist_ok=True)
    t_start = time.perf_counter()
    train = class_balanced_subset(load_dataset("fashion-mnist", "train"), tpc, seed=seed)
    test = load_dataset("fashion-mnist", "test")
    if quick:
        test = class_balanced_subset(test, QUICK["test_per_class"], seed=seed)
    craft_kw = dict(preset=preset, eps=EPS, seed=seed, progress=progress, device=device)
    if quick:
        craft_kw["rounds"] = QUICK["rounds"]
    victims_cfg = {v: (p, a, victim_epochs or (QUICK["victim_epochs"] if quick else e)) for v, (p, a, e) in VICTIMS.items()}
    columns = {**{v: (v, None) for v in victims_cfg}, **DEFENDED}  # column -> (victim, defense)
    cfg = make_config(preset)
    steps = (QUICK["rounds"] if quick else cfg.rounds) * cfg.pgd_steps
    print(f"miue demo{' (QUICK configuration: ' + QUICK_TEXT + '; not the full demo)' if quick else ''}: "
          f"Fashion-MNIST, {len(train):,} training images ({tpc:,} per class) / {len(test):,} test images, "
          f"eps = 8/255; crafting preset {preset}: {cfg.arch} surrogate, {steps} PGD steps per image"
          f"{', bf16 autocast where native' if cfg.amp else ''}; victims "
          f"{'(bf16 where native, as the preset) ' if cfg.amp else ''}"
          + ", ".join(f"{v} ({e} epochs)" for v, (_, _, e) in victims_cfg.items())
          + "; " + ", ".join(f"{v} on the {d.upper()}-compressed release" for v, d in DEFENDED.values()), flush=True)

    poisons, crafted, craft_seconds = {"clean": train.images}, {}, {}
    victims, lens = {}, {}
    n_mi = min(len(train), 10_000)
    subset = {"train_per_class": tpc, "seed": seed, "test_per_class": QUICK["test_per_class"] if quick else None}
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    job_progress = progress and workers == 1

    def victim_jobs(name):
        return [(_victim_job, name, col, poisons[name], train.labels, test.images, test.labels, victims_cfg[v], d,
                 seed, device, job_progress, train.images[:n_mi] if col == LENS_VICTIM and name != "clean" else None,
                 threads, cfg.amp) for col, (v, d) in columns.items()]

    n_jobs = len(methods) + (len(methods) + 1) * len(columns)  # the crafts, then every poison's victims and clean's
    finished = []

    def stage_line() -> str:
        """One line per finished job, also when the output is not a terminal: elapsed time and a
        rough estimate of what is left (the mean job so far times the jobs left, over the workers)."""
        finished.append(time.perf_counter())
        elapsed = finished[-1] - t_start
        left = elapsed / len(finished) * (n_jobs - len(finished)) if len(finished) < n_jobs else 0.0
        return (f"[{len(finished)}/{n_jobs} jobs, {_clock(elapsed)} elapsed"
                + (f", about {_clock(left)} left]" if left else "]"))

    def crafted_done(method, r, seconds):
        name = NAMES[method]
        craft_seconds[name] = seconds
        r.config["dataset"] = "fashion-mnist"
        r.config["classes"] = train.classes
        r.config["subset"] = subset  # the subsets crafted and tested on (defense_compare.py rebuilds them)
        r.save(os.path.join(out_dir, f"{method}.npz"))
        poisons[name] = r.images.numpy()
        crafted[name] = r
        stop = f", {len(r.history)} rounds, stop: {r.config['stop']}" if "stop" in r.config else ""
        print(f"  crafted {name:17} in {seconds:6.1f} s{stop}  {stage_line()}", flush=True)

    def victim_done(name, col, res, lens_rec):
        victims.setdefault(name, {})[col] = res
        if lens_rec is not None:
            lens[name] = lens_rec
        print(f"  {col:14} victim on {name:17}: clean test accuracy {res.test_acc:.4f} ({res.seconds:.0f} s)  "
              f"{stage_line()}", flush=True)

    crafts = [(_craft_job, m, train.images, train.labels, {**craft_kw, "progress": job_progress}, threads)
              for m in methods]
    if workers == 1:  # in this process, one job after the other
        for job in crafts:
            crafted_done(*job[0](*job[1:]))
        for name in list(poisons):
            for job in victim_jobs(name):
                victim_done(*job[0](*job[1:]))
    else:  # a pool of processes, each with cores / workers threads: crafts first, then each poison's victims
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            pending = {pool.submit(*job) for job in crafts + victim_jobs("clean")}
            while pending:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    out = f.result()
                    if len(out) == 3:
                        crafted_done(*out)
                        pending |= {pool.submit(*job) for job in victim_jobs(NAMES[out[0]])}
                    else:
                        victim_done(*out)
    order = ["clean"] + [NAMES[m] for m in methods]
    victims = {name: {col: victims[name][col] for col in columns} for name in order}
    lens = {name: lens[name] for name in order if name in lens}
    crafted = {name: crafted[name] for name in order if name in crafted}  # (the pool finishes in any order)

    acc = {name: {v: r.test_acc for v, r in vs.items()} for name, vs in victims.items()}
    env = environment()
    report = {
        "quick": quick,
        "preset": preset,
        "dataset": "fashion-mnist",
        "train_images": len(train),
        "train_per_class": tpc,
        "test_images": len(test),
        "seed": seed,
        "eps": EPS,
        "victim_recipes": {v: {"evaluate_preset": p, "arch": a, "epochs": e} for v, (p, a, e) in victims_cfg.items()},
        "defended": {col: {"victim": v, "defense": d} for col, (v, d) in DEFENDED.items()},
        "victim_precision": precision(cfg.amp, device or "cpu"),
        "machine": {k: env[k] for k in ("cpu", "cores", "native_bf16", "bf16_reason")},
        "craft": {name: {"seconds": craft_seconds[name], "config": crafted[name].config, "history": crafted[name].history}
                  for name in crafted},
        "test_acc": acc,
        # the mean over the two victims without a defense
        "mean_test_acc": {name: float(np.mean([a[v] for v in victims_cfg])) for name, a in acc.items()},
        "victims": {name: {v: r.to_dict() for v, r in vs.items()} for name, vs in victims.items()},
        "lens": lens,
        "lens_victim": LENS_VICTIM,
        "targets": TARGETS,
        "environment": {**env, "device": str(victims["clean"][LENS_VICTIM].config["device"]), "workers": workers},
        "seconds": time.perf_counter() - t_start,
    }
    checks = {f"clean_at_least_0.88_{v}": acc["clean"][v] >= TARGETS["clean_min"] for v in victims_cfg}
    if "MI-UE" in victims:  # MI-UE against each other method, per victim and on the mean
        for other in victims:
            if other in ("clean", "MI-UE"):
                continue
            key = other.lower().replace(" (mi-ue sched.)", "_matched").replace(" (published)", "")
            for col in columns:
                checks[f"miue_below_{key}_{col}"] = acc["MI-UE"][col] < acc[other][col]
            checks[f"miue_below_{key}_mean"] = report["mean_test_acc"]["MI-UE"] < report["mean_test_acc"][other]
    report["checks"] = checks
    with open(os.path.join(out_dir, "report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    shown = "MI-UE" if "MI-UE" in crafted else next(iter(crafted))
    _figure(os.path.join(out_dir, "figure.png"), train, crafted[shown], victims, shown)
    print(table(report))
    print(f"wrote {out_dir}/report.json, {out_dir}/figure.png and the poisons; total {report['seconds']:.0f} s")
    print("One run is one crafting seed: the crafting seed alone moves a cell by several points, so this table "
          "ranks nothing. Which method is better is decided by the declared comparison in docs/effectiveness.md "
          "(five crafting seeds or more, two victim seeds, four victims, Holm-corrected p, effects with "
          "intervals), and its verdicts are there; this run alone calls no row better than another.")
    return report


def _set_threads(threads):
    if threads is not None:
        torch.set_num_threads(threads)


def _craft_job(method, images, labels, craft_kw, threads):
    """One craft (in a worker process, or in this one): (method, result, seconds)."""
    _set_threads(threads)
    objective, recipe = method_spec(method)
    t = time.perf_counter()
    r = craft_fast(images, labels, objective=objective, recipe=recipe, **craft_kw)
    return method, r, time.perf_counter() - t


def _victim_job(name, col, images, labels, test_images, test_labels, spec, defense, seed, device, progress,
                lens_clean, threads, amp=False):
    """One victim: (name, column, EvalResult without its model, the lens or None). ``lens_clean``:
    the clean images whose features (and the poisoned ones') give the MI lens, or None."""
    _set_threads(threads)
    vpreset, arch, epochs = spec
    res = evaluate(images, labels, test_images, test_labels, preset=vpreset, arch=arch, epochs=epochs, seed=seed,
                   device=device, progress=progress, defense=defense, amp=amp)
    rec = None
    if lens_clean is not None:
        n = len(lens_clean)
        f_clean = extract_features(res.model, lens_clean)
        f_pois = extract_features(res.model, images[:n])
        y = torch.from_numpy(np.asarray(labels[:n]))
        rec = {"mutual_information_nats": gaussian_mutual_information(f_clean, f_pois),
               "intra_class_cov_trace": intra_class_covariance_trace(f_pois, y),
               "intra_class_cosine": mean_intra_class_cosine(f_pois, y)}
    res.model = None  # (not picklable across processes cheaply, and not part of the report)
    return name, col, res, rec


def table(report: dict) -> str:
    vnames = list(report["victim_recipes"])
    cols = list(next(iter(report["test_acc"].values())))
    head = f"{'training data':18} {'craft s':>8} " + " ".join(f"{v:>{max(9, len(v))}}" for v in cols) + f" {'mean':>7}"
    rows = [head + f" {'MI(clean;poison)':>17} {'intra-cls cos':>14} {'intra-cls tr':>13}"]
    rows.append("-" * len(rows[0]))
    for name, accs in report["test_acc"].items():
        craft = report["craft"].get(name, {}).get("seconds")
        lens = report["lens"].get(name, {})
        rows.append(
            f"{name:18} {('%.0f' % craft) if craft is not None else '-':>8} "
            + " ".join(f"{accs[v]:>{max(9, len(v))}.4f}" for v in cols) + f" {report['mean_test_acc'][name]:>7.4f}"
            + f" {('%.3f' % lens['mutual_information_nats']) if lens else '-':>17}"
            + f" {('%.3f' % lens['intra_class_cosine']) if lens else '-':>14}"
            + f" {('%.3f' % lens['intra_class_cov_trace']) if lens else '-':>13}"
        )
    rows.append(f"(clean test accuracy of each victim, lower = more unlearnable; mean: over {', '.join(vnames)}; "
                f"+jpeg10: trained on the release compressed at JPEG quality 10; MI and intra-class columns from the "
                f"{report['lens_victim']} victim's features)")
    return "\n".join(rows)


def _clock(seconds: float) -> str:
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m}:{sec:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{sec:02d}"


def _figure(path, train, miue_result, victims, name="MI-UE"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = train.classes
    picks = [int(np.nonzero(train.labels == c)[0][0]) for c in range(len(classes))]  # every class
    eps = miue_result.config["eps"]
    fig = plt.figure(figsize=(16, 7))
    grid = fig.add_gridspec(3, len(picks) + 5)
    rows = [("clean", lambda i: train.images[i]),
            ("perturbation (scaled)", lambda i: ((miue_result.delta[i].numpy() / (2 * eps) + 0.5) * 255).clip(0, 255)),
            (f"released ({name})", lambda i: miue_result.images[i].numpy())]
    for r, (title, get) in enumerate(rows):
        for k, i in enumerate(picks):
            ax = fig.add_subplot(grid[r, k])
            img = np.asarray(get(i), dtype=np.float32)
            ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0) / 255, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(title, fontsize=8)
            if r == 0:
                ax.set_title(classes[train.labels[i]], fontsize=8)
    ax = fig.add_subplot(grid[:, len(picks):])
    styles = dict(zip(list(VICTIMS) + list(DEFENDED), ("-", "--", ":")))
    for i, (name, per_victim) in enumerate(victims.items()):
        for vname, v in per_victim.items():
            ax.plot(v.epochs, [100 * a for a in v.test_acc_history], marker="o", markersize=3, ls=styles.get(vname, "-"),
                    color=f"C{i}", label=f"{vname} on {name}")
    ax.set_xlabel("victim epoch")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    # below the axes, so that no curve is covered
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax.set_title("victims (eps = 8/255): SGD + crop + flip (solid),\nAdam (dashed), SGD on the JPEG-10 release (dotted)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
