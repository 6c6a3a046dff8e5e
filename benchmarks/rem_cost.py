"""What one step of REM's published loop costs here, and what a whole craft would cost.

REM (Fu et al. 2022, ``objective="rem"``, published recipe) trains for 5,000 steps of batch 128;
each step crafts its batch's δ with 10 PGD steps × 5 augmented samples × (10 + 1) passes for
the adversarial ρ, then takes one adversarial training step, and the last round crafts every δ
again with the final surrogate. This times the first round of ``craft_fast`` (``--steps`` steps
on random 28 × 28 grayscale images, the demo preset's ResNet-8, the precision the machine
gives) and extrapolates to ``--steps-published`` steps plus the final pass over ``--n-images``.

    python benchmarks/rem_cost.py --json benchmarks/results/<machine>-<date>/rem_cost.json
    python benchmarks/rem_cost.py --quick     # CI smoke: 8 px images, one of each inner step
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2, help="REM steps timed (default 2)")
    p.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    p.add_argument("--preset", default="demo", help="preset whose surrogate is used (default demo)")
    p.add_argument("--steps-published", type=int, default=5000, help="steps of a whole craft (REM's 5,000)")
    p.add_argument("--n-images", type=int, default=10000, help="images crafted again at the end (default 10,000)")
    p.add_argument("--json", help="write the measurement here")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 px, one step of each inner loop")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    import torch

    import miue

    size, steps = (8, 1) if args.quick else (args.size, args.steps)
    inner = dict(pgd_steps=1, eot_samples=1, rem_steps=1) if args.quick else {}
    g = torch.Generator().manual_seed(0)
    bs = 128
    n = bs * (2 * steps + 1)  # full batches for both rounds
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 10
    r = miue.craft_fast(x, y, preset=args.preset, objective="rem", train_steps=2 * steps, rounds=2, device="cpu",
                        progress=False, **inner)
    first = r.history[0]
    per_step = first["seconds"] / first["train_steps"]
    cfg = r.config
    # the final pass crafts each image as a step crafts one (without the training step)
    whole_h = (per_step * args.steps_published + per_step / bs * args.n_images) / 3600
    from miue.env import environment

    out = {"machine": environment(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "precision": r.config.get("precision"), "image_size": size, "train_batch_size": cfg["train_batch_size"],
           "pgd_steps": cfg["pgd_steps"], "eot_samples": cfg["eot_samples"], "rem_steps": cfg["rem_steps"],
           "steps_timed": first["train_steps"], "seconds_per_step": per_step,
           "steps_published": args.steps_published, "n_images": args.n_images, "hours_per_craft": whole_h,
           "quick": args.quick, "date": time.strftime("%Y-%m-%d")}
    print("| threads | precision | image | PGD × samples × ρ steps | s per step | h per craft (5,000 steps + final pass) |")
    print("|---:|---|---:|---|---:|---:|")
    print(f"| {out['torch_threads']} | {out['precision']} | {size} px | {cfg['pgd_steps']} × {cfg['eot_samples']} × "
          f"{cfg['rem_steps']} | {per_step:.2f} | {whole_h:.1f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
