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
200 PGD steps per image, the lowest MI-UE measured; against EM see the declared comparison in
[effectiveness.md](effectiveness.md)): about 4× the crafting time (`bash scripts/demo.sh --preset cpu`);
`--preset cnn` with the small-CNN schedule (cheapest; EM was lower there on one crafting seed). `--train-per-class 6000` crafts on all 60,000 images. With `--quick` the rounds
are cut to 2.

Datasets by name (`fashion-mnist`, `mnist`, `cifar10`, `cifar100`, `svhn`, `digits`) or by
path (an idx directory, a CIFAR python directory, an ImageFolder tree, `.npz`, SVHN `.mat`).
Image folders of any size: `--image-size`, `--resize-only` and `--skip-bad` on `craft` and
`protect` ([protect.md](protect.md)).
"""


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
    """Markdown table: every CraftConfig field, its value in each preset, and its meaning (the
    field's own documentation, ``doc`` in its metadata: miue/presets.py)."""
    import dataclasses

    from miue.presets import PRESETS, CraftConfig, make_config

    cfgs = {p: make_config(p).to_dict() for p in PRESETS}
    rows = ["| field | " + " | ".join(f"`{p}`" for p in PRESETS) + " | meaning (source value) |",
            "|---|" + "---|" * len(PRESETS) + "---|"]
    for f in dataclasses.fields(CraftConfig):
        rows.append(f"| `{f.name}` | " + " | ".join(_fmt(cfgs[p][f.name]) for p in PRESETS) + f" | {f.metadata['doc']} |")
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
