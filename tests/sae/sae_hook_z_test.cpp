// SAEs on attention outputs (hook_z; Kissane et al. 2024) against SAELens
// 6.54.12 (tests/data/sae/sae_hook_z.h5 and saved/hook_z_{standard,topk}, made
// by scripts/fixtures/make_sae_eval_fixtures.py): import of SAELens's
// reshape_activations "hook_z" folders, run_with_saes with and without the
// error term, the SAE's cached points, CE loss recovered and the activation
// metrics at hook_z; the head-major flatten against an analytic identity SAE;
// export and the refusals; and an SAE trained on a store cached at hook_z.
#include "core/formats/hdf5_file.h"
#include "core/model/transformer.h"
#include "core/store/activation_store.h"
#include "hooks/activation_capture.h"
#include "hooks/hooked_transformer.h"
#include "sae/dashboard.h"
#include "sae/registry.h"
#include "sae/saelens_io.h"
#include "sae/splice.h"
#include "sae/trainer.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>


#include <cstdio>
#include <filesystem>
#include <fstream>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;

using mechlab::testing::remove_tree;
using ::testing::HasSubstr;
using mechlab::testing::close;
using mechlab::testing::error_of;
using mechlab::testing::kF32Tol;
using mechlab::testing::temp_path;

const std::string kData = std::string(MECHLAB_TEST_DATA);
const char* kZ = "blocks.0.attn.hook_z";

core::H5File fixtures() { return core::H5File::open_read(kData + "/sae/sae_hook_z.h5"); }
hooks::HookedTransformer fixture_model() { return hooks::HookedTransformer::load(kData + "/runtime/gpt2_like.h5"); }
std::shared_ptr<Sae> saved(const std::string& c) { return import_saelens(kData + "/sae/saved/" + c); }

class HookZVsSaeLens : public ::testing::TestWithParam<std::string> {};

TEST_P(HookZVsSaeLens, ImportsAndSplicesAsHookedSAETransformer) {
  const std::string c = GetParam();
  auto f = fixtures();
  auto model = fixture_model();
  auto sae = saved(c);
  EXPECT_EQ(sae->cfg().reshape_activations(), "hook_z");
  EXPECT_EQ(sae->cfg().hook_name(), kZ);
  EXPECT_EQ(sae->d_in(), model.cfg().n_heads * model.cfg().d_head);
  const at::Tensor tokens = f.read_tensor("tokens");  // [8, 12]
  EXPECT_TRUE(close(run_with_saes(model, tokens, {{"", sae}}), f.read_tensor(c + "/logits_spliced"), kF32Tol,
                    c + " spliced"));
  EXPECT_TRUE(close(run_with_saes(model, tokens, {{"", sae}}, /*use_error_term=*/true),
                    f.read_tensor(c + "/logits_spliced_error"), kF32Tol, c + " spliced with error term"));
  auto [logits, cache] = run_with_cache_with_saes(model, tokens, {{"", sae}}, hooks::NamesFilter::glob("*.sae.*"));
  const std::string p = std::string(kZ) + ".sae.";
  // mechlab keeps the host's axes at the input; SAELens caches it flat.
  const at::Tensor in = cache[p + "hook_sae_input"];  // [8, 12, head, d_head]
  ASSERT_EQ(in.dim(), 4);
  EXPECT_TRUE(close(in.flatten(-2, -1), f.read_tensor(c + "/cache/hook_sae_input"), kF32Tol, c + " input"));
  EXPECT_TRUE(close(cache[p + "hook_sae_acts_post"], f.read_tensor(c + "/cache/hook_sae_acts_post"), kF32Tol,
                    c + " latents"));
  EXPECT_TRUE(close(cache[p + "hook_sae_output"], f.read_tensor(c + "/cache/hook_sae_output"), kF32Tol,
                    c + " output"));
}

TEST_P(HookZVsSaeLens, CeLossRecoveredAndMetricsMatchSaeLensEvals) {
  const std::string c = GetParam();
  auto f = fixtures();
  auto model = fixture_model();
  auto sae = saved(c);
  const at::Tensor tokens = f.read_tensor("tokens");
  for (const std::string sub : {"ignore0", "all"}) {
    SpliceEvalOptions opts;
    opts.batch_size(4);
    if (sub == "ignore0") opts.ignore_tokens({0});
    const SpliceMetrics m = splice_metrics(model, sae, "", tokens, opts);
    const std::string g = c + "/" + sub + "/";
    auto expect = [&](const char* k, double got) {
      const double w = f.read_tensor(g + k).item<double>();
      EXPECT_LE(std::abs(got - w), 1e-5 * std::max(1.0, std::abs(w))) << g << k << ": " << got << " vs " << w;
    };
    expect("ce_loss_without_sae", m.ce_loss_without_sae);
    expect("ce_loss_with_sae", m.ce_loss_with_sae);
    expect("ce_loss_with_ablation", m.ce_loss_with_ablation);
    {
      // CE loss recovered is (abl - sae) / (abl - clean); with this random
      // model ablating attention barely moves the CE (abl - clean ~ -0.05), so
      // the score carries the CE terms' float32 differences (checked above)
      // amplified by 1 / |abl - clean|. Its bound is that propagation of the
      // observed CE differences, nothing looser.
      auto want = [&](const char* k) { return f.read_tensor(g + k).item<double>(); };
      const double d_abl = std::abs(m.ce_loss_with_ablation - want("ce_loss_with_ablation"));
      const double d_sae = std::abs(m.ce_loss_with_sae - want("ce_loss_with_sae"));
      const double d_clean = std::abs(m.ce_loss_without_sae - want("ce_loss_without_sae"));
      const double w = want("ce_loss_score");
      const double den = std::abs(want("ce_loss_with_ablation") - want("ce_loss_without_sae"));
      const double bound = ((d_abl + d_sae) + std::abs(w) * (d_abl + d_clean)) / den * 1.01 + 1e-9;
      EXPECT_LE(std::abs(m.ce_loss_score - w), bound) << g << "ce_loss_score: " << m.ce_loss_score << " vs " << w;
      EXPECT_LE(bound, 1e-3) << g;  // the CE terms agree closely enough to make it a check
    }
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
    EXPECT_LE(std::abs(m.ce_loss_with_error_term - m.ce_loss_without_sae), 1e-5) << g;
    EXPECT_LE(m.kl_div_with_error_term, 1e-6) << g;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, HookZVsSaeLens, ::testing::Values("hook_z_standard", "hook_z_topk"));

// An identity SAE (W_enc = W_dec = I, no biases): latent j is the flattened
// input's entry j, so latent h * d_head + i must be ReLU(z[..., h, i]); a
// d_head-major flatten (or un-flatten) would put another head's value there.
TEST(HookZSae, FlattensHeadMajorAndGivesTheHeadsBack) {
  auto model = fixture_model();
  const int64_t H = model.cfg().n_heads, dh = model.cfg().d_head, d = H * dh;
  ASSERT_NE(H, dh);  // the two orders differ
  SaeConfig cfg;
  cfg.architecture("relu").d_in(d).d_sae(d).apply_b_dec_to_input(false).reshape_activations("hook_z").hook_name(kZ);
  auto sae = make_sae(cfg);
  sae->param("W_enc").copy_(at::eye(d));
  sae->param("W_dec").copy_(at::eye(d));
  at::manual_seed(5);
  const at::Tensor tokens = at::randint(1, model.cfg().d_vocab, {3, 7}, at::kLong);
  auto [clean, clean_cache] = model.run_with_cache(tokens, hooks::NamesFilter::glob(kZ));
  const at::Tensor z = clean_cache[kZ];  // [3, 7, head, d_head]
  auto [logits, cache] = run_with_cache_with_saes(model, tokens, {{"", sae}}, hooks::NamesFilter::glob("*.sae.*"));
  const std::string p = std::string(kZ) + ".sae.";
  const at::Tensor acts = cache[p + "hook_sae_acts_post"];  // [3, 7, d]
  ASSERT_EQ(acts.sizes(), (std::vector<int64_t>{3, 7, d}));
  for (int64_t h : {int64_t{0}, H - 1}) {
    for (int64_t i : {int64_t{0}, dh - 1}) {
      EXPECT_TRUE(at::equal(acts.select(-1, h * dh + i), at::relu(z.select(-2, h).select(-1, i)))) << h << "," << i;
    }
  }
  EXPECT_TRUE(at::equal(acts, at::relu(z.flatten(-2, -1))));
  EXPECT_FALSE(at::equal(acts, at::relu(z.transpose(-1, -2).flatten(-2, -1))));
  // Decoded and un-flattened: ReLU(z) in z's own layout.
  EXPECT_TRUE(at::equal(cache[p + "hook_sae_output"], at::relu(z)));
  EXPECT_TRUE(at::equal(sae->reconstruct(z), at::relu(z)));           // [..., head, d_head] in and out
  EXPECT_TRUE(at::equal(sae->encode(z), sae->encode(z.flatten(-2, -1))));  // flat input too
  // With the error term the model sees z itself.
  EXPECT_TRUE(close(run_with_saes(model, tokens, {{"", sae}}, true), clean, kF32Tol, "error term"));
}

// The dashboard's direct logit effects of a hook_z latent: its decoder row
// per head through that head's W_O, summed, then W_U (a naive loop here).
TEST(HookZSae, DashboardLogitEffectsGoThroughTheLayersWO) {
  auto model = fixture_model();
  auto sae = saved("hook_z_standard");
  const at::Tensor tokens = fixtures().read_tensor("tokens");
  const std::vector<int64_t> latents = {0, 5, 9};
  const Dashboard d = compute_dashboard(model, sae, "", tokens, DashboardOptions().latents(latents).top_logits(4));
  const core::TransformerWeights& w = model.model().weights();
  const at::Tensor W_U = model.cfg().tied_embeddings ? w.W_E.t() : w.W_U;  // [d_model, d_vocab]
  const int64_t H = model.cfg().n_heads, dh = model.cfg().d_head;
  ASSERT_EQ(d.logit_pos.sizes(), (std::vector<int64_t>{3, 4}));
  for (size_t i = 0; i < latents.size(); ++i) {
    at::Tensor resid = at::zeros({model.cfg().d_model}, at::kFloat);
    for (int64_t h = 0; h < H; ++h) {
      const at::Tensor row = sae->param("W_dec")[latents[i]].slice(0, h * dh, (h + 1) * dh);  // [d_head]
      resid = resid + at::matmul(row, w.blocks[0].W_O[h]);                                  // [d_model]
    }
    const at::Tensor eff = at::matmul(resid, W_U);  // [d_vocab]
    auto [pv, pi] = eff.topk(4);
    auto [nv, ni] = eff.topk(4, 0, /*largest=*/false);
    const int64_t r = static_cast<int64_t>(i);
    EXPECT_TRUE(at::allclose(d.logit_pos[r], pv, 1e-4, 1e-5)) << latents[i];
    EXPECT_TRUE(at::equal(d.logit_pos_ids[r], pi)) << latents[i];
    EXPECT_TRUE(at::allclose(d.logit_neg[r], nv, 1e-4, 1e-5)) << latents[i];
    EXPECT_TRUE(at::equal(d.logit_neg_ids[r], ni)) << latents[i];
  }
}

TEST(HookZSae, ExportWritesReshapeActivationsAndRoundTrips) {
  auto sae = saved("hook_z_topk");
  const std::string dir = temp_path("sae_hook_z", "export");
  remove_tree(dir);
  export_saelens(*sae, dir);
  std::ifstream in(dir + "/cfg.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["reshape_activations"], "hook_z");
  EXPECT_EQ(j["metadata"]["hook_name"], kZ);
  auto back = import_saelens(dir);
  EXPECT_EQ(back->cfg().reshape_activations(), "hook_z");
  for (const auto& [n, t] : sae->named_parameters()) EXPECT_TRUE(at::equal(back->param(n), t)) << n;
  remove_tree(dir);
}

TEST(HookZSae, RefusesTheWrongHostsInOneLine) {
  auto model = fixture_model();
  auto z_sae = saved("hook_z_standard");
  EXPECT_THAT(error_of([&] { model.attach("blocks.0.hook_resid_post", z_sae); }),
              HasSubstr("a hook_z SAE (reshape_activations hook_z) reads [batch, pos, head, d_head], which "
                        "blocks.0.hook_resid_post [batch, pos, d_model] is not; attach it at blocks.L.attn.hook_z"));
  SaeConfig flat;
  flat.d_in(32).d_sae(8);  // d_in = head * d_head, but no reshaping
  EXPECT_THAT(error_of([&] { model.attach(kZ, make_sae(flat)); }),
              HasSubstr("an SAE over all heads at once needs reshape_activations hook_z"));
  SaeConfig bad = flat;
  bad.reshape_activations("hook_z").hook_name("blocks.0.hook_resid_post");
  EXPECT_THAT(error_of([&] { validate(bad); }),
              HasSubstr("SAE reshape_activations \"hook_z\" reads attention outputs, but hook_name is "
                        "\"blocks.0.hook_resid_post\""));
  EXPECT_THAT(error_of([&] { validate(flat.reshape_activations("hook_q")); }),
              HasSubstr("SAE reshape_activations \"hook_q\" is not supported; use none or hook_z"));
  EXPECT_EQ(model.hook_names().size(), fixture_model().hook_names().size());
}

// mechlab cache stores hook_z rows flattened head-major; an SAE trained on
// them is a hook_z SAE (hook and reshaping from the data) that splices back.
TEST(HookZSae, TrainsOnAStoreCachedAtHookZAndSplicesBack) {
  auto model = fixture_model();
  core::Dataset ds;
  ds.d_vocab = model.cfg().d_vocab;
  at::manual_seed(11);
  ds.tokens = at::randint(1, ds.d_vocab, {16, 8}, at::kInt);
  const std::string store = temp_path("sae_hook_z", "z.h5");
  fs::remove(store);
  hooks::cache_activations(model, ds, store,
                           hooks::CacheOptions().hooks({kZ}).dtype(at::kFloat).batch_size(4).chunk_rows(32)
                               .progress(false));
  {
    auto s = core::ActivationStore::open(store);
    auto [logits, cache] = model.run_with_cache(ds.tokens.to(at::kLong), hooks::NamesFilter::glob(kZ));
    EXPECT_TRUE(close(s.rows(kZ, 0, s.num_rows()), cache[kZ].flatten(-2, -1).reshape({-1, 32}), kF32Tol, "rows"));
  }
  const SaeTrainConfig cfg = SaeTrainConfig::from_json(nlohmann::json::parse(
      R"({"sae": {"architecture": "topk", "d_in": 0, "d_sae": 64, "k": 4},
          "data": {"store": ")" + store + R"(", "hook": "blocks.0.attn.hook_z", "buffer_rows": 64},
          "steps": 20, "batch_size": 32, "lr": 3e-3, "eval_every": 10, "eval_rows": 64, "seed": 1})"));
  SaeTrainer trainer(cfg, SaeTrainerOptions().progress(false));
  const SaeTrainResult r = trainer.run();
  EXPECT_EQ(r.steps, 20);
  Sae& sae = trainer.sae();
  EXPECT_EQ(sae.d_in(), 32);
  EXPECT_EQ(sae.cfg().hook_name(), kZ);
  EXPECT_EQ(sae.cfg().reshape_activations(), "hook_z");
  EXPECT_LT(r.eval.fvu, 1.0);  // it learnt something
  std::shared_ptr<Sae> shared(&sae, [](Sae*) {});  // owned by the trainer
  const SpliceMetrics m = splice_metrics(model, shared, "", ds.tokens.to(at::kLong));
  EXPECT_TRUE(std::isfinite(m.ce_loss_score));
  EXPECT_LE(std::abs(m.ce_loss_with_error_term - m.ce_loss_without_sae), 1e-5);
  EXPECT_LE(m.kl_div_with_error_term, 1e-6);
  fs::remove(store);
}

}  // namespace
}  // namespace mechlab::sae
