"""End-to-end crafting throughput: one MI-UE round (one surrogate epoch + K PGD steps over
every image) for the official-style baseline and for miue, side by side.

Variants
  baseline   benchmarks/baseline_official.py: the official code's way (fp32, DataLoader,
             B×B×D cosine broadcast, eager PGD ops, empty_cache after each step)
  paper      craft_fast(preset="paper"): same settings, miue's engine and fused ops
  fast       craft_fast(preset="fast"): + bf16 autocast, channels_last, torch.compile, CUDA graphs
  cnn        (CPU runs) craft_fast(preset="cnn"), the small-CNN schedule, beside the baseline
             written for the same preset
  cpu fp32 / cpu bf16   (CPU runs) the ``cpu`` preset's round (ResNet-8 surrogate, 10 PGD steps per
             image) in fp32 and with bf16 autocast, side by side, each with its CPU limit ratio:
             the PGD pass's image·steps/s against the bare surrogate's forward + backward to the
             input at that precision and batch (1.0 = the loss, PGD update and data movement are free)
Datasets: CIFAR-10 shapes (50,000 synthetic 3×32×32 uint8 images, 10 classes: no CIFAR on
these machines) and Fashion-MNIST (real, 60,000 1×28×28). Reported: images/s of the
training part and of the PGD part (image·steps/s), seconds per round, the projected time
of the 100-round paper schedule, peak GPU memory, speed-ups, FLOPs per round and the
achieved fraction of the card's measured bf16 matmul throughput; on GPU also a PGD batch
sweep, a flat-memory check with ImageNet-like 3×224×224 images streamed from host memory,
and a profile (top kernels; share of miue ops vs the network).

With ``--capture-check`` (benchmarks/gpu_check.sh runs it) it does something shorter: one
round of the ``paper`` preset and one of ``fast`` on 10,000 CIFAR-shaped images (``--n``), each
with and without CUDA graphs, and states for each run whether the PGD step's CUDA graph was
captured; it exits non-zero when a run fails, gives a δ outside the ε ball or non-finite, or a
capture that was asked for on a GPU did not happen. ``fast``'s one round includes compiling the
surrogate. ``--arch``, ``--pgd-steps`` and ``--no-compile`` shrink it for rehearsals on a CPU
(where CUDA graphs do not apply).

    python benchmarks/bench_craft.py            # GPU: everything; CPU: Fashion-MNIST, cnn and cpu presets
    python benchmarks/bench_craft.py --quick    # CI-sized CPU run (a 6,000-image subset)
    python benchmarks/bench_craft.py --n 20000  # CPU: a 20,000-image subset
    python benchmarks/bench_craft.py --capture-check --json out.json   # GPU: paper/fast x graphs on/off
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import torch

import miue
from miue.craft import craft_fast
from miue.models import build_model
from miue.presets import make_config

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from baseline_official import official_round  # noqa: E402


def _write(out: dict, args, to_markdown) -> None:
    """The results as JSON (``--json``) and as a Markdown table (``--md``), where asked."""
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(to_markdown(out))


def synthetic_cifar(n=50_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def fashion_mnist(n=None, seed=0):
    from miue.data import class_balanced_subset, load_dataset

    d = load_dataset("fashion-mnist", "train")
    if n:
        d = class_balanced_subset(d, n // 10, seed=seed)
    return torch.from_numpy(d.images), torch.from_numpy(d.labels)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device):
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def run_baseline(images, labels, preset, device, arch=None, pgd_batch=None):
    cfg = make_config(preset, **({"arch": arch} if arch else {}))
    C = int(labels.max()) + 1
    torch.manual_seed(0)
    model = build_model(cfg.arch, C, channels=images.shape[1], image_size=images.shape[2], normalize=True).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.rounds, eta_min=cfg.lr_min)
    delta = torch.zeros(images.shape, dtype=torch.float32, device=device)
    _reset_peak(device)
    t = official_round(model, opt, sched, images, labels, delta, round_index=1, rounds=cfg.rounds, eps=8 / 255,
                       alpha_start=cfg.alpha_start, alpha_end=cfg.alpha_end, pgd_steps=cfg.pgd_steps,
                       train_batch_size=cfg.train_batch_size, pgd_batch_size=pgd_batch or cfg.pgd_batch_size,
                       temperature=cfg.temperature, device=device, flip=cfg.flip)
    N = images.shape[0]
    return {"seconds": t["seconds"], "train_seconds": t["train_seconds"], "pgd_seconds": t["pgd_seconds"],
            "train_images_per_s": N / t["train_seconds"], "pgd_images_per_s": N * cfg.pgd_steps / t["pgd_seconds"],
            "peak_mib": _peak_mib(device), "rounds_total": cfg.rounds, "pgd_steps": cfg.pgd_steps}


def run_ours(images, labels, preset, device, arch=None, pgd_batch=None, warm_rounds=0, **extra):
    """Times the last of ``warm_rounds + 1`` rounds (the first ones absorb compilation)."""
    cfg = make_config(preset, **({"arch": arch} if arch else {}))
    kw = dict(preset=preset, device=device, progress=False, rounds=warm_rounds + 1, **extra)
    if arch:
        kw["arch"] = arch
    if pgd_batch:
        kw["batch_size"] = pgd_batch
    _reset_peak(device)
    t0 = time.perf_counter()
    r = craft_fast(images, labels, **kw)
    total = time.perf_counter() - t0
    h = r.history[-1]
    N = images.shape[0]
    pgd_s = N * cfg.pgd_steps / h["pgd_images_per_s"]
    train_s = h["seconds"] - pgd_s
    return {"seconds": h["seconds"], "train_seconds": train_s, "pgd_seconds": pgd_s,
            "train_images_per_s": h["train_images_per_s"], "pgd_images_per_s": h["pgd_images_per_s"],
            "peak_mib": _peak_mib(device), "rounds_total": cfg.rounds, "pgd_steps": cfg.pgd_steps,
            "first_rounds_seconds": total - h["seconds"] if warm_rounds else None}


def round_flops(images, labels, preset, device, arch=None):
    """FLOPs of one round: a training step and a PGD step counted on one batch, scaled to N."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = make_config(preset, **({"arch": arch} if arch else {}))
    C = int(labels.max()) + 1
    model = build_model(cfg.arch, C, channels=images.shape[1], image_size=images.shape[2], normalize=True).to(device)
    n = min(64, images.shape[0])
    x = images[:n].to(device).float() / 255
    y = labels[:n].to(device)
    with FlopCounterMode(display=False) as fc:
        model.train()
        torch.nn.functional.cross_entropy(model(x), y).backward()
    train = fc.get_total_flops() / n
    model.eval()
    model.requires_grad_(False)
    d = torch.zeros_like(x, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        f, _ = model(x + d, return_features=True)
        torch.autograd.grad(miue.supcon_loss(f.float(), y), d)
    pgd = fc.get_total_flops() / n
    N = images.shape[0]
    return {"train_flops_per_image": train, "pgd_flops_per_image_step": pgd,
            "round_flops": N * cfg.train_epochs * train + N * cfg.pgd_steps * pgd}


def surrogate_limit(images, labels, device, arch, amp, batch=512, reps=3):
    """The bare surrogate's forward + backward to the input (loss = sum of the features), in
    images/s, at the PGD batch and precision: the ceiling of a PGD pass on this machine."""
    C = int(labels.max()) + 1
    torch.manual_seed(0)
    model = build_model(arch, C, channels=images.shape[1], image_size=images.shape[2], normalize=True).to(device)
    model = model.to(memory_format=torch.channels_last).eval().requires_grad_(False)
    x = (images[:batch].to(device).float() / 255).contiguous(memory_format=torch.channels_last)

    def step():
        d = torch.zeros_like(x, requires_grad=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            f, _ = model(x + d, return_features=True)
        torch.autograd.grad(f.float().sum(), d)

    step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        step()
    _sync(device)
    return reps * x.shape[0] / (time.perf_counter() - t)


def bf16_peak_tflops(device):
    if device.type != "cuda":
        return None
    import triton.testing

    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=10, rep=50)
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def loss_agreement(images, labels, device, arch):
    """The baseline's loss and miue's on the same features (same inputs and weights)."""
    from miue.ops.reference import official_supcon_loss

    C = int(labels.max()) + 1
    torch.manual_seed(0)
    model = build_model(arch, C, channels=images.shape[1], image_size=images.shape[2], normalize=True).to(device).eval()
    x = images[:256].to(device).float() / 255
    y = labels[:256].to(device)
    with torch.no_grad():
        f, _ = model(x, return_features=True)
    a = official_supcon_loss(f.double(), y).item()
    b = miue.supcon_loss(f, y).item()
    return {"official": a, "miue": b, "relative_difference": abs(a - b) / abs(a)}


def profile_pgd(images, labels, device, preset):
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    n = min(4096, images.shape[0])
    craft_fast(images[:n], labels[:n], preset=preset, rounds=1, pgd_steps=1, device=device, progress=False)  # warm-up
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        craft_fast(images[:n], labels[:n], preset=preset, rounds=1, pgd_steps=2, device=device, progress=False)
    rows = []
    total = 0.0
    miue_time = 0.0
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        if evt.device_type is not None and str(evt.device_type).endswith("CUDA"):
            total += t
            if any(k in evt.key for k in ("supcon", "pgd", "normalize", "segment", "miue")):
                miue_time += t
            rows.append((t, evt.key[:90], evt.count))
    rows.sort(reverse=True)
    return {"top_kernels": [{"us": t, "name": k, "calls": c} for t, k, c in rows[:12]],
            "miue_kernel_share": miue_time / total if total else None}


def _k(n):
    """An image count as the data sets' names give it: 10000 -> "10k", 256 -> "0.256k"."""
    return f"{n / 1000:g}k"


def _graph_status(result, device, asked, failures, captures):
    """What became of ``cuda_graphs`` in one run: "off", "n/a (...)", "captured", "failed (...)"
    or "not used (...)". The engine's own record (config["cuda_graphs_status"]) when it has
    one, else what was observed (capture-failure warnings, GraphedPGDStep constructions)."""
    if not asked:
        return "off"
    if device.type != "cuda":
        return "n/a (CUDA graphs are CUDA-only; the run was eager)"
    status = result.config.get("cuda_graphs_status") if result is not None else None
    if status:
        return status
    if failures:
        return "failed (" + failures[0] + ")"
    return "captured" if captures else "not used (no full PGD batch, or a step that cannot be captured)"


def capture_check(args, device, meta):
    """One round of paper and fast, with and without CUDA graphs: times, and whether capture worked."""
    import logging
    import warnings

    from miue.craft import attack as _attack  # where the engine builds its CUDA graphs

    n = args.n or 10_000
    x, y = synthetic_cifar(n)
    name = f"cifar10-shapes {_k(n)}"
    rows, problems = [], []
    out = {"meta": {**meta, "mode": "capture-check", "n": n}, "results": rows}

    def save():  # after every run, so that a run cut short still leaves the earlier ones
        _write(out, args, capture_markdown)

    class Failures(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            if "CUDA-graph capture" in record.getMessage():
                self.messages.append(record.getMessage())

    for preset, graphs in (("paper", False), ("paper", True), ("fast", True), ("fast", False)):
        kw = dict(preset=preset, rounds=1, device=device, progress=False, cuda_graphs=graphs, seed=0)
        if args.arch:
            kw["arch"] = args.arch
        if args.pgd_steps:
            kw["pgd_steps"] = args.pgd_steps
        if args.no_compile:
            kw["compile"] = False
        cfg = make_config(preset, **({"arch": args.arch} if args.arch else {}))
        variant = f"{preset}, graphs {'on' if graphs else 'off'}"
        row = {"dataset": name, "variant": variant, "preset": preset, "cuda_graphs": graphs,
               "compile": bool(cfg.compile and not args.no_compile), "arch": args.arch or cfg.arch}
        captures = []
        original = _attack.GraphedPGDStep  # (an AttributeError, not a silent skip, if it moves again)

        class Counted(original):
            def __init__(self, *a, _captures=captures, **k):
                super().__init__(*a, **k)
                _captures.append(1)

        _attack.GraphedPGDStep = Counted
        handler = Failures()
        logging.getLogger("miue.craft").addHandler(handler)
        _reset_peak(device)
        t0 = time.perf_counter()
        result = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = craft_fast(x, y, **kw)
            _sync(device)
            handler.messages += [str(w.message) for w in caught if "CUDA-graph capture" in str(w.message)]
        except Exception as exc:  # noqa: BLE001 - record it and go on to the next run
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finally:
            logging.getLogger("miue.craft").removeHandler(handler)
            _attack.GraphedPGDStep = original
        row["total_seconds"] = time.perf_counter() - t0
        if result is not None:
            h = result.history[-1]
            delta = result.delta.float()
            row.update(seconds=h["seconds"], train_images_per_s=h["train_images_per_s"],
                       pgd_images_per_s=h["pgd_images_per_s"], objective_loss=h.get("objective_loss"),
                       peak_mib=_peak_mib(device), pgd_steps=result.config["pgd_steps"],
                       amp=result.config.get("amp"), delta_max=delta.abs().max().item(),
                       round_includes_compile=row["compile"])
            if not torch.isfinite(delta).all() or row["delta_max"] > result.config["eps"] + 1e-6:
                row["error"] = f"δ not finite or outside the ε ball (max |δ| = {row['delta_max']:.5f})"
        row["graph_capture"] = _graph_status(result, device, graphs, handler.messages, captures)
        if "error" in row:
            problems.append(f"{variant}: {row['error']}")
        elif graphs and device.type == "cuda" and row["graph_capture"] != "captured":
            problems.append(f"{variant}: CUDA-graph capture {row['graph_capture']}")
        rows.append(row)
        save()
        if "error" in row:
            print(f"{name:22} {variant:17} ERROR {row['error']}", flush=True)
        else:
            print(f"{name:22} {variant:17} round {row['seconds']:8.2f} s{' (incl. compile)' if row['compile'] else ''}"
                  f"  train {row['train_images_per_s']:8.0f} img/s  PGD {row['pgd_images_per_s']:9.0f} img·step/s  "
                  f"peak {row['peak_mib'] or 0:7.0f} MiB  capture: {row['graph_capture']}", flush=True)
    summary = "; ".join(f"{r['variant']}: {r['graph_capture']}" for r in rows if r["cuda_graphs"])
    print(f"# capture: {summary}", flush=True)
    out["meta"]["problems"] = problems
    save()
    if problems:
        print("# PROBLEMS: " + " | ".join(problems), flush=True)
    return out


def capture_markdown(out):
    m = out["meta"]
    lines = [f"# bench_craft --capture-check: {m['device']}", "",
             f"{m['date']}; torch {m['torch']}, triton {m['triton']}, CUDA {m['cuda']}; one round each on {m['n']:,} "
             "CIFAR-shaped images", "",
             "| variant | s / round | train img/s | PGD img·step/s | peak MiB | CUDA graph |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in out["results"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | error: {r['error']} | | | | {r.get('graph_capture', '-')} |")
            continue
        lines.append(f"| {r['variant']} | {_f(r.get('seconds'), '.2f')}{' (incl. compile)' if r.get('compile') else ''} | "
                     f"{_f(r.get('train_images_per_s'), '.0f')} | {_f(r.get('pgd_images_per_s'), '.0f')} | "
                     f"{_f(r.get('peak_mib'), '.0f')} | {r['graph_capture']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized CPU run")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--capture-check", action="store_true",
                   help="one round of paper and of fast, each with and without CUDA graphs (default 10,000 images)")
    p.add_argument("--arch", default=None, help="--capture-check: override the presets' surrogate (CPU rehearsals)")
    p.add_argument("--pgd-steps", type=int, default=None, help="--capture-check: override the PGD steps per round")
    p.add_argument("--no-compile", action="store_true", help="--capture-check: fast without torch.compile")
    p.add_argument("--n", type=int, default=None,
                   help="GPU: images per dataset (default: all 50k / 60k); a round's time is reported for this N "
                        "and the per-round and 100-round projections are scaled to the full dataset by throughput")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    # every variant, the official-style baseline included, under the allocator setting miue's
    # engine uses on the CPU (the engine would set it on its first run, after the baseline's)
    from miue._malloc import tune_cpu_allocator

    malloc_tuned = tune_cpu_allocator() if not gpu else None
    from miue.env import environment

    meta = {**environment(), "malloc_tuned": malloc_tuned,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if gpu else (platform.processor() or platform.machine()),
            "cuda": torch.version.cuda, "quick": args.quick, "bf16_matmul_tflops": bf16_peak_tflops(device)}
    print(f"# bench_craft on {meta['device']} (torch {meta['torch']}, triton {meta['triton']})", flush=True)
    if args.capture_check:
        return capture_check(args, device, meta)
    rows = []

    def record(dataset, variant, res, flops=None, base=None):
        row = {"dataset": dataset, "variant": variant, **res}
        full_n = 60_000 if dataset.startswith("fashion") else 50_000
        n_here = round(float(dataset.split()[-1].rstrip("k")) * 1000) if dataset.split()[-1].endswith("k") else full_n
        scale = full_n / n_here  # throughput is per image: scale a subset's round to the whole dataset
        row["projected_seconds_per_full_round"] = res["seconds"] * scale
        row["projected_hours_full_schedule"] = res["seconds"] * scale * res["rounds_total"] / 3600
        if base:
            row["speedup_vs_baseline"] = base["seconds"] / res["seconds"]
        if flops:
            row["round_tflop"] = flops["round_flops"] / 1e12
            row["achieved_tflops"] = flops["round_flops"] / res["seconds"] / 1e12
            if meta["bf16_matmul_tflops"]:
                row["fraction_of_bf16_peak"] = row["achieved_tflops"] / meta["bf16_matmul_tflops"]
        rows.append(row)
        print(f"{dataset:28} {variant:9} round {res['seconds']:8.2f} s  train {res['train_images_per_s']:9.0f} img/s  "
              f"PGD {res['pgd_images_per_s']:9.0f} img·step/s  peak {res['peak_mib'] or 0:8.0f} MiB  "
              f"{'x%.1f vs baseline' % row['speedup_vs_baseline'] if 'speedup_vs_baseline' in row else ''}", flush=True)

    if gpu:
        nc, nf = (args.n, args.n) if args.n else (50_000, None)
        cases = [(f"cifar10-shapes {_k(nc)}", synthetic_cifar(nc), ("paper", "fast"), None),
                 (f"fashion-mnist {_k(nf or 60_000)}", fashion_mnist(nf), ("paper", "fast"), None)]
    else:
        n = 6000 if args.quick else args.n
        cases = [(f"fashion-mnist {_k(n or 60_000)}", fashion_mnist(n), ("cnn",), None)]
    if not gpu:  # the cpu preset's round in fp32 and in bf16 autocast, with the CPU limit ratio of each
        from miue._amp import cpu_bf16_reason

        native, meta["cpu_bf16"] = cpu_bf16_reason()
        name, (x, y) = cases[0][0], cases[0][1]
        arch = make_config("cpu").arch
        fp32 = None
        for amp in (False, True):
            res = run_ours(x, y, "cpu", device, amp=amp)
            bare = surrogate_limit(x, y, device, arch, amp)
            res["bare_surrogate_images_per_s"] = bare
            res["cpu_limit_ratio"] = res["pgd_images_per_s"] / bare
            res["amp_effective"] = bool(amp and native)
            record(name, "cpu bf16" if amp else "cpu fp32", res, base=fp32)
            print(f"{'':28} {'':9} bare surrogate fwd+bwd {bare:9.0f} img/s: PGD pass at "
                  f"{res['cpu_limit_ratio']:.2f} of it", flush=True)
            if fp32 is None:
                fp32 = res
    for name, (x, y), presets, arch in cases:
        for preset in presets:
            a = arch or make_config(preset).arch
            flops = round_flops(x, y, preset, device, a)
            base = None
            if not args.skip_baseline and preset != "fast":
                base = run_baseline(x, y, preset, device, arch=a)
                record(name, "baseline" + ("" if preset == "paper" else f"({preset})"), base, flops)
                meta.setdefault("loss_agreement", {})[name] = loss_agreement(x, y, device, a)
            if preset == "fast" and rows and rows[-1]["dataset"] == name:
                base = next(r for r in rows if r["dataset"] == name and r["variant"] == "baseline")
            ours = run_ours(x, y, preset, device, arch=a, warm_rounds=1 if preset == "fast" else 0)
            record(name, preset, ours, flops, base)
    if gpu:
        x, y = synthetic_cifar(min(20_000, args.n or 20_000))
        for bs in (256, 512, 1024, 2048, 4096):
            r = run_ours(x, y, "fast", device, pgd_batch=bs, warm_rounds=1)
            rows.append({"dataset": "cifar10-shapes 20k", "variant": f"fast, PGD batch {bs}", **r})
            print(f"PGD batch {bs:5}: {r['pgd_images_per_s']:9.0f} img·step/s", flush=True)
        for n in ((500, 1000, 2000) if args.n else (1000, 2000, 4000)):
            g = torch.Generator().manual_seed(0)
            xi = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=g)
            yi = torch.randint(0, 100, (n,), generator=g)
            r = run_ours(xi, yi, "fast", device, pgd_batch=128, storage="host", pgd_steps=1)
            rows.append({"dataset": f"imagenet-like 224px N={n} (host storage)", "variant": "fast", **r})
            print(f"224px N={n}: peak {r['peak_mib']:.0f} MiB", flush=True)
        meta["profile"] = profile_pgd(*synthetic_cifar(4096), device, "fast")
    out = {"meta": meta, "results": rows}
    _write(out, args, markdown)
    return out


def _f(v, fmt):
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def markdown(out):
    m = out["meta"]
    lines = [f"# bench_craft: {m['device']}", "", f"{m['date']}; torch {m['torch']}, triton {m['triton']}, CUDA {m['cuda']}"
             + (f"; bf16 matmul {m['bf16_matmul_tflops']:.0f} TFLOP/s" if m.get("bf16_matmul_tflops") else ""), "",
             "| data | variant | s / round | train img/s | PGD img·step/s | peak MiB | full-schedule h | vs baseline | TFLOP/s | CPU limit ratio |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in out["results"]:
        lines.append(f"| {r['dataset']} | {r['variant']} | {_f(r.get('seconds'), '.2f')} | {_f(r.get('train_images_per_s'), '.0f')} | "
                     f"{_f(r.get('pgd_images_per_s'), '.0f')} | {_f(r.get('peak_mib'), '.0f')} | "
                     f"{_f(r.get('projected_hours_full_schedule'), '.2f')} | {_f(r.get('speedup_vs_baseline'), '.1f')} | "
                     f"{_f(r.get('achieved_tflops'), '.2f')} | {_f(r.get('cpu_limit_ratio'), '.2f')} |")
    lines += ["", "Full-schedule hours: the preset's rounds at this round time, scaled to the whole data set by "
              "throughput. 'vs baseline' of the cpu bf16 row is its speed-up over the cpu fp32 row. CPU limit ratio: "
              "the PGD pass's image·steps/s over the bare surrogate's forward + backward at the same precision."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result["meta"].get("problems") else 0)
