// Sae::to(device, dtype): a float64 copy computes what the float32 SAE
// computes (up to float32 rounding), trains (gradients in float64, leaves
// with requires_grad kept), splices into a float32 model giving float32 back,
// and returns to float32 bit for bit; non-floating dtypes are refused. On a
// machine with CUDA, the same SAE on the GPU reconstructs as on the CPU.
#include "hooks/hooked_transformer.h"
#include "sae/saelens_io.h"
#include "sae/splice.h"
#include "tests/test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mechlab::sae {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

const std::string kData = std::string(MECHLAB_TEST_DATA);

at::Tensor inputs() {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(8);
  return at::randn({10, 32}, g, at::kFloat) * 2.0;  // [10, d_in]
}

TEST(SaeTo, Float64ComputesTrainsSplicesAndComesBackBitForBit) {
  auto sae = import_saelens(kData + "/sae/saved/topk");
  auto wide = import_saelens(kData + "/sae/saved/topk");
  wide->requires_grad(true);
  EXPECT_EQ(&wide->to(at::kCPU, at::kDouble), wide.get());
  EXPECT_EQ(wide->dtype(), at::kDouble);
  EXPECT_EQ(wide->device(), at::Device(at::kCPU));
  for (const auto& [n, t] : wide->named_parameters()) {
    EXPECT_EQ(t.scalar_type(), at::kDouble) << n;
    EXPECT_TRUE(t.requires_grad() && t.is_leaf()) << n;
    EXPECT_TRUE(at::equal(t.detach(), sae->param(n).to(at::kDouble))) << n;  // widening is exact
  }
  const at::Tensor x = inputs();
  const at::Tensor r32 = sae->reconstruct(x), r64 = wide->reconstruct(x);
  EXPECT_EQ(r64.scalar_type(), at::kDouble);
  EXPECT_TRUE(at::allclose(r64.to(at::kFloat), r32, 1e-5, 1e-5));
  EXPECT_TRUE(at::equal(wide->encode(x).ne(0), sae->encode(x).ne(0)));  // the same k latents

  TrainStep step = wide->training_forward(x);
  step.loss.backward();
  for (const auto& [n, t] : wide->named_parameters()) {
    ASSERT_TRUE(t.grad().defined()) << n;
    EXPECT_EQ(t.grad().scalar_type(), at::kDouble) << n;
  }

  // Spliced into the float32 model: float32 flows on, as with the float32 SAE.
  auto model = hooks::HookedTransformer::load(kData + "/runtime/gpt2_like.h5");
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(2);
  const at::Tensor tokens = at::randint(1, 61, {2, 7}, g, at::kLong);
  const at::Tensor narrow = run_with_saes(model, tokens, {{"", sae}});
  const at::Tensor spliced = run_with_saes(model, tokens, {{"", wide}});
  EXPECT_EQ(spliced.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(spliced, narrow, 1e-4, 1e-4));
  EXPECT_TRUE(at::allclose(run_with_saes(model, tokens, {{"", wide}}, /*use_error_term=*/true), model.forward(tokens),
                           1e-5, 1e-5));

  wide->to(at::kCPU, at::kFloat);
  for (const auto& [n, t] : wide->named_parameters()) {
    EXPECT_TRUE(at::equal(t.detach(), sae->param(n))) << n;
    EXPECT_TRUE(t.requires_grad()) << n;
  }
  EXPECT_THAT(error_of([&] { wide->to(at::kCPU, at::kLong); }),
              HasSubstr("an SAE's parameters must be floating point, not Long; use float32, float64, bfloat16 or float16"));
}

TEST(SaeTo, OnCudaReconstructsAsOnTheCpu) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  auto sae = import_saelens(kData + "/sae/saved/topk");
  auto gpu = import_saelens(kData + "/sae/saved/topk");
  gpu->to(at::Device(at::kCUDA, 0), at::kFloat);
  EXPECT_TRUE(gpu->device().is_cuda());
  const at::Tensor x = inputs();
  const at::Tensor out = gpu->reconstruct(x);  // the input follows the parameters
  EXPECT_TRUE(out.is_cuda());
  EXPECT_TRUE(at::allclose(out.cpu(), sae->reconstruct(x), 1e-5, 1e-5));
}

}  // namespace
}  // namespace mechlab::sae
