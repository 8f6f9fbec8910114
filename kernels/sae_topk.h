// The TopK SAE's selection: the indices of the k largest entries of each row
// of the encoder's pre-activations (Gao et al. 2024), in a canonical order.
//
//   indices [n, k] int64 = the k largest of x[n, :], x [n, m] float32/float64
//
// Entries are ordered as their float's bits order them (the total order in
// which NaN is above +inf and -0 below +0); the k indices of a row are listed
// from the largest value down, equal values by increasing index, so every
// implementation gives the same list when the row's values are distinct.
// Ties at the k-th value: the CPU kernel keeps the lowest indices, the CUDA
// kernel any of them, ATen (at::topk) its own choice. Implementations, in
// dispatch order: "cuda" (float32, contiguous, k <= 1024), "cpu" (CPU
// tensors: a k-entry heap per row under at::parallel_for), "aten".
#pragma once

#include "kernels/dispatch.h"

#include <ATen/ATen.h>

#include <string>

namespace mechlab::kernels {

struct SaeTopkArgs {
  at::Tensor x;  // [n, m]
  int64_t k = 0;
  at::Device device() const { return x.device(); }
};

/// indices [n, k] of the k largest entries of each row of x [n, m] (dispatched).
at::Tensor sae_topk(const at::Tensor& x, int64_t k);
const KernelFamily<SaeTopkArgs>& sae_topk_family();

namespace detail {
/// The order key of a float: larger float, larger key (NaN above +inf).
inline uint32_t float_order_key(uint32_t bits) { return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u); }
inline uint64_t float_order_key(uint64_t bits) {
  return (bits & 0x8000000000000000ull) ? ~bits : (bits | 0x8000000000000000ull);
}
// The CUDA host wrapper (kernels/sae_topk_cuda.cpp).
std::string sae_topk_cuda_unsupported(const SaeTopkArgs& a);
at::Tensor sae_topk_cuda(const SaeTopkArgs& a);
}  // namespace detail

}  // namespace mechlab::kernels
