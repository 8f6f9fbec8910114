// edge_patch (kernels/edge_patch.h): the float64 reference, the harness
// cases (shapes, dtypes, masks, layouts) and the argument errors.
#include "tests/kernels/kernel_harness.h"

#include "tests/test_util.h"
#include "kernels/device_info.h"
#include "kernels/edge_patch.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

namespace mechlab::testing {
namespace {

using kernels::edge_patch;
using kernels::edge_patch_family;
using kernels::EdgePatchArgs;

/// The definition, one element at a time in float64:
/// out[b,p,r,d] = base[b,p,r,d] - sum_s mask[r,s] * delta[b,p,s,d].
at::Tensor edge_patch_reference(const at::Tensor& base, const at::Tensor& delta,
                                const at::Tensor& mask) {
  const at::Tensor b = base.to(at::kCPU).to(at::kDouble).contiguous();   // [B, P, R, D]
  const at::Tensor dl = delta.to(at::kCPU).to(at::kDouble).contiguous(); // [B, P, S, D]
  const at::Tensor m = mask.to(at::kCPU).to(at::kDouble).contiguous();   // [R, S]
  const int64_t rows = b.size(0) * b.size(1), R = b.size(2), S = dl.size(2), D = b.size(3);
  at::Tensor out = b.clone();
  const double* dp = dl.data_ptr<double>();
  const double* mp = m.data_ptr<double>();
  double* op = out.data_ptr<double>();
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t r = 0; r < R; ++r) {
      double* o = op + (row * R + r) * D;
      for (int64_t s = 0; s < S; ++s) {
        const double w = mp[r * S + s];
        const double* x = dp + (row * S + s) * D;
        for (int64_t d = 0; d < D; ++d) o[d] -= w * x[d];
      }
    }
  }
  return out;
}

enum class Mask { binary, weights, sparse, none_removed, boolean };
enum class Layout { contiguous, base_permuted, delta_strided, mask_transposed };

struct Shape {
  int64_t batch, pos, receivers, senders, d_model;
};

Inputs make_edge_patch_inputs(const Shape& sh, at::ScalarType dtype, Mask mask_kind, Layout layout,
                              uint64_t seed, at::Device device) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const auto [B, P, R, S, D] = sh;
  // Stored layouts: the views below make them non-contiguous.
  at::Tensor base = layout == Layout::base_permuted ? at::randn({B, R, P, D}, gen, f32)
                                                    : at::randn({B, P, R, D}, gen, f32);
  at::Tensor delta = layout == Layout::delta_strided ? at::randn({B, P, S, 2 * D}, gen, f32)
                                                     : at::randn({B, P, S, D}, gen, f32);
  at::Tensor mask;  // stored [R, S], or [S, R] when transposed below
  const std::vector<int64_t> mshape =
      layout == Layout::mask_transposed ? std::vector<int64_t>{S, R} : std::vector<int64_t>{R, S};
  switch (mask_kind) {
    case Mask::binary:
    case Mask::boolean: mask = at::rand(mshape, gen, f32).lt(0.5); break;
    case Mask::weights: mask = at::rand(mshape, gen, f32) * 2 - 0.5; break;
    case Mask::sparse:
      // Only three removed edges: most kTileR x kTileS mask tiles are zero.
      mask = at::zeros(mshape, f32);
      if (R > 0 && S > 0) {
        mask.index_put_({0, 0}, 1.0);
        mask.index_put_({mshape[0] - 1, mshape[1] - 1}, 1.0);
        mask.index_put_({mshape[0] / 2, mshape[1] / 2}, 0.75);
      }
      break;
    case Mask::none_removed: mask = at::zeros(mshape, f32); break;
  }
  if (mask_kind != Mask::boolean) mask = mask.to(at::kFloat);
  base = base.to(dtype).to(device);
  delta = delta.to(dtype).to(device);
  mask = mask.to(device);
  if (layout == Layout::base_permuted) base = base.transpose(1, 2);  // [B, P, R, D]
  if (layout == Layout::delta_strided) {
    delta = delta.slice(3, 0, 2 * D, 2);  // [B, P, S, D], every other column
  }
  if (layout == Layout::mask_transposed) mask = mask.t();  // [R, S]
  return {base, delta, mask};
}

EdgePatchArgs args_of(const Inputs& in) { return EdgePatchArgs{in[0], in[1], in[2]}; }

KernelCase edge_patch_case(const std::string& name, const Shape& sh, at::ScalarType dtype,
                           Mask mask_kind, Layout layout = Layout::contiguous,
                           bool perf_only = false) {
  KernelCase c;
  c.family = "edge_patch";
  c.name = name + "_" + c10::toString(dtype);
  c.dtype = dtype;
  const uint64_t seed = std::hash<std::string>{}(name);
  c.make_inputs = [=](at::Device device) {
    return make_edge_patch_inputs(sh, dtype, mask_kind, layout, seed, device);
  };
  c.reference = [](const Inputs& in) { return edge_patch_reference(in[0], in[1], in[2]); };
  c.run = [](const Inputs& in, const std::string& impl) {
    return impl.empty() ? edge_patch(in[0], in[1], in[2]) : edge_patch_family().run(impl, args_of(in));
  };
  c.unsupported = [](const Inputs& in, const std::string& impl) {
    return edge_patch_family().unsupported(impl, args_of(in));
  };
  c.chosen = [](const Inputs& in) { return edge_patch_family().choose(args_of(in)).name; };
  c.impls = edge_patch_family().impl_names();
  // base and delta read, out written once; the mask read once.
  const int64_t elem = static_cast<int64_t>(c10::elementSize(dtype));
  c.bytes = (2 * sh.batch * sh.pos * sh.receivers + sh.batch * sh.pos * sh.senders) * sh.d_model * elem +
            sh.receivers * sh.senders * (mask_kind == Mask::boolean ? 1 : 4);
  c.bytes = std::max<int64_t>(c.bytes, 1);
  c.perf_only = perf_only;
  return c;
}

std::vector<KernelCase> edge_patch_cases() {
  std::vector<KernelCase> cases;
  for (const at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
    // Shapes: {batch, pos, n_receivers, n_senders, d_model}. The CUDA
    // kernel's tiles are 128 columns, 16 receivers, 16 senders.
    cases.push_back(edge_patch_case("one_of_each", {1, 1, 1, 1, 1}, t, Mask::binary));
    cases.push_back(edge_patch_case("one_receiver", {2, 3, 1, 5, 64}, t, Mask::binary));
    cases.push_back(edge_patch_case("d_model_129", {2, 3, 5, 3, 129}, t, Mask::weights));
    cases.push_back(edge_patch_case("odd_sizes", {3, 5, 17, 33, 100}, t, Mask::binary));
    cases.push_back(edge_patch_case("many_tiles", {1, 2, 40, 20, 300}, t, Mask::weights));
    cases.push_back(edge_patch_case("sparse_mask", {2, 2, 37, 50, 96}, t, Mask::sparse));
    cases.push_back(edge_patch_case("none_removed", {2, 3, 6, 7, 40}, t, Mask::none_removed));
    cases.push_back(edge_patch_case("bool_mask", {2, 3, 9, 11, 65}, t, Mask::boolean));
    cases.push_back(edge_patch_case("no_senders", {2, 2, 3, 0, 16}, t, Mask::binary));
    cases.push_back(edge_patch_case("empty_batch", {0, 3, 4, 5, 8}, t, Mask::binary));
    // Non-contiguous inputs: the CUDA kernel refuses base and delta (the
    // entry point falls back to ATen) and takes any mask.
    cases.push_back(edge_patch_case("base_permuted", {2, 4, 6, 5, 70}, t, Mask::binary,
                                    Layout::base_permuted));
    cases.push_back(edge_patch_case("delta_strided", {2, 3, 6, 5, 70}, t, Mask::weights,
                                    Layout::delta_strided));
    cases.push_back(edge_patch_case("mask_transposed", {2, 3, 6, 5, 70}, t, Mask::binary,
                                    Layout::mask_transposed));
    // ACDC-sized: one GPT-2-small layer's receivers and senders, d_model 768.
    cases.push_back(edge_patch_case("acdc_layer", {4, 32, 64, 48, 768}, t, Mask::binary,
                                    Layout::contiguous, /*perf_only=*/true));
  }
  // float64: the ATen path everywhere (the CUDA kernel refuses it).
  cases.push_back(edge_patch_case("odd_sizes", {3, 5, 17, 33, 100}, at::kDouble, Mask::weights));
  cases.push_back(edge_patch_case("many_tiles", {1, 2, 40, 20, 300}, at::kDouble, Mask::binary));
  return cases;
}

[[maybe_unused]] const bool registered = register_kernel_cases("edge_patch", edge_patch_cases);

// ---------------------------------------------------------------- the harness can fail

TEST(EdgePatchHarness, OneFlippedEdgeIsOverEveryTolerance) {
  // A kernel that gets a single edge wrong must fail the comparison in every
  // dtype: flip one mask entry of the odd_sizes case and compare references.
  const Inputs in = make_edge_patch_inputs({3, 5, 17, 33, 100}, at::kFloat, Mask::binary,
                                           Layout::contiguous, 7, at::kCPU);
  const at::Tensor ref = edge_patch_reference(in[0], in[1], in[2]);
  at::Tensor flipped = in[2].to(at::kFloat).clone();
  flipped.index_put_({16, 32}, 1.0 - flipped.index({16, 32}).item<float>());
  const double err = nmse(edge_patch_reference(in[0], in[1], flipped), ref);
  EXPECT_GT(err, 1e-3);  // measured: 3.2e-3 (one term of ~17 in receiver 16's sum)
  for (const at::ScalarType t : {at::kDouble, at::kFloat, at::kBFloat16, at::kHalf}) {
    EXPECT_GT(err, 10 * nmse_tolerance(t)) << t;
  }
}

TEST(EdgePatchHarness, ReferenceMatchesTheDefinitionOnAHandExample) {
  // base = 10 everywhere; senders 1, 2, 3 (constant over d); receiver 0
  // removes senders 0 and 2, receiver 1 weighs sender 1 by 0.5.
  const at::Tensor base = at::full({1, 1, 2, 3}, 10.0, at::kDouble);
  const at::Tensor delta = at::tensor({1.0, 2.0, 3.0}, at::kDouble).view({1, 1, 3, 1}).expand({1, 1, 3, 3});
  const at::Tensor mask = at::tensor({1.0, 0.0, 1.0, 0.0, 0.5, 0.0}, at::kDouble).view({2, 3});
  const at::Tensor expect = at::tensor({6.0, 6.0, 6.0, 9.0, 9.0, 9.0}, at::kDouble).view({1, 1, 2, 3});
  EXPECT_TRUE(at::equal(edge_patch_reference(base, delta, mask), expect));
  EXPECT_TRUE(at::allclose(edge_patch(base, delta, mask), expect));
}

// ---------------------------------------------------------------- dispatch and errors

TEST(EdgePatchDispatch, CudaKernelIsBuiltExactlyWhenNvccWas) {
  const std::vector<std::string> expect =
      kernels::built_with_cuda() ? std::vector<std::string>{"cuda", "aten"} : std::vector<std::string>{"aten"};
  EXPECT_EQ(edge_patch_family().impl_names(), expect);
}

TEST(EdgePatchDispatch, CpuTensorsTakeTheAtenPath) {
  const Inputs in = make_edge_patch_inputs({1, 2, 3, 4, 5}, at::kBFloat16, Mask::binary,
                                           Layout::contiguous, 1, at::kCPU);
  EXPECT_EQ(edge_patch_family().choose(args_of(in)).name, "aten");
  if (kernels::built_with_cuda()) {
    const std::string msg = error_of([&] { edge_patch_family().run("cuda", args_of(in)); });
    EXPECT_EQ(msg, "edge_patch: implementation 'cuda' cannot take these inputs: it runs only on CUDA "
                   "tensors, these are on cpu; call edge_patch() to dispatch");
  }
}

TEST(EdgePatchErrors, NameTheArgumentAndTheFix) {
  const auto f = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor base = at::zeros({2, 3, 4, 8}, f), delta = at::zeros({2, 3, 5, 8}, f);
  const at::Tensor mask = at::zeros({4, 5}, f);
  EXPECT_EQ(error_of([&] { edge_patch(base[0], delta, mask); }),
            "edge_patch: base must be [batch, pos, n_receivers, d_model]; got [3, 4, 8]");
  EXPECT_EQ(error_of([&] { edge_patch(base, delta.flatten(0, 1), mask); }),
            "edge_patch: delta must be [batch, pos, n_senders, d_model]; got [6, 5, 8]");
  EXPECT_EQ(error_of([&] { edge_patch(base, delta, mask.flatten()); }),
            "edge_patch: mask must be [n_receivers, n_senders]; got [20]");
  EXPECT_EQ(error_of([&] { edge_patch(base, at::zeros({2, 3, 5, 9}, f), mask); }),
            "edge_patch: base [2, 3, 4, 8] and delta [2, 3, 5, 9] must agree in batch, pos and d_model");
  EXPECT_EQ(error_of([&] { edge_patch(base, delta, mask.t()); }),
            "edge_patch: mask must be [n_receivers, n_senders] = [4, 5]; got [5, 4]");
  EXPECT_EQ(error_of([&] { edge_patch(base.to(at::kInt), delta.to(at::kInt), mask); }),
            "edge_patch: base must be float32, bfloat16, float16 or float64; got Int");
  EXPECT_EQ(error_of([&] { edge_patch(base, delta.to(at::kHalf), mask); }),
            "edge_patch: delta is Half but base is Float; convert one so that both have the same dtype");
  EXPECT_EQ(error_of([&] { edge_patch(base, delta, mask.to(at::kLong)); }),
            "edge_patch: mask must be a floating or bool tensor; got Long");
  EXPECT_EQ(error_of([&] { edge_patch_family().run("triton", args_of({base, delta, mask})); }),
            kernels::built_with_cuda()
                ? "edge_patch: no implementation named 'triton' in this build (cuda, aten)"
                : "edge_patch: no implementation named 'triton' in this build (aten)");
}

TEST(EdgePatchErrors, CudaInputsOnMixedDevicesAreRefused) {
  if (!have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  const auto f = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor base = at::zeros({1, 2, 3, 4}, f.device(at::kCUDA)), delta = at::zeros({1, 2, 5, 4}, f);
  EXPECT_EQ(error_of([&] { edge_patch(base, delta, at::zeros({3, 5}, f)); }),
            "edge_patch: base (cuda:0), delta (cpu) and mask (cpu) must be on the same device");
}

TEST(KernelRegistryGuard, AnUnlistedFamilyCannotBeBuilt) {
  const auto make = [] {
    kernels::KernelFamily<EdgePatchArgs> f(
        "edge_patch_v2", [](const EdgePatchArgs&) {},
        {{"aten", kernels::Runs::anywhere, [](const EdgePatchArgs&) { return std::string(); },
          [](const EdgePatchArgs& a) { return a.base; }}});
  };
  EXPECT_EQ(error_of(make),
            "kernel family 'edge_patch_v2' is not listed in kernel_families() (kernels/dispatch.cpp); "
            "add it there");
}

}  // namespace
}  // namespace mechlab::testing
