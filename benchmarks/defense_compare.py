"""MI-UE vs EM under defenses, on the demo's poisons (issue 5's defense report).

Trains the demo's SGD victim (``cnn-sgd``: ``evaluate`` preset ``quick``, 20 epochs as in the
demo; the demo's subsets, which its poisons record) on each released set in ``--poisons-dir`` (``miue.npz``, ``em.npz`` (EM published), ``em-matched.npz`` as ``bash scripts/demo.sh``
writes them; ``clean`` is the dataset itself) with each defense, and writes a JSON report and
a markdown table. The JSON is rewritten after every victim, so an interrupted run keeps what
it measured, and ``--resume`` measures only what is missing.

    python benchmarks/defense_compare.py --poisons-dir demo_out --defenses jpeg at \
        --json demo_out/defenses.json --md demo_out/defenses.md

Grayscale (ISS) is the identity on one-channel images such as Fashion-MNIST; it is listed as
not applicable there instead of being trained (its numbers would be the undefended ones).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from miue.craft import CraftResult
from miue.data import class_balanced_subset, load_dataset
from miue.evaluation.defenses import DEFENSES
from miue.demo import QUICK
from miue.env import environment
from miue.evaluation.victims import evaluate

# the demo's files: EM is its authors' published recipe, EM-matched its loss on MI-UE's schedule
FILES = {"MI-UE": "miue.npz", "EM": "em.npz", "EM-matched": "em-matched.npz", "random": "random.npz"}


def _md(report: dict) -> str:
    methods = report["methods"]
    lines = [f"| defense | {' | '.join(methods)} |", "|---|" + "---|" * len(methods)]
    for defense in report["defenses"]:
        cells = []
        for m in methods:
            r = report["results"].get(defense, {}).get(m)
            cells.append("n/a" if r is None else (r if isinstance(r, str) else f"{100 * r['test_acc']:.1f}%"))
        lines.append(f"| {defense} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--poisons-dir", default="demo_out", help="folder with miue.npz / em.npz (default demo_out)")
    p.add_argument("--methods", nargs="+", default=["MI-UE", "EM", "EM-matched", "clean"], choices=[*FILES, "clean"])
    p.add_argument("--defenses", nargs="+", default=["none", "jpeg", "grayscale", "at"], choices=["none", *DEFENSES])
    p.add_argument("--epochs", type=int, default=20, help="victim epochs (the demo's cnn-sgd: 20)")
    p.add_argument("--at-eps", type=float, default=4 / 255, help="adversarial-training eps (default 4/255)")
    p.add_argument("--quick", action="store_true", help="poisons from `miue demo --quick` (its class-balanced subsets)")
    p.add_argument("--seed", type=int, default=0, help="victim seed, and the demo's subset seed with --quick")
    p.add_argument("--json", default=None, help="report path (default <poisons-dir>/defenses.json)")
    p.add_argument("--resume", action="store_true", help="keep the results already in --json (same setup) and "
                   "measure only the missing ones")
    p.add_argument("--md", default=None, help="markdown table path (default <poisons-dir>/defenses.md)")
    args = p.parse_args(argv)
    json_path = args.json or os.path.join(args.poisons_dir, "defenses.json")
    md_path = args.md or os.path.join(args.poisons_dir, "defenses.md")

    sets, dataset = {}, None
    for m in args.methods:
        if m == "clean":
            continue
        r = CraftResult.load(os.path.join(args.poisons_dir, FILES[m]))
        sets[m] = r
        dataset = dataset or r.config.get("dataset")
    dataset = dataset or "fashion-mnist"
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    subset = next(iter(sets.values())).config.get("subset") if sets else None
    if subset:  # `miue demo` records the class-balanced subsets it crafted and tested on
        train = class_balanced_subset(train, subset["train_per_class"], seed=subset["seed"])
        if subset.get("test_per_class"):
            test = class_balanced_subset(test, subset["test_per_class"], seed=subset["seed"])
    elif args.quick:  # poisons of a `miue demo --quick` that did not record its subsets
        train = class_balanced_subset(train, QUICK["train_per_class"], seed=args.seed)
        test = class_balanced_subset(test, QUICK["test_per_class"], seed=args.seed)
    images = {}
    for m in args.methods:
        if m == "clean":
            images[m] = torch.from_numpy(train.images)
            continue
        r = sets[m]
        if r.images.shape[0] != len(train) or not torch.equal(r.labels, torch.from_numpy(train.labels)):
            raise ValueError(f"{FILES[m]} was not crafted on the {'quick demo subset' if args.quick else 'whole'} "
                             f"{dataset} training set in order (pass --quick for `miue demo --quick` poisons)")
        images[m] = r.images

    report = {"quick": args.quick, "dataset": dataset, "train_images": len(train), "test_images": len(test), "epochs": args.epochs,
              "at_eps": args.at_eps, "seed": args.seed, "victim_preset": "quick", "methods": args.methods,
              "defenses": args.defenses, "results": {},
              "environment": environment()}
    channels = next(iter(images.values())).shape[1]
    if args.resume and os.path.exists(json_path):  # keep what an earlier run of the same setup measured
        with open(json_path) as fh:
            old = json.load(fh)
        same = ("quick", "dataset", "epochs", "at_eps", "seed", "victim_preset")
        if any(old.get(k) != report[k] for k in same):
            raise ValueError(f"--resume: {json_path} was measured with another setup; use another --json")
        report["results"] = {d: {m: r for m, r in row.items() if isinstance(r, dict)}
                             for d, row in old.get("results", {}).items()}
        report["defenses"] = list(dict.fromkeys([*old.get("defenses", []), *args.defenses]))
        report["methods"] = list(dict.fromkeys([*old.get("methods", []), *args.methods]))

    def write():
        tmp = json_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=1)
        os.replace(tmp, json_path)
        with open(md_path, "w") as fh:
            fh.write(_md(report) + "\n")

    t0 = time.perf_counter()
    for defense in args.defenses:
        row = report["results"].setdefault(defense, {})
        for m in args.methods:
            if defense == "grayscale" and channels == 1:
                row[m] = "identity on 1-channel images"
                continue
            if isinstance(row.get(m), dict):
                continue  # measured by the run resumed
            res = evaluate(images[m], train.labels, test.images, test.labels, preset="quick", epochs=args.epochs,
                           defense=None if defense == "none" else defense, at_eps=args.at_eps, seed=args.seed,
                           progress=False)
            row[m] = {"test_acc": res.test_acc, "test_acc_history": res.test_acc_history, "seconds": res.seconds}
            print(f"{defense:9} {m:6} clean test accuracy {res.test_acc:.4f} ({res.seconds:.0f} s)", flush=True)
            write()
    report["seconds"] = time.perf_counter() - t0
    write()
    print(_md(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
