// grouped_normalize on CUDA (docs/ops.md), plus the row-normalisation and per-class-sum helpers
// the CUDA loss ops share. Same outputs as csrc/cpu/grouped_normalize.cpp; oracle:
// miue/ops/reference.py::grouped_normalize.
//
// * Normalisation: one warp per row. The sum of squares is accumulated in double for every
//   dtype (as the CPU does), r = 1/sqrt(sumsq) is rounded once to the acc type, and
//   z = (acc_t)f * r is stored in the input dtype. Null rows (norm < 1e-12) get r = 0, z = 0.
// * Class sums (float64 buffer, cast to the acc type by the caller, like the CPU):
//   - default: fused into the normalisation kernel with atomicAdd (order-dependent rounding);
//   - deterministic mode: rows are stably sorted by label (invalid rows sent past the last
//     class), class offsets come from a binary search, and one block per (class, column chunk)
//     adds the class's rows in increasing row order: the same sums on every run (deterministic),
//     not bitwise the CPU's: the warp reduces the sum of squares in another order than the
//     CPU's partial sums, and nvcc may fuse the double multiply-adds, so r and z can differ from
//     the CPU's by an ulp.
#include "common.cuh"

namespace miue {
namespace cuda {
namespace {

// kSums: also accumulate class sums/counts with atomics (y, C, sums, counts unused otherwise).
template <typename scalar_t, typename label_t, bool kSums>
__global__ void normalize_rows_kernel(const scalar_t* __restrict__ f, scalar_t* __restrict__ z,
                                      acc_of<scalar_t>* __restrict__ inv, int64_t B, int64_t D,
                                      const label_t* __restrict__ y, int64_t C, double* __restrict__ sums,
                                      int64_t* __restrict__ counts) {
  using acc_t = acc_of<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t i = warp_row(blockIdx.x, kWarps, threadIdx.x);
  if (i >= B) return;  // the whole warp leaves together
  const scalar_t* row = f + i * D;
  double ss = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const double v = static_cast<double>(row[d]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const double norm = sqrt(ss);
  const acc_t r = norm >= kNullNorm ? static_cast<acc_t>(1.0 / norm) : acc_t(0);
  if (lane == 0) inv[i] = r;

  bool counted = false;
  int64_t c = 0;
  if constexpr (kSums) {
    const label_t yi = y[i];
    counted = r > 0 && yi >= 0 && static_cast<int64_t>(yi) < C;  // never index with a bad label
    c = static_cast<int64_t>(yi);
    if (counted && lane == 0) atomicAdd(reinterpret_cast<unsigned long long*>(counts + c), 1ULL);
  }
  scalar_t* zr = z + i * D;
  for (int64_t d = lane; d < D; d += 32) {
    const acc_t v = static_cast<acc_t>(row[d]) * r;
    zr[d] = static_cast<scalar_t>(v);
    if constexpr (kSums) {
      if (counted) atomicAdd(sums + c * D + d, static_cast<double>(v));
    }
  }
}

// Deterministic class sums: class c owns rows perm[offsets[c] .. offsets[c+1]) (increasing
// row order, a stable sort); each thread owns one column and adds them in that order.
template <typename scalar_t>
__global__ void class_sums_sorted_kernel(const scalar_t* __restrict__ f, const acc_of<scalar_t>* __restrict__ inv,
                                         const int64_t* __restrict__ perm, const int64_t* __restrict__ offsets,
                                         int64_t C, int64_t D, double* __restrict__ sums) {
  using acc_t = acc_of<scalar_t>;
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    const int64_t b = offsets[c], e = offsets[c + 1];
    for (int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; d < D;
         d += static_cast<int64_t>(gridDim.y) * blockDim.x) {
      double s = 0;
      for (int64_t k = b; k < e; ++k) {
        const int64_t i = perm[k];
        s += static_cast<double>(static_cast<acc_t>(f[i * D + d]) * inv[i]);
      }
      sums[c * D + d] = s;
    }
  }
}

// Launches the normalisation kernel; sums/counts non-null selects the fused atomic sums.
void launch_normalize(const at::Tensor& features, at::Tensor& z, at::Tensor& inv, const at::Tensor* labels,
                      int64_t C, at::Tensor* sums, at::Tensor* counts) {
  const int64_t B = features.size(0), D = features.size(1);
  if (B == 0) return;
  const dim3 grid(grid_x(B, kWarps, "normalize"));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "miue_normalize_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const scalar_t* fp = features.data_ptr<scalar_t>();
    scalar_t* zp = z.data_ptr<scalar_t>();
    acc_t* ip = inv.data_ptr<acc_t>();
    if (labels == nullptr) {
      normalize_rows_kernel<scalar_t, int64_t, false>
          <<<grid, kThreads, 0, stream>>>(fp, zp, ip, B, D, nullptr, 0, nullptr, nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      AT_DISPATCH_INDEX_TYPES(labels->scalar_type(), "miue_normalize_cuda_labels", [&] {
        normalize_rows_kernel<scalar_t, index_t, true><<<grid, kThreads, 0, stream>>>(
            fp, zp, ip, B, D, labels->data_ptr<index_t>(), C, sums->data_ptr<double>(), counts->data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> normalize_cuda(const at::Tensor& features) {
  const int64_t B = features.size(0), D = features.size(1);
  auto z = at::empty({B, D}, features.options());
  auto inv = at::empty({B}, features.options().dtype(acc_type(features.scalar_type())));
  launch_normalize(features, z, inv, nullptr, 0, nullptr, nullptr);
  return {z, inv};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grouped_normalize_cuda_impl(const at::Tensor& features,
                                                                                       const at::Tensor& labels,
                                                                                       int64_t C) {
  const int64_t B = features.size(0), D = features.size(1);
  auto sums = at::zeros({C, D}, features.options().dtype(at::kDouble));
  auto counts = at::zeros({C}, features.options().dtype(at::kLong));
  if (!at::globalContext().deterministicAlgorithms()) {
    auto z = at::empty({B, D}, features.options());
    auto inv = at::empty({B}, features.options().dtype(acc_type(features.scalar_type())));
    launch_normalize(features, z, inv, &labels, C, &sums, &counts);
    return {z, inv, sums, counts};
  }

  auto [z, inv] = normalize_cuda(features);
  if (B == 0) return {z, inv, sums, counts};
  // Sort key: the label of a counted row, C for the others (sorted past every class).
  const auto yl = labels.to(at::kLong);
  const auto counted = inv.gt(0).logical_and(yl.ge(0)).logical_and(yl.lt(C));
  const auto key = yl.masked_fill(counted.logical_not(), C);
  const auto sorted = at::sort(key, /*stable=*/std::optional<bool>(true), /*dim=*/0, /*descending=*/false);
  const at::Tensor& sorted_key = std::get<0>(sorted);
  const at::Tensor perm = std::get<1>(sorted).contiguous();
  // offsets[c] = first sorted position whose key is >= c (c = 0..C): no atomics involved.
  const at::Tensor offsets = at::searchsorted(sorted_key, at::arange(C + 1, key.options())).contiguous();
  counts.copy_(offsets.slice(0, 1, C + 1) - offsets.slice(0, 0, C));

  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(C, 65535)),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(D, kThreads), 65535)));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "miue_class_sums_cuda", [&] {
    class_sums_sorted_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        features.data_ptr<scalar_t>(), inv.data_ptr<acc_of<scalar_t>>(), perm.data_ptr<int64_t>(),
        offsets.data_ptr<int64_t>(), C, D, sums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {z, inv, sums, counts};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grouped_normalize_cuda(const at::Tensor& features_in,
                                                                                  const at::Tensor& labels_in,
                                                                                  int64_t num_classes) {
  check_features(features_in);
  check_labels(labels_in, features_in);
  TORCH_CHECK(num_classes >= 1, "num_classes must be >= 1, got ", num_classes);
  check_cuda(features_in, features_in, "features");
  check_cuda(labels_in, features_in, "labels");
  const c10::cuda::CUDAGuard guard(features_in.device());
  const auto features = features_in.contiguous();
  const auto labels = labels_in.contiguous();
  auto [z, inv, sums, counts] = grouped_normalize_cuda_impl(features, labels, num_classes);
  return {z, inv, sums.to(acc_type(features.scalar_type())), counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CUDA, m) { m.impl("grouped_normalize", &grouped_normalize_cuda); }

}  // namespace cuda
}  // namespace miue
