// pgd_linf_step_ on the CPU (docs/ops.md): one signed-gradient step and the projection, one pass
// over delta, grad and clean (linf.h, shared with project_linf.cpp). Bitwise equal to the fp32
// formula (fp64 for an fp64 delta). Reference: miue/ops/reference.py.
#include "linf.h"

namespace miue {
namespace {

void pgd_linf_step_cpu(at::Tensor& delta, const at::Tensor& grad, const at::Tensor& clean, const at::Tensor& step_size,
                       const at::Tensor& eps, double lo, double hi) {
  check_pgd(delta, clean, eps, lo, hi);
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must be floating point, got ", grad.scalar_type());
  check_same_dense_layout(delta, grad, "grad");
  check_scalar(step_size, delta, "step_size");
  const double step = step_size.item<double>(), e = eps.item<double>();
  TORCH_CHECK(e >= 0, "eps must be >= 0, got ", e);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "miue_pgd_delta", [&] {
    using delta_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "miue_pgd_grad", [&] {
      dispatch_clean<delta_t, scalar_t>(delta, grad.data_ptr<scalar_t>(), clean, step, e, lo, hi, true);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CPU, m) { m.impl("pgd_linf_step_", &pgd_linf_step_cpu); }

}  // namespace miue
