"""Fingerprints of crafted δ for every objective: run before and after a refactor of the crafting
code, on the same machine, and compare. A behaviour-preserving change leaves every fingerprint
bitwise the same (the sha256 of δ's float32 bytes, and of the crafting history's numbers).

    python scripts/delta_fingerprints.py --out before.json
    ... change the code ...
    python scripts/delta_fingerprints.py --compare before.json

Fingerprints differ between machines (CPU instruction sets change float results), so they are
not committed: the two runs must share a machine, a thread count and a torch build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import torch

TINY = dict(rounds=2, pgd_steps=2, batch_size=16, train_batch_size=16, progress=False, device="cpu")

# (name, craft_fast keyword arguments): every objective, both recipes where they differ, and the
# code paths a recipe or an option switches on (class-wise δ, restarts, BN in train mode,
# differentiable augmentation, per-batch schedule, random starts, sequential order, stop rules)
CASES = [
    ("miue", dict(objective="miue")),
    ("miue-linear", dict(objective="miue-linear")),
    ("miue-classwise", dict(objective="miue", classwise=True)),
    ("miue-bn-train", dict(objective="miue", pgd_bn="train")),
    ("miue-stop-train-acc", dict(objective="miue", stop_train_acc=0.05)),
    ("em-matched", dict(objective="em", recipe="matched")),
    ("em-published", dict(objective="em", recipe="published", rounds=2, train_steps=2, pgd_steps=2)),
    ("tap-matched", dict(objective="tap", recipe="matched")),
    ("tap-published", dict(objective="tap", recipe="published", rounds=1, train_epochs=1, pgd_steps=2,
                           restarts=2)),
    ("rem-matched", dict(objective="rem", recipe="matched", rem_steps=2)),
    ("rem-published", dict(objective="rem", recipe="published", rounds=2, train_steps=4, pgd_steps=2,
                           rem_steps=2, eot_samples=2)),
    ("pil-matched", dict(objective="pil", recipe="matched")),
    ("pil-published", dict(objective="pil", recipe="published", train_epochs=1, pgd_steps=2)),
    ("random", dict(objective="random")),
    ("ar", dict(objective="ar")),
    ("lsp", dict(objective="lsp")),
    ("ops", dict(objective="ops")),
]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def _history_digest(history) -> str:
    numbers = [(k, v) for h in history for k, v in sorted(h.items())
               if isinstance(v, (int, float)) and "seconds" not in k and not k.endswith("_per_s")]
    return hashlib.sha256(json.dumps(numbers).encode()).hexdigest()[:16]


def fingerprints() -> dict:
    import numpy as np

    from miue import craft_fast

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(48, 1, 12, 12), dtype=np.uint8)
    labels = np.arange(48) % 4
    out = {}
    for name, kw in CASES:
        args = {**TINY, "preset": "cnn", "seed": 3, **kw}
        res = craft_fast(images, labels, **args)
        out[name] = {"delta": _digest(res.delta), "history": _history_digest(res.history)}
        print(f"{name:22} {out[name]['delta']} {out[name]['history']}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the fingerprints to this JSON file")
    ap.add_argument("--compare", help="compare with the fingerprints in this JSON file; exit 1 on a difference")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    got = fingerprints()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(got, f, indent=1)
    if args.compare:
        want = json.load(open(args.compare))
        bad = [k for k in want if want[k] != got.get(k)]
        print("all fingerprints equal" if not bad else f"DIFFERENT: {', '.join(bad)}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
