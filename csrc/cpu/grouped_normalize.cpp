// grouped_normalize on the CPU (docs/ops.md), plus the row-normalisation and per-class-sum
// helpers the loss kernels share. Reference: miue/ops/reference.py::grouped_normalize.
#include <cmath>
#include <vector>

#include "common.h"

namespace miue {
namespace {

// Sum of squares of a row in double, four independent partial sums (vectorisable).
template <typename scalar_t>
inline double row_sumsq(const scalar_t* row, int64_t D) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) {
    const double v0 = static_cast<double>(row[d]), v1 = static_cast<double>(row[d + 1]);
    const double v2 = static_cast<double>(row[d + 2]), v3 = static_cast<double>(row[d + 3]);
    s0 += v0 * v0;
    s1 += v1 * v1;
    s2 += v2 * v2;
    s3 += v3 * v3;
  }
  for (; d < D; ++d) {
    const double v = static_cast<double>(row[d]);
    s0 += v * v;
  }
  return (s0 + s1) + (s2 + s3);
}

template <typename label_t>
inline bool counted(label_t y, int64_t C, double inv) {
  return inv > 0 && y >= 0 && static_cast<int64_t>(y) < C;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> normalize_cpu(const at::Tensor& features) {
  const int64_t B = features.size(0), D = features.size(1);
  auto z = at::empty({B, D}, features.options());
  auto inv = at::empty({B}, features.options().dtype(acc_type(features.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "miue_normalize_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* f = features.data_ptr<scalar_t>();
    scalar_t* zp = z.data_ptr<scalar_t>();
    acc_t* ip = inv.data_ptr<acc_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 16384 / D), [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) {
        const scalar_t* row = f + i * D;
        const double norm = std::sqrt(row_sumsq(row, D));
        const acc_t r = norm >= kNullNorm ? static_cast<acc_t>(1.0 / norm) : acc_t(0);
        ip[i] = r;
        scalar_t* zr = zp + i * D;
        for (int64_t d = 0; d < D; ++d) zr[d] = static_cast<scalar_t>(static_cast<acc_t>(row[d]) * r);
      }
    });
  });
  return {z, inv};
}

std::tuple<at::Tensor, at::Tensor> class_sums_cpu(const at::Tensor& features, const at::Tensor& inv,
                                                  const at::Tensor& labels, int64_t C) {
  const int64_t B = features.size(0), D = features.size(1);
  auto sums = at::zeros({C, D}, features.options().dtype(at::kDouble));
  auto counts = at::zeros({C}, features.options().dtype(at::kLong));
  double* sp = sums.data_ptr<double>();
  int64_t* cp = counts.data_ptr<int64_t>();
  AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "miue_class_sums_labels", [&] {
    const index_t* y = labels.data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "miue_class_sums_cpu", [&] {
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const scalar_t* f = features.data_ptr<scalar_t>();
      const acc_t* ip = inv.data_ptr<acc_t>();
      for (int64_t i = 0; i < B; ++i)
        if (counted(y[i], C, ip[i])) cp[y[i]] += 1;
      // Each thread owns a block of columns and walks the rows in order: no races, same
      // result for any thread count.
      at::parallel_for(0, D, std::max<int64_t>(1, 32768 / std::max<int64_t>(B, 1)), [&](int64_t d0, int64_t d1) {
        for (int64_t i = 0; i < B; ++i) {
          if (!counted(y[i], C, ip[i])) continue;
          const scalar_t* row = f + i * D;
          double* srow = sp + static_cast<int64_t>(y[i]) * D;
          const acc_t r = ip[i];
          for (int64_t d = d0; d < d1; ++d) srow[d] += static_cast<double>(static_cast<acc_t>(row[d]) * r);
        }
      });
    });
  });
  return {sums, counts};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grouped_normalize_cpu(const at::Tensor& features_in,
                                                                                 const at::Tensor& labels_in,
                                                                                 int64_t num_classes) {
  check_features(features_in);
  check_labels(labels_in, features_in);
  TORCH_CHECK(num_classes >= 1, "num_classes must be >= 1, got ", num_classes);
  const auto features = features_in.contiguous();
  const auto labels = labels_in.contiguous();
  auto [z, inv] = normalize_cpu(features);
  auto [sums, counts] = class_sums_cpu(features, inv, labels, num_classes);
  return {z, inv, sums.to(acc_type(features.scalar_type())), counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CPU, m) { m.impl("grouped_normalize", &grouped_normalize_cpu); }

}  // namespace miue
