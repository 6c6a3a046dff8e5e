"""glibc malloc tuning (miue/_malloc.py): process-wide, so every check runs in a fresh
subprocess. The effect is measured, not assumed: with glibc's defaults each alloc/free cycle
of a 64 MiB tensor page-faults all its pages in again; with the tuning only the first does."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only"),
              pytest.mark.slow]  # fresh processes

CYCLES = """
import json, resource, sys
import torch
from miue import _malloc
on = _malloc.tune_cpu_allocator() if sys.argv[1] == "tune" else False
def cycle():
    t = torch.empty(16 * 1024 * 1024)  # 64 MiB: far above glibc's default mmap threshold
    t.fill_(1.0)
    s = float(t[::4096].sum())
    del t
    return s
for _ in range(10):  # warm-up: glibc's memalign needs a free chunk a little larger than the request,
    cycle()  # which the heap has once a few freed blocks have coalesced
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print(json.dumps({"on": on, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0,
                  "again": _malloc.tune_cpu_allocator() if on else None}))
"""


def _run(code, *args, _env=None, **env):
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ if _env is None else _env, OMP_NUM_THREADS="1", **env))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc():
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "gnu_get_libc_version")
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not _glibc(), reason="not glibc")
def test_tuning_stops_the_page_faults_of_every_large_alloc_free_cycle():
    pages = 64 * 1024 * 1024 // 4096  # 16,384 pages per cycle
    default = _run(CYCLES, "none")
    tuned = _run(CYCLES, "tune")
    assert tuned["on"] is True and tuned["again"] is True  # idempotent: the second call keeps it on
    assert default["faults"] > 5 * pages  # re-faulted on (nearly) every one of the 10 cycles
    assert tuned["faults"] < pages // 4  # the heap keeps the blocks: no fresh pages once warmed up


@pytest.mark.skipif(not _glibc(), reason="not glibc")
def test_the_env_switch_turns_the_tuning_off():
    off = _run(CYCLES, "tune", MIUE_MALLOC_TUNING="0")
    assert off["on"] is False and off["faults"] > 5 * 64 * 1024 * 1024 // 4096


ENGINE = """
import json
import torch
from miue import _malloc, craft_fast
x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
y = torch.arange(40) % 4
assert "on" not in _malloc._state
craft_fast(x, y, preset="cnn", rounds=1, pgd_steps=1, device="cpu", progress=False)
print(json.dumps({"on": _malloc._state.get("on")}))
"""


@pytest.mark.skipif(not _glibc(), reason="not glibc")
def test_crafting_on_the_cpu_applies_the_tuning_only_when_opted_in():
    """A library call leaves the process's allocator alone unless asked (MIUE_MALLOC_TUNING=1,
    the command line, or miue.tune_cpu_allocator()); the command line opts in."""
    env = {k: v for k, v in os.environ.items() if k != "MIUE_MALLOC_TUNING"}
    assert _run(ENGINE, _env=env)["on"] is None  # untouched
    assert _run(ENGINE, MIUE_MALLOC_TUNING="1")["on"] is True
    assert _run(ENGINE, MIUE_MALLOC_TUNING="0")["on"] is None  # off: never applied
    assert _run(CLI_OPT_IN, _env=env)["env"] == "1"


CLI_OPT_IN = """
import json, os, sys
from unittest import mock
import miue.cli as cli
with mock.patch.object(cli, "main", lambda argv=None: 0):
    cli.entry()
print(json.dumps({"env": os.environ.get("MIUE_MALLOC_TUNING")}))
"""
