"""Keep glibc's malloc from returning large tensors' memory to the kernel after every step.

A PGD or training step on the CPU allocates activation and gradient tensors of several MiB and
frees them at the end of the step. glibc serves blocks above its mmap threshold (128 KiB,
rising to at most 32 MiB as big blocks are freed) with fresh ``mmap`` calls and unmaps them on
free, so the next step page-faults every page in again and the kernel zeroes it: on this
project's 2-core machine, the ResNet-8 surrogate's PGD pass took about 23,000 (bf16) to 43,000
(fp32) minor page faults per 512-image batch, 16-17% of its CPU time in the kernel, and ran
roughly 10-30% slower than with the memory kept (``benchmarks/bench_malloc.py`` measures it
side by side; docs/performance.md has the table).

``tune_cpu_allocator()`` raises glibc's mmap threshold to 1 GiB and its trim threshold to 2 GiB
(``mallopt``), so freed blocks stay in the process's heap and are reused. Its cost: the process
keeps up to its peak heap size after a step (it is not returned to the system until the process
exits), which is what a crafting or training loop reuses anyway, and the peak grows a little
(heap fragmentation; ``bench_folder.py --quick`` in memory mode: 787 -> 951 MiB at 400 images).
It is process-wide, so a library call does not apply it unasked: the ``miue`` command line
(and so the demo) opts in for its own process and its workers; a Python caller opts in with
``miue.tune_cpu_allocator()`` (once, before crafting) or ``MIUE_MALLOC_TUNING=1``. Once opted
in, the crafting engine (except with ``storage="disk"``, the memory-frugal mode) and victim
training apply it when they run on the CPU. Applied once; a no-op where the C library is not
glibc. ``MIUE_MALLOC_TUNING=0`` turns it off everywhere, the command line included.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("miue")

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below this come from the heap (setting it also stops glibc's dynamic rise)
TRIM_THRESHOLD = 1 << 31

_state: dict = {}


def _glibc():
    """The process's glibc (None where the C library is not glibc: musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None


ENV = "MIUE_MALLOC_TUNING"


def opt_in_for_this_process() -> None:
    """The command line's opt-in: ``MIUE_MALLOC_TUNING=1`` unless the user set it (so spawned
    worker processes inherit the choice)."""
    os.environ.setdefault(ENV, "1")


def tune_if_opted_in() -> bool:
    """What the engine and victim training call on the CPU: tune only if this process opted in
    (``MIUE_MALLOC_TUNING=1``, the command line, or an earlier :func:`tune_cpu_allocator`)."""
    if "on" in _state:
        return _state["on"]
    if os.environ.get(ENV, "").strip() != "1":
        return False
    return tune_cpu_allocator()


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (see the module's docstring): an
    explicit opt-in for Python callers (about 10-30% off a CPU PGD pass). Returns whether the
    tuning is in effect; False with ``MIUE_MALLOC_TUNING=0`` or without glibc."""
    if "on" in _state:
        return _state["on"]
    if os.environ.get("MIUE_MALLOC_TUNING", "").strip() == "0":
        _state["on"] = False
        log.info("miue: glibc malloc tuning off (MIUE_MALLOC_TUNING=0)")
        return False
    libc = _glibc()
    ok = bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
              and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["on"] = ok
    if ok:
        log.info("miue: glibc malloc keeps freed tensor memory for reuse (mmap threshold 1 GiB, "
                 "trim threshold 2 GiB; MIUE_MALLOC_TUNING=0 turns it off)")
    return ok
