"""What releasing at the original size does to the protection (issue 26), measured once.

A data owner's folder is simulated from Fashion-MNIST: a class-balanced training subset, every
28×28 image upscaled (bicubic) to a random square size between 56 and 112 pixels and saved as
PNG under ``<class>/``. It is protected with ``miue protect --image-size 28`` (the images are
square, so the resize rule is a plain resize), released both at the working size (the crafted
28×28 images) and at the original sizes (``--native-size``: δ upsampled bilinearly). Victims of
the demo's two recipes are trained at the working size on:

* ``clean``: the originals, downsampled to 28 by the same preprocessing;
* ``working``: the crafted 28×28 images (what the poison was optimised for);
* ``native``: the native-size release, downsampled to 28 by the same preprocessing (what a model
  trained at 28 px on the published files sees);

and tested on the clean Fashion-MNIST test set. Results: ``results.json`` / ``results.md``.

    python benchmarks/native_size.py --out benchmarks/results/<machine>-<date>/native_size
    python benchmarks/native_size.py --quick    # CI smoke: 40 images per class, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from miue.evaluation.victims import DEMO_VICTIMS, VICTIM_RECIPES

VICTIMS = {v: VICTIM_RECIPES[v] for v in DEMO_VICTIMS}  # the demo's two victims


def make_folder(root: str, data, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i, (img, lab) in enumerate(zip(data.images, data.labels)):
        d = os.path.join(root, f"{int(lab)}_{data.classes[int(lab)].replace('/', '-')}")
        os.makedirs(d, exist_ok=True)
        s = int(rng.integers(56, 113))
        Image.fromarray(img[0]).resize((s, s), Image.BICUBIC).save(os.path.join(d, f"item_{i:05d}.png"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--preset", default="cnn", help="crafting preset (default cnn: the cheapest)")
    p.add_argument("--objective", default="miue")
    p.add_argument("--out", help="write results.json and results.md here")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    import torch

    from miue.craft import CraftResult
    from miue.data import class_balanced_subset, load_dataset
    from miue.evaluation.victims import evaluate
    from miue.data.protect import protect

    tpc = 40 if args.quick else args.train_per_class
    train = class_balanced_subset(load_dataset("fashion-mnist", "train"), tpc, seed=0)
    test = load_dataset("fashion-mnist", "test")
    if args.quick:
        test = class_balanced_subset(test, 20, seed=0)
    work = args.work or tempfile.mkdtemp(prefix="miue-native-")
    src, dst = os.path.join(work, "photos"), os.path.join(work, "released")
    t0 = time.perf_counter()
    if not os.path.isdir(src):
        make_folder(src, train)
    extra = {"rounds": 1, "pgd_steps": 1, "train_steps": 2} if args.quick else {}
    summary = protect(src, dst, preset=args.preset, objective=args.objective, image_size=28, native_size=True,
                      result_path=os.path.join(work, "result.npz"), progress=False, device="cpu", overwrite=True,
                      **extra)
    res = CraftResult.load(summary["result"])
    clean = load_dataset(src, image_size=28)
    native = load_dataset(dst, image_size=28)
    # the release mirrors the source, so both load in the same order; check it rather than assume it
    names = [os.path.splitext(f)[0] for f in clean.source["files"]]
    assert names == [os.path.splitext(f)[0] for f in native.source["files"]]
    assert torch.equal(torch.as_tensor(clean.labels), res.labels)
    sets = {"clean": clean.images, "working": res.images.numpy(), "native": native.images}
    # how far the downsampled native release is from the crafted working-size image
    w = res.images.numpy().astype(np.int16)
    nat = native.images.astype(np.int16)
    cl = clean.images.astype(np.int16)
    drift = {"mean_abs_native_minus_working_255": float(np.abs(nat - w).mean()),
             "mean_abs_working_minus_clean_255": float(np.abs(w - cl).mean()),
             "mean_abs_native_minus_clean_255": float(np.abs(nat - cl).mean()),
             "delta_energy_kept": float(((nat - cl) * (w - cl)).sum() / max(1, ((w - cl) ** 2).sum()))}
    rows = []
    for name, images in sets.items():
        for victim, (preset, arch, epochs) in VICTIMS.items():
            e = 1 if args.quick else epochs
            v = evaluate(images, clean.labels, test.images, test.labels, preset=preset, arch=arch, epochs=e, seed=0,
                         device="cpu", progress=False)
            rows.append({"train_set": name, "victim": victim, "epochs": e, "test_acc": v.test_acc})
            print(f"{name:8} {victim:9} {v.test_acc:.4f}", flush=True)
    out = {"train_images": len(clean), "preset": args.preset, "objective": args.objective,
           "summary": summary, "drift": drift, "rows": rows, "seconds": time.perf_counter() - t0}
    table = ["| victim trained at 28 px on | " + " | ".join(VICTIMS) + " |", "|---|" + "---:|" * len(VICTIMS)]
    for name in sets:
        accs = [next(r["test_acc"] for r in rows if r["train_set"] == name and r["victim"] == v) for v in VICTIMS]
        table.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}%" for a in accs) + " |")
    text = "\n".join(table)
    print(text)
    print(json.dumps(drift))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump(out, fh, indent=1)
        with open(os.path.join(args.out, "results.md"), "w") as fh:
            fh.write(f"# Native-size release ({len(clean):,} Fashion-MNIST images upscaled to 56-112 px, "
                     f"preset {args.preset}, objective {args.objective})\n\n{text}\n\n"
                     f"Drift in 1/255 units: {json.dumps(drift)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
