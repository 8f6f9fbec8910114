// The runtime on a CUDA GPU against a float64 CPU reference, on the
// TransformerLens fixture models. Skipped without a GPU unless
// MECHLAB_REQUIRE_CUDA=1 (scripts/gpu/run.sh sets it), then it fails.
// Tolerances (normwise relative, see fixture_compare.h): float32 1e-4
// (cuBLAS without TF32, the LibTorch default), float16 1e-2, bfloat16 6e-2
// (8 mantissa bits over two layers), fused vs materialised attention 1e-5 in float32.
#include "hooks/hooked_transformer.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>

#include <cstdlib>

using mechlab::hooks::HookedTransformer;
using mechlab::testing::close;

namespace {

using mechlab::testing::have_cuda_or_skip;

std::string fixture(const std::string& name) {
  return std::string(MECHLAB_TEST_DATA) + "/runtime/" + name + ".h5";
}

class CudaRuntime : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaRuntime, ForwardMatchesFloat64CpuReference) {
  if (!have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  at::InferenceMode guard;
  auto ref_model = mechlab::core::Transformer::load(fixture(GetParam()));
  ref_model.to(at::kDouble);
  at::Tensor tokens = at::randint(61, {4, 16}, at::kLong);
  at::Tensor ref = ref_model.forward(tokens);
  struct Case { at::ScalarType dtype; double tol; };
  for (Case c : {Case{at::kFloat, 1e-4}, Case{at::kHalf, 1e-2}, Case{at::kBFloat16, 6e-2}}) {
    auto gpu = mechlab::core::Transformer::load(fixture(GetParam()));
    gpu.to(at::Device("cuda")).to(c.dtype);
    EXPECT_TRUE(close(gpu.forward(tokens), ref, c.tol, c10::str("cuda ", c.dtype, " logits")));
    mechlab::core::ForwardOptions mat;
    mat.materialise_attention(true);
    EXPECT_TRUE(close(gpu.forward(tokens, mat), ref, c.tol, c10::str("cuda ", c.dtype, " materialised")));
  }
}

TEST_P(CudaRuntime, HooksAndPaddingOnGpuMatchCpu) {
  if (!have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  at::InferenceMode guard;
  HookedTransformer cpu = HookedTransformer::load(fixture(GetParam()));
  auto base = mechlab::core::Transformer::load(fixture(GetParam()));
  base.to(at::Device("cuda"));
  HookedTransformer gpu(std::move(base));
  at::Tensor tokens = at::randint(61, {3, 12}, at::kLong);
  mechlab::hooks::RunOptions opts;
  opts.attention_mask(at::ones({3, 12}, at::kLong));
  opts.attention_mask().narrow(1, 0, 4)[0].zero_();  // left padding in row 0
  auto [l_cpu, c_cpu] = cpu.run_with_cache(tokens, {}, opts);
  opts.cache_device(at::Device("cpu"));
  auto [l_gpu, c_gpu] = gpu.run_with_cache(tokens, {}, opts);
  EXPECT_TRUE(close(l_gpu, l_cpu, 1e-4, "padded logits"));
  for (const auto& name : c_cpu.keys()) {
    ASSERT_TRUE(c_gpu.contains(name));
    EXPECT_EQ(c_gpu[name].device().type(), at::kCPU) << name;
    EXPECT_TRUE(close(c_gpu[name], c_cpu[name], 1e-4, "cuda " + name));
  }
  // The fused (SDPA) path with padding on the GPU agrees with the materialised one.
  mechlab::hooks::RunOptions plain;
  plain.attention_mask(opts.attention_mask());
  EXPECT_TRUE(close(gpu.forward(tokens, plain), l_gpu, 1e-5, "cuda padded fused vs materialised"));
}

INSTANTIATE_TEST_SUITE_P(Models, CudaRuntime,
                         ::testing::Values("gpt2_like", "attn_only", "llama_like", "neox_like"));

}  // namespace
