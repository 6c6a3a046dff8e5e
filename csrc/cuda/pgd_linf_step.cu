// pgd_linf_step_ on CUDA (docs/ops.md): one signed-gradient step and the projection, one elementwise
// pass over delta, grad and clean (the kernel, shared with project_linf.cu: linf.cuh). Bitwise equal
// to csrc/cpu/pgd_linf_step.cpp; oracle: miue/ops/reference.py.
#include "linf.cuh"

namespace miue {
namespace cuda {
namespace {

void pgd_linf_step_cuda(at::Tensor& delta, const at::Tensor& grad, const at::Tensor& clean,
                        const at::Tensor& step_size, const at::Tensor& eps, double lo, double hi) {
  check_pgd(delta, clean, eps, lo, hi);
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must be floating point, got ", grad.scalar_type());
  check_same_dense_layout(delta, grad, "grad");
  check_scalar(step_size, delta, "step_size");
  const c10::cuda::CUDAGuard guard(delta.device());
  const ScalarHolder step = make_scalar(step_size), e = make_scalar(eps);
  check_eps(e);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "miue_pgd_cuda_delta", [&] {
    using delta_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "miue_pgd_cuda_grad", [&] {
      launch_pgd<delta_t, scalar_t, true>(delta, grad.data_ptr<scalar_t>(), clean, step.arg, e.arg, lo, hi);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CUDA, m) { m.impl("pgd_linf_step_", &pgd_linf_step_cuda); }

}  // namespace cuda
}  // namespace miue
