"""Write the generated parts of the docs, so that they cannot drift from the code
(``tests/test_docs.py`` checks that they are current):

* docs/cli.md from the command line's own --help texts (``miue`` and every subcommand);
* the table of every ``CraftConfig`` field and its value in each preset, in docs/crafting.md
  between the markers ``<!-- config-table:start -->`` and ``<!-- config-table:end -->``;
* the objectives table and the published recipes' values, from the registry (miue/objectives.py),
  between ``<!-- objectives-table:... -->`` and ``<!-- recipes-table:... -->``.

    python scripts/gen_docs.py            # rewrite them
    python scripts/gen_docs.py --check    # exit 1 if either is out of date
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "..", "docs", "cli.md")
CRAFTING = os.path.join(HERE, "..", "docs", "crafting.md")
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"

INTRO = """# Command line

`miue` (also `python -m miue`) has one subcommand per job. Exit status 0 on success; on failure a
one-line reason on stderr and status 1 (2 for usage errors, 130 when interrupted). This page is
generated from the `--help` texts by `scripts/gen_docs.py` (a test keeps it current): the
`--help` of each command is the reference.

<!-- test: run
setup: photos
replace: --preset demo --eps 8/255 --checkpoint-dir runs/fm => --preset cnn --rounds 1 --train-steps 5 --per-class 20 --eps 8/255 --checkpoint-dir runs/fm --quiet
replace: --image-size 64 => --image-size 16 --preset cnn --rounds 1 --train-steps 2 --quiet
replace: --json victim.json => --epochs 1 --json victim.json --quiet
-->
```bash
miue info                                   # backends, devices, versions
miue craft fashion-mnist --out fm.npz --preset demo --eps 8/255 --checkpoint-dir runs/fm
miue protect photos/ released/ --image-size 64
miue evaluate fm.npz --preset quick --defense jpeg --json victim.json
```

<!-- test: skip: about 2 minutes; CI runs it (.ci/run: `bash scripts/demo.sh --quick`) -->
```bash
miue demo --quick
```

`miue demo --methods …` crafts any objectives from the table in [crafting.md](crafting.md) with the same `demo`
schedule and surrogate and trains the same two victims on each (default `miue em random`, which
keeps the full demo within 15 minutes on 2 cores; `rem` alone costs about 8× EM).
`--preset cpu` crafts every method with the `cpu` preset instead (the ResNet-8 surrogate at
200 PGD steps per image, the strongest MI-UE measured; it ties EM over crafting seeds): about 4× the crafting time
(`bash scripts/demo.sh --preset cpu`); `--preset cnn` with the small-CNN schedule (cheapest;
EM wins there). `--train-per-class 6000` crafts on all 60,000 images. With `--quick` the rounds
are cut to 2.

Datasets by name (`fashion-mnist`, `mnist`, `cifar10`, `cifar100`, `svhn`, `digits`) or by
path (an idx directory, a CIFAR python directory, an ImageFolder tree, `.npz`, SVHN `.mat`).
Image folders of any size: `--image-size`, `--resize-only` and `--skip-bad` on `craft` and
`protect` ([protect.md](protect.md)).
"""


MEANING = {
 "preset": "the preset the values came from",
 "objective": "what δ optimises (objectives table below); default `miue`",
 "eps": "L∞ budget in [0, 1] units (SPEC: 8/255)",
 "rounds": "rounds E: each trains the surrogate, then runs the PGD steps (official: 100)",
 "pgd_steps": "signed-gradient PGD steps on every δ per round (official: 10)",
 "pgd_batch_size": "PGD batch (official: 512)",
 "train_batch_size": "surrogate training batch (official: 128)",
 "train_epochs": "surrogate epochs per round when `train_steps` is 0 (official: 1)",
 "train_steps": "surrogate SGD steps per round (0: `train_epochs` epochs of the data)",
 "stop_train_acc": "an ablation's rule: stop once the surrogate's running train accuracy of a round reaches it "
                   "(0: off; EM's published rule is `stop_eval_acc`)",
 "pgd_bn": "batch norm during PGD: `eval` (official) or `train`",
 "rem_eps": "REM's adversarial radius (0: ε/2, the REM paper's)",
 "rem_steps": "REM's inner PGD steps (the REM code: 7)",
 "recipe": "`published`: the objective's authors' recipe on the preset's surrogate (em, tap, rem, pil); `matched`: "
           "its loss on the preset's schedule",
 "rem_step_size": "REM's ρ step (0: `rem_eps`/4; published: ε/10)",
 "schedule": "`rounds` (train, then PGD on every δ) or `per-batch` (REM's published loop)",
 "train_order": "`shuffle` (a fresh permutation per round) or `sequential` (one fixed order, a carried-over cursor)",
 "train_augment": "surrogate training augmentation: `flip` (as `flip` says), `none`, `crop-flip`, `shift-flip`",
 "attack_augment": "differentiable augmentation of x + δ in every PGD step (TAP: `shift-flip`)",
 "lr_schedule": "`cosine` (official), `constant`, `multistep` (epochs), `step` (training steps)",
 "lr_milestones": "`multistep` milestones in surrogate epochs",
 "lr_gamma": "`multistep`/`step` factor",
 "lr_step_every": "`step`: training steps between decays",
 "nesterov": "Nesterov momentum",
 "grad_clip": "clip the surrogate's gradient norm (0: off)",
 "stop_eval_acc": "EM's published stop: end once the eval-mode surrogate classifies more than this of the poisoned "
                  "set after a PGD pass (0: off)",
 "input_norm": "the surrogate's input normalisation: `imagenet` (official), `cifar`, `half`, `none`",
 "delta_init": "`zero` (official), `uniform` or `normal` in the ε ball",
 "restarts": "attacks after training: best of this many random starts per PGD batch",
 "eot_samples": "REM's published loop: augmentations per δ step",
 "pil_lambda": "PIL: weight of CE(f(−δ), y) against KL(U ‖ f(x + δ))",
 "arch": "surrogate architecture (official: ResNet-18)",
 "lr": "surrogate SGD learning rate (official: 0.1)",
 "momentum": "SGD momentum (official: 0.9)",
 "weight_decay": "SGD weight decay (official: 1e-4)",
 "lr_min": "end of the cosine schedule (official: 1e-6)",
 "alpha_start": "PGD step α in round 1 (official: 0.2/255)",
 "alpha_end": "α approached in round E (official: 4/(255·`pgd_steps`), 0.4/255 at 10 steps)",
 "temperature": "supcon τ (official: 0.1)",
 "flip": "post-augmentation horizontal flips (official: on)",
 "classwise": "one δ per class",
 "amp": "bf16 autocast of the surrogate where native",
 "channels_last": "channels_last memory format",
 "compile": "`torch.compile` of the surrogate",
 "cuda_graphs": "CUDA graph of the PGD step (CUDA only)",
 "delta_dtype": "how δ is stored: float32, float16, int8 (1/255 units)",
 "storage": "where images and δ live: auto, device, host (streamed), disk (memory-mapped δ)",
 "release_rounding": "uint8 release: round, or trunc (the official code)",
 "seed": "seed of every random choice",
 "backend": "force an ops backend (None: automatic)",
 "checkpoint_every": "checkpoint every k rounds",
 "num_classes": "class count (0: from the labels)",
}


def _fmt(v) -> str:
    """A value as the table shows it: on/off, fractions of 1/255 for small multiples of it."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        if v and v < 0.1 and abs(v * 255 - round(v * 255, 3)) < 1e-9:
            return f"{round(v * 255, 3):g}/255"
        return f"{v:g}"
    if v is None:
        return "None"
    if isinstance(v, dict):
        return "{}"
    return str(v)


def config_table() -> str:
    """Markdown table: every CraftConfig field, its value in each preset, its meaning."""
    import dataclasses

    from miue.presets import PRESETS, CraftConfig, make_config

    cfgs = {p: make_config(p).to_dict() for p in PRESETS}
    rows = ["| field | " + " | ".join(f"`{p}`" for p in PRESETS) + " | meaning (source value) |",
            "|---|" + "---|" * len(PRESETS) + "---|"]
    for f in dataclasses.fields(CraftConfig):
        rows.append(f"| `{f.name}` | " + " | ".join(_fmt(cfgs[p][f.name]) for p in PRESETS) + f" | {MEANING[f.name]} |")
    return "\n".join(rows)


def objectives_table() -> str:
    """Markdown table of the registry (miue/objectives.py): every objective, what it optimises,
    what its surrogate trains on, its paper and its published recipe."""
    from miue.objectives import OBJECTIVES

    rows = ["| objective | what δ optimises / is | surrogate trains on | paper | published recipe (`recipe=\"published\"`) |",
            "|---|---|---|---|---|"]
    for o in OBJECTIVES.values():
        where = {"poisoned": "x + δ", "clean": "clean x", "none": "no surrogate"}[o.surrogate]
        if o.inner_max:
            where += " + ρ (adversarial)"
        rec = f"{o.published.summary} ({o.published.source})" if o.published else "the preset's schedule"
        rows.append(f"| `{o.name}` | {o.summary} | {where} | {o.paper} | {rec} |")
    return "\n".join(rows)


def recipes_table() -> str:
    """Markdown table: every CraftConfig value a published recipe sets, at ε = 8/255, per objective."""
    from miue.objectives import OBJECTIVES

    recs = {n: o.published.values(8 / 255) for n, o in OBJECTIVES.items() if o.published}
    fields = list(dict.fromkeys(k for v in recs.values() for k in v))
    rows = ["| field | " + " | ".join(f"`{n}`" for n in recs) + " |", "|---|" + "---|" * len(recs)]
    for f in fields:
        fmt = _fmt if f.startswith(("alpha", "rem_eps", "rem_step")) else (
            lambda x: f"{x:g}" if isinstance(x, float) else _fmt(x))
        rows.append(f"| `{f}` | " + " | ".join(fmt(v[f]) if f in v else "(preset)" for v in recs.values()) + " |")
    return "\n".join(rows)


def _splice(text: str, name: str, table: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    a, b = text.index(start) + len(start), text.index(end)
    return text[:a] + "\n" + table + "\n" + text[b:]


def crafting_page() -> str:
    text = open(CRAFTING, encoding="utf-8").read()
    text = _splice(text, "config-table", config_table())
    text = _splice(text, "objectives-table", objectives_table())
    return _splice(text, "recipes-table", recipes_table())


def render() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width: fix it
    from miue.cli import build_parser

    parser = build_parser()
    parts = [INTRO, "## `miue`\n", "```text\n" + parser.format_help().rstrip() + "\n```\n"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        parts.append(f"## `miue {name}`\n")
        parts.append("```text\n" + p.format_help().rstrip() + "\n```\n")
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that docs/cli.md is current")
    args = ap.parse_args(argv)
    pages = {TARGET: render(), CRAFTING: crafting_page()}
    stale = [p for p, text in pages.items()
             if not os.path.exists(p) or open(p, encoding="utf-8").read() != text]
    if args.check:
        for p in stale:
            print(f"{os.path.relpath(p)} is out of date: run python scripts/gen_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for p, text in pages.items():
        with open(p, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {os.path.normpath(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
