// Shared helpers of the CUDA kernels of miue_C (csrc/cuda/*.cu).
//
// The CUDA ops compute exactly what the CPU ops in csrc/cpu/*.cpp compute, with the same
// conventions (csrc/common.h; oracle: miue/ops/reference.py). None of them synchronises with the
// host: scalars that live on the device (the upstream gradient, PGD's step size and eps) are
// read by the kernels through a pointer, and no output shape depends on the data, so a
// crafting step can be captured in a CUDA graph.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <type_traits>

#include "common.h"
#include "index.cuh"

namespace miue {
namespace cuda {

constexpr int kThreads = 256;             // threads per block of every kernel
constexpr int kWarps = kThreads / 32;     // warps per block (row kernels: one warp per row)

// acc type of a storage type (common.h): double for double, float otherwise.
template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline void check_cuda(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), ", got ", t.device());
}

inline int64_t ceil_div(int64_t a, int64_t b) { return grid_blocks(a, b); }

// gridDim.x for n items at per_block items per block, checked against the CUDA limit.
inline unsigned grid_x(int64_t n, int64_t per_block, const char* what) {
  const int64_t blocks = grid_blocks(n, per_block);
  TORCH_CHECK(blocks <= kMaxGridX, what, ": ", n, " items need ", blocks, " blocks, more than CUDA's grid limit");
  return static_cast<unsigned>(blocks);
}

// A float64 scalar argument that is either known on the host (a CPU tensor: reading it costs
// no GPU sync) or lives on the device (read by the kernel through `ptr`).
struct ScalarArg {
  const double* ptr = nullptr;
  double value = 0;
  __device__ __forceinline__ double get() const { return ptr != nullptr ? *ptr : value; }
};

// Holds the float64 device copy a ScalarArg points to (when the tensor is on the device).
struct ScalarHolder {
  at::Tensor keep;
  ScalarArg arg;
  bool on_host = false;
};

// `t`: a one-element tensor on the CPU or on the device of the op (checked by the caller).
inline ScalarHolder make_scalar(const at::Tensor& t) {
  ScalarHolder h;
  if (t.device().is_cpu()) {
    h.arg.value = t.item<double>();  // a host tensor: no device sync
    h.on_host = true;
  } else {
    h.keep = t.reshape({1}).to(at::kDouble);  // asynchronous; a no-op when already float64
    h.arg.ptr = h.keep.data_ptr<double>();
  }
  return h;
}

// exp in the acc type (expf for float, as std::exp(float) on the CPU).
__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in
// thread 0. Fixed reduction order: deterministic. Every thread of the block must call it.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x >> 5;
  v = threadIdx.x < nwarps ? partial[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();  // `partial` may be reused by the next call
  return v;
}

// Row normalisation (grouped_normalize.cu), shared by the loss ops. `features` and `labels` must be
// contiguous CUDA tensors. Returns z (features' dtype) and inv_norm (acc type).
std::tuple<at::Tensor, at::Tensor> normalize_cuda(const at::Tensor& features);

// Row normalisation plus the per-class sums of z (C x D, float64, as the CPU keeps them) and
// counts (C, int64), skipping null rows and labels outside [0, C). Uses float atomics unless
// deterministic algorithms are requested, then a sort-based pass that adds each class's rows
// in increasing row order (the CPU's order). Returns (z, inv_norm, class_sum_f64, class_count).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grouped_normalize_cuda_impl(const at::Tensor& features,
                                                                                       const at::Tensor& labels,
                                                                                       int64_t num_classes);

}  // namespace cuda
}  // namespace miue
