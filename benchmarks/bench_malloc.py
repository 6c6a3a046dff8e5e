"""glibc malloc tuning on the CPU (miue/_malloc.py), side by side: the ResNet-8 surrogate's
PGD pass (forward + backward to the input, batch 512, 1x28x28 Fashion-MNIST-sized inputs) and
its training step (forward + backward + SGD, batch 256), in fp32 and bf16 autocast, each
measured in a fresh subprocess with ``MIUE_MALLOC_TUNING=0`` (glibc's defaults) and with the
tuning miue applies, with one process and with two processes at once (how the effectiveness
study runs on 2 cores). Reported: images/s, minor page faults per step, and the share of CPU
time spent in the kernel.

    python benchmarks/bench_malloc.py                 # prints a table, writes --json
    python benchmarks/bench_malloc.py --quick         # CI-sized (fewer steps)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

WORKER = r"""
import json, os, resource, sys, time
import torch
from miue._malloc import tune_cpu_allocator
tuned = tune_cpu_allocator()
torch.set_num_threads(1)
from miue.models import build_model
kind, precision, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
m = build_model("resnet-small", 10, channels=1, image_size=28).to(memory_format=torch.channels_last)
bs = 512 if kind == "pgd" else 256
x = torch.rand(bs, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (bs,))
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
if kind == "pgd":
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
def step():
    if kind == "pgd":
        d = torch.zeros_like(x, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(m(x + d).float(), y)
        torch.autograd.grad(loss, d)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
for _ in range(3):
    step()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"tuned": tuned, "img_per_s": steps * bs / t, "minflt_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
                  "sys_share": (r1.ru_stime - r0.ru_stime) / max(cpu, 1e-9)}))
"""


def run(kind: str, precision: str, steps: int, tuned: bool, procs: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MIUE_MALLOC_TUNING="1" if tuned else "0")
    ps = [subprocess.Popen([sys.executable, "-c", WORKER, kind, precision, str(steps)], env=env,
                           stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    outs = []
    for p in ps:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"bench_malloc: a worker failed (rc {p.returncode})")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    if tuned and not all(o["tuned"] for o in outs):
        raise SystemExit("bench_malloc: the tuning did not take effect (not glibc?)")
    return {"img_per_s": sum(o["img_per_s"] for o in outs) / procs,  # per process
            "minflt_per_step": sum(o["minflt_per_step"] for o in outs) / procs,
            "sys_share": sum(o["sys_share"] for o in outs) / procs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized: 3 timed steps per cell, one process only")
    p.add_argument("--steps", type=int, default=15, help="timed steps per cell (after 3 warm-up steps)")
    p.add_argument("--json", default="bench_malloc.json")
    args = p.parse_args(argv)

    steps = 3 if args.quick else args.steps
    rows = []
    print("| part | precision | processes | glibc default img/s | tuned img/s | speed-up | page faults/step "
          "default → tuned | kernel CPU share default → tuned |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for procs in ((1,) if args.quick else (1, 2)):
        for kind in ("pgd", "train"):
            for precision in ("fp32", "bf16"):
                a = run(kind, precision, steps, False, procs)
                b = run(kind, precision, steps, True, procs)
                row = {"part": kind, "precision": precision, "processes": procs, "default": a, "tuned": b,
                       "speedup": b["img_per_s"] / a["img_per_s"]}
                rows.append(row)
                print(f"| {kind} | {precision} | {procs} | {a['img_per_s']:,.0f} | {b['img_per_s']:,.0f} | "
                      f"{row['speedup']:.2f}× | {a['minflt_per_step']:,.0f} → {b['minflt_per_step']:,.0f} | "
                      f"{100 * a['sys_share']:.0f}% → {100 * b['sys_share']:.0f}% |", flush=True)
    from miue.env import environment

    meta = {**environment(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "steps": steps, "quick": args.quick,
            "note": "img/s per process, 1 torch thread each; pgd batch 512, train batch 256"}
    with open(args.json, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
