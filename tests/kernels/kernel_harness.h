// A table-driven harness for kernels/ (in the manner of ggml's
// test-backend-ops). Each kernel family registers cases: inputs built the
// same way on any device, an independent float64 reference, and how to call
// the dispatched entry point or one implementation. kernel_harness_test.cpp
// runs every case on the CPU and, where a device exists, on CUDA, and
// compares by normalised mean squared error,
//   NMSE = sum((out - ref)^2) / sum(ref^2),
// against the tolerance written down per dtype below. With
// MECHLAB_KERNEL_PERF=1 it also prints time per call and effective GB/s.
#pragma once

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

namespace mechlab::testing {

using Inputs = std::vector<at::Tensor>;

struct KernelCase {
  std::string family;  // an entry of kernels::kernel_families()
  std::string name;    // unique within the family; letters, digits and '_'
  at::ScalarType dtype = at::kFloat;
  /// The inputs on `device`; the same values on every device.
  std::function<Inputs(at::Device)> make_inputs;
  /// Independent float64 reference on the CPU (a naive loop).
  std::function<at::Tensor(const Inputs&)> reference;
  /// Runs implementation `impl`, or the dispatched entry point when "".
  std::function<at::Tensor(const Inputs&, const std::string& impl)> run;
  /// Why `impl` cannot take these inputs on their device ("" when it can).
  std::function<std::string(const Inputs&, const std::string& impl)> unsupported;
  /// The implementation the entry point picks for these inputs.
  std::function<std::string(const Inputs&)> chosen;
  /// The family's implementations, in dispatch order.
  std::vector<std::string> impls;
  /// Bytes one call must read and write at least (for effective GB/s).
  int64_t bytes = 0;
  /// Large shapes only timed in perf mode (the naive reference is slow).
  bool perf_only = false;
};

/// Registers a family's cases; call from a namespace-scope initialiser.
/// `make` runs on first use (after main starts), not at registration.
bool register_kernel_cases(const std::string& family, std::function<std::vector<KernelCase>()> make);
/// Every registered case, families in registration order.
const std::vector<KernelCase>& all_kernel_cases();

/// The NMSE each dtype must meet against the float64 reference. The half
/// types round the output once (unit roundoff u = 2^-8 for bfloat16, 2^-11
/// for float16; NMSE about u^2 / 3, i.e. 5e-6 and 8e-8): the tolerances are
/// ten times that. float32 and float64 leave only summation order.
inline double nmse_tolerance(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return 1e-20;
    case at::kFloat: return 1e-10;
    case at::kBFloat16: return 5e-5;
    case at::kHalf: return 1e-6;
    default: throw Error(str_cat("no NMSE tolerance for ", dtype));
  }
}

/// sum((out - ref)^2) / sum(ref^2), in float64 on the CPU; 0 for empty
/// tensors, and the plain squared error when ref is all zero.
inline double nmse(const at::Tensor& out, const at::Tensor& ref) {
  const at::Tensor o = out.to(at::kCPU).to(at::kDouble);
  const at::Tensor r = ref.to(at::kCPU).to(at::kDouble);
  if (r.numel() == 0) return 0.0;
  const double err = (o - r).pow(2).sum().item<double>();
  const double norm = r.pow(2).sum().item<double>();
  return norm > 0 ? err / norm : err;
}

}  // namespace mechlab::testing
