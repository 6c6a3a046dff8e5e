// intra_class_cosine_loss on the CPU (docs/ops.md): O(B·D), no B×B term.
// Reference: miue/ops/reference.py::intra_class_fwd / intra_class_bwd.
#include "common.h"

namespace miue {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> intra_class_fwd_cpu(const at::Tensor& features_in,
                                                                                           const at::Tensor& labels_in,
                                                                                           int64_t num_classes) {
  check_loss_fwd_args(features_in, labels_in);
  TORCH_CHECK(num_classes >= 1, "num_classes must be >= 1, got ", num_classes);
  const auto features = features_in.contiguous();
  const auto labels = labels_in.contiguous();
  const auto acc = acc_type(features.scalar_type());
  auto [z, inv] = normalize_cpu(features);
  auto [sums, counts] = class_sums_cpu(features, inv, labels, num_classes);
  // loss = -(sum_c ||S_c||^2 - n_c) / P, from the double-precision sums.
  const double* sp = sums.data_ptr<double>();
  const int64_t* cp = counts.data_ptr<int64_t>();
  const int64_t D = features.size(1);
  double total = 0;
  int64_t pairs = 0;
  for (int64_t c = 0; c < num_classes; ++c) {
    if (cp[c] == 0) continue;
    double sq = 0;
    for (int64_t d = 0; d < D; ++d) sq += sp[c * D + d] * sp[c * D + d];
    total += sq - static_cast<double>(cp[c]);
    pairs += cp[c] * (cp[c] - 1);
  }
  const double loss = pairs > 0 ? -total / static_cast<double>(pairs) : 0.0;
  return {at::full({}, loss, features.options().dtype(acc)), z, inv, sums.to(acc), counts};
}

at::Tensor intra_class_bwd_cpu(const at::Tensor& grad, const at::Tensor& z_in, const at::Tensor& inv_in,
                               const at::Tensor& class_sum_in, const at::Tensor& class_count_in, const at::Tensor& labels_in) {
  check_intra_bwd_args(grad, z_in, inv_in, class_sum_in, class_count_in, labels_in);
  const int64_t B = z_in.size(0), D = z_in.size(1);
  const int64_t C = class_sum_in.size(0);
  const auto z = z_in.contiguous();
  const auto labels = labels_in.contiguous();
  const auto inv = inv_in.contiguous();
  const auto S = class_sum_in.contiguous();
  const auto counts = class_count_in.contiguous();
  const int64_t* cp = counts.data_ptr<int64_t>();
  int64_t pairs = 0;
  for (int64_t c = 0; c < C; ++c) pairs += cp[c] * (cp[c] - 1);
  auto out = at::zeros({B, D}, z.options());
  if (pairs == 0) return out;
  const double scale = -2.0 * grad.item<double>() / static_cast<double>(pairs);

  AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "miue_intra_bwd_labels", [&] {
    const index_t* y = labels.data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "miue_intra_bwd_cpu", [&] {
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const scalar_t* zp = z.data_ptr<scalar_t>();
      const acc_t* ip = inv.data_ptr<acc_t>();
      const acc_t* sp = S.data_ptr<acc_t>();
      scalar_t* op = out.data_ptr<scalar_t>();
      at::parallel_for(0, B, std::max<int64_t>(1, 16384 / D), [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0; i < b1; ++i) {
          const index_t yi = y[i];
          if (!(ip[i] > 0) || yi < 0 || static_cast<int64_t>(yi) >= C) continue;  // zero gradient
          const acc_t* s = sp + static_cast<int64_t>(yi) * D;
          const scalar_t* zr = zp + i * D;
          // S_y - (z·S_y) z nearly cancels when z is close to its class direction: in double
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(zr[d]) * static_cast<double>(s[d]);
          const double k = scale * static_cast<double>(ip[i]);
          for (int64_t d = 0; d < D; ++d)
            op[i * D + d] = static_cast<scalar_t>((static_cast<double>(s[d]) - dot * static_cast<double>(zr[d])) * k);
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CPU, m) {
  m.impl("intra_class_fwd", &intra_class_fwd_cpu);
  m.impl("intra_class_bwd", &intra_class_bwd_cpu);
}

}  // namespace miue
