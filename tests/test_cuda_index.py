"""The CUDA kernels' index arithmetic (csrc/cuda/index.cuh), compiled with g++ and run on the
host at the largest shapes: N = 50,000 CIFAR images (50,000 × 3 × 32 × 32) and 50,000 images
of 224 px (50,000 × 3 × 224 × 224 = 7.5e9 elements, past int32). Checks that the grids stay
within CUDA's limits, that the first and last element / row of the grid are the exact int64
values (no wrap of a uint32 product), and that the kernels' launch geometry (csrc/cuda:
256 threads, PGD 4 elements per thread, one warp per row) covers every element exactly once
at the edges. Also: every <<<>>> launch in csrc/cuda is followed by
C10_CUDA_KERNEL_LAUNCH_CHECK() (the static check of miue.aot, run by benchmarks/aot_check.py)."""

import os
import shutil
import subprocess

import pytest

from miue import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which("g++") or shutil.which("c++")

THREADS, UNROLL, WARPS = 256, 4, 8
SHAPES = {"cifar": 50_000 * 3 * 32 * 32, "224px": 50_000 * 3 * 224 * 224}

PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include "index.cuh"
using namespace miue::cuda;
int main(int argc, char** argv) {
  const int64_t n = std::atoll(argv[1]);
  const int64_t per_block = int64_t{THREADS} * UNROLL;
  const int64_t blocks = grid_blocks(n, per_block);
  const uint32_t last_block = static_cast<uint32_t>(blocks - 1);
  // first and last element of the pgd grid; last element of the last block's last slot
  std::printf("%lld %lld %lld %lld\n", (long long)blocks,
              (long long)unrolled_index(0, THREADS, UNROLL, 0, 0),
              (long long)unrolled_index(last_block, THREADS, UNROLL, UNROLL - 1, THREADS - 1),
              (long long)unrolled_index(last_block, THREADS, UNROLL, 0, 0));
  // warp-per-row kernels over n rows, and column blocks over n columns
  const int64_t row_blocks = grid_blocks(n, WARPS);
  std::printf("%lld %lld %lld\n", (long long)row_blocks,
              (long long)warp_row(static_cast<uint32_t>(row_blocks - 1), WARPS, THREADS - 1),
              (long long)block_col(static_cast<uint32_t>(grid_blocks(n, THREADS) - 1), THREADS, THREADS - 1));
  return 0;
}
"""


@pytest.fixture(scope="module")
def index_binary(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("cuda_index")
    src = d / "index_test.cpp"
    src.write_text(PROGRAM.replace("THREADS", str(THREADS)).replace("UNROLL", str(UNROLL)).replace("WARPS", str(WARPS)))
    exe = d / "index_test"
    subprocess.run([CXX, "-std=c++17", "-O2", "-Wall", "-Werror", f"-I{ROOT}/csrc/cuda", str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    return str(exe)


@pytest.mark.parametrize("name", SHAPES)
def test_index_helpers_at_the_largest_shapes(index_binary, name):
    n = SHAPES[name]
    out = subprocess.run([index_binary, str(n)], check=True, capture_output=True, text=True).stdout.split("\n")
    blocks, first, last, last_block_first = map(int, out[0].split())
    per_block = THREADS * UNROLL
    assert blocks == -(-n // per_block) <= 2**31 - 1
    assert first == 0
    assert last == blocks * per_block - 1 >= n - 1  # the grid reaches the last element...
    assert last_block_first == (blocks - 1) * per_block <= n - 1  # ...and its last block starts inside
    row_blocks, last_row, last_col = map(int, out[1].split())
    assert row_blocks == -(-n // WARPS) <= 2**31 - 1
    assert last_row == row_blocks * WARPS - 1 >= n - 1
    assert last_col == -(-n // THREADS) * THREADS - 1 >= n - 1
    if name == "224px":
        assert n > 2**31 and last > 2**32  # past int32 and uint32: int64 arithmetic is what makes this right


def test_kernel_geometry_matches_the_sources():
    """THREADS / UNROLL / WARPS above are the constants of csrc/cuda (so the test checks the real geometry)."""
    common = open(os.path.join(ROOT, "csrc", "cuda", "common.cuh")).read()
    pgd = open(os.path.join(ROOT, "csrc", "cuda", "linf.cuh")).read()  # the PGD step and projection's kernel
    assert f"constexpr int kThreads = {THREADS};" in common
    assert "constexpr int kWarps = kThreads / 32;" in common and THREADS // 32 == WARPS
    assert f"constexpr int kUnroll = {UNROLL};" in pgd
    assert "unrolled_index(blockIdx.x, blockDim.x, kUnroll, u, threadIdx.x)" in pgd


def test_every_launch_is_checked(tmp_path):
    folder = os.path.join(ROOT, "csrc", "cuda")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith((".cu", ".cuh")))
    assert any(f.endswith("linf.cuh") for f in files)  # the launch of the PGD step and projection
    assert aot.check_launches(files) == []
    # the check can fail: a launch without its check is reported
    bad = tmp_path / "bad.cu"
    bad.write_text("void f() {\n  k<<<1, 2, 0, s>>>(a, b);\n  other();\n  k<<<1, 2>>>(a);\n  C10_CUDA_KERNEL_LAUNCH_CHECK();\n}\n")
    assert len(aot.check_launches([str(bad)])) == 1
