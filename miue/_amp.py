"""Where bf16 autocast runs (the ``amp`` option of crafting and of victims).

CUDA: bf16 autocast wherever the card supports bf16 (sm_80 and newer).
CPU: bf16 autocast only where the processor has native bf16 arithmetic (``amx_bf16`` or
``avx512_bf16`` in /proc/cpuinfo): oneDNN then runs convolutions and matmuls in bf16, about
2x the fp32 throughput of the small surrogates on an AMX machine (benchmarks/bench_craft.py).
Elsewhere bf16 would be emulated and slower than fp32, so ``amp`` falls back to fp32 with one
log line saying why. ``MIUE_CPU_BF16=0`` (or ``=1``) overrides the detection.

What runs in bf16 under autocast: the network's convolutions and linear layers (forward and
backward) and the features they produce. What stays fp32: batch norm statistics, the
cross-entropy and supcon/intra-class losses' accumulation (the compiled kernels take bf16
features and accumulate in fp32), the weights and optimiser, δ, the PGD update and the
clean images (uint8 / fp32).
"""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger("miue")

_NATIVE_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_reason() -> tuple[bool, str]:
    """(True, why) where CPU bf16 autocast is native and on; (False, why not) elsewhere."""
    env = os.environ.get("MIUE_CPU_BF16", "").strip()
    if env in ("0", "1"):
        return env == "1", f"MIUE_CPU_BF16={env}"
    if not torch.backends.mkldnn.is_available():
        return False, "this torch build has no oneDNN (mkldnn)"
    flags = _cpu_flags()
    have = [f for f in _NATIVE_FLAGS if f in flags]
    if not have:
        return False, "the CPU has no native bf16 (neither amx_bf16 nor avx512_bf16 in /proc/cpuinfo)"
    return True, "native bf16 on this CPU (" + ", ".join(have) + ")"


def cpu_bf16_supported() -> bool:
    return cpu_bf16_reason()[0]


_warned: set = set()


def precision(amp: bool, device: torch.device) -> dict:
    """What a run with ``amp`` asked for actually runs on ``device``, for its records:
    {"precision": "bf16" | "fp32"} plus "precision_reason" where bf16 was asked for and not run."""
    if not amp:
        return {"precision": "fp32"}
    if resolve_amp(True, device):
        return {"precision": "bf16"}
    device = torch.device(device)
    why = cpu_bf16_reason()[1] if device.type == "cpu" else f"no native bf16 on this {device.type} device"
    return {"precision": "fp32", "precision_reason": "amp asked for; " + why}


def resolve_amp(amp: bool, device: torch.device, what: str = "amp") -> bool:
    """The effective ``amp`` on ``device``: bf16 autocast where it is native, else False with one
    log line (per reason) saying why."""
    if not amp:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        try:  # native bf16 only (sm_80+): emulated bf16 is slower than fp32
            ok = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation argument
            ok = torch.cuda.is_bf16_supported()
        why = "this CUDA device has no native bf16 (needs sm_80 or newer)"
    elif device.type == "cpu":
        ok, why = cpu_bf16_reason()
    else:
        ok, why = False, f"bf16 autocast is not set up for {device.type} devices"
    if not ok and why not in _warned:
        _warned.add(why)
        log.warning("%s=True: running in fp32 instead of bf16 autocast: %s", what, why)
    return ok
