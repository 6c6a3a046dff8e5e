"""Launch configurations of the Triton kernels: the one source of truth.

Every launcher in this package asks a function here for the meta-parameters it passes to its
kernel (the ``tl.constexpr`` arguments plus ``num_warps`` / ``num_stages``), and
``benchmarks/aot_check.py`` compiles, for sm_90 and sm_80, exactly what these functions
return (it records the launches the launchers make, see :func:`record_launches`), so the
ahead-of-time check cannot drift from what runs on a GPU.

Two tile sets:

* ``gpu``: what a GPU run uses (tensor-core sized tiles, column splits that fill the SMs);
* ``interp``: small tiles for the CPU interpreter (``TRITON_INTERPRET=1``), which costs about
  0.7 ms per program instance whatever its size.

On a GPU the ``gpu`` set is always used. Under the interpreter the default is ``interp``;
``MIUE_TRITON_TILES=gpu`` selects the GPU set there too, so that its numerics (tile edges,
column splits, the in-register backward branch) are tested on the CPU. The one thing the
interpreter cannot do is bf16 arithmetic (it stores bf16 as raw bits): bf16 dot operands are
widened to fp32 there, in both tile sets. fp16 dots keep fp16 operands (fp32 accumulation)
under ``gpu`` tiles, as on a GPU.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from ._common import interpreting, needs_i64, next_pow2

TILES_ENV = "MIUE_TRITON_TILES"

# Hot-path kernels (supcon forward/backward, PGD step, grouped normalize): aot_check fails on
# any register spill in these.
HOT_KERNELS = frozenset({
    "_supcon_fwd_kernel", "_supcon_finish_kernel", "_supcon_bwd_kernel", "_project_kernel",
    "_pgd_kernel", "_normalize_kernel", "_segment_scan_kernel", "_segment_sum_kernel",
})


def gpu_tiles() -> bool:
    """Whether the launchers use the GPU tile set (always on a GPU; under the interpreter only
    with ``MIUE_TRITON_TILES=gpu``). Read at every launch, so tests can switch it."""
    if not interpreting():
        return True
    value = os.environ.get(TILES_ENV, "").strip().lower()
    if value in ("", "interp", "interpreter"):
        return False
    if value == "gpu":
        return True
    raise ValueError(f"{TILES_ENV} must be 'gpu' or 'interp', got {os.environ[TILES_ENV]!r}")


def dot_operands_fp32(dtype: torch.dtype, gpu: bool | None = None) -> bool:
    """Whether ``tl.dot`` operands are widened to fp32 (CAST_FP32): always for fp32 inputs (IEEE
    precision, not TF32); for bf16 under the interpreter (no bf16 arithmetic there); for fp16
    under the interpreter with its own tiles. fp16/bf16 on a GPU use tensor cores with fp32
    accumulation."""
    gpu = gpu_tiles() if gpu is None else gpu
    if dtype == torch.float32:
        return True
    if not interpreting():
        return False
    return dtype == torch.bfloat16 or not gpu


def dot_precision(dtype: torch.dtype, gpu: bool | None = None) -> str:
    # "tf32" is ignored for fp16/bf16 operands; fp32 operands always use "ieee"
    return "ieee" if dot_operands_fp32(dtype, gpu) else "tf32"


# --------------------------------------------------------------------------- per kernel


# I64 (every kernel that indexes rows): int64 row offsets, set when an offset can pass 2**31
# (``extent``: one past the largest element offset of the launch's tensors, e.g. B·D).


def normalize_config(D: int, extent: int = 0) -> dict[str, Any]:
    """_normalize_kernel: rows per program and the column block (same on GPU and interpreter;
    at least 16 columns, so that small D share one compiled configuration)."""
    block_d = min(max(16, next_pow2(D)), 128)
    block_b = max(1, min(64, 4096 // block_d))
    return dict(BLOCK_B=block_b, BLOCK_D=block_d, I64=needs_i64(extent), num_warps=4)


def class_sums_config(D: int, extent: int = 0) -> dict[str, Any]:
    """_segment_scan_kernel and _segment_sum_kernel: rows per chunk and the column block."""
    return dict(CHUNK=64, BLOCK_D=min(max(16, next_pow2(D)), 64), I64=needs_i64(extent), num_warps=4)


def supcon_fwd_config(B: int, D: int, dtype: torch.dtype, gpu: bool | None = None) -> dict[str, Any]:
    """_supcon_fwd_kernel: a BLOCK_M × BLOCK_N tile of logits, its Gram accumulated over D in
    steps of BLOCK_K."""
    gpu = gpu_tiles() if gpu is None else gpu
    cast = dot_operands_fp32(dtype, gpu)
    i64 = needs_i64(B * D)
    if not gpu:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=max(16, min(next_pow2(D), 128)), CAST_FP32=cast,
                    PRECISION=dot_precision(dtype, gpu), I64=i64, num_warps=4, num_stages=3)
    # Chosen from the sm_90/sm_80 compiles of benchmarks/aot_check.py (results/aot-2026-11-30):
    # with 4 warps every 64-row tile and every fp32 BLOCK_K = 64 tile spilled (up to 1.4 KB
    # per thread on sm_80, 255 registers); 8 warps halve the per-thread tile. fp32 dots are
    # IEEE FMA loops (no tensor cores), so fp32 keeps 32 rows, BLOCK_K <= 32 and one stage.
    if dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=max(16, min(next_pow2(D), 32)), CAST_FP32=cast,
                    PRECISION=dot_precision(dtype, gpu), I64=i64, num_warps=8, num_stages=1)
    return dict(BLOCK_M=64 if B >= 2048 else 32, BLOCK_N=64, BLOCK_K=max(16, min(next_pow2(D), 64)), CAST_FP32=cast,
                PRECISION=dot_precision(dtype, gpu), I64=i64, num_warps=8, num_stages=2)


def supcon_fwd_splits(B: int, cfg: dict[str, Any], gpu: bool | None = None) -> tuple[int, int]:
    """(n_splits, cols_per_split): the columns are split so that small batches still fill the
    GPU (about two programs per SM of an H100); one split with the interpreter's tiles."""
    gpu = gpu_tiles() if gpu is None else gpu
    block_n = cfg["BLOCK_N"]
    row_blocks = -(-B // cfg["BLOCK_M"])
    n_splits = max(1, min(-(-B // block_n), 264 // row_blocks)) if gpu else 1
    per_split = -(-B // n_splits)  # ceil(B / n_splits), rounded up to whole column blocks
    cols_per_split = -(-per_split // block_n) * block_n
    return -(-B // cols_per_split), cols_per_split


def supcon_finish_config() -> dict[str, Any]:
    return dict(BLOCK=1024, num_warps=4)


def supcon_bwd_config(B: int, D: int, dtype: torch.dtype, gpu: bool | None = None) -> dict[str, Any]:
    """_supcon_bwd_kernel: BLOCK_M rows per program; for D <= 256 the BLOCK_M × D gradient
    accumulator stays in registers (IN_REGS) and the projection is fused, otherwise it goes
    through an fp32 buffer in BLOCK_D column chunks and _project_kernel finishes."""
    gpu = gpu_tiles() if gpu is None else gpu
    in_regs = next_pow2(D) <= 256
    block_d = max(16, next_pow2(D)) if in_regs else 128
    if gpu:
        # as the forward (see supcon_fwd_config): 8 warps; fp32 FMA dots with BLOCK_K <= 32, one stage
        # fp32: (16 rows x 32 columns) tiles; with 64 columns or 32 rows the FMA dot W·Z spilled
        fp32 = dtype == torch.float32
        block_m, block_n = (16, 32) if fp32 else ((16 if B <= 4096 else 32), 64)
        block_k = max(16, min(next_pow2(D), 32 if fp32 else 64))
        num_warps, num_stages = 8, (1 if fp32 else 2)
    else:
        block_m, block_n, block_k = 32, 32, max(16, min(next_pow2(D), 128))
        num_warps, num_stages = 4, 3
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, IN_REGS=in_regs,
                CAST_FP32=dot_operands_fp32(dtype, gpu), PRECISION=dot_precision(dtype, gpu), I64=needs_i64(B * D),
                num_warps=num_warps, num_stages=num_stages)


def project_config(extent: int = 0) -> dict[str, Any]:
    """_project_kernel (the backward's projection when D > 256)."""
    return dict(BLOCK_B=16, BLOCK_D=128, I64=needs_i64(extent), num_warps=8)  # 4 warps spilled 8 B on sm_90 (fp32)


def intra_bwd_config(D: int, extent: int = 0) -> dict[str, Any]:
    block_d = min(max(16, next_pow2(D)), 128)
    return dict(BLOCK_B=max(1, min(64, 4096 // block_d)), BLOCK_D=block_d, I64=needs_i64(extent), num_warps=4)


def pgd_config(delta_dtype: torch.dtype, clean_dtype: torch.dtype, do_step: bool, step_in_memory: bool,
               eps_in_memory: bool) -> dict[str, Any]:
    """_pgd_kernel: BLOCK elements per program and the constexpr branches (each scalar read
    from memory or passed by value)."""
    return dict(DO_STEP=do_step, STEP_IN_MEMORY=step_in_memory, EPS_IN_MEMORY=eps_in_memory,
                CLEAN_U8=clean_dtype == torch.uint8, F64=delta_dtype == torch.float64, BLOCK=2048, num_warps=4)


# --------------------------------------------------------------------------- launching


_RECORDING: list | None = None


def launch_device(args: tuple) -> torch.device | None:
    """The device a launch with these arguments must run on: that of its tensors. Raises if
    they are on different devices (a kernel would read another device's pointers)."""
    devices = {a.device for a in args if isinstance(a, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"a Triton launch got tensors on several devices: {sorted(map(str, devices))}")
    return next(iter(devices), None)


def launch(kernel, grid: tuple, args: tuple, meta: dict[str, Any]) -> None:
    """``kernel[grid](*args, **meta)`` on the device of the tensors in ``args``, not the current
    device (Triton launches on the current device and its current stream: with tensors on
    cuda:1 and cuda:0 current it would run on cuda:0 with cuda:1's pointers). Inside
    :func:`record_launches` the launch is recorded instead (the launchers then accept tensors
    on the ``meta`` device)."""
    if _RECORDING is not None:
        _RECORDING.append((kernel, tuple(grid), tuple(args), dict(meta)))
        return
    device = launch_device(args)
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **meta)
    else:
        kernel[grid](*args, **meta)


@contextlib.contextmanager
def record_launches():
    """Collects ``(kernel, grid, args, meta)`` for every launch instead of running it (used by
    miue/aot.py with ``meta`` tensors: nothing is allocated or computed)."""
    global _RECORDING
    prev, _RECORDING = _RECORDING, []
    try:
        yield _RECORDING
    finally:
        _RECORDING = prev
