"""Host memory and throughput of protecting an image folder from disk (issue 26).

For each N (default 2,000, 10,000 and 50,000) a folder of N generated JPEG files, 10 classes,
each 256 pixels wide and of a random height between 128 and 384 (smooth random content, quality
90), is protected at 64×64 in a child process, as a user would run ``miue protect`` with the
default resize rule, and a tiny crafting schedule (the small-CNN surrogate, 1 round, 20 SGD
steps, 1 PGD step per image: the data path is measured, not the poison). Modes:

* ``disk``: :func:`miue.data.protect.protect`: decode once into the memory-mapped uint8 cache with
  DataLoader workers, craft with δ memory-mapped (``storage="disk"``), write the mirrored release;
* ``memory``: the in-memory path for comparison: ``load_dataset(image_size=64)`` (one process),
  ``craft_fast`` with everything in RAM, the same release writer.

The parent samples the child's process tree (the child and its decoding workers) every 100 ms from
/proc/PID/smaps_rollup, as proportional set sizes (PSS, so pages shared after the workers' fork
count once): anonymous memory (Pss_Anon: heaps and tensors, what must stay flat in N),
file-backed and shared pages (Pss_File + Pss_Shmem: the shared libraries and the memory maps, i.e.
the page cache of the decoded cache and δ files, which the kernel can drop), and their sum; the
main process's RssAnon too. It reports the peaks and each phase's throughput, prints a table and
writes JSON + markdown.

    python benchmarks/bench_folder.py --out benchmarks/results/<machine>-<date>/bench_folder
    python benchmarks/bench_folder.py --quick        # CI: 200 and 400 images
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

CHILD = r"""
import json, os, sys, time
import torch
opts = json.loads(sys.argv[1])
torch.set_num_threads(opts["threads"])
t0 = time.perf_counter()
if opts["mode"] == "disk":
    from miue.data.protect import protect
    s = protect(opts["src"], opts["dst"], preset="cnn", image_size=opts["size"], rounds=1, pgd_steps=1,
                train_steps=20, progress=False, workers=opts["workers"], device="cpu")
    print("RESULT " + json.dumps({"seconds": s["seconds"], "n": s["n_files"]}), flush=True)
else:
    import miue
    from miue.data import load_dataset
    from miue.data.release import write_release
    d = load_dataset(opts["src"], image_size=opts["size"])
    t1 = time.perf_counter()
    r = miue.craft_fast(d.images, d.labels, preset="cnn", rounds=1, pgd_steps=1, train_steps=20, progress=False,
                        device="cpu", num_classes=d.num_classes)
    t2 = time.perf_counter()
    write_release(opts["dst"], d.source, r.images, r.labels, d.classes, eps=8 / 255, config=r.config)
    t3 = time.perf_counter()
    print("RESULT " + json.dumps({"seconds": {"decode": t1 - t0, "craft": t2 - t1, "release": t3 - t2,
                                              "total": t3 - t0}, "n": len(d)}), flush=True)
"""


def _gen_one(args):
    path, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    h = int(rng.integers(128, 385))
    small = rng.integers(0, 256, (max(2, h // 16), 16, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((256, h), Image.BILINEAR)
    noise = rng.integers(-12, 13, (h, 256, 3))
    arr = np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def make_folder(root: str, n: int, classes: int = 10, procs: int = 2) -> str:
    """N JPEGs in ``root/class_k/``; reused when complete (a ``.done`` file)."""
    done = os.path.join(root, ".done")
    if os.path.exists(done) and open(done).read().strip() == str(n):
        return root
    jobs = []
    for i in range(n):
        d = os.path.join(root, f"class_{i % classes}")
        os.makedirs(d, exist_ok=True)
        jobs.append((os.path.join(d, f"photo_{i:06d}.jpg"), i))
    from multiprocessing import Pool

    with Pool(procs) as pool:
        for _ in pool.imap_unordered(_gen_one, jobs, chunksize=64):
            pass
    with open(done, "w") as fh:
        fh.write(str(n))
    return root


def _tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo += children.get(q, [])
    return out


def _status_kb(pid: int) -> dict:
    """RssAnon of /proc/PID/status and the proportional set sizes of smaps_rollup (PSS: a page
    shared by k processes, e.g. copy-on-write after the DataLoader's fork, counts 1/k in each, so
    the sum over the tree counts it once)."""
    vals = {}
    for name, keys in (("status", ("RssAnon",)), ("smaps_rollup", ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"))):
        try:
            with open(f"/proc/{pid}/{name}") as fh:
                for line in fh:
                    k, _, v = line.partition(":")
                    if k in keys:
                        vals[k] = int(v.split()[0])
        except OSError:
            pass
    return vals


class Sampler(threading.Thread):
    def __init__(self, pid: int, period: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.period, self.stop = pid, period, threading.Event()
        self.peak = {"anon_tree": 0, "anon_main": 0, "file_shmem_tree": 0, "rss_tree": 0}

    def run(self):
        tree, last = [self.pid], 0.0
        while not self.stop.is_set():
            if time.perf_counter() - last > 1.0:  # the process list changes rarely (workers start/stop)
                tree, last = _tree(self.pid), time.perf_counter()
            anon = files = rss = 0
            main_anon = 0
            for p in tree:
                s = _status_kb(p)
                anon += s.get("Pss_Anon", 0)
                files += s.get("Pss_File", 0) + s.get("Pss_Shmem", 0)
                rss += s.get("Pss", 0)
                if p == self.pid:
                    main_anon = s.get("RssAnon", 0)
            for k, v in (("anon_tree", anon), ("anon_main", main_anon), ("file_shmem_tree", files), ("rss_tree", rss)):
                self.peak[k] = max(self.peak[k], v)
            time.sleep(self.period)


def run_case(mode: str, src: str, dst: str, size: int, workers: int, threads: int) -> dict:
    opts = {"mode": mode, "src": src, "dst": dst, "size": size, "workers": workers, "threads": threads}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(opts)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    sampler = Sampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed ({proc.returncode}): {err[-2000:]}")
    res = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    mib = {k: v / 1024 for k, v in sampler.peak.items()}
    n, sec = res["n"], res["seconds"]
    return {"mode": mode, "n": n, "peak_anon_mib": mib["anon_tree"], "peak_anon_main_mib": mib["anon_main"],
            "peak_file_shmem_mib": mib["file_shmem_tree"], "peak_rss_mib": mib["rss_tree"], "seconds": sec,
            "decode_img_s": n / sec["decode"], "craft_img_s": n / sec["craft"], "release_img_s": n / sec["release"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[2000, 10000, 50000], help="numbers of images")
    p.add_argument("--modes", nargs="+", choices=("disk", "memory"), default=["disk", "memory"])
    p.add_argument("--memory-max", type=int, default=10000, help="largest N for the in-memory mode (default 10000)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="decoding processes in disk mode (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the child (default 2)")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "miue-bench-folder"),
                   help="where the generated folders go (reused)")
    p.add_argument("--out", help="write results.json and results.md here")
    p.add_argument("--quick", action="store_true", help="CI: 200 and 400 images, both modes")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.memory_max = [200, 400], 400
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        src = make_folder(os.path.join(args.data_dir, f"src-{n}"), n)
        print(f"folder of {n} JPEGs ready ({time.perf_counter() - t:.0f} s)", flush=True)
        for mode in args.modes:
            if mode == "memory" and n > args.memory_max:
                continue
            with tempfile.TemporaryDirectory(dir=args.data_dir) as tmp:
                r = run_case(mode, src, os.path.join(tmp, "release"), args.image_size, args.workers, args.threads)
            rows.append(r)
            print(f"{mode:6} N={n:6d}: peak anon {r['peak_anon_mib']:7.0f} MiB, file/shared {r['peak_file_shmem_mib']:7.0f} MiB, "
                  f"pss {r['peak_rss_mib']:7.0f} MiB; decode {r['decode_img_s']:6.0f} img/s, craft {r['craft_img_s']:6.0f} "
                  f"img/s, release {r['release_img_s']:5.0f} img/s", flush=True)
    head = ("| mode | N | peak anonymous PSS MiB (all processes) | main process RssAnon | peak file-backed + shared PSS MiB "
            "| peak PSS MiB "
            "| decode img/s | craft img/s | release img/s | total s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['n']:,} | {r['peak_anon_mib']:.0f} | {r['peak_anon_main_mib']:.0f} | "
                     f"{r['peak_file_shmem_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r['decode_img_s']:.0f} | "
                     f"{r['craft_img_s']:.0f} | {r['release_img_s']:.0f} | {r['seconds']['total']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)

        from miue.env import environment

        meta = {**environment(), "image_size": args.image_size, "workers": args.workers, "threads": args.threads,
                "date": time.strftime("%Y-%m-%d")}
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
        with open(os.path.join(args.out, "results.md"), "w") as fh:
            fh.write(f"# bench_folder ({meta['date']}, {meta['cores']} cores, torch {meta['torch']})\n\n"
                     f"Folders of N generated 256-px-wide JPEGs, protected at {args.image_size}x{args.image_size}; "
                     "peaks sampled every 100 ms over the child's process tree.\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
