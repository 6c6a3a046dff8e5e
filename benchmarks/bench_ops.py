"""Benchmark the miue ops side by side with the ways PyTorch code usually computes them.

Variants per op (where they apply):
  official  the formulation of the official MI-UE code (B×B×D cosine broadcast; separate eager PGD ops)
  eager     a well-written eager PyTorch version (miue.ops.reference.eager_supcon_loss, ...)
  compile   torch.compile of the eager version
  triton    miue, triton backend
  cpp       miue, cpp backend (C++/OpenMP on CPU, CUDA kernels on GPU)

Before a variant is timed, its result is checked against the float64 reference (the
``reference`` backend on float64 inputs: loss and input gradient, normalised rows and class
sums, the PGD step); a variant that disagrees is not timed, is reported as an error, and the
script exits non-zero, as it does on any other error (``--no-verify`` skips the checks).

On a GPU each variant is timed with triton.testing.do_bench (median and 20/80% quantiles)
and, when it can be captured, with do_bench_cudagraph; peak memory is measured for one
call. On the CPU (for debugging the script) only official/eager/cpp run, with a wall-clock
timer. Prints a table and writes JSON (and optionally a markdown table).

    python benchmarks/bench_ops.py                 # full, on the GPU if there is one
    python benchmarks/bench_ops.py --quick         # small sizes (CPU-friendly)
    python benchmarks/bench_ops.py --json out.json --md out.md
    python benchmarks/bench_ops.py --variants official,eager,triton,cpp --rep 30   # short GPU run
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
from miue.ops import reference as R


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


def bench_gpu(fn, rep=100):
    import triton.testing

    med, lo, hi = triton.testing.do_bench(fn, warmup=max(5, rep // 4), rep=rep, quantiles=[0.5, 0.2, 0.8])
    graph = None
    try:
        graph = triton.testing.do_bench_cudagraph(fn, rep=rep)
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
        loss = loss_fn(x)
        (g,) = torch.autograd.grad(loss, x)
        return loss.detach(), g

    return run


# --------------------------------------------------------------------------- verification
#
# A case's "checks" map each variant to a callable returning its outputs (fresh inputs: the
# timed closures of the PGD step work in place); "expected" computes the float64 reference's
# outputs and "tols" gives one tolerance per output (or a dict: variant -> tolerances, with a
# "default"): ("rel", t[, floor]) the norm of the error at most t times the norm of the
# reference (+ floor), ("abs", t) the largest absolute error, ("exact",) equal values. They
# catch wrong results, not the last digits: the op tests hold the kernels to the tight bars.

LOSS_TOLS = (("rel", 1e-4, 1e-6), ("rel", 1e-3))  # fp32 (loss, input gradient)
# bf16/fp16 features: miue's kernels accumulate in fp32 (tests/test_cuda.py: gradient within 3e-2);
# the eager and official formulations compute in the low precision itself
LOW_PRECISION_TOLS = {"triton": (("rel", 1e-2), ("rel", 5e-2)), "cpp": (("rel", 1e-2), ("rel", 5e-2)),
                      "default": (("rel", 5e-2), ("rel", 0.3))}


def compare(got, expected, tols) -> str | None:
    """None when every output is within its tolerance, else what is wrong (names the output)."""
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for i, (g, e, tol) in enumerate(zip(got, expected, tols)):
        g = torch.as_tensor(g).detach()
        e = torch.as_tensor(e).detach().to(g.device)
        if g.shape != e.shape:
            return f"output {i}: shape {tuple(g.shape)}, expected {tuple(e.shape)}"
        if tol[0] == "exact":
            if not torch.equal(g.to(e.dtype), e):
                return f"output {i}: not equal to the reference"
            continue
        g, e = g.double(), e.double()
        if tol[0] == "abs":
            err, bound = ((g - e).abs().max().item() if g.numel() else 0.0), tol[1]
            if not err <= bound:  # NaN fails too
                return f"output {i}: largest error {err:.3g} > {bound:g}"
        else:
            err, ref = (g - e).norm().item(), e.norm().item()
            bound = tol[1] * ref + (tol[2] if len(tol) > 2 else 0.0)
            if not err <= bound:
                return f"output {i}: relative error {err / max(ref, 1e-300):.3g} > {tol[1]:g}"
    return None


def verify(case, name) -> str | None:
    """Run variant ``name`` of ``case`` once and compare it with the reference."""
    check = case.get("checks", {}).get(name)
    if check is None:
        return None
    out = check()
    if case["device"].type == "cuda":
        torch.cuda.synchronize()
    tols = case["tols"]
    if isinstance(tols, dict):
        tols = tols.get(name, tols["default"])
    return compare(out if isinstance(out, tuple) else (out,), case["expected"], tols)


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
    name = str(dtype).replace("torch.", "")
    return dict(op="supcon fwd+bwd", size=f"B={B} D={D} C={C}", dtype=name, flops=flops, bytes=None,
                variants=variants, checks=dict(variants), device=f.device,
                expected=lambda: fwd_bwd(lambda x: miue.supcon_loss(x, y, backend="reference"), f.double())(),
                tols=LOSS_TOLS if dtype == torch.float32 else LOW_PRECISION_TOLS)


def supcon_cases(device, quick, dtype):
    if quick == "smoke":
        sizes = [(256, 128, 10)]
    elif quick:
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
    compiled = torch.compile(eager_pgd_)
    steps = {  # each updates the δ it is given in place and returns it
        "official": lambda d: official_pgd_(d, grad, clean_f, alpha, eps),
        "eager": lambda d: eager_pgd_(d, grad, clean_u8, alpha, eps),
        "compile": lambda d: compiled(d, grad, clean_u8, alpha, eps),
        "triton": lambda d: miue.pgd_linf_step_(d, grad, clean_u8, alpha, eps, backend="triton"),
        "cpp": lambda d: miue.pgd_linf_step_(d, grad, clean_u8, alpha, eps, backend="cpp"),
    }
    variants = {k: (lambda s=s: s(delta)) for k, s in steps.items()}
    # checked from a δ inside the ball, with elements the ε and [0, 1] clamps both bite on
    delta0 = ((torch.rand(shape, generator=g) * 2 - 1) * (eps + 2 * alpha)).to(device)
    checks = {k: (lambda s=s: s(delta0.clone())) for k, s in steps.items()}
    nbytes = delta.numel() * (4 + 4 + 1 + 4)  # read delta, grad, clean (uint8); write delta
    return dict(op="pgd_linf_step_", size=f"N={N}x3x32x32 (uint8 clean)", dtype="float32", flops=None,
                bytes=nbytes, variants=variants, checks=checks, device=delta.device,
                expected=lambda: miue.pgd_linf_step_(delta0.clone(), grad, clean_u8, alpha, eps, backend="reference"),
                tols=(("abs", 1e-6),))


def pgd_cases(device, quick):
    return [pgd_case(device, N) for N in ([512] if quick == "smoke" else [512, 2048] if quick else [512, 50_000])]


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

    def z_s_n(fn):  # (z, s, n) of both output layouts: eager (z, s, n), miue (z, inv_norm, s, n)
        out = fn()
        return (out[0], out[-2], out[-1])

    checks = {k: (lambda v=v: z_s_n(v)) for k, v in variants.items()}
    return dict(op="grouped_normalize", size=f"B={B} D={D} C={C}", dtype="float32", flops=None,
                bytes=2 * f.numel() * 4, variants=variants, checks=checks, device=f.device,
                expected=lambda: z_s_n(lambda: miue.grouped_normalize(f.double(), y, C, backend="reference")),
                tols=(("abs", 1e-5), ("rel", 1e-4), ("exact",)))


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
                bytes=3 * f.numel() * 4, variants=variants, checks=dict(variants), device=f.device,
                expected=lambda: fwd_bwd(lambda x: miue.intra_class_cosine_loss(x, y, C, backend="reference"), f.double())(),
                tols=(("rel", 1e-3, 1e-6), ("rel", 1e-3)))


def normalize_cases(device, quick):
    if quick == "smoke":
        return [normalize_case(device, 2048, 128, 10), intra_case(device, 512, 128, 10)]
    if quick:
        return [normalize_case(device, 8192, 512, 10), intra_case(device, 2048, 512, 10)]
    return [normalize_case(device, 65_536, 512, 10), intra_case(device, 4096, 512, 10)]


# --------------------------------------------------------------------------- main


def run(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    allowed = set(args.variants.split(",")) if args.variants else (
        {"official", "eager", "compile", "triton", "cpp"} if on_gpu else {"official", "eager", "cpp"})
    allowed &= {"official", "eager", "compile"} | set(v for v in ("triton", "cpp") if miue.ops._backend.backend_supports(v, device))
    from miue.env import environment

    meta = {
        **environment(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
        "cuda": torch.version.cuda,
        "copy_bandwidth_gbps": copy_bandwidth_gbps(device),
        "quick": "smoke" if args.smoke else args.quick,
        "verified": args.verify,
    }
    print(f"# bench_ops on {meta['device']} (torch {meta['torch']}, triton {meta['triton']}, cuda {meta['cuda']})")
    if meta["copy_bandwidth_gbps"]:
        print(f"# device-to-device copy bandwidth: {meta['copy_bandwidth_gbps']:.0f} GB/s (read + write)")

    cases = []
    quick = "smoke" if args.smoke else args.quick
    ops = set(args.ops.split(","))
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    if "supcon" in ops:
        for dt in dtypes:
            cases += supcon_cases(device, quick, dt)
    if "pgd" in ops:
        cases += pgd_cases(device, quick)
    if "normalize" in ops:
        cases += normalize_cases(device, quick)

    rows = []
    n_checked = n_disagree = 0
    header = f"{'op':22} {'size':30} {'dtype':8} {'variant':9} {'median ms':>10} {'p20':>8} {'p80':>8} {'graph ms':>9} {'TFLOP/s':>8} {'GB/s':>7} {'peak MiB':>9} {'vs official':>11} {'vs eager':>9}"
    print(header)
    print("-" * len(header))
    for case in cases:
        results = {}
        expected = None
        for name, fn in case["variants"].items():
            if name not in allowed:
                continue
            try:
                if args.verify:  # the reference once per case, then each variant before it is timed
                    if expected is None:
                        expected = case["expected"]()
                        expected = expected if isinstance(expected, tuple) else (expected,)
                    problem = verify({**case, "expected": expected}, name)
                    n_checked += 1
                    if problem:
                        n_disagree += 1
                        results[name] = {"error": f"verification failed: {problem}"}
                        continue
                if on_gpu:
                    med, lo, hi, graph = bench_gpu(fn, rep=args.rep)
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
    errors = [r for r in rows if "error" in r]
    meta["errors"] = len(errors)
    meta["verified_variants"], meta["verification_failures"] = n_checked, n_disagree
    if args.verify:
        print(f"# verification: {n_checked} variant results compared with the float64 reference, {n_disagree} disagreed")
    if errors:
        print(f"# ERRORS: {len(errors)} variant(s) failed:")
        for r in errors:
            print(f"#   {r['op']} {r['size']} {r['dtype']} {r['variant']}: {r['error']}")
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
    p.add_argument("--smoke", action="store_true", help="one smallest size per op (rehearsing benchmarks/gpu_check.sh)")
    p.add_argument("--ops", default="supcon,pgd,normalize", help="comma list of supcon, pgd, normalize")
    p.add_argument("--dtypes", default="float32", help="supcon feature dtypes, e.g. float32,bfloat16")
    p.add_argument("--variants", default=None, help="comma list (default: all that apply on the device)")
    p.add_argument("--min-time", type=float, default=1.0, help="CPU: seconds of timing per variant")
    p.add_argument("--rep", type=int, default=100, help="GPU: milliseconds of do_bench timing per variant")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="check each variant against the float64 reference before timing it (default: on)")
    p.add_argument("--json", default=None, help="write results as JSON here")
    p.add_argument("--md", default=None, help="write a markdown table here")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    out = main()
    sys.exit(1 if not out or out["meta"]["errors"] else 0)
