// The elementwise pass that pgd_linf_step_ (pgd_linf_step.cpp) and project_linf_ (project_linf.cpp)
// share on the CPU (docs/ops.md): one pass over delta, grad, clean. Bitwise equal to the fp32
// formula (fp64 for an fp64 delta). Reference: miue/ops/reference.py.
#pragma once

#include <algorithm>
#include <type_traits>

#include "common.h"

namespace miue {
namespace {

template <typename comp_t, typename clean_t>
inline comp_t clean_value(clean_t c) {
  if constexpr (std::is_same_v<clean_t, uint8_t>) {
    return static_cast<comp_t>(c) / static_cast<comp_t>(255);  // a true division, as specified
  } else {
    return static_cast<comp_t>(c);
  }
}

template <typename comp_t>
inline comp_t clamp_(comp_t v, comp_t lo, comp_t hi) {
  return std::min(std::max(v, lo), hi);  // NaN in v propagates, as torch.clamp
}

// One pass over the flat arrays; kStep = false is the projection alone. Branch-free so that
// the compiler vectorises it (sign as a difference of comparisons; clamps as min/max).
template <bool kStep, typename delta_t, typename grad_t, typename clean_t, typename comp_t>
void pgd_loop(delta_t* __restrict__ d, const grad_t* __restrict__ g, const clean_t* __restrict__ c, int64_t n,
              comp_t step, comp_t eps, comp_t lo, comp_t hi) {
  at::parallel_for(0, n, 32768, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      comp_t t = static_cast<comp_t>(d[k]);
      if constexpr (kStep) {
        const comp_t gv = static_cast<comp_t>(g[k]);
        const comp_t s = static_cast<comp_t>(static_cast<int>(gv > comp_t(0)) - static_cast<int>(gv < comp_t(0)));
        t = t - step * s;
      }
      t = clamp_(t, -eps, eps);
      const comp_t cv = clean_value<comp_t>(c[k]);
      d[k] = static_cast<delta_t>(clamp_(cv + t, lo, hi) - cv);
    }
  });
}

template <typename delta_t, typename grad_t>
void dispatch_clean(const at::Tensor& delta, const grad_t* g, const at::Tensor& clean, double step, double eps,
                    double lo, double hi, bool do_step) {
  using comp_t = std::conditional_t<std::is_same_v<delta_t, double>, double, float>;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, clean.scalar_type(), "miue_pgd_clean", [&] {
    auto* dp = delta.data_ptr<delta_t>();
    const auto* cp = clean.data_ptr<scalar_t>();
    const auto args = std::make_tuple(static_cast<comp_t>(step), static_cast<comp_t>(eps), static_cast<comp_t>(lo),
                                      static_cast<comp_t>(hi));
    if (do_step) {
      pgd_loop<true, delta_t, grad_t, scalar_t, comp_t>(dp, g, cp, delta.numel(), std::get<0>(args), std::get<1>(args),
                                                        std::get<2>(args), std::get<3>(args));
    } else {
      pgd_loop<false, delta_t, grad_t, scalar_t, comp_t>(dp, g, cp, delta.numel(), std::get<0>(args),
                                                         std::get<1>(args), std::get<2>(args), std::get<3>(args));
    }
  });
}

void check_pgd(const at::Tensor& delta, const at::Tensor& clean, const at::Tensor& eps, double lo, double hi) {
  TORCH_CHECK(at::isFloatingType(delta.scalar_type()), "delta must be floating point, got ", delta.scalar_type());
  TORCH_CHECK(clean.scalar_type() == at::kByte || at::isFloatingType(clean.scalar_type()),
              "clean must be uint8 or floating point, got ", clean.scalar_type());
  check_same_dense_layout(delta, clean, "clean");
  check_scalar(eps, delta, "eps");
  TORCH_CHECK(lo <= hi, "lo must be <= hi");
}

}  // namespace
}  // namespace miue
