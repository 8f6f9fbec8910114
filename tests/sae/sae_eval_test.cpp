// SAE splicing and evaluation against SAELens 6.54.12 + TransformerLens 2.18
// (tests/data/sae/sae_eval.h5, made by scripts/fixtures/make_sae_eval_fixtures.py):
// the shipped gpt2_like model with SAELens's saved topk, jumprelu and
// standard_norm SAEs at blocks.0.hook_resid_post. run_with_saes reproduces
// HookedSAETransformer.run_with_saes (with and without the error term);
// splice_metrics reproduces evals.get_downstream_reconstruction_metrics (CE
// loss recovered, KL) and get_sparsity_and_variance_metrics, with the
// special-token mask and without; the density histogram reproduces numpy's.
#include "core/formats/hdf5_file.h"
#include "hooks/hooked_transformer.h"
#include "sae/density.h"
#include "sae/registry.h"
#include "sae/saelens_io.h"
#include "sae/splice.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

namespace mechlab::sae {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::close;
using mechlab::testing::error_of;
using mechlab::testing::kF32Tol;

const std::string kData = std::string(MECHLAB_TEST_DATA);
const char* kHook = "blocks.0.hook_resid_post";

core::H5File fixtures() { return core::H5File::open_read(kData + "/sae/sae_eval.h5"); }
hooks::HookedTransformer fixture_model() {
  return hooks::HookedTransformer::load(kData + "/runtime/gpt2_like.h5");
}
std::shared_ptr<Sae> saved(const std::string& c) { return import_saelens(kData + "/sae/saved/" + c); }

class SaeEvalVsSaeLens : public ::testing::TestWithParam<std::string> {};

TEST_P(SaeEvalVsSaeLens, RunWithSaesMatchesHookedSAETransformer) {
  const std::string c = GetParam();
  auto f = fixtures();
  auto model = fixture_model();
  auto sae = saved(c);
  const at::Tensor tokens = f.read_tensor("tokens");  // [8, 12]
  EXPECT_TRUE(close(model.forward(tokens), f.read_tensor(c + "/logits_clean"), kF32Tol, c + " clean"));
  EXPECT_TRUE(close(run_with_saes(model, tokens, {{"", sae}}), f.read_tensor(c + "/logits_spliced"), kF32Tol,
                    c + " spliced"));
  EXPECT_TRUE(close(run_with_saes(model, tokens, {{kHook, sae}}, /*use_error_term=*/true),
                    f.read_tensor(c + "/logits_spliced_error"), kF32Tol, c + " spliced with error term"));
  // Detached afterwards, the SAE's own setting back.
  EXPECT_FALSE(sae->use_error_term());
  EXPECT_EQ(model.hook_names().size(), fixture_model().hook_names().size());
  // The splice makes the SAE's latents hook points that can be cached.
  auto [logits, cache] = run_with_cache_with_saes(model, tokens, {{"", sae}},
                                                  hooks::NamesFilter::glob("*.sae.hook_sae_acts_post"));
  const at::Tensor acts = cache[std::string(kHook) + ".sae.hook_sae_acts_post"];  // [8, 12, d_sae]
  auto [clean, clean_cache] = model.run_with_cache(tokens, hooks::NamesFilter::glob(kHook));
  EXPECT_TRUE(at::equal(acts, sae->encode(clean_cache[kHook])));
}

TEST_P(SaeEvalVsSaeLens, SpliceMetricsMatchSaeLensEvals) {
  const std::string c = GetParam();
  auto f = fixtures();
  auto model = fixture_model();
  auto sae = saved(c);
  const at::Tensor tokens = f.read_tensor("tokens");
  for (const std::string sub : {"ignore0", "all"}) {
    SpliceEvalOptions opts;
    opts.batch_size(4);  // SAELens's eval_batch_size_prompts in the fixture
    if (sub == "ignore0") opts.ignore_tokens({0});
    const SpliceMetrics m = splice_metrics(model, sae, kHook, tokens, opts);
    const std::string g = c + "/" + sub + "/";
    auto want = [&](const std::string& k) { return f.read_tensor(g + k).item<double>(); };
    auto expect = [&](const char* k, double got) {
      const double w = want(k);
      EXPECT_LE(std::abs(got - w), 1e-5 * std::max(1.0, std::abs(w))) << g << k << ": " << got << " vs " << w;
    };
    expect("ce_loss_without_sae", m.ce_loss_without_sae);
    expect("ce_loss_with_sae", m.ce_loss_with_sae);
    expect("ce_loss_with_ablation", m.ce_loss_with_ablation);
    expect("ce_loss_score", m.ce_loss_score);
    expect("kl_div_with_sae", m.kl_div_with_sae);
    expect("kl_div_with_ablation", m.kl_div_with_ablation);
    expect("kl_div_score", m.kl_div_score);
    expect("l0", m.l0);
    expect("l1", m.l1);
    expect("mse", m.mse);
    expect("cossim", m.cossim);
    expect("explained_variance", m.explained_variance);
    expect("explained_variance_legacy", m.explained_variance_legacy);
    expect("l2_norm_in", m.l2_norm_in);
    expect("l2_norm_out", m.l2_norm_out);
    expect("l2_ratio", m.l2_ratio);
    expect("relative_reconstruction_bias", m.relative_reconstruction_bias);
    EXPECT_TRUE(close(m.feature_density, f.read_tensor(g + "feature_density"), kF32Tol, g + "density"));
    // With the error term the model sees its own activation: nothing lost.
    EXPECT_LE(std::abs(m.ce_loss_with_error_term - m.ce_loss_without_sae), 1e-5) << g;
    EXPECT_LE(m.kl_div_with_error_term, 1e-6) << g;
    EXPECT_GT(m.kl_div_with_sae, 1e-3) << g;  // while the reconstruction alone loses something
    EXPECT_EQ(m.tokens, sub == "all" ? tokens.numel() : (tokens != 0).sum().item<int64_t>());
    if (sub == "ignore0") {
      const DensityHistogram h = density_histogram(m.feature_density);
      const at::Tensor counts = f.read_tensor(g + "density_hist");  // [20] int64
      ASSERT_EQ(h.bins(), counts.size(0));
      for (int64_t b = 0; b < h.bins(); ++b) EXPECT_EQ(h.counts[b], counts[b].item<int64_t>()) << g << " bin " << b;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, SaeEvalVsSaeLens, ::testing::Values("topk", "jumprelu", "standard_norm"));

TEST(SaeSpliceScope, DetachesAndRestoresWhenARunThrows) {
  auto model = fixture_model();
  auto sae = saved("topk");
  const size_t n_points = model.hook_names().size();
  const at::Tensor bad = at::full({1, 4}, 1000, at::kLong);  // ids beyond d_vocab 61
  EXPECT_FALSE(error_of([&] { run_with_saes(model, bad, {{"", sae}}, true); }).empty());
  EXPECT_EQ(model.hook_names().size(), n_points);
  EXPECT_FALSE(sae->use_error_term());
  // A refusal halfway through leaves nothing attached either.
  auto other = saved("jumprelu");
  EXPECT_THAT(error_of([&] { SaeSplice s(model, {{"", sae}, {kHook, other}}); }),
              HasSubstr("two SAEs at blocks.0.hook_resid_post; splice at most one SAE per hook"));
  EXPECT_EQ(model.hook_names().size(), n_points);
  // Two SAEs at two hooks both splice, and both go.
  {
    SaeSplice s(model, {{"", sae}, {"blocks.1.hook_resid_post", other}});
    EXPECT_EQ(model.hook_names().size(), n_points + 12);
  }
  EXPECT_EQ(model.hook_names().size(), n_points);
}

TEST(SaeSpliceScope, RefusesAWrongHookOrWidth) {
  auto model = fixture_model();
  auto sae = saved("topk");
  const at::Tensor tokens = at::zeros({1, 4}, at::kLong);
  EXPECT_THAT(error_of([&] { splice_metrics(model, sae, "blocks.7.hook_resid_post", tokens); }),
              HasSubstr("blocks.7.hook_resid_post"));
  EXPECT_THAT(error_of([&] { splice_metrics(model, sae, "blocks.0.mlp.hook_post", tokens); }),
              HasSubstr("an SAE with d_in 32 does not fit blocks.0.mlp.hook_post"));
  SaeConfig cfg;
  cfg.d_in(32).d_sae(8);  // no hook_name
  EXPECT_THAT(error_of([&] { run_with_saes(model, tokens, {{"", make_sae(cfg)}}); }),
              HasSubstr("the SAE's config has no hook_name; give the hook to splice it at"));
  EXPECT_THAT(error_of([&] { splice_metrics(model, sae, "", at::zeros({4}, at::kLong)); }),
              HasSubstr("SAE evaluation needs tokens [prompts, pos] with pos >= 2"));
  EXPECT_EQ(model.hook_names().size(), fixture_model().hook_names().size());
}

TEST(DensityHistogram, BinsLikeNumpyOnEdgesAndDeadLatents) {
  // log10(d + 1e-10) of these: -10 (dead, first bin closed on the left),
  // just above the edges -3 and -2 of 10 bins on [-10, 0], 0 (1e-10 lost in
  // rounding, or clipped: the last bin is closed), -0.3.
  const at::Tensor d = at::tensor({0.0, 1e-3, 1e-2, 1.0, 0.5, 0.0}, at::kDouble);
  const DensityHistogram h = density_histogram(d, 10);
  ASSERT_EQ(h.bins(), 10);
  EXPECT_DOUBLE_EQ(h.edges.front(), -10.0);
  EXPECT_DOUBLE_EQ(h.edges.back(), 0.0);
  const std::vector<int64_t> want = {2, 0, 0, 0, 0, 0, 0, 1, 1, 2};
  EXPECT_EQ(h.counts, want);
  EXPECT_THAT(error_of([] { density_histogram(at::tensor({0.5, 1.5}, at::kDouble)); }),
              HasSubstr("feature density has values outside [0, 1]"));
  EXPECT_THAT(error_of([] { density_histogram(at::tensor({0.5}, at::kDouble), 0); }),
              HasSubstr("density histogram bins = 0 must be at least 1"));
}

}  // namespace
}  // namespace mechlab::sae
