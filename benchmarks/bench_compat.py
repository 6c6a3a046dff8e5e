"""miue.compat on the replicas of the codebases it stands in for (tests/replicas/: written from
reading them), plain against accelerated, interleaved, in one run; prints a table and writes JSON.

Loops (each plain vs accelerated as docs/compat.md tells a user of that codebase):

``miue``  the official MI-UE loop (gen_miue.py ``error_minimizing``) with ``utils.nt_xent`` patched and
          its four update lines changed to one (in this process: the code change alone; the
          allocator tuning of ``python -m miue.compat`` comes on top); fp32, the share of δ that
          differs reported (float64 is bitwise: tests/test_compat_replicas.py).
``em``    Unlearnable-Examples' sample-wise EM loop, ``python ue_samplewise.py`` against
          ``python -m miue.compat ue_samplewise.py`` (fresh processes: the allocator tuning is
          process-wide); the returned noise compared bitwise.
``cp``    Contrastive Poisoning's loop with its one update line changed, and with its
          ``SimCLRLoss`` patched as well; δ compared.
``tap``   APBench TAP's forging loop with its ``_pgd_step`` changed; δ compared bitwise.

Ops alone, side by side (official-style eager = the codebase's lines, good eager = the same in
place in PyTorch, ``torch.compile`` of the official lines (skipped with --quick), ours):

``update-cp``   the dataset-sized unit-space update of Contrastive Poisoning;
``update-tap``  TAP's per-channel normalised-space update (ours: the exact PyTorch form);
``supcon``      SupContrast's loss forward + backward on ``[bsz, 2, 128]`` features.

    python benchmarks/bench_compat.py --json benchmarks/results/<machine>-<date>/bench_compat.json
    python benchmarks/bench_compat.py --quick       # CI-sized
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPLICAS = os.path.join(HERE, "..", "tests", "replicas")
sys.path.insert(0, REPLICAS)

import cp_losses  # noqa: E402
import cp_main  # noqa: E402
import miue_gen  # noqa: E402
import miue_utils  # noqa: E402
import supcon_losses  # noqa: E402
import tap_forge  # noqa: E402

import miue.compat as mc  # noqa: E402

FULL = {"miue": dict(n=1024, size=32, batch=512, iters=10, width=16),
        "em": dict(n=1024, size=32, rounds=1, num_steps=20, width=16, batch=512),
        "cp": dict(n=50_000, size=32, batch=512, num_steps=5, width=32, model_steps=1, max_batches=2),
        "tap": dict(n=1024, size=32, attackiter=2, pbatch=512, width=16),
        "update_n": 50_000, "supcon_b": 512, "repeats": 3}
QUICK = {"miue": dict(n=128, size=16, batch=64, iters=2, width=8),
         "em": dict(n=64, size=16, rounds=1, num_steps=3, width=8, batch=32),
         "cp": dict(n=4096, size=16, batch=128, num_steps=2, width=8, model_steps=1, max_batches=2),
         "tap": dict(n=128, size=16, attackiter=1, pbatch=64, width=8),
         "update_n": 4096, "supcon_b": 128, "repeats": 1}


def _cp_accelerated(delta, step_size):
    mc.pgd_update_(delta, delta.grad, None, step_size, None, lo=-1, hi=1)


def _tap_accelerated(delta_slice, poison_imgs, tau, dm, ds, eps):
    return mc.pgd_update_(delta_slice, delta_slice.grad, poison_imgs, tau, eps / ds / 255,
                          lo=-dm / ds, hi=(1 - dm) / ds, box="delta")


def _miue_update(delta, data, alpha, eps):
    mc.pgd_update_(delta, delta.grad, data, alpha, eps)
    delta.grad = None


def _interleaved(repeats, plain_fn, fast_fn):
    """(plain seconds, accelerated seconds, last plain result, last accelerated result), the two
    alternating which goes first, after one untimed run of each (first-call costs)."""
    plain, fast, out = [], [], {}
    plain_fn(), fast_fn()
    for i in range(repeats):
        for name in (("plain", "fast") if i % 2 == 0 else ("fast", "plain")):
            t0 = time.perf_counter()
            out[name] = (plain_fn if name == "plain" else fast_fn)()
            (plain if name == "plain" else fast).append(time.perf_counter() - t0)
    return plain, fast, out["plain"], out["fast"]


def _miue_fast(cfg):
    original = miue_gen.update
    miue_gen.update = _miue_update
    try:
        with mc.patch(miue_utils, quiet=True), mc.patch(miue_gen, ["nt_xent"], quiet=True):
            return miue_gen.run(**cfg)
    finally:
        miue_gen.update = original


def loop_miue(cfg, repeats):
    plain, fast, a, b = _interleaved(repeats, lambda: miue_gen.run(**cfg), lambda: _miue_fast(cfg))
    differ = int((a != b).sum())
    return {"plain_s": plain, "accelerated_s": fast,
            "how": "utils.nt_xent patched; 4 update lines -> mc.pgd_update_(δ, δ.grad, x, α, ε)",
            "result": "poison bitwise equal" if differ == 0 else
            f"{differ:,} of {a.numel():,} δ elements differ ({100 * differ / a.numel():.2g}%, fp32 signs)"}


def _em_run(args: dict, accelerated: bool, out: str) -> float:
    cmd = [sys.executable] + (["-m", "miue.compat", "--quiet"] if accelerated else []) + \
        [os.path.join(REPLICAS, "ue_samplewise.py"), "--out", out] + \
        [x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MIUE_MALLOC_TUNING": ""})
    if r.returncode:
        raise SystemExit(f"bench_compat: {' '.join(cmd)} failed:\n{r.stderr}")
    return torch.load(out)["seconds"]


def loop_em(cfg, repeats, tmp):
    plain, fast = [], []
    for i in range(repeats):  # interleaved, fresh processes
        plain.append(_em_run(cfg, False, os.path.join(tmp, f"p{i}.pt")))
        fast.append(_em_run(cfg, True, os.path.join(tmp, f"f{i}.pt")))
    same = all(torch.equal(torch.load(os.path.join(tmp, f"p{i}.pt"))["noise"],
                           torch.load(os.path.join(tmp, f"f{i}.pt"))["noise"]) for i in range(repeats))
    return {"plain_s": plain, "accelerated_s": fast, "how": "python -m miue.compat ue_samplewise.py (no edit)",
            "result": "noise bitwise equal" if same else "NOISE DIFFERS"}


def _cp_fast(cfg, with_loss, timings):
    original = cp_main.update_delta
    cp_main.update_delta = _cp_accelerated
    handle = mc.patch(cp_losses, quiet=True) if with_loss else None
    try:
        return cp_main.run(timings=timings, **cfg)
    finally:
        cp_main.update_delta = original
        if handle:
            handle.undo()


def _timed_update(fn, sink: list):
    """fn(timings) -> δ, recording the loop's own update seconds in ``sink``."""
    def run():
        t: dict = {}
        out = fn(t)
        sink.append(t["update_s"])
        return out
    return run


def loop_cp(cfg, repeats):
    rows = {}
    for name, with_loss in (("cp", False), ("cp+loss", True)):
        upd_p, upd_f = [], []
        plain, fast, d_plain, d_fast = _interleaved(
            repeats, _timed_update(lambda t: cp_main.run(timings=t, **cfg), upd_p),
            _timed_update(functools.partial(_cp_fast, cfg, with_loss), upd_f))
        differ = int((d_plain != d_fast).sum())
        rows[name] = {"plain_s": plain, "accelerated_s": fast, "update_plain_s": upd_p[1:],
                      "update_accelerated_s": upd_f[1:],
                      "how": "update line -> mc.pgd_update_(δ, δ.grad, None, step, None, lo=-1, hi=1)"
                             + (" and mc.patch(losses)" if with_loss else ""),
                      "result": "δ bitwise equal" if differ == 0 else
                      f"{differ:,} of {d_plain.numel():,} δ elements differ ({100 * differ / d_plain.numel():.2g}%)"}
    return rows


def _tap_fast(cfg):
    original = tap_forge.pgd_step
    tap_forge.pgd_step = _tap_accelerated
    try:
        return tap_forge.forge(**cfg)
    finally:
        tap_forge.pgd_step = original


def loop_tap(cfg, repeats):
    plain, fast, a, b = _interleaved(repeats, lambda: tap_forge.forge(**cfg), lambda: _tap_fast(cfg))
    return {"plain_s": plain, "accelerated_s": fast, "how": "_pgd_step body -> mc.pgd_update_(..., box='delta')",
            "result": "δ bitwise equal" if torch.equal(a, b) else "δ DIFFERS"}


def _time(fn, repeats, device, inner=3):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    out = []
    for _ in range(repeats * inner):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def ops_alone(n_update, b_supcon, repeats, compile_too, device):
    """Each op alone on ``device``: the variants' results checked against the official lines
    first (the updates bitwise, the loss to 1e-5 relative), then timed."""
    g = torch.Generator().manual_seed(0)
    rows, problems = {}, []
    # Contrastive Poisoning's update of the whole unit-space δ
    delta0 = (torch.rand(n_update, 3, 32, 32, generator=g) * 2 - 1).to(device)
    grad = torch.randn(n_update, 3, 32, 32, generator=g).to(device)
    grad[512:] = 0
    delta = delta0.clone()

    def official(d=delta):
        d.add_(-0.1 * torch.sign(grad)).clamp_(-1, 1)

    def good_eager(d=delta):
        d.sub_(grad.sign().mul_(0.1)).clamp_(-1, 1)

    def ours(d=delta):
        mc.pgd_update_(d, grad, None, 0.1, None, lo=-1, hi=1)

    variants = {"official-style eager": official, "good eager": good_eager, "miue.compat": ours}
    if compile_too:
        variants["torch.compile(official)"] = torch.compile(official)
    want = delta0.clone()
    official(want)
    for k, f in variants.items():
        got = delta0.clone()
        f(got)
        if not torch.equal(got, want):
            problems.append(f"update-cp {k}: not bitwise the official update")
    rows["update-cp"] = {k: _time(f, repeats, device) for k, f in variants.items()}
    rows["update-cp"]["elements"] = delta.numel()
    # TAP's per-channel update on one batch of 512
    dm, ds = tap_forge.DM.to(device), tap_forge.DS.to(device)
    x_n = ((torch.rand(512, 3, 32, 32, generator=g).to(device) - dm) / ds)
    d0 = ((torch.rand(512, 3, 32, 32, generator=g) - 0.5) * 0.1).to(device)
    gt = torch.randn(512, 3, 32, 32, generator=g).to(device)
    tau0 = 8 / 255 / ds * 0.05

    def leaf():
        b = d0.clone().requires_grad_(True)
        b.grad = gt
        return b

    def tap_official(b):
        tap_forge.pgd_step(b, x_n, tau0, dm, ds, 8.0)

    def tap_ours(b):
        mc.pgd_update_(b, b.grad, x_n, tau0, 8 / ds / 255, lo=-dm / ds, hi=(1 - dm) / ds, box="delta")

    a, b = leaf(), leaf()
    tap_official(a)
    tap_ours(b)
    if not torch.equal(a.detach(), b.detach()):
        problems.append("update-tap miue.compat: not bitwise the official update")
    box_a, box_b = leaf(), leaf()
    rows["update-tap"] = {"official-style eager": _time(lambda: tap_official(box_a), repeats, device),
                          "miue.compat": _time(lambda: tap_ours(box_b), repeats, device)}
    # SupContrast's loss, forward + backward
    f = torch.nn.functional.normalize(torch.randn(b_supcon, 2, 128, generator=g), dim=-1).to(device)
    y = torch.randint(0, 10, (b_supcon,), generator=g).to(device)
    ref_loss, our_loss = supcon_losses.SupConLoss(0.5), mc.SupConLoss(0.5)
    want = float(ref_loss(f.double(), y))
    got = float(our_loss(f, y))
    if abs(got - want) > 1e-5 * abs(want):
        problems.append(f"supcon miue.compat: {got} vs the float64 formula's {want}")

    def step(loss_fn):
        def run():
            x = f.clone().requires_grad_(True)
            loss_fn(x, y).backward()
        return run

    variants = {"official-style eager": step(ref_loss), "miue.compat": step(our_loss)}
    if compile_too:
        variants["torch.compile(official)"] = step(torch.compile(ref_loss))
    rows["supcon"] = {k: _time(fn, repeats, device) for k, fn in variants.items()}
    rows["supcon"]["features"] = [b_supcon, 2, 128]
    return rows, problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="CI-sized: tiny loops, one repeat, no torch.compile")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--device", default="cpu", help="device of the ops-alone stage (the loops run on the CPU)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--only", nargs="+", choices=("miue", "em", "cp", "tap", "ops"),
                   default=["miue", "em", "cp", "tap", "ops"])
    a = p.parse_args(argv)
    cfg = QUICK if a.quick else FULL
    from miue.env import environment

    res = {"date": datetime.date.today().isoformat(), "quick": a.quick, "machine": environment(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "config": cfg, "loops": {}, "ops": {}}
    if "miue" in a.only:  # in this process, before anything tunes its allocator
        res["loops"]["miue"] = loop_miue(cfg["miue"], cfg["repeats"])
    with tempfile.TemporaryDirectory() as tmp:
        if "em" in a.only:
            res["loops"]["em"] = loop_em(cfg["em"], cfg["repeats"], tmp)
    if "cp" in a.only:
        res["loops"].update(loop_cp(cfg["cp"], cfg["repeats"]))
    if "tap" in a.only:
        res["loops"]["tap"] = loop_tap(cfg["tap"], cfg["repeats"])
    problems = []
    if "ops" in a.only:
        res["ops"], problems = ops_alone(cfg["update_n"], cfg["supcon_b"], cfg["repeats"],
                                         compile_too=not (a.quick or a.no_compile), device=torch.device(a.device))
        res["ops_device"] = a.device
    problems += [f"{name}: {r['result']}" for name, r in res["loops"].items()
                 if "DIFFERS" in r["result"] or (name != "cp+loss" and name != "miue" and "differ" in r["result"])]
    res["problems"] = problems
    print(f"bench_compat{' (QUICK: not evidence)' if a.quick else ''}: {res['machine']['cpu']}, "
          f"{res['threads']} threads, torch {res['torch']}")
    print("\n| loop | plain s | accelerated s | speed-up | how | result |\n|---|---:|---:|---:|---|---|")
    for name, r in res["loops"].items():
        mp, mf = statistics.median(r["plain_s"]), statistics.median(r["accelerated_s"])
        r["speedup"] = mp / mf
        print(f"| {name} | {mp:.2f} | {mf:.2f} | {mp / mf:.2f}x | {r['how']} | {r['result']} |")
        if "update_plain_s" in r:
            up, uf = statistics.median(r["update_plain_s"]), statistics.median(r["update_accelerated_s"])
            print(f"| {name}: its δ updates | {up:.2f} | {uf:.2f} | {up / uf:.2f}x | (inside the loop) | |")
    if res["ops"]:
        print(f"\n| op alone ({a.device}) | variant | ms | vs official |\n|---|---|---:|---:|")
        for name, r in res["ops"].items():
            base = r["official-style eager"]
            for k, v in r.items():
                if isinstance(v, float):
                    print(f"| {name} | {k} | {1000 * v:.2f} | {base / v:.2f}x |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
        print("wrote", a.json)
    print("# verification: " + ("every result as the original's" if not problems else "PROBLEMS: " + "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
