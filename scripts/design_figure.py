"""Draw docs/design_dataflow.png: the layers of miue and how data flows through one crafting
round (matplotlib only; rerun after changing the architecture).

    python scripts/design_figure.py [--out docs/design_dataflow.png]
"""

from __future__ import annotations

import argparse
import os

BOXES = {  # name: (x, y, w, h, text, colour)
    "user": (0.2, 8.6, 3.6, 1.0, "user code / CLI\ncraft_fast · miue protect · evaluate", "#dde7f5"),
    "data": (4.4, 8.6, 3.6, 1.0, "miue/data/: loaders · folder\nuint8 N×C×H×W (RAM or memory map)", "#e8f1de"),
    "run": (0.2, 6.7, 3.6, 1.2, "craft/run.py\nconfig, checkpoints, resume,\nrounds loop, release", "#dde7f5"),
    "store": (4.4, 6.7, 3.6, 1.2, "craft/store.py DeltaStore\nclean + δ: device / pinned host /\nmemory-mapped file", "#e8f1de"),
    "engine": (0.2, 4.6, 7.8, 1.4, "craft/engine.py: one round by craft/schedules.py (shard.py: images, labels, δ)\n1. surrogate.py: train on clamp(flip(x)+δ)\n"
               "2. attack.py: K PGD steps: features → objective loss → ∇δ → pgd_linf_step_", "#fbe9d7"),
    "ops": (0.2, 2.6, 7.8, 1.2,
            "miue/ops/<op>.py  one torch.library custom op per file (fake kernel, autograd, checks)\n"
            "supcon_loss · intra_class_cosine_loss · grouped_normalize · pgd_linf_step · project_linf",
            "#f5dde7"),
    "ref": (0.2, 0.6, 2.4, 1.2, "reference\nmiue/ops/reference.py\n(float64 oracle)", "#eeeeee"),
    "cpp": (2.9, 0.6, 2.4, 1.2, "cpp\ncsrc/cpu/<op>.cpp (OpenMP)\ncsrc/cuda/<op>.cu", "#eeeeee"),
    "triton": (5.6, 0.6, 2.4, 1.2, "triton\nkernels/<op>.py\n(+ _config.py tiles)", "#eeeeee"),
    "result": (8.6, 4.6, 2.6, 1.4, "CraftResult (run.py)\n.save() npz/pt\ndata/release.py: tree + manifest", "#dde7f5"),
    "eval": (8.6, 2.6, 2.6, 1.2, "miue/evaluation/\nvictims · defenses ·\nMI lens (metrics)", "#e8f1de"),
}
ARROWS = [("user", "run"), ("data", "store"), ("run", "engine"), ("store", "engine"), ("engine", "ops"),
          ("ops", "ref"), ("ops", "cpp"), ("ops", "triton"), ("engine", "result"), ("result", "eval"), ("user", "data")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                                                 "design_dataflow.png"))
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(11.5, 10))
    for x, y, w, h, text, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#555555"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def anchor(name, other):
        x, y, w, h = BOXES[name][:4]
        ox, oy, ow, oh = BOXES[other][:4]
        cx, cy, ocx, ocy = x + w / 2, y + h / 2, ox + ow / 2, oy + oh / 2
        if abs(ocy - cy) > abs(ocx - cx) * 0.6:
            return (cx if abs(ocx - cx) < w / 2 else cx + (w / 4 if ocx > cx else -w / 4)), (y if ocy < cy else y + h)
        return (x + w if ocx > cx else x), cy

    for a, b in ARROWS:
        ax.add_patch(FancyArrowPatch(anchor(a, b), anchor(b, a), arrowstyle="-|>", mutation_scale=14, color="#333333"))
    ax.text(0.2, 9.9, "miue: layers and the data flow of one crafting round", fontsize=12, weight="bold")
    ax.set_xlim(0, 11.4)
    ax.set_ylim(0.3, 10.2)
    ax.axis("off")
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {os.path.normpath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
