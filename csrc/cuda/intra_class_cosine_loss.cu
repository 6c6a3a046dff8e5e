// intra_class_cosine_loss on CUDA (docs/ops.md): O(B·D), no B×B term. Same outputs and
// conventions as csrc/cpu/intra_class_cosine_loss.cpp; oracle: miue/ops/reference.py::intra_class_fwd / _bwd.
//
// forward:  z, inv_norm and the float64 class sums/counts (grouped_normalize.cu), then the loss
//           -(sum_c ||S_c||^2 - n_c) / P, P = sum_c n_c (n_c - 1) (0 when P == 0), in double on
//           the device: one block per class computes ||S_c||^2 - n_c and n_c (n_c - 1), one
//           block adds them up in a fixed order (deterministic) and writes the 0-dim loss.
// backward: one warp per row: valid rows (inv > 0, 0 <= y < C) get
//           (S_y - (z_i . S_y) z_i) * inv_i * scale with scale = -2 grad / P, read on the
//           device; invalid rows, and every row when P == 0, get 0.
#include "common.cuh"

namespace miue {
namespace cuda {
namespace {

// Per class c: sq[c] = ||S_c||^2 - n_c and pairs[c] = n_c (n_c - 1), from the float64 sums.
__global__ void class_terms_kernel(const double* __restrict__ sums, const int64_t* __restrict__ counts, int64_t C,
                                   int64_t D, double* __restrict__ sq, int64_t* __restrict__ pairs) {
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {  // uniform over the block
    const double* s = sums + c * D;
    double acc = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) acc += s[d] * s[d];
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
      const int64_t n = counts[c];
      sq[c] = acc - static_cast<double>(n);
      pairs[c] = n * (n - 1);
    }
  }
}

// One block: loss = -(sum_c sq[c]) / (sum_c pairs[c]), or 0 when there is no pair.
template <typename acc_t>
__global__ void intra_loss_kernel(const double* __restrict__ sq, const int64_t* __restrict__ pairs, int64_t C,
                                  acc_t* __restrict__ loss) {
  double total = 0;
  int64_t npairs = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    total += sq[c];
    npairs += pairs[c];
  }
  total = block_sum(total);
  npairs = block_sum(npairs);
  if (threadIdx.x == 0) *loss = static_cast<acc_t>(npairs > 0 ? -total / static_cast<double>(npairs) : 0.0);
}

// One warp per row i.
template <typename scalar_t, typename label_t>
__global__ void intra_bwd_kernel(const scalar_t* __restrict__ z, const acc_of<scalar_t>* __restrict__ inv,
                                 const acc_of<scalar_t>* __restrict__ S, const label_t* __restrict__ y,
                                 const int64_t* __restrict__ pairs, ScalarArg grad, int64_t B, int64_t C, int64_t D,
                                 scalar_t* __restrict__ out) {
  using acc_t = acc_of<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t i = warp_row(blockIdx.x, kWarps, threadIdx.x);
  if (i >= B) return;
  const int64_t P = *pairs;
  const label_t yi = y[i];
  const acc_t ri = inv[i];
  scalar_t* o = out + i * D;
  if (P == 0 || !(ri > 0) || yi < 0 || static_cast<int64_t>(yi) >= C) {  // zero gradient
    for (int64_t d = lane; d < D; d += 32) o[d] = static_cast<scalar_t>(0.0f);
    return;
  }
  const double scale = -2.0 * grad.get() / static_cast<double>(P);
  const acc_t* s = S + static_cast<int64_t>(yi) * D;
  const scalar_t* zr = z + i * D;
  // dot and projection in double, as the CPU kernel does (the projection cancels along z_i)
  double dot = 0;
  for (int64_t d = lane; d < D; d += 32) dot += static_cast<double>(zr[d]) * static_cast<double>(s[d]);
  dot = warp_sum(dot);
  const double k = scale * static_cast<double>(ri);
  for (int64_t d = lane; d < D; d += 32)
    o[d] = static_cast<scalar_t>((static_cast<double>(s[d]) - dot * static_cast<double>(zr[d])) * k);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> intra_class_fwd_cuda(
    const at::Tensor& features_in, const at::Tensor& labels_in, int64_t num_classes) {
  check_loss_fwd_args(features_in, labels_in);
  TORCH_CHECK(num_classes >= 1, "num_classes must be >= 1, got ", num_classes);
  check_cuda(features_in, features_in, "features");
  check_cuda(labels_in, features_in, "labels");
  const c10::cuda::CUDAGuard guard(features_in.device());
  const auto features = features_in.contiguous();
  const auto labels = labels_in.contiguous();
  const auto acc = acc_type(features.scalar_type());
  const int64_t C = num_classes, D = features.size(1);
  auto [z, inv, sums, counts] = grouped_normalize_cuda_impl(features, labels, C);

  auto sq = at::empty({C}, sums.options());
  auto pairs = at::empty({C}, counts.options());
  auto loss = at::empty({}, features.options().dtype(acc));
  const auto stream = at::cuda::getCurrentCUDAStream();
  class_terms_kernel<<<static_cast<unsigned>(std::min<int64_t>(C, 65535)), kThreads, 0, stream>>>(
      sums.data_ptr<double>(), counts.data_ptr<int64_t>(), C, D, sq.data_ptr<double>(), pairs.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  AT_DISPATCH_FLOATING_TYPES(acc, "miue_intra_loss_cuda", [&] {
    intra_loss_kernel<scalar_t><<<1, kThreads, 0, stream>>>(sq.data_ptr<double>(), pairs.data_ptr<int64_t>(), C,
                                                              loss.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, z, inv, sums.to(acc), counts};
}

at::Tensor intra_class_bwd_cuda(const at::Tensor& grad, const at::Tensor& z_in, const at::Tensor& inv_in,
                                const at::Tensor& class_sum_in, const at::Tensor& class_count_in,
                                const at::Tensor& labels_in) {
  check_intra_bwd_args(grad, z_in, inv_in, class_sum_in, class_count_in, labels_in);
  const int64_t B = z_in.size(0), D = z_in.size(1);
  const int64_t C = class_sum_in.size(0);
  check_cuda(z_in, z_in, "z");
  check_cuda(labels_in, z_in, "labels");
  check_cuda(inv_in, z_in, "inv_norm");
  check_cuda(class_sum_in, z_in, "class_sum");
  check_cuda(class_count_in, z_in, "class_count");
  TORCH_CHECK(grad.device().is_cpu() || grad.device() == z_in.device(), "grad must be on the CPU or on ", z_in.device());
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto z = z_in.contiguous();
  const auto labels = labels_in.contiguous();
  const auto inv = inv_in.contiguous();
  const auto S = class_sum_in.contiguous();
  auto out = at::empty({B, D}, z.options());
  if (B == 0) return out;
  // P = sum_c n_c (n_c - 1), a 0-dim int64 tensor on the device (asynchronous)
  const at::Tensor pairs = (class_count_in * (class_count_in - 1)).sum();
  const ScalarHolder g = make_scalar(grad);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(grid_x(B, kWarps, "intra_class_bwd"));
  AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "miue_intra_bwd_cuda_labels", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "miue_intra_bwd_cuda", [&] {
      intra_bwd_kernel<scalar_t, index_t><<<grid, kThreads, 0, stream>>>(
          z.data_ptr<scalar_t>(), inv.data_ptr<acc_of<scalar_t>>(), S.data_ptr<acc_of<scalar_t>>(),
          labels.data_ptr<index_t>(), pairs.data_ptr<int64_t>(), g.arg, B, C, D, out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CUDA, m) {
  m.impl("intra_class_fwd", &intra_class_fwd_cuda);
  m.impl("intra_class_bwd", &intra_class_bwd_cuda);
}

}  // namespace cuda
}  // namespace miue
