// Shared declarations of the miue_C extension.
//
// Op schemas: csrc/miue.cpp. CPU kernels: csrc/cpu/<op>.cpp. CUDA kernels: csrc/cuda/<op>.cu.
// Conventions (docs/ops.md; the oracle is miue/ops/reference.py):
//   * acc type: double for double features, float otherwise (inv_norm, class_sum, loss, P, N);
//   * null rows (||f_i|| < 1e-12) get z_i = 0, inv_norm_i = 0 and no gradient;
//   * rows whose label lies outside [0, C) are skipped by per-class sums (never indexed);
//   * supcon saves the row sums over positives P and negatives N (A = P + N; loss_i = log1p(N/P)),
//     rescaled by exp(-M_i / tau), M_i = 1 for live rows, 0 for null rows;
//   * the supcon backward leaves out W_ii (its term lies along z_i and is projected away).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

namespace miue {

constexpr double kNullNorm = 1e-12;

inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_features(const at::Tensor& f, const char* name = "features") {
  TORCH_CHECK(f.dim() == 2, name, " must be 2-D (B, D), got ", f.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(f.scalar_type()), name, " must be floating point, got ", f.scalar_type());
  TORCH_CHECK(f.size(1) >= 1, name, " must have at least one column");
}

inline void check_labels(const at::Tensor& labels, const at::Tensor& f) {
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == f.size(0), "labels must be 1-D with B = ", f.size(0),
              " entries, got shape ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong,
              "labels must be int32 or int64, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == f.device(), "labels must be on the features' device");
}

inline void check_vec(const at::Tensor& t, int64_t n, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must be 1-D of length ", n, ", got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

// Elementwise PGD ops walk delta/grad/clean as flat arrays: they must share one dense layout.
// Strides of dimensions of size 1 do not matter.
inline bool same_strides(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

inline void check_same_dense_layout(const at::Tensor& delta, const at::Tensor& other, const char* name) {
  TORCH_CHECK(other.sizes() == delta.sizes(), name, " must have delta's shape ", delta.sizes(), ", got ", other.sizes());
  TORCH_CHECK(other.device() == delta.device(), name, " must be on delta's device");
  TORCH_CHECK(delta.is_non_overlapping_and_dense() && same_strides(delta, other), name,
              " and delta must share one dense memory layout");
}

inline void check_scalar(const at::Tensor& t, const at::Tensor& delta, const char* name) {
  TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kDouble, name, " must be a one-element float64 tensor");
  TORCH_CHECK(t.device().is_cpu() || t.device() == delta.device(), name, " must be on the CPU or on delta's device");
}

// Argument checks of the loss ops, shared by the CPU and CUDA kernels (device checks are the
// CUDA files' own).
inline void check_loss_fwd_args(const at::Tensor& features, const at::Tensor& labels) {
  check_features(features);
  check_labels(labels, features);
  TORCH_CHECK(features.size(0) >= 1, "features must have at least one row");
}

inline void check_supcon_bwd_args(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& inv,
                                  const at::Tensor& P, const at::Tensor& N, const at::Tensor& labels, double tau) {
  check_features(z, "z");
  const int64_t B = z.size(0);
  const auto acc = acc_type(z.scalar_type());
  check_labels(labels, z);
  check_vec(inv, B, acc, "inv_norm");
  check_vec(P, B, acc, "P");
  check_vec(N, B, acc, "N");
  TORCH_CHECK(grad.numel() == 1, "grad must hold one element");
  TORCH_CHECK(tau > 0, "temperature must be > 0, got ", tau);
}

inline void check_intra_bwd_args(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& inv,
                                 const at::Tensor& class_sum, const at::Tensor& class_count, const at::Tensor& labels) {
  check_features(z, "z");
  const int64_t B = z.size(0), D = z.size(1);
  const auto acc = acc_type(z.scalar_type());
  check_labels(labels, z);
  check_vec(inv, B, acc, "inv_norm");
  TORCH_CHECK(class_sum.dim() == 2 && class_sum.size(1) == D && class_sum.scalar_type() == acc,
              "class_sum must be (C, ", D, ") of the accumulation dtype");
  check_vec(class_count, class_sum.size(0), at::kLong, "class_count");
  TORCH_CHECK(grad.numel() == 1, "grad must hold one element");
}

// CPU helpers (csrc/cpu/grouped_normalize.cpp), shared by the loss kernels.
// normalize_cpu: z (features' dtype) and inv_norm (acc type) of contiguous features.
std::tuple<at::Tensor, at::Tensor> normalize_cpu(const at::Tensor& features);
// class_sums_cpu: per-class sums of z_i = f_i * inv_i recomputed in the acc type and summed in
// double (deterministic: each thread owns a block of columns), and per-class counts.
std::tuple<at::Tensor, at::Tensor> class_sums_cpu(const at::Tensor& features, const at::Tensor& inv,
                                                  const at::Tensor& labels, int64_t num_classes);

}  // namespace miue
