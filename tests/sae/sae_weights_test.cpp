// Weight transformations checked by identities: folding a fixed input
// scaling factor (an SAE on x * f reconstructs x * f; folded, it reconstructs
// x to the same values / f), folding the decoder norms (reconstructions
// unchanged, decoder rows of unit norm), and decoder unit norm in training
// (rows of norm 1, gradient orthogonal to each row, the orthogonal projection).
#include "sae/registry.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mechlab::sae {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

SaeConfig config(const std::string& arch) {
  SaeConfig cfg;
  cfg.architecture(arch).d_in(10).d_sae(30).k(4).rescale_acts_by_decoder_norm(true).topk_threshold(0.3);
  return cfg;
}

std::shared_ptr<Sae> random_sae(const SaeConfig& cfg, uint64_t seed) {
  auto sae = make_sae(cfg);
  at::manual_seed(seed);
  for (auto& [n, t] : sae->named_parameters()) {
    at::Tensor p = t;
    p.copy_(n == "threshold" ? at::rand(p.sizes()) * 0.5 : at::randn(p.sizes()) * 0.4);
  }
  return sae;
}

std::shared_ptr<Sae> copy_of(const Sae& sae) {
  auto c = make_sae(sae.cfg());
  for (const auto& [n, t] : sae.named_parameters()) c->param(n).copy_(t);
  return c;
}

const std::vector<std::string> kArchs{"relu", "topk", "batchtopk", "jumprelu", "gated"};

TEST(SaeWeights, FoldingTheInputScaleReconstructsTheUnscaledInput) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({16, 10}) * 3;  // [n, d_in]
  const double f = 2.5;
  for (const auto& arch : kArchs) {
    auto sae = random_sae(config(arch), 2);
    auto folded = copy_of(*sae);
    folded->fold_activation_norm_scaling_factor(f);
    const at::Tensor want = sae->reconstruct(x * f) / f;
    EXPECT_TRUE(at::allclose(folded->reconstruct(x), want, 1e-5, 1e-5)) << arch;
    EXPECT_GT((sae->reconstruct(x) - want).abs().max().item<double>(), 1e-3) << arch << ": f matters";
  }
  EXPECT_THAT(error_of([] { random_sae(config("relu"), 1)->fold_activation_norm_scaling_factor(0); }),
              HasSubstr("the activation scaling factor must be finite and > 0, got 0"));
}

TEST(SaeWeights, FoldingDecoderNormsKeepsReconstructions) {
  at::manual_seed(3);
  const at::Tensor x = at::randn({16, 10}) * 2;
  for (const auto& arch : kArchs) {
    auto sae = random_sae(config(arch), 4);
    auto folded = copy_of(*sae);
    folded->fold_W_dec_norm();
    EXPECT_TRUE(at::allclose(folded->param("W_dec").norm(2, {1}), at::ones({30}), 1e-6, 1e-6)) << arch;
    EXPECT_TRUE(at::allclose(folded->reconstruct(x), sae->reconstruct(x), 1e-5, 1e-5)) << arch;
  }
  EXPECT_THAT(error_of([] {
                random_sae(config("topk").rescale_acts_by_decoder_norm(false), 1)->fold_W_dec_norm();
              }),
              HasSubstr("without rescale_acts_by_decoder_norm would change which latents it keeps"));
}

TEST(SaeWeights, DecoderUnitNormAndOrthogonalGradient) {
  auto sae = random_sae(config("relu"), 5);
  sae->set_decoder_norm_to_unit_norm();
  const at::Tensor W = sae->param("W_dec").clone();  // [d_sae, d_in]
  EXPECT_TRUE(at::allclose(W.norm(2, {1}), at::ones({30}), 1e-6, 1e-6));
  sae->requires_grad(true);
  at::manual_seed(6);
  const at::Tensor x = at::randn({8, 10});
  sae->training_forward(x).loss.backward();
  const at::Tensor g = sae->param("W_dec").grad().clone();
  sae->remove_gradient_parallel_to_decoder_directions();
  const at::Tensor g2 = sae->param("W_dec").grad();
  // Naive reference, row by row in double: g_i - (g_i . w_i) w_i.
  const at::Tensor gd = g.to(at::kDouble), Wd = W.to(at::kDouble);
  for (int64_t i = 0; i < 30; ++i) {
    const at::Tensor want = gd[i] - at::dot(gd[i], Wd[i]) * Wd[i];
    EXPECT_TRUE(at::allclose(g2[i].to(at::kDouble), want, 1e-5, 1e-6)) << i;
    EXPECT_NEAR(at::dot(g2[i].to(at::kDouble), Wd[i]).item<double>(), 0, 1e-5);
  }
  EXPECT_GT((g2 - g).abs().max().item<double>(), 1e-4);  // something was removed
}

}  // namespace
}  // namespace mechlab::sae
