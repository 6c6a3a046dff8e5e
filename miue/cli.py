"""Command line: ``miue info | craft | protect | evaluate | demo`` (also ``python -m miue ...``).

Exit status 0 on success; on failure a one-line reason on stderr and status 1 (2 for usage
errors, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def budget(text: str) -> float:
    """An L-inf budget as written in papers, ``8/255``, or as a float, ``0.0314``."""
    num, slash, den = text.partition("/")
    try:
        value = float(num) / float(den) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a float or a fraction such as 8/255, got {text!r}") from None
    if not (0 < value <= 1):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must lie in (0, 1] (in [0, 1] pixel units, e.g. 8/255), got {text!r}")
    return value


def _cmd_info(args) -> int:
    from miue.env import environment

    info = environment()
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            print(f"{k:22} {v}")
    return 0


def _folder_opts(args) -> dict:
    opts = {}
    if getattr(args, "image_size", None) is not None:
        opts["image_size"] = args.image_size
    if getattr(args, "resize_only", False):
        if "image_size" not in opts:
            raise ValueError("--resize-only needs --image-size N")
        opts["resize"] = "stretch"
    if getattr(args, "skip_bad", False):
        opts["skip_bad"] = True
    return opts


def _load(dataset: str, split: str, subset: int | None, seed: int, folder_opts: dict | None = None):
    from miue.data import class_balanced_subset, load_dataset

    data = load_dataset(dataset, split, **(folder_opts or {}))
    if subset:
        data = class_balanced_subset(data, subset, seed=seed)
    return data


def _init_distributed(device, world: int):
    """Under torchrun (WORLD_SIZE > 1): start the default process group (NCCL on GPUs, gloo
    on the CPU) and pick this rank's device. Returns (rank, device, started_here)."""
    import torch
    import torch.distributed as dist

    if world <= 1 or not dist.is_available():
        return 0, device, False
    started = False
    use_cuda = (device is None or str(device).startswith("cuda")) and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        started = True
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device is None:
        device = "cpu"
    return dist.get_rank(), device, started


def _cmd_craft(args) -> int:

    if args.native_size and not args.png_dir:
        raise ValueError("--native-size applies to the released PNGs: pass --png-dir too")
    opts = {}
    if args.arch:
        opts["arch"] = args.arch
    if args.train_steps is not None:
        opts["train_steps"] = args.train_steps
    if args.amp is not None:
        opts["amp"] = args.amp == "on"
    craft_opts = dict(eps=args.eps, preset=args.preset, objective=args.objective, recipe=args.recipe,
                      rounds=args.rounds, pgd_steps=args.pgd_steps, batch_size=args.batch_size, backend=args.backend,
                      classwise=args.classwise, seed=args.seed, extend=args.extend,
                      release_rounding=args.release_rounding, delta_dtype=args.delta_dtype, **opts)
    from miue.data import image_folder_split, is_image_folder

    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's
    if is_image_folder(args.dataset) and not args.per_class and world <= 1:
        # an image folder is the data owner's job, one route for all: protect() decodes it once into a
        # memory-mapped cache (in --checkpoint-dir, else a temporary folder removed afterwards), keeps δ
        # memory-mapped beside the checkpoints, writes the mirrored release when --png-dir is given, and
        # records the folder's root as the dataset (so `miue evaluate` finds its test split)
        import tempfile

        from miue.data.protect import protect

        with tempfile.TemporaryDirectory(prefix="miue-craft-") as tmp:
            work = args.checkpoint_dir or tmp
            summary = protect(image_folder_split(args.dataset, "train"), args.png_dir, work_dir=work,
                              checkpoint_dir=work, result_path=args.out, device=args.device,
                              native_size=args.native_size, overwrite=args.overwrite, progress=not args.quiet,
                              dataset=args.dataset, **_folder_opts(args), **craft_opts)
        if args.png_dir:
            _print_release(args.png_dir, summary["n_files"], summary["n_skipped"])
        _print_result(summary["result"], summary["n_images"], args, summary["last_round"])
        return 0

    rank, device, started = _init_distributed(args.device, world)
    try:
        data = _load(args.dataset, "train", args.per_class, args.seed, _folder_opts(args))
        from miue.craft import craft_fast

        result = craft_fast(data.images, data.labels, device=device, checkpoint_dir=args.checkpoint_dir,
                                 progress=not args.quiet and rank == 0, **craft_opts)
        if rank != 0:  # every rank holds the gathered result; rank 0 writes it
            return 0
        result.config["dataset"] = os.path.abspath(args.dataset) if is_image_folder(args.dataset) else args.dataset
        result.config["classes"] = data.classes
        path = result.save(args.out)
        if args.png_dir and data.source is not None:  # an image folder: mirror its names, with a manifest
            from miue.data.release import write_release

            m = write_release(args.png_dir, data.source, result.images, result.labels, data.classes, eps=args.eps,
                              config=result.config, delta=result.delta, native_size=args.native_size,
                              overwrite=args.overwrite, progress=not args.quiet)
            _print_release(args.png_dir, m["n_files"], m["n_skipped"])
        elif args.png_dir:
            result.export_png(args.png_dir, class_names=data.classes)
        _print_result(path, len(result.labels), args, result.history[-1] if result.history else {})
        return 0
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _print_release(png_dir: str, n_files: int, n_skipped: int) -> None:
    print(f"wrote {n_files} released images under {png_dir} (manifest.json"
          + (f"; {n_skipped} source paths skipped, listed there" if n_skipped else "") + ")")


def _print_result(path: str, n: int, args, last: dict) -> None:
    print(f"wrote {path}: {n} images, eps {args.eps:.5f}, objective {args.objective}"
          + (f", final objective loss {last['objective_loss']:.4f}" if "objective_loss" in last else ""))


def _cmd_protect(args) -> int:
    from miue.data.protect import protect

    opts = {k: getattr(args, k) for k in ("rounds", "pgd_steps", "batch_size", "train_steps", "arch", "backend")
            if getattr(args, k) is not None}
    if args.amp is not None:
        opts["amp"] = args.amp == "on"
    folder = _folder_opts(args)
    summary = protect(args.src, args.dst, preset=args.preset, objective=args.objective, recipe=args.recipe, eps=args.eps,
                      native_size=args.native_size, work_dir=args.work_dir, overwrite=args.overwrite,
                      result_path=args.result, device=args.device, seed=args.seed, progress=not args.quiet,
                      workers=args.workers, **folder, **opts)
    sec = summary["seconds"]
    c, h, w = summary["working_shape"]
    print(f"protected {summary['n_files']} images of {len(summary['classes'])} classes from {args.src}")
    print(f"  release:   {summary['released']}/ ({'original sizes' if args.native_size else f'{w}x{h}'}, PNG, "
          f"mirrored names)")
    print(f"  manifest:  {summary['manifest']}" + (f" ({summary['n_skipped']} source paths skipped, listed there)"
                                                  if summary["n_skipped"] else ""))
    print(f"  work dir:  {summary['work_dir']} (decoded clean images and checkpoints: private, delete when done)")
    if summary["result"]:
        print(f"  result:    {summary['result']} (for miue evaluate)")
    print(f"  time:      decode {sec['decode']:.0f} s, craft {sec['craft']:.0f} s, release {sec['release']:.0f} s")
    return 0


def _cmd_evaluate(args) -> int:
    from miue.craft import CraftResult
    from miue.data import load_dataset
    from miue.evaluation.victims import evaluate

    poisons = CraftResult.load(args.poisons)
    dataset = args.dataset or poisons.config.get("dataset")
    if not dataset:
        raise ValueError("the poisons file does not name its dataset; pass --dataset")
    test = load_dataset(dataset, "test")
    clean = None
    if args.poison_ratio < 1:
        train = load_dataset(dataset, "train")
        if train.images.shape[0] != poisons.images.shape[0]:
            raise ValueError("--poison-ratio < 1 needs poisons crafted on the whole training set")
        clean = train.images
    res = evaluate(poisons.images, poisons.labels, test.images, test.labels, arch=args.arch, epochs=args.epochs,
                   preset=args.preset, defense=args.defense, at_eps=args.at_eps, poison_ratio=args.poison_ratio,
                   clean_images=clean, seed=args.seed, device=args.device, progress=not args.quiet,
                   optimizer=args.optimizer, augment=None if args.augment is None else args.augment == "on")
    print(f"clean test accuracy of a {res.config['arch']} victim trained on {args.poisons}"
          + (f" with defense {args.defense}" if args.defense else "") + f": {res.test_acc:.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res.to_dict(), fh, indent=1)
    return 0


def _cmd_demo(args) -> int:
    from miue.demo import run_demo

    run_demo(out_dir=args.out_dir, quick=args.quick, device=args.device, progress=not args.quiet, seed=args.seed,
             methods=args.methods, preset=args.preset, train_per_class=args.train_per_class,
             workers=args.workers if args.workers is not None else min(2, os.cpu_count() or 1))
    return 0


def _add_folder_args(s) -> None:
    s.add_argument("--image-size", type=int, metavar="N",
                   help="image folders: resize the shorter side to N and keep the central NxN (torchvision Resize(N) + "
                        "CenterCrop(N), bilinear, antialiased); needed when the images differ in size")
    s.add_argument("--resize-only", action="store_true",
                   help="with --image-size: resize the whole image to NxN instead (aspect ratio not kept, no crop)")
    s.add_argument("--skip-bad", action="store_true",
                   help="image folders: leave out files that cannot be decoded (listed in the manifest) instead of stopping")


def _objective_help() -> str:
    from miue.objectives import OBJECTIVES

    return "what δ optimises (default miue): " + "; ".join(f"{o.name}: {o.summary}" for o in OBJECTIVES.values())


def _add_crafting_args(s, default_preset: str) -> None:
    """The crafting options `miue craft` and `miue protect` share, defined once."""
    from miue.models import ARCHS
    from miue.ops._backend import BACKENDS
    from miue.presets import OBJECTIVES, PRESETS, RECIPES

    s.add_argument("--preset", choices=PRESETS, default=default_preset,
                   help=f"crafting preset (default {default_preset}; docs/crafting.md says what each costs and does)")
    s.add_argument("--objective", choices=OBJECTIVES, default="miue", help=_objective_help())
    from miue.objectives import OBJECTIVES as RECORDS

    published = [o.name for o in RECORDS.values() if o.published is not None]
    s.add_argument("--recipe", choices=RECIPES, default="published",
                   help=f"published (default): {', '.join(published)} run their authors' recipe on the preset's "
                        "surrogate; matched: the objective's loss on the preset's (MI-UE's) schedule")
    s.add_argument("--eps", type=budget, default=8 / 255,
                   help="L-inf budget in [0,1] units, a float or a fraction such as 8/255 (default 8/255)")
    s.add_argument("--rounds", type=int, help="override the preset's number of rounds")
    s.add_argument("--pgd-steps", type=int, help="override the preset's PGD steps per round")
    s.add_argument("--batch-size", type=int, help="PGD batch size")
    s.add_argument("--train-steps", type=int,
                   help="surrogate SGD steps per round (0: one epoch of the data per round; default: the preset's)")
    s.add_argument("--arch", choices=ARCHS, help="surrogate architecture (default: the preset's)")
    s.add_argument("--amp", choices=("on", "off"),
                   help="bf16 autocast of the surrogate (default: the preset's: on for demo, cpu and fast); runs "
                        "where native (CUDA, or a CPU with AMX / avx512_bf16), else fp32 with a warning")
    s.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    s.add_argument("--backend", choices=BACKENDS, help="force an ops backend")
    s.add_argument("--seed", type=int, default=0, help="crafting seed (default 0)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from miue.data import DATASETS
    from miue.evaluation.defenses import DEFENSES
    from miue.evaluation.defenses import REGISTRY as DEFENSE_REGISTRY
    from miue.demo import DEFAULT_METHODS, DEMO_PRESETS, QUICK, QUICK_TEXT, TRAIN_PER_CLASS
    from miue.demo import NAMES as DEMO_NAMES
    from miue.models import ARCHS
    from miue._quantize import ROUNDINGS
    from miue.craft.store import DELTA_DTYPES
    from miue.evaluation.victims import EVAL_PRESETS, OPTIMIZERS

    p = argparse.ArgumentParser(prog="miue", description="Fast MI-UE unlearnable examples (crafting and evaluation).")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="backends, devices and versions")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(fn=_cmd_info)

    s = sub.add_parser("craft", help="craft unlearnable examples for a dataset and save them")
    s.add_argument("dataset", help=", ".join(DATASETS) + ", or a path "
                                   "(idx directory, CIFAR directory, ImageFolder tree, .npz, .mat)")
    s.add_argument("--out", required=True, help="result file (.npz or .pt; without a suffix .npz is added)")
    _add_crafting_args(s, default_preset="paper")
    s.add_argument("--classwise", action="store_true", help="one perturbation per class")
    _add_folder_args(s)
    s.add_argument("--per-class", type=int, help="use a class-balanced subset with this many images per class")
    s.add_argument("--delta-dtype", choices=DELTA_DTYPES)
    s.add_argument("--release-rounding", choices=ROUNDINGS, default="round")
    s.add_argument("--checkpoint-dir", help="checkpoint here every round; rerun with the same directory to resume (an image "
                                            "folder is then decoded once into a memory-mapped cache there, and δ kept "
                                            "memory-mapped beside the checkpoints)")
    s.add_argument("--extend", action="store_true",
                   help="with --checkpoint-dir holding a run with fewer rounds: continue it to --rounds "
                        "(the schedules change at the checkpoint's round) instead of refusing it")
    s.add_argument("--png-dir", help="also export the released images as PNGs: for an image folder, a tree mirroring "
                                     "its names with manifest.json; otherwise <class>/<index>.png")
    s.add_argument("--native-size", action="store_true",
                   help="with --png-dir and an image folder: release every image at its original size (δ upsampled)")
    s.add_argument("--overwrite", action="store_true", help="with --png-dir: write over an existing release")
    s.set_defaults(fn=_cmd_craft)

    s = sub.add_parser("protect", help="protect an image folder: craft, then write a tree mirroring its names "
                                       "with manifest.json", description=(
        "Protect the class folders of SRC (SRC/<class>/[<sub>/]<image>, any size, JPEG/PNG/...) and release them "
        "as DST/<class>/[<sub>/]<name>.png with DST/manifest.json (source and released paths, labels, sizes, "
        "SHA-256 of both files, eps, the configuration and its hash, skipped files). The images are decoded once "
        "into a memory-mapped cache in the work folder, and crafting checkpoints there: rerun the same command "
        "to resume."))
    s.add_argument("src", help="source folder: one sub-folder per class")
    s.add_argument("dst", help="release folder (new or empty; never inside SRC)")
    _add_crafting_args(s, default_preset="demo")
    _add_folder_args(s)
    s.add_argument("--native-size", action="store_true",
                   help="release every image at its original size: δ, crafted at the working size, is upsampled "
                        "bilinearly onto the original (each pixel stays within eps of it)")
    s.add_argument("--work-dir", help="decoded cache and checkpoints (default: DST.miue-work beside DST)")
    s.add_argument("--overwrite", action="store_true", help="write over an existing release in DST")
    s.add_argument("--result", help="also save the result file (.npz/.pt, for miue evaluate)")
    s.add_argument("--workers", type=int, help="image decoding processes (default: one per core, up to 8)")
    s.set_defaults(fn=_cmd_protect)

    s = sub.add_parser("evaluate", help="train a victim on a poisons file and report its clean test accuracy")
    s.add_argument("poisons", help="a result file written by `miue craft` (.npz or .pt)")
    s.add_argument("--dataset", help="dataset of the test split (default: the one recorded in the poisons file)")
    s.add_argument("--preset", choices=tuple(EVAL_PRESETS), default="paper",
                   help="victim recipe: paper (ResNet-18, SGD, 200 epochs), quick (small CNN, SGD, crop + flip), "
                        "adam (small CNN, Adam, no augmentation)")
    s.add_argument("--arch", choices=ARCHS, help="victim architecture (default: the preset's)")
    s.add_argument("--optimizer", choices=OPTIMIZERS, help="override the preset's optimizer")
    s.add_argument("--augment", choices=("on", "off"), help="override the preset's crop + flip")
    s.add_argument("--epochs", type=int)
    s.add_argument("--defense", choices=DEFENSES, metavar="DEFENSE",
                   help="train the victim under a defense: " + "; ".join(
                       f"{d.name} ({d.kind}): {d.summary}" for d in DEFENSE_REGISTRY.values()))
    s.add_argument("--at-eps", type=budget, default=4 / 255,
                   help="adversarial-training eps, a float or a fraction such as 4/255 (default 4/255)")
    s.add_argument("--poison-ratio", type=float, default=1.0)
    s.add_argument("--json", help="write the full result as JSON here")
    s.add_argument("--device")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=_cmd_evaluate)

    s = sub.add_parser("demo", help="craft MI-UE, EM (published, and on MI-UE's schedule) and random noise (or "
                                    "--methods) on 10,000 Fashion-MNIST images and show that victims of two "
                                    "training recipes, and one on the JPEG-10 release, fail")
    s.add_argument("--out-dir", default="demo_out", help="where the report, figure and poisons go (default demo_out)")
    s.add_argument("--methods", nargs="+", choices=list(DEMO_NAMES), default=list(DEFAULT_METHODS), metavar="METHOD",
                   help="what to craft on the preset's surrogate and compare: an objective with its published recipe, "
                        "or OBJECTIVE-matched (its loss on the preset's schedule); any of %(choices)s (default: "
                        + " ".join(DEFAULT_METHODS) + ", which keeps the full demo within 15 minutes on 2 CPU "
                        "cores; rem's published recipe takes hours)")
    s.add_argument("--quick", action="store_true", help=f"a shortened configuration (CI): {QUICK_TEXT}")
    s.add_argument("--preset", choices=DEMO_PRESETS, default="demo",
                   help="crafting preset for every method (default demo: a ResNet-8 surrogate, 50 PGD steps per "
                        "image, bf16 where the CPU has it; cpu: the same surrogate at 200 steps, about 4x the "
                        "crafting time; cnn: the small-CNN 25-step schedule, cheaper; EM was lower than MI-UE "
                        "with it on one crafting seed, an untested difference)")
    s.add_argument("--train-per-class", type=int, default=None,
                   help=f"class-balanced training subset per class (default {TRAIN_PER_CLASS}, i.e. 10,000 images; "
                        "6000 = all 60,000; --quick: " + str(QUICK["train_per_class"]) + ")")
    s.add_argument("--workers", type=int,
                   help="run the crafts and victims in this many processes at once, each with cores/N threads "
                        "(default: 2 on 2 or more cores, else 1)")
    s.add_argument("--device")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=_cmd_demo)
    return p


def entry() -> int:
    """The ``miue`` command (console script and ``python -m miue``): the process is the
    command's own, so it opts in to the glibc malloc tuning (miue/_malloc.py; its workers
    inherit it; ``MIUE_MALLOC_TUNING=0`` still turns it off), then runs :func:`main`."""
    from miue._malloc import opt_in_for_this_process

    opt_in_for_this_process()
    return main()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("miue: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one-line reason, non-zero status
        if os.environ.get("MIUE_DEBUG"):
            raise
        from miue._io import first_line

        msg = first_line(exc, 500)
        print(f"miue {args.command}: error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
