// Differential tests against SAELens 6.54.12 (tests/data/sae/, made by
// scripts/fixtures/make_sae_fixtures.py): every architecture's training
// forward pass (each loss term, latents, reconstruction, every parameter's
// gradient) on SAELens's own weights and batch, SAELens's saved inference
// folders imported, and mechlab's export reproducing SAELens's inference
// reconstruction.
#include "core/formats/hdf5_file.h"
#include "sae/metrics.h"
#include "sae/registry.h"
#include "sae/saelens_io.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

namespace mechlab::sae {
namespace {

using mechlab::testing::close;
using mechlab::testing::kF32Tol;

const std::string kData = std::string(MECHLAB_TEST_DATA) + "/sae/";

core::H5File fixtures() { return core::H5File::open_read(kData + "sae_lens.h5"); }

/// The SAELens training config of a case, as mechlab's SaeConfig.
SaeConfig config_of(const core::H5File& f, const std::string& c) {
  const auto j = nlohmann::json::parse(f.read_attr_string(c, "cfg"));
  SaeConfig cfg;
  const std::string arch = j.at("architecture");
  cfg.architecture(arch == "standard" ? "relu" : arch)
      .d_in(j.at("d_in"))
      .d_sae(j.at("d_sae"))
      .apply_b_dec_to_input(j.at("apply_b_dec_to_input"))
      .normalize_activations(j.at("normalize_activations"));
  if (j.contains("k")) cfg.k(j.at("k").get<double>());
  if (j.contains("rescale_acts_by_decoder_norm")) cfg.rescale_acts_by_decoder_norm(j.at("rescale_acts_by_decoder_norm"));
  if (j.contains("aux_loss_coefficient")) cfg.aux_loss_coefficient(j.at("aux_loss_coefficient"));
  if (j.contains("topk_threshold_lr")) cfg.topk_threshold_lr(j.at("topk_threshold_lr"));
  if (j.contains("l1_coefficient")) cfg.l1_coefficient(j.at("l1_coefficient"));
  if (j.contains("lp_norm")) cfg.lp_norm(j.at("lp_norm"));
  if (j.contains("l0_coefficient")) cfg.l0_coefficient(j.at("l0_coefficient"));
  if (j.contains("jumprelu_bandwidth")) cfg.jumprelu_bandwidth(j.at("jumprelu_bandwidth"));
  if (j.contains("jumprelu_ste_to_input")) cfg.jumprelu_ste_to_input(j.at("jumprelu_ste_to_input"));
  if (j.contains("jumprelu_sparsity_loss_mode")) cfg.jumprelu_sparsity_loss_mode(j.at("jumprelu_sparsity_loss_mode"));
  if (j.contains("jumprelu_tanh_scale")) cfg.jumprelu_tanh_scale(j.at("jumprelu_tanh_scale"));
  if (j.contains("target_l0") && !j.at("target_l0").is_null()) cfg.target_l0(j.at("target_l0").get<double>());
  if (j.contains("pre_act_loss_coefficient") && !j.at("pre_act_loss_coefficient").is_null()) {
    cfg.pre_act_loss_coefficient(j.at("pre_act_loss_coefficient").get<double>());
  }
  // The loss coefficients SAELens was given are the config's (no warm-up).
  for (const char* k : {"l1", "l0"}) {
    if (f.has_attr(c, std::string("coef_") + k)) {
      EXPECT_DOUBLE_EQ(f.read_attr_double(c, std::string("coef_") + k),
                       std::string(k) == "l1" ? cfg.l1_coefficient() : cfg.l0_coefficient());
    }
  }
  return cfg;
}

/// The case's SAE with SAELens's weights.
std::shared_ptr<Sae> sae_of(const core::H5File& f, const std::string& c) {
  auto sae = make_sae(config_of(f, c));
  const auto names = f.list(c + "/params");
  EXPECT_EQ(names.size(), sae->named_parameters().size()) << c;
  for (const std::string& n : names) sae->param(n).copy_(f.read_tensor(c + "/params/" + n));
  return sae;
}

class SaeLensCase : public ::testing::TestWithParam<std::string> {};

TEST_P(SaeLensCase, TrainingForwardLossesAndGradientsMatchSaeLens) {
  const std::string c = GetParam();
  const core::H5File f = fixtures();
  auto sae = sae_of(f, c);
  sae->requires_grad(true);
  const at::Tensor x = f.read_tensor(c + "/x");                            // [batch, d_in]
  const at::Tensor dead = f.read_tensor(c + "/dead_mask").to(at::kBool);  // [d_sae]
  TrainStep step = sae->training_forward(x, dead);

  std::vector<std::string> want_terms = f.list(c + "/losses");
  std::vector<std::string> got_terms;
  for (const auto& [name, v] : step.losses) {
    got_terms.push_back(name);
    EXPECT_TRUE(close(v, f.read_tensor(c + "/losses/" + name), kF32Tol, c + " " + name));
  }
  std::sort(got_terms.begin(), got_terms.end());
  EXPECT_EQ(got_terms, want_terms) << c;
  EXPECT_TRUE(close(step.loss, f.read_tensor(c + "/loss"), kF32Tol, c + " loss"));
  EXPECT_TRUE(close(step.feature_acts, f.read_tensor(c + "/feature_acts"), kF32Tol, c + " feature_acts"));
  EXPECT_TRUE(close(step.hidden_pre, f.read_tensor(c + "/hidden_pre"), kF32Tol, c + " hidden_pre"));
  EXPECT_TRUE(close(step.sae_out, f.read_tensor(c + "/sae_out"), kF32Tol, c + " sae_out"));

  step.loss.backward();
  for (const auto& [name, p] : sae->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << c << " " << name;
    const at::Tensor want = f.read_tensor(c + "/grads/" + name);
    EXPECT_GT(want.abs().max().item<double>(), 0) << c << " " << name << ": a zero gradient tests nothing";
    EXPECT_TRUE(close(p.grad(), want, kF32Tol, c + " grad " + name));
  }
  if (c == "batchtopk") {
    const double want = f.read_tensor(c + "/topk_threshold").item<double>();
    EXPECT_NEAR(sae->cfg().topk_threshold(), want, 1e-6 * std::abs(want));
    EXPECT_GT(want, 0);
  }
}

TEST_P(SaeLensCase, ImportsSaeLensSavedFolderAndReproducesItsInference) {
  const std::string c = GetParam();
  const core::H5File f = fixtures();
  auto sae = import_saelens(kData + "saved/" + c);
  const at::Tensor x = f.read_tensor(c + "/x");
  EXPECT_TRUE(close(sae->encode(x), f.read_tensor(c + "/inference/acts"), kF32Tol, c + " acts"));
  EXPECT_TRUE(close(sae->reconstruct(x), f.read_tensor(c + "/inference/out"), kF32Tol, c + " out"));
  EXPECT_EQ(sae->cfg().hook_name(), "blocks.0.hook_resid_post");
}

TEST_P(SaeLensCase, ExportOfTheTrainedSaeReproducesSaeLensInference) {
  // SAELens saved its inference form after the training step; mechlab's
  // export of the same SAE after the same step must reconstruct alike.
  const std::string c = GetParam();
  const core::H5File f = fixtures();
  auto sae = sae_of(f, c);
  const at::Tensor x = f.read_tensor(c + "/x");
  {
    at::NoGradGuard no_grad;
    sae->training_forward(x, f.read_tensor(c + "/dead_mask").to(at::kBool));
  }
  const std::string dir = mechlab::testing::temp_path("sae", "export_" + c);
  export_saelens(*sae, dir);
  auto back = import_saelens(dir);
  EXPECT_TRUE(close(back->reconstruct(x), f.read_tensor(c + "/inference/out"), kF32Tol, c + " out"));
  EXPECT_TRUE(close(sae->reconstruct(x), f.read_tensor(c + "/inference/out"), kF32Tol, c + " in-memory out"));
}

TEST(SaeLensImport, ReadsPre6FoldersAsSaeLens6Does) {
  const core::H5File f = fixtures();
  for (const std::string c : {"pre6_standard", "pre6_topk"}) {
    auto sae = import_saelens(kData + "saved/" + c);
    const std::string arch = f.read_attr_string(c, "architecture");
    EXPECT_EQ(sae->architecture(), arch == "standard" ? "relu" : arch) << c;
    EXPECT_EQ(sae->cfg().hook_name(), "blocks.0.hook_resid_post");
    const at::Tensor x = f.read_tensor(c + "/x");
    EXPECT_TRUE(close(sae->encode(x), f.read_tensor(c + "/inference/acts"), kF32Tol, c + " acts"));
    EXPECT_TRUE(close(sae->reconstruct(x), f.read_tensor(c + "/inference/out"), kF32Tol, c + " out"));
  }
}

INSTANTIATE_TEST_SUITE_P(Sae, SaeLensCase,
                         ::testing::Values("standard", "standard_norm", "topk", "batchtopk", "jumprelu",
                                           "jumprelu_ste", "gated", "topk_plain", "jumprelu_tanh",
                                           "jumprelu_quadratic"));

TEST(SaeMetrics, MatchSaeLensDefinitions) {
  const core::H5File f = fixtures();
  auto sae = import_saelens(kData + "saved/topk");
  const at::Tensor x = f.read_tensor("topk/x");
  const at::Tensor out = sae->reconstruct(x), acts = sae->encode(x);
  const ReconstructionMetrics m = reconstruction_metrics(x, out, acts);
  auto want = [&](const char* k) { return f.read_tensor(std::string("metrics/") + k).item<double>(); };
  EXPECT_NEAR(m.l0, want("l0"), 1e-9);
  EXPECT_NEAR(m.mse, want("mse"), 1e-5 * want("mse"));
  EXPECT_NEAR(m.explained_variance, want("explained_variance"), 1e-5);
  EXPECT_NEAR(m.fvu, want("fvu"), 1e-5);
  EXPECT_NEAR(m.explained_variance_legacy, want("explained_variance_legacy"), 1e-5);
  EXPECT_NEAR(m.cossim, want("cossim"), 1e-5);
  EXPECT_NEAR(m.l2_ratio, want("l2_ratio"), 1e-5);
  EXPECT_NEAR(m.relative_reconstruction_bias, want("relative_reconstruction_bias"), 1e-5);
  const LatentUsage u = latent_usage(acts);
  EXPECT_TRUE(close(u.density, f.read_tensor("metrics/feature_density"), kF32Tol, "density"));
  EXPECT_NEAR(u.dead_fraction, want("dead_fraction"), 1e-12);
  EXPECT_NEAR(u.dense_fraction, want("dense_fraction"), 1e-12);
  EXPECT_NEAR(u.effective_features, want("effective_features"), 1e-9 * want("effective_features"));
  // The fixture must exercise them: some latents dead, some dense, some not.
  EXPECT_GT(want("dead_fraction"), 0);
  EXPECT_GT(want("dense_fraction"), 0);
  EXPECT_EQ(m.l0, 8.0);  // TopK k = 8, every kept pre-activation positive here
}

TEST(SaeMetrics, EffectiveFeaturesAnalyticCases) {
  // Four latents firing equally often: exp(ln 4) = 4; one latent alone: 1.
  const at::Tensor even = at::eye(4, at::kFloat);
  EXPECT_NEAR(latent_usage(even).effective_features, 4.0, 1e-12);
  at::Tensor one = at::zeros({5, 4});
  one.select(1, 2).fill_(1.5);
  const LatentUsage u = latent_usage(one);
  EXPECT_NEAR(u.effective_features, 1.0, 1e-12);
  EXPECT_DOUBLE_EQ(u.dead_fraction, 0.75);
  EXPECT_DOUBLE_EQ(u.dense_fraction, 0.25);
}

}  // namespace
}  // namespace mechlab::sae
