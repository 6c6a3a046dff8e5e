"""Benchmark the miue ops side by side with the ways PyTorch code usually computes them.

Variants per op (where they apply):
  official  the formulation of the official MI-UE code (B×B×D cosine broadcast; separate eager PGD ops)
  eager     a well-written eager PyTorch version (miue.reference.eager_supcon_loss, ...)
  compile   torch.compile of the eager version
  triton    miue, triton backend
  cpp       miue, cpp backend (C++/OpenMP on CPU, CUDA kernels on GPU)

On a GPU each variant is timed with triton.testing.do_bench (median and 20/80% quantiles)
and, when it can be captured, with do_bench_cudagraph; peak memory is measured for one
call. On the CPU (for debugging the script) only official/eager/cpp run, with a wall-clock
timer. Prints a table and writes JSON (and optionally a markdown table).

    python benchmarks/bench_ops.py                 # full, on the GPU if there is one
    python benchmarks/bench_ops.py --quick         # small sizes (CPU-friendly)
    python benchmarks/bench_ops.py --json out.json --md out.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import miue
from miue import reference as R


# --------------------------------------------------------------------------- timing


def bench_cpu(fn, min_time=1.0, max_reps=50):
    fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - t_start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return statistics.median(times), q[1], q[7]


def bench_gpu(fn):
    import triton.testing

    med, lo, hi = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    graph = None
    try:
        graph = triton.testing.do_bench_cudagraph(fn, rep=100)
    except Exception as exc:  # not capturable (e.g. a host sync inside)
        graph = f"not capturable: {type(exc).__name__}"
    return med, lo, hi, graph


def peak_memory_mb(fn, device):
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbps(device, nbytes=2 * 2**30):
    """Device-to-device copy bandwidth (bytes read + written per second)."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    import triton.testing

    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=50)
    return 2 * nbytes / (ms * 1e-3) / 1e9


# --------------------------------------------------------------------------- variants


def official_pgd_(delta, grad, clean_f, alpha, eps):
    """The PGD update as the official code writes it: separate eager ops on fp32 images."""
    delta.data = delta.data - alpha * grad.sign()
    delta.data = torch.clamp(delta.data, -eps, eps)
    delta.data = torch.clamp(clean_f + delta.data, 0, 1) - clean_f
    return delta


def eager_pgd_(delta, grad, clean_u8, alpha, eps):
    c = clean_u8.float().div_(255.0)
    delta.sub_(grad.sign(), alpha=alpha).clamp_(-eps, eps)
    torch.clamp(c + delta, 0, 1, out=delta)
    return delta.sub_(c)


def eager_grouped_normalize(f, y, C):
    z = F.normalize(f, dim=1)
    s = torch.zeros(C, f.shape[1], dtype=torch.float32, device=f.device).index_add_(0, y, z.float())
    n = torch.bincount(y, minlength=C)
    return z, s, n


def eager_intra(f, y, C):
    z = F.normalize(f, dim=1).float()
    s = torch.zeros(C, f.shape[1], dtype=torch.float32, device=f.device).index_add_(0, y, z)
    n = torch.zeros(C, dtype=torch.float32, device=f.device).index_add_(0, y, torch.ones_like(y, dtype=torch.float32))
    pairs = (n * (n - 1)).sum()
    return -((s * s).sum() - n.sum()) / pairs


def fwd_bwd(loss_fn, f):
    def run():
        x = f.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(x), x)
        return g

    return run


# --------------------------------------------------------------------------- cases


def supcon_case(device, B, D, C, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    f = torch.randn(B, D, generator=g).to(device=device, dtype=dtype)
    y = torch.randint(0, C, (B,), generator=g).to(device)
    official_bytes = B * B * D * 4 * 6  # broadcast inputs, product, and what autograd saves
    budget = (torch.cuda.get_device_properties(device).total_memory * 0.5) if device.type == "cuda" else 3 * 2**30
    variants = {}
    if official_bytes <= budget:
        variants["official"] = fwd_bwd(lambda x: R.official_supcon_loss(x, y), f)
    variants["eager"] = fwd_bwd(lambda x: R.eager_supcon_loss(x, y), f)
    variants["compile"] = fwd_bwd(torch.compile(lambda x: R.eager_supcon_loss(x, y)), f)
    variants["triton"] = fwd_bwd(lambda x: miue.supcon_loss(x, y, backend="triton"), f)
    variants["cpp"] = fwd_bwd(lambda x: miue.supcon_loss(x, y, backend="cpp"), f)
    flops = 4.0 * B * B * D  # Gram (forward) + W·Z (backward), the minimum a fused pass needs
    return dict(op="supcon fwd+bwd", size=f"B={B} D={D} C={C}", dtype=str(dtype).replace("torch.", ""),
                flops=flops, bytes=None, variants=variants)


def supcon_cases(device, quick, dtype):
    if quick:
        sizes = [(256, 128, 10), (512, 512, 10)]
    else:
        sizes = [(512, 512, 10), (512, 512, 100), (2048, 512, 10), (2048, 512, 100), (4096, 2048, 10), (4096, 2048, 100)]
    return [supcon_case(device, B, D, C, dtype) for B, D, C in sizes]


def pgd_case(device, N):
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (N, 3, 32, 32)
    clean_u8 = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).to(device)
    clean_f = clean_u8.float() / 255
    grad = torch.randn(shape, generator=g).to(device)
    delta = torch.zeros(shape, device=device)
    alpha, eps = 0.2 / 255, 8 / 255
    variants = {
        "official": lambda: official_pgd_(delta, grad, clean_f, alpha, eps),
        "eager": lambda: eager_pgd_(delta, grad, clean_u8, alpha, eps),
        "compile": torch.compile(lambda: eager_pgd_(delta, grad, clean_u8, alpha, eps)),
        "triton": lambda: miue.pgd_linf_step_(delta, grad, clean_u8, alpha, eps, backend="triton"),
        "cpp": lambda: miue.pgd_linf_step_(delta, grad, clean_u8, alpha, eps, backend="cpp"),
    }
    nbytes = delta.numel() * (4 + 4 + 1 + 4)  # read delta, grad, clean (uint8); write delta
    return dict(op="pgd_linf_step_", size=f"N={N}x3x32x32 (uint8 clean)", dtype="float32", flops=None,
                bytes=nbytes, variants=variants)


def pgd_cases(device, quick):
    return [pgd_case(device, N) for N in ([512, 2048] if quick else [512, 50_000])]


def normalize_case(device, B, D, C):
    g = torch.Generator(device="cpu").manual_seed(0)
    f = torch.randn(B, D, generator=g).to(device)
    y = torch.randint(0, C, (B,), generator=g).to(device)
    variants = {
        "eager": lambda: eager_grouped_normalize(f, y, C),
        "compile": torch.compile(lambda: eager_grouped_normalize(f, y, C)),
        "triton": lambda: miue.grouped_normalize(f, y, C, backend="triton", validate=False),
        "cpp": lambda: miue.grouped_normalize(f, y, C, backend="cpp", validate=False),
    }
    return dict(op="grouped_normalize", size=f"B={B} D={D} C={C}", dtype="float32", flops=None,
                bytes=2 * f.numel() * 4, variants=variants)


def intra_case(device, B, D, C):
    g = torch.Generator(device="cpu").manual_seed(0)
    f = torch.randn(B, D, generator=g).to(device)
    y = torch.randint(0, C, (B,), generator=g).to(device)
    variants = {
        "eager": fwd_bwd(lambda x: eager_intra(x, y, C), f),
        "compile": fwd_bwd(torch.compile(lambda x: eager_intra(x, y, C)), f),
        "triton": fwd_bwd(lambda x: miue.intra_class_cosine_loss(x, y, C, backend="triton", validate=False), f),
        "cpp": fwd_bwd(lambda x: miue.intra_class_cosine_loss(x, y, C, backend="cpp", validate=False), f),
    }
    return dict(op="intra_class fwd+bwd", size=f"B={B} D={D} C={C}", dtype="float32", flops=None,
                bytes=3 * f.numel() * 4, variants=variants)


def normalize_cases(device, quick):
    if quick:
        return [normalize_case(device, 8192, 512, 10), intra_case(device, 2048, 512, 10)]
    return [normalize_case(device, 65_536, 512, 10), intra_case(device, 4096, 512, 10)]


# --------------------------------------------------------------------------- main


def run(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    allowed = set(args.variants.split(",")) if args.variants else (
        {"official", "eager", "compile", "triton", "cpp"} if on_gpu else {"official", "eager", "cpp"})
    allowed &= {"official", "eager", "compile"} | set(v for v in ("triton", "cpp") if miue._backend.backend_supports(v, device))
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "miue": miue.__version__,
        "backends": miue.available_backends(),
        "copy_bandwidth_gbps": copy_bandwidth_gbps(device),
        "quick": args.quick,
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    print(f"# bench_ops on {meta['device']} (torch {meta['torch']}, triton {meta['triton']}, cuda {meta['cuda']})")
    if meta["copy_bandwidth_gbps"]:
        print(f"# device-to-device copy bandwidth: {meta['copy_bandwidth_gbps']:.0f} GB/s (read + write)")

    cases = []
    ops = set(args.ops.split(","))
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    if "supcon" in ops:
        for dt in dtypes:
            cases += supcon_cases(device, args.quick, dt)
    if "pgd" in ops:
        cases += pgd_cases(device, args.quick)
    if "normalize" in ops:
        cases += normalize_cases(device, args.quick)

    rows = []
    header = f"{'op':22} {'size':30} {'dtype':8} {'variant':9} {'median ms':>10} {'p20':>8} {'p80':>8} {'graph ms':>9} {'TFLOP/s':>8} {'GB/s':>7} {'peak MiB':>9} {'vs official':>11} {'vs eager':>9}"
    print(header)
    print("-" * len(header))
    for case in cases:
        results = {}
        for name, fn in case["variants"].items():
            if name not in allowed:
                continue
            try:
                if on_gpu:
                    med, lo, hi, graph = bench_gpu(fn)
                    peak = peak_memory_mb(fn, device)
                else:
                    med, lo, hi = bench_cpu(fn, min_time=args.min_time)
                    graph, peak = None, None
            except Exception as exc:  # record and go on (e.g. out of memory)
                results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
                if on_gpu:
                    torch.cuda.empty_cache()
                continue
            results[name] = {"ms_median": med, "ms_p20": lo, "ms_p80": hi,
                             "graph_ms": graph if isinstance(graph, float) else None,
                             "graph_note": graph if isinstance(graph, str) else None, "peak_mib": peak}
        off = results.get("official", {}).get("ms_median")
        eag = results.get("eager", {}).get("ms_median")
        for name, r in results.items():
            row = {"op": case["op"], "size": case["size"], "dtype": case["dtype"], "variant": name, **r}
            if "ms_median" in r:
                t = r["ms_median"] * 1e-3
                row["tflops"] = case["flops"] / t / 1e12 if case["flops"] else None
                row["gbps"] = case["bytes"] / t / 1e9 if case["bytes"] else None
                row["speedup_vs_official"] = off / r["ms_median"] if off else None
                row["speedup_vs_eager"] = eag / r["ms_median"] if eag else None
                if row["gbps"] and meta["copy_bandwidth_gbps"]:
                    row["fraction_of_copy_bw"] = row["gbps"] / meta["copy_bandwidth_gbps"]
            rows.append(row)
            print(_fmt(row))
        print()
    out = {"meta": meta, "results": rows}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"# wrote {args.json}")
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(markdown(out))
        print(f"# wrote {args.md}")
    return out


def _num(v, fmt):
    return format(v, fmt) if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else "-"


def _fmt(r):
    if "error" in r:
        return f"{r['op']:22} {r['size']:30} {r['dtype']:8} {r['variant']:9} {r['error']}"
    return (f"{r['op']:22} {r['size']:30} {r['dtype']:8} {r['variant']:9} {_num(r['ms_median'], '10.3f')} "
            f"{_num(r['ms_p20'], '8.3f')} {_num(r['ms_p80'], '8.3f')} {_num(r.get('graph_ms'), '9.3f')} "
            f"{_num(r.get('tflops'), '8.2f')} {_num(r.get('gbps'), '7.0f')} {_num(r.get('peak_mib'), '9.1f')} "
            f"{_num(r.get('speedup_vs_official'), '10.1f') + 'x' if r.get('speedup_vs_official') else '-':>11} "
            f"{_num(r.get('speedup_vs_eager'), '8.2f') + 'x' if r.get('speedup_vs_eager') else '-':>9}")


def markdown(out):
    m = out["meta"]
    lines = [f"# bench_ops: {m['device']}", "",
             f"{m['date']}; torch {m['torch']}, triton {m['triton']}, CUDA {m['cuda']}, Python {m['python']}"
             + (f"; copy bandwidth {m['copy_bandwidth_gbps']:.0f} GB/s" if m.get("copy_bandwidth_gbps") else ""), "",
             "| op | size | dtype | variant | median ms | CUDA graph ms | TFLOP/s | GB/s | peak MiB | vs official | vs eager |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in out["results"]:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['size']} | {r['dtype']} | {r['variant']} | {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['op']} | {r['size']} | {r['dtype']} | {r['variant']} | {_num(r['ms_median'], '.3f')} | "
            f"{_num(r.get('graph_ms'), '.3f')} | {_num(r.get('tflops'), '.2f')} | {_num(r.get('gbps'), '.0f')} | "
            f"{_num(r.get('peak_mib'), '.1f')} | {_num(r.get('speedup_vs_official'), '.1f')} | {_num(r.get('speedup_vs_eager'), '.2f')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--quick", action="store_true", help="small sizes only")
    p.add_argument("--ops", default="supcon,pgd,normalize", help="comma list of supcon, pgd, normalize")
    p.add_argument("--dtypes", default="float32", help="supcon feature dtypes, e.g. float32,bfloat16")
    p.add_argument("--variants", default=None, help="comma list (default: all that apply on the device)")
    p.add_argument("--min-time", type=float, default=1.0, help="CPU: seconds of timing per variant")
    p.add_argument("--json", default=None, help="write results as JSON here")
    p.add_argument("--md", default=None, help="write a markdown table here")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
