// project_linf_ on CUDA (docs/ops.md): the projection onto the L∞ ball and the box, the PGD step's
// kernel without the step (linf.cuh, shared with pgd_linf_step.cu). Bitwise equal to
// csrc/cpu/project_linf.cpp; oracle: miue/ops/reference.py.
#include "linf.cuh"

namespace miue {
namespace cuda {
namespace {

void project_linf_cuda(at::Tensor& delta, const at::Tensor& clean, const at::Tensor& eps, double lo, double hi) {
  check_pgd(delta, clean, eps, lo, hi);
  const c10::cuda::CUDAGuard guard(delta.device());
  const ScalarHolder e = make_scalar(eps);
  check_eps(e);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "miue_project_cuda_delta", [&] {
    launch_pgd<scalar_t, scalar_t, false>(delta, static_cast<const scalar_t*>(nullptr), clean, ScalarArg{}, e.arg,
                                          lo, hi);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CUDA, m) { m.impl("project_linf_", &project_linf_cuda); }

}  // namespace cuda
}  // namespace miue
