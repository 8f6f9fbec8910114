// Comparison helpers for the reference-fixture tests.
// Tolerance: normwise relative error max|a - b| / max(max|b|, 1e-6) <= tol;
// -inf entries (masked attention scores) must be -inf in both.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

namespace mechlab::testing {

inline ::testing::AssertionResult close(const at::Tensor& actual_in, const at::Tensor& expected_in,
                                        double tol, const std::string& what) {
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
  const double err = (fa - fe).abs().max().item<double>() / scale;
  if (err > tol) {
    return ::testing::AssertionFailure() << what << ": relative error " << err << " > " << tol;
  }
  return ::testing::AssertionSuccess();
}

}  // namespace mechlab::testing
