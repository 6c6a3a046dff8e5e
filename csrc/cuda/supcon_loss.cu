// supcon_loss on CUDA (docs/ops.md). Same outputs and conventions as csrc/cpu/supcon_loss.cpp;
// oracle: miue/ops/reference.py::supcon_fwd / supcon_bwd.
//
// The B×B logits are never held whole: rows are processed in blocks of about 16M logits.
// Each block's Gram S_blk = z_blk @ z^T is one at::mm on the acc-type copy of z (fp32 with
// TF32 disabled for the call, or fp64), then:
//   forward:  one CUDA block per row sums exp((s_ij - M_i)/tau) over positives (P_i) and
//             negatives (N_i) in double, adds the rescaled eps, writes P, N (acc type) and
//             row_loss_i = log1p(N_i/P_i); loss = mean(row_loss) by a device reduction;
//   backward: an elementwise kernel turns the Gram into the weights W in place
//             (W_ij = coef * exp((s_ij-1)/tau) * (same ? q_i+q_j : -(ra_i+ra_j)), 0 for null
//             rows/columns and the diagonal), G_blk = W_blk @ z by at::mm, then one warp per
//             row projects: out_i = (G_i - (G_i . z_i) z_i) * inv_i in z's dtype.
// The upstream gradient is read by the kernel through its pointer: no host sync.
#include <cmath>

#include "common.cuh"

namespace miue {
namespace cuda {
namespace {

// Rows per block so that a block of logits holds about 16M values (64 MiB in fp32).
inline int64_t block_rows(int64_t B) { return std::max<int64_t>(1, std::min<int64_t>(B, (int64_t{1} << 24) / B)); }

// One CUDA block per row r of the Gram block S (n × B) whose first row is row i0.
template <typename acc_t, typename label_t>
__global__ void supcon_fwd_rows_kernel(const acc_t* __restrict__ S, const acc_t* __restrict__ inv,
                                       const label_t* __restrict__ y, int64_t i0, int64_t B, acc_t tau,
                                       double eps_live, double eps_null, acc_t* __restrict__ P,
                                       acc_t* __restrict__ N, double* __restrict__ row_loss) {
  const int64_t r = blockIdx.x, i = i0 + r;
  const acc_t shift = inv[i] > 0 ? acc_t(1) : acc_t(0);  // the row's largest logit
  const acc_t* s = S + r * B;
  const label_t yi = y[i];
  double p = 0, q = 0;
  int64_t npos = 0;
  for (int64_t j = threadIdx.x; j < B; j += blockDim.x) {
    const double e = static_cast<double>(dev_exp((s[j] - shift) / tau));
    if (y[j] == yi) {
      p += e;
      ++npos;
    } else {
      q += e;
    }
  }
  p = block_sum(p);
  q = block_sum(q);
  npos = block_sum(npos);
  if (threadIdx.x == 0) {
    const double eps_scaled = shift > 0 ? eps_live : eps_null;  // eps * exp(-M_i / tau)
    p += static_cast<double>(npos) * eps_scaled;
    q += static_cast<double>(B - npos) * eps_scaled;
    P[i] = static_cast<acc_t>(p);
    N[i] = static_cast<acc_t>(q);
    row_loss[i] = log1p(q / p);
  }
}

// In place over the Gram block W (n × B, rows i0..i0+n-1): logits -> weights.
// grid.x covers the columns, grid.y the rows.
template <typename acc_t, typename label_t>
__global__ void supcon_weights_kernel(acc_t* __restrict__ W, const acc_t* __restrict__ inv,
                                      const label_t* __restrict__ y, const acc_t* __restrict__ qv,
                                      const acc_t* __restrict__ ra, int64_t i0, int64_t B, acc_t tau,
                                      double tau_d, ScalarArg grad) {
  const int64_t r = blockIdx.y, i = i0 + r;
  const int64_t j = block_col(blockIdx.x, blockDim.x, threadIdx.x);
  if (j >= B) return;
  acc_t* w = W + r * B + j;
  // null row (no gradient), null column (z_j = 0 contributes nothing), diagonal (projected away)
  if (!(inv[i] > 0) || !(inv[j] > 0) || j == i) {
    *w = acc_t(0);
    return;
  }
  const acc_t coef = static_cast<acc_t>(-grad.get() / (static_cast<double>(B) * tau_d));
  const acc_t e = dev_exp((*w - acc_t(1)) / tau);
  const acc_t k = y[j] == y[i] ? qv[i] + qv[j] : -(ra[i] + ra[j]);
  *w = coef * e * k;
}

// One warp per row r of G (n × D): out_{i0+r} = (G_r - (G_r . z_i) z_i) * inv_i.
template <typename scalar_t, typename acc_t>
__global__ void supcon_project_kernel(const acc_t* __restrict__ G, const acc_t* __restrict__ z,
                                      const acc_t* __restrict__ inv, int64_t i0, int64_t n, int64_t D,
                                      scalar_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t r = warp_row(blockIdx.x, kWarps, threadIdx.x);
  if (r >= n) return;
  const int64_t i = i0 + r;
  const acc_t* g = G + r * D;
  const acc_t* zr = z + i * D;
  // the projection cancels along z_i (G_i is nearly parallel to z_i for converged classes):
  // the dot and the subtraction in double, as the CPU kernel does
  double dot = 0;
  for (int64_t d = lane; d < D; d += 32) dot += static_cast<double>(g[d]) * static_cast<double>(zr[d]);
  dot = warp_sum(dot);
  const double ri = static_cast<double>(inv[i]);
  scalar_t* o = out + i * D;
  for (int64_t d = lane; d < D; d += 32)
    o[d] = static_cast<scalar_t>((static_cast<double>(g[d]) - dot * static_cast<double>(zr[d])) * ri);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cuda(const at::Tensor& features_in,
                                                                                       const at::Tensor& labels_in,
                                                                                       double tau, double eps) {
  check_loss_fwd_args(features_in, labels_in);
  TORCH_CHECK(tau > 0, "temperature must be > 0, got ", tau);
  TORCH_CHECK(eps >= 0, "eps must be >= 0, got ", eps);
  check_cuda(features_in, features_in, "features");
  check_cuda(labels_in, features_in, "labels");
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::NoTF32Guard no_tf32;  // IEEE fp32 Grams (the accuracy contract of docs/ops.md)
  const auto features = features_in.contiguous();
  const auto labels = labels_in.contiguous();
  const int64_t B = features.size(0);
  const auto acc = acc_type(features.scalar_type());
  auto [z, inv] = normalize_cuda(features);
  const at::Tensor zf = z.scalar_type() == acc ? z : z.to(acc);
  auto P = at::empty({B}, features.options().dtype(acc));
  auto N = at::empty({B}, features.options().dtype(acc));
  auto row_loss = at::empty({B}, features.options().dtype(at::kDouble));
  // Same values as the CPU's eps * exp(-shift / tau) for shift = 1 and shift = 0.
  const double eps_live = eps * std::exp(-1.0 / tau), eps_null = eps * std::exp(-0.0 / tau);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t rows = B > 0 ? block_rows(B) : 1;

  AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "miue_supcon_fwd_cuda_labels", [&] {
    const index_t* y = labels.data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES(acc, "miue_supcon_fwd_cuda", [&] {
      using acc_t = scalar_t;
      for (int64_t i0 = 0; i0 < B; i0 += rows) {
        const int64_t n = std::min(rows, B - i0);
        const at::Tensor S = at::mm(zf.narrow(0, i0, n), zf.t()).contiguous();  // n × B
        supcon_fwd_rows_kernel<acc_t, index_t><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
            S.data_ptr<acc_t>(), inv.data_ptr<acc_t>(), y, i0, B, static_cast<acc_t>(tau), eps_live, eps_null,
            P.data_ptr<acc_t>(), N.data_ptr<acc_t>(), row_loss.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  // mean in double, then rounded to the acc type (0/0 = NaN for B = 0, as on the CPU)
  auto loss = row_loss.sum().div(static_cast<double>(B)).to(acc);
  return {loss, z, inv, P, N};
}

at::Tensor supcon_bwd_cuda(const at::Tensor& grad, const at::Tensor& z_in, const at::Tensor& inv_in,
                           const at::Tensor& P_in, const at::Tensor& N_in, const at::Tensor& labels_in, double tau) {
  check_supcon_bwd_args(grad, z_in, inv_in, P_in, N_in, labels_in, tau);
  const int64_t B = z_in.size(0), D = z_in.size(1);
  const auto acc = acc_type(z_in.scalar_type());
  check_cuda(z_in, z_in, "z");
  check_cuda(labels_in, z_in, "labels");
  check_cuda(inv_in, z_in, "inv_norm");
  check_cuda(P_in, z_in, "P");
  check_cuda(N_in, z_in, "N");
  TORCH_CHECK(grad.device().is_cpu() || grad.device() == z_in.device(), "grad must be on the CPU or on ", z_in.device());
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::NoTF32Guard no_tf32;
  const auto z = z_in.contiguous();
  const auto labels = labels_in.contiguous();
  const auto inv = inv_in.contiguous();
  const at::Tensor zf = z.scalar_type() == acc ? z : z.to(acc);
  auto out = at::empty({B, D}, z.options());
  if (B == 0) return out;
  const ScalarHolder g = make_scalar(grad);
  // ra = 1/A, q = 1/P - 1/A = N / (A P), without cancellation (as the CPU)
  const at::Tensor A = P_in + N_in;
  const at::Tensor rA = A.reciprocal().contiguous(), Q = (N_in / (A * P_in)).contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t rows = block_rows(B);

  AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "miue_supcon_bwd_cuda_labels", [&] {
    const index_t* y = labels.data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES(acc, "miue_supcon_bwd_cuda", [&] {
      using acc_t = scalar_t;
      const acc_t* ip = inv.data_ptr<acc_t>();
      const acc_t* zp = zf.data_ptr<acc_t>();
      for (int64_t i0 = 0; i0 < B; i0 += rows) {
        const int64_t n = std::min(rows, B - i0);  // <= 4096: fits grid.y
        at::Tensor W = at::mm(zf.narrow(0, i0, n), zf.t()).contiguous();  // logits, then weights in place
        const dim3 wgrid(static_cast<unsigned>(ceil_div(B, kThreads)), static_cast<unsigned>(n));
        supcon_weights_kernel<acc_t, index_t><<<wgrid, kThreads, 0, stream>>>(
            W.data_ptr<acc_t>(), ip, y, Q.data_ptr<acc_t>(), rA.data_ptr<acc_t>(), i0, B, static_cast<acc_t>(tau),
            tau, g.arg);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const at::Tensor G = at::mm(W, zf);  // n × D: dL/dz for the block's rows
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "miue_supcon_bwd_cuda_out", [&] {
          supcon_project_kernel<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(n, kWarps)), kThreads, 0, stream>>>(
              G.data_ptr<acc_t>(), zp, ip, i0, n, D, out.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(miue_C, CUDA, m) {
  m.impl("supcon_fwd", &supcon_fwd_cuda);
  m.impl("supcon_bwd", &supcon_bwd_cuda);
}

}  // namespace cuda
}  // namespace miue
