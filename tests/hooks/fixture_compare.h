// Comparison helpers for the reference-fixture tests.
//
// Two checks, both on finite entries (-inf entries, masked attention scores,
// must be -inf in both; NaN fails):
//  - normwise: max|a - b| / max(max|b|, 1e-6) <= tol.normwise. Bounds the
//    largest error relative to the tensor's scale.
//  - element-wise: |a_i - b_i| <= tol.abs * scale + tol.rel * |b_i| for every
//    i, with scale = max(max|b|, 1e-6). The normwise check alone lets an
//    error hide in a small entry (one attention weight of 0.01 off by 5e-5
//    passes a normwise 1e-4 on a pattern whose largest entry is 1); this
//    bounds each entry by its own size, plus a floor for entries near zero.
//
// Float32 against TransformerLens / transformers (kF32Tol). Measured on the
// CPU over every comparison in transformerlens_test, hf_models_test and
// weight_processing_tl_test: normwise error <= 6.8e-7, and the element-wise
// floor an entry needs beyond 1e-5 x |b_i| <= 3.6e-7 of the scale; errors of
// about 1.6e-6 normwise have been seen on other machines. 1e-5 normwise and
// 2e-6 x scale + 1e-5 x |b_i| per element leave a margin of about 6 over
// those, and fail (planted one at a time, TransformerLens fixtures): a norm
// epsilon 10x off (logits 1.0e-4 normwise, hooks up to 2.6e-4), 1e-4 added
// to one element of blocks.0 b_O (3e-5 to 4e-5 normwise: passed at 1e-4),
// and 5e-5 added to one attention-pattern entry (5e-5: passed at 1e-4).
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

namespace mechlab::testing {

struct Tolerance {
  double normwise;
  double abs;  ///< element-wise floor, in units of the tensor's scale
  double rel;  ///< element-wise, relative to the entry itself
};

/// Float32 reference parity (see above).
inline constexpr Tolerance kF32Tol{1e-5, 2e-6, 1e-5};

inline ::testing::AssertionResult close(const at::Tensor& actual_in, const at::Tensor& expected_in,
                                        const Tolerance& tol, const std::string& what) {
  if (actual_in.sizes() != expected_in.sizes()) {
    return ::testing::AssertionFailure() << what << ": shape " << actual_in.sizes()
                                         << " != expected " << expected_in.sizes();
  }
  at::Tensor a = actual_in.detach().to(at::kCPU, at::kDouble);
  at::Tensor e = expected_in.detach().to(at::kCPU, at::kDouble);
  at::Tensor a_inf = a.isinf(), e_inf = e.isinf();
  if (!at::equal(a_inf, e_inf) || !at::equal(a.masked_select(a_inf), e.masked_select(e_inf))) {
    return ::testing::AssertionFailure() << what << ": infinities differ";
  }
  if (a.isnan().any().item<bool>()) return ::testing::AssertionFailure() << what << ": NaN";
  at::Tensor fa = a.masked_fill(a_inf, 0), fe = e.masked_fill(e_inf, 0);
  const double scale = std::max(fe.abs().max().item<double>(), 1e-6);
  const at::Tensor diff = (fa - fe).abs();
  const double err = diff.max().item<double>() / scale;
  if (err > tol.normwise) {
    return ::testing::AssertionFailure() << what << ": relative error " << err << " > "
                                         << tol.normwise;
  }
  if (tol.abs > 0 || tol.rel > 0) {
    // How far each entry is over its bound, as a multiple of the bound.
    const at::Tensor ratio = diff / (tol.abs * scale + tol.rel * fe.abs());
    const int64_t worst = ratio.argmax().item<int64_t>();
    const double r = ratio.reshape(-1)[worst].item<double>();
    if (r > 1) {
      return ::testing::AssertionFailure()
             << what << ": entry " << worst << " (flat index) is " << fa.reshape(-1)[worst].item<double>()
             << ", expected " << fe.reshape(-1)[worst].item<double>() << ": error "
             << diff.reshape(-1)[worst].item<double>() << " > " << tol.abs << " x scale " << scale
             << " + " << tol.rel << " x |expected|";
    }
  }
  return ::testing::AssertionSuccess();
}

/// Normwise only, for looser comparisons (half precision, GPU vs CPU).
inline ::testing::AssertionResult close(const at::Tensor& actual, const at::Tensor& expected,
                                        double tol, const std::string& what) {
  return close(actual, expected, Tolerance{tol, 0, 0}, what);
}

}  // namespace mechlab::testing
