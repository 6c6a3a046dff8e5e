// Index arithmetic of the CUDA kernels, host- and device-callable so that it is tested on the
// host with the largest shapes (tests/test_cuda_index.py compiles this header with g++).
// Everything is int64: a flat index of a 50,000 × 3 × 224 × 224 dataset (7.5e9 elements)
// does not fit in int32, and a product of two uint32 built-ins must not wrap.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MIUE_HD __host__ __device__ __forceinline__
#else
#define MIUE_HD inline
#endif

namespace miue {
namespace cuda {

constexpr int64_t kMaxGridX = 2147483647;  // gridDim.x limit (2^31 - 1)
constexpr int64_t kMaxGridYZ = 65535;       // gridDim.y / gridDim.z limit

// Blocks needed for n items at per_block items per block.
MIUE_HD int64_t grid_blocks(int64_t n, int64_t per_block) { return (n + per_block - 1) / per_block; }

// Element handled by unroll slot u of thread `thread` in block `block` of an elementwise kernel
// whose blocks own threads*unroll consecutive elements, strided by `threads` (coalesced).
MIUE_HD int64_t unrolled_index(uint32_t block, uint32_t threads, int64_t unroll, int64_t u, uint32_t thread) {
  return static_cast<int64_t>(block) * static_cast<int64_t>(threads) * unroll + u * static_cast<int64_t>(threads) +
         static_cast<int64_t>(thread);
}

// Row owned by the warp of `thread` in block `block` (one warp per row).
MIUE_HD int64_t warp_row(uint32_t block, int64_t warps_per_block, uint32_t thread) {
  return static_cast<int64_t>(block) * warps_per_block + static_cast<int64_t>(thread >> 5);
}

// Column of `thread` in block `block` (blocks of `threads` columns).
MIUE_HD int64_t block_col(uint32_t block, uint32_t threads, uint32_t thread) {
  return static_cast<int64_t>(block) * static_cast<int64_t>(threads) + static_cast<int64_t>(thread);
}

}  // namespace cuda
}  // namespace miue
