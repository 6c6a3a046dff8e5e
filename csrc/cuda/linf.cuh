// The elementwise pass that pgd_linf_step_ (pgd_linf_step.cu) and project_linf_ (project_linf.cu)
// share on CUDA (docs/ops.md): one pass over delta, grad and clean, walked as flat arrays (they
// share one dense layout). Bitwise equal to csrc/cpu/linf.h (fp32 math, fp64 for an fp64 delta);
// oracle: miue/ops/reference.py.
//
//   t = d - step * sign(g)            (sign(NaN) = 0; the step is skipped by project_linf_)
//   t = min(max(t, -eps), eps)        (std::min/std::max semantics: a NaN t propagates)
//   c = clean                          (uint8: c / 255 as a correctly rounded division)
//   d = min(max(c + t, lo), hi) - c    (stored in delta's dtype)
//
// Every operation uses an explicitly rounded intrinsic, so no FMA contraction can change a
// result. step_size and eps are float64 tensors on the CPU (read on the host) or on delta's
// device (read by the kernel): no host sync either way.
#pragma once

#include <type_traits>

#include "common.cuh"

namespace miue {
namespace cuda {
namespace {

constexpr int kUnroll = 4;  // elements per thread (coalesced: stride blockDim.x)

__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// Exactly std::max / std::min (not fmaxf/fminf, which drop NaN): std::max(a, b) is
// (a < b) ? b : a and std::min(a, b) is (b < a) ? b : a.
template <typename T>
__device__ __forceinline__ T clamp_std(T v, T lo, T hi) {
  const T m = (v < lo) ? lo : v;
  return (hi < m) ? hi : m;
}

template <typename comp_t, typename clean_t>
__device__ __forceinline__ comp_t clean_value(clean_t c) {
  if constexpr (std::is_same_v<clean_t, uint8_t>) {
    return div_rn(static_cast<comp_t>(c), static_cast<comp_t>(255));  // a true division
  } else {
    return static_cast<comp_t>(c);
  }
}

template <typename delta_t, typename grad_t, typename clean_t, typename comp_t, bool kStep>
__global__ void pgd_kernel(delta_t* __restrict__ d, const grad_t* __restrict__ g, const clean_t* __restrict__ c,
                           int64_t n, ScalarArg step_arg, ScalarArg eps_arg, comp_t lo, comp_t hi) {
  const comp_t step = kStep ? static_cast<comp_t>(step_arg.get()) : comp_t(0);
  const comp_t eps = static_cast<comp_t>(eps_arg.get());
  comp_t dv[kUnroll], cv[kUnroll], sv[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {  // loads first, for memory-level parallelism
    const int64_t k = unrolled_index(blockIdx.x, blockDim.x, kUnroll, u, threadIdx.x);
    if (k < n) {
      dv[u] = static_cast<comp_t>(d[k]);
      cv[u] = clean_value<comp_t>(c[k]);
      if constexpr (kStep) {
        const comp_t gv = static_cast<comp_t>(g[k]);
        sv[u] = gv > comp_t(0) ? comp_t(1) : (gv < comp_t(0) ? comp_t(-1) : comp_t(0));
      }
    }
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t k = unrolled_index(blockIdx.x, blockDim.x, kUnroll, u, threadIdx.x);
    if (k < n) {
      comp_t t = dv[u];
      if constexpr (kStep) t = sub_rn(t, mul_rn(step, sv[u]));
      t = clamp_std(t, -eps, eps);
      d[k] = static_cast<delta_t>(sub_rn(clamp_std(add_rn(cv[u], t), lo, hi), cv[u]));
    }
  }
}

template <typename delta_t, typename grad_t, bool kStep>
void launch_pgd(at::Tensor& delta, const grad_t* g, const at::Tensor& clean, ScalarArg step, ScalarArg eps, double lo,
                double hi) {
  using comp_t = acc_of<delta_t>;
  const int64_t n = delta.numel();
  if (n == 0) return;
  const unsigned blocks = grid_x(n, int64_t{kThreads} * kUnroll, "pgd");
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, clean.scalar_type(), "miue_pgd_cuda_clean", [&] {
    pgd_kernel<delta_t, grad_t, scalar_t, comp_t, kStep><<<blocks, kThreads, 0, stream>>>(
        delta.data_ptr<delta_t>(), g, clean.data_ptr<scalar_t>(), n, step, eps, static_cast<comp_t>(lo),
        static_cast<comp_t>(hi));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void check_pgd(const at::Tensor& delta, const at::Tensor& clean, const at::Tensor& eps, double lo, double hi) {
  TORCH_CHECK(at::isFloatingType(delta.scalar_type()), "delta must be floating point, got ", delta.scalar_type());
  TORCH_CHECK(clean.scalar_type() == at::kByte || at::isFloatingType(clean.scalar_type()),
              "clean must be uint8 or floating point, got ", clean.scalar_type());
  check_cuda(delta, delta, "delta");
  check_same_dense_layout(delta, clean, "clean");
  check_scalar(eps, delta, "eps");
  TORCH_CHECK(lo <= hi, "lo must be <= hi");
}

// eps >= 0 can only be checked when eps is known on the host (a device value is not read back).
void check_eps(const ScalarHolder& e) {
  if (e.on_host) TORCH_CHECK(e.arg.value >= 0, "eps must be >= 0, got ", e.arg.value);
}

}  // namespace
}  // namespace cuda
}  // namespace miue
