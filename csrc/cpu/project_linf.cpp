// project_linf_ on the CPU (docs/ops.md): the projection onto the L∞ ball and the box, one pass
// over delta and clean (linf.h, shared with pgd_linf_step.cpp). Bitwise equal to the fp32
// formula (fp64 for an fp64 delta). Reference: miue/ops/reference.py.
#include "linf.h"

namespace miue {
namespace {

void project_linf_cpu(at::Tensor& delta, const at::Tensor& clean, const at::Tensor& eps, double lo, double hi) {
  check_pgd(delta, clean, eps, lo, hi);
  const double e = eps.item<double>();
  TORCH_CHECK(e >= 0, "eps must be >= 0, got ", e);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "miue_project_delta", [&] {
    dispatch_clean<scalar_t, scalar_t>(delta, static_cast<const scalar_t*>(nullptr), clean, 0.0, e, lo, hi, false);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CPU, m) { m.impl("project_linf_", &project_linf_cpu); }

}  // namespace miue
