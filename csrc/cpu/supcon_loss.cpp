// supcon_loss on the CPU (docs/ops.md). Reference: miue/ops/reference.py::supcon_fwd / supcon_bwd.
//
// The B×B logits are never held whole: rows are processed in blocks of `rows` rows; each
// block's Gram (rows × B) comes from one BLAS product, then one fused pass computes
// exp, the label mask and the row sums (forward) or the weights W (backward), and for the
// backward a second BLAS product gives W_blk @ Z.
#include <cmath>
#include <vector>

#include "common.h"

namespace miue {
namespace {

// Rows per block so that a block of logits holds about 1M values (4 MiB in fp32).
inline int64_t block_rows(int64_t B) { return std::max<int64_t>(1, std::min<int64_t>(B, (int64_t{1} << 20) / B)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cpu(const at::Tensor& features_in,
                                                                                      const at::Tensor& labels_in,
                                                                                      double tau, double eps) {
  check_loss_fwd_args(features_in, labels_in);
  TORCH_CHECK(tau > 0, "temperature must be > 0, got ", tau);
  TORCH_CHECK(eps >= 0, "eps must be >= 0, got ", eps);
  const auto features = features_in.contiguous();
  const auto labels = labels_in.contiguous();
  const int64_t B = features.size(0);
  const auto acc = acc_type(features.scalar_type());
  auto [z, inv] = normalize_cpu(features);
  const at::Tensor zf = z.scalar_type() == acc ? z : z.to(acc);
  auto P = at::empty({B}, features.options().dtype(acc));
  auto N = at::empty({B}, features.options().dtype(acc));
  std::vector<double> row_loss(B);
  const int64_t rows = block_rows(B);

  AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "miue_supcon_fwd_labels", [&] {
    const index_t* y = labels.data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES(acc, "miue_supcon_fwd_cpu", [&] {
      using acc_t = scalar_t;
      const acc_t* ip = inv.data_ptr<acc_t>();
      acc_t* Pp = P.data_ptr<acc_t>();
      acc_t* Np = N.data_ptr<acc_t>();
      for (int64_t i0 = 0; i0 < B; i0 += rows) {
        const int64_t n = std::min(rows, B - i0);
        const at::Tensor S = at::mm(zf.narrow(0, i0, n), zf.t()).contiguous();  // n × B
        const acc_t* Sp = S.data_ptr<acc_t>();
        at::parallel_for(0, n, std::max<int64_t>(1, 16384 / B), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t i = i0 + r;
            const acc_t shift = ip[i] > 0 ? acc_t(1) : acc_t(0);  // the row's largest logit
            const acc_t t = static_cast<acc_t>(tau);
            const double eps_scaled = eps * std::exp(-static_cast<double>(shift) / tau);
            const acc_t* s = Sp + r * B;
            const index_t yi = y[i];
            double p = 0, q = 0;
            int64_t npos = 0;
            for (int64_t j = 0; j < B; ++j) {
              const double e = static_cast<double>(std::exp((s[j] - shift) / t));
              if (y[j] == yi) {
                p += e;
                ++npos;
              } else {
                q += e;
              }
            }
            p += static_cast<double>(npos) * eps_scaled;
            q += static_cast<double>(B - npos) * eps_scaled;
            Pp[i] = static_cast<acc_t>(p);
            Np[i] = static_cast<acc_t>(q);
            row_loss[i] = std::log1p(q / p);
          }
        });
      }
    });
  });
  double total = 0;
  for (int64_t i = 0; i < B; ++i) total += row_loss[i];
  auto loss = at::full({}, total / static_cast<double>(B), features.options().dtype(acc));
  return {loss, z, inv, P, N};
}

at::Tensor supcon_bwd_cpu(const at::Tensor& grad, const at::Tensor& z_in, const at::Tensor& inv_in,
                          const at::Tensor& P_in, const at::Tensor& N_in, const at::Tensor& labels_in, double tau) {
  check_supcon_bwd_args(grad, z_in, inv_in, P_in, N_in, labels_in, tau);
  const int64_t B = z_in.size(0), D = z_in.size(1);
  const auto acc = acc_type(z_in.scalar_type());
  const auto z = z_in.contiguous();
  const auto labels = labels_in.contiguous();
  const auto inv = inv_in.contiguous();
  const at::Tensor zf = z.scalar_type() == acc ? z : z.to(acc);
  auto out = at::empty({B, D}, z.options());
  const double g = grad.item<double>();
  const int64_t rows = block_rows(B);

  AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "miue_supcon_bwd_labels", [&] {
    const index_t* y = labels.data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES(acc, "miue_supcon_bwd_cpu", [&] {
      using acc_t = scalar_t;
      const acc_t* ip = inv.data_ptr<acc_t>();
      // ra = 1/A, q = 1/P - 1/A = N / (A P), without cancellation
      const at::Tensor A = P_in + N_in;
      const at::Tensor rA = A.reciprocal().contiguous(), Q = (N_in / (A * P_in)).contiguous();
      const acc_t* ra = rA.data_ptr<acc_t>();
      const acc_t* qp = Q.data_ptr<acc_t>();
      const acc_t coef = static_cast<acc_t>(-g / (static_cast<double>(B) * tau));
      const acc_t t = static_cast<acc_t>(tau);
      const acc_t* zp = zf.data_ptr<acc_t>();
      for (int64_t i0 = 0; i0 < B; i0 += rows) {
        const int64_t n = std::min(rows, B - i0);
        at::Tensor W = at::mm(zf.narrow(0, i0, n), zf.t()).contiguous();  // logits, then weights in place
        acc_t* Wp = W.data_ptr<acc_t>();
        at::parallel_for(0, n, std::max<int64_t>(1, 16384 / B), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t i = i0 + r;
            acc_t* w = Wp + r * B;
            if (!(ip[i] > 0)) {  // null row: no gradient
              for (int64_t j = 0; j < B; ++j) w[j] = 0;
              continue;
            }
            const index_t yi = y[i];
            for (int64_t j = 0; j < B; ++j) {
              if (!(ip[j] > 0) || j == i) {  // z_j = 0 contributes nothing; W_ii is projected away
                w[j] = 0;
                continue;
              }
              const acc_t e = std::exp((w[j] - acc_t(1)) / t);
              const acc_t k = y[j] == yi ? qp[i] + qp[j] : -(ra[i] + ra[j]);
              w[j] = coef * e * k;
            }
          }
        });
        const at::Tensor G = at::mm(W, zf);  // n × D: dL/dz for the block's rows
        const acc_t* Gp = G.data_ptr<acc_t>();
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "miue_supcon_bwd_out", [&] {
          scalar_t* op = out.data_ptr<scalar_t>();
          at::parallel_for(0, n, std::max<int64_t>(1, 16384 / D), [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
              const int64_t i = i0 + r;
              const acc_t* gr = Gp + r * D;
              const acc_t* zr = zp + i * D;
              double dot = 0;  // the projection cancels along z_i: accumulate in double
              for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(gr[d]) * static_cast<double>(zr[d]);
              for (int64_t d = 0; d < D; ++d)
                op[i * D + d] = static_cast<scalar_t>((static_cast<double>(gr[d]) - dot * static_cast<double>(zr[d])) *
                                                      static_cast<double>(ip[i]));
            }
          });
        });
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CPU, m) {
  m.impl("supcon_fwd", &supcon_fwd_cpu);
  m.impl("supcon_bwd", &supcon_bwd_cpu);
}

}  // namespace miue
