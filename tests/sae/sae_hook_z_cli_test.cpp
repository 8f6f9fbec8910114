// `mechlab sae eval` and `mechlab sae dashboard` end to end on a hook_z SAE
// (Kissane et al.) made by the CLI itself: `mechlab sae train` trains a TopK
// SAE at blocks.0.attn.hook_z live on the shipped gpt2_like model, then both
// commands run on the folder it exported. Checked against the library calls
// on the same SAE and prompts (splice_metrics, compute_dashboard), in one
// thread on both sides so the sums run in the same order: every metric
// present, finite and equal; the dashboard file equal to the library's
// dashboard, with logit effects (through W_O, as a hook_z SAE has them); the
// page naming every latent's panel.
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "hooks/hooked_transformer.h"
#include "sae/dashboard.h"
#include "sae/saelens_io.h"
#include "sae/splice.h"
#include "tests/test_util.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>


#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using mechlab::testing::run_cli;
using mechlab::testing::temp_path;

const std::string kData = std::string(MECHLAB_TEST_DATA);
const std::string kModel = kData + "/runtime/gpt2_like.h5";
const char* kHook = "blocks.0.attn.hook_z";

using mechlab::testing::remove_tree;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST(SaeHookZCli, EvalAndDashboardOnACliTrainedHookZSaeEqualTheLibrary) {
  at::set_num_threads(1);
  const std::string dir = temp_path("sae_hook_z_cli", "run");
  remove_tree(dir);
  fs::create_directories(dir);
  // The eval fixture's prompts [8, 12] (equal length: sae eval refuses padding).
  core::Dataset ds;
  ds.d_vocab = 61;
  ds.tokens = core::H5File::open_read(kData + "/sae/sae_eval.h5").read_tensor("tokens").to(at::kInt);
  core::save_dataset(dir + "/prompts.h5", ds);
  const int64_t d_sae = 24;
  const json cfg = {{"sae", {{"architecture", "topk"}, {"d_in", 0}, {"d_sae", d_sae}, {"k", 3}}},
                    {"data", {{"model", kModel}, {"dataset", "prompts.h5"}, {"hook", kHook}, {"buffer_rows", 64},
                              {"prompts_per_forward", 4}}},
                    {"steps", 30}, {"batch_size", 32}, {"lr", 3e-3}, {"eval_every", 10}, {"eval_rows", 32},
                    {"seed", 3}};
  {
    std::ofstream out(dir + "/cfg.json");
    out << cfg.dump();
    ASSERT_TRUE(out.good());
  }
  const auto train = run_cli("sae train " + dir + "/cfg.json --out " + dir + "/run --no-progress --threads 1");
  ASSERT_EQ(train.rc, 0) << train.output;
  const std::string sae_dir = dir + "/run/sae";
  auto sae = import_saelens(sae_dir);
  ASSERT_EQ(sae->cfg().reshape_activations(), "hook_z");
  ASSERT_EQ(sae->cfg().hook_name(), kHook);
  ASSERT_EQ(sae->d_in(), 32);  // n_heads x d_head of the model, flattened head-major

  auto model = hooks::HookedTransformer::from_pretrained(kModel);
  const at::Tensor tokens = ds.tokens.to(at::kLong);  // [8, 12]

  // ---- sae eval
  const auto eval = run_cli("sae eval " + kModel + " " + sae_dir + " " + dir + "/prompts.h5 --out " + dir +
                            "/eval.json --threads 1 --batch-size 4");
  ASSERT_EQ(eval.rc, 0) << eval.output;
  EXPECT_NE(eval.output.find("topk SAE (d_in 32, d_sae 24) at blocks.0.attn.hook_z"), std::string::npos) << eval.output;
  const json written = json::parse(read_text(dir + "/eval.json"));
  const SpliceMetrics m = splice_metrics(model, sae, "", tokens, SpliceEvalOptions().batch_size(4));
  const std::pair<const char*, double> expected[] = {
      {"ce_loss_score", m.ce_loss_score},
      {"ce_loss_without_sae", m.ce_loss_without_sae},
      {"ce_loss_with_sae", m.ce_loss_with_sae},
      {"ce_loss_with_ablation", m.ce_loss_with_ablation},
      {"ce_loss_with_error_term", m.ce_loss_with_error_term},
      {"kl_div_score", m.kl_div_score},
      {"kl_div_with_sae", m.kl_div_with_sae},
      {"kl_div_with_ablation", m.kl_div_with_ablation},
      {"kl_div_with_error_term", m.kl_div_with_error_term},
      {"l0", m.l0},
      {"l1", m.l1},
      {"mse", m.mse},
      {"explained_variance", m.explained_variance},
      {"explained_variance_legacy", m.explained_variance_legacy},
      {"cossim", m.cossim},
      {"l2_norm_in", m.l2_norm_in},
      {"l2_norm_out", m.l2_norm_out},
      {"l2_ratio", m.l2_ratio},
      {"relative_reconstruction_bias", m.relative_reconstruction_bias}};
  ASSERT_TRUE(written.contains("metrics")) << written.dump();
  EXPECT_EQ(written["metrics"].size(), std::size(expected));
  for (const auto& [key, value] : expected) {
    ASSERT_TRUE(written["metrics"].contains(key)) << key;
    ASSERT_TRUE(written["metrics"][key].is_number()) << key << " is " << written["metrics"][key].dump();
    const double got = written["metrics"][key].get<double>();
    EXPECT_TRUE(std::isfinite(got)) << key;
    EXPECT_DOUBLE_EQ(got, value) << key;
  }
  // TopK keeps at most k = 3 latents per token, and some fire.
  EXPECT_GT(m.l0, 0);
  EXPECT_LE(m.l0, 3.0);
  EXPECT_EQ(written["hook"], kHook);
  EXPECT_EQ(written["tokens"], m.tokens);
  ASSERT_EQ(written["feature_density"].size(), static_cast<size_t>(d_sae));
  for (int64_t i = 0; i < d_sae; ++i) {
    EXPECT_DOUBLE_EQ(written["feature_density"][static_cast<size_t>(i)].get<double>(),
                     m.feature_density[i].item<double>());
  }

  // ---- sae dashboard, every latent
  const auto dash = run_cli("sae dashboard " + kModel + " " + sae_dir + " " + dir + "/prompts.h5 --out " + dir +
                            "/dash.h5 --html " + dir + "/dash.html --first 0 --top-k 3 --threads 1 --batch-size 4");
  ASSERT_EQ(dash.rc, 0) << dash.output;
  const Dashboard got = read_dashboard(dir + "/dash.h5");
  const Dashboard want = compute_dashboard(model, sae, "", tokens, DashboardOptions().top_k(3).batch_size(4));
  EXPECT_EQ(got.hook, kHook);
  EXPECT_EQ(got.d_sae, d_sae);
  EXPECT_TRUE(at::equal(got.latents, at::arange(d_sae, at::kLong)));
  const std::pair<const char*, std::pair<at::Tensor, at::Tensor>> fields[] = {
      {"density", {got.density, want.density}},       {"max_act", {got.max_act, want.max_act}},
      {"top_acts", {got.top_acts, want.top_acts}},    {"top_prompt", {got.top_prompt, want.top_prompt}},
      {"top_pos", {got.top_pos, want.top_pos}},       {"ctx_tokens", {got.ctx_tokens, want.ctx_tokens}},
      {"ctx_acts", {got.ctx_acts, want.ctx_acts}},    {"hist_counts", {got.hist_counts, want.hist_counts}},
      {"logit_pos", {got.logit_pos, want.logit_pos}}, {"logit_pos_ids", {got.logit_pos_ids, want.logit_pos_ids}},
      {"logit_neg", {got.logit_neg, want.logit_neg}}, {"logit_neg_ids", {got.logit_neg_ids, want.logit_neg_ids}}};
  for (const auto& [name, pair] : fields) {
    ASSERT_TRUE(pair.first.defined() && pair.second.defined()) << name;
    EXPECT_TRUE(at::equal(pair.first, pair.second)) << name;
  }
  // A hook_z SAE's logit effects go through W_O: present, one row per latent.
  EXPECT_EQ(got.logit_pos.size(0), d_sae);
  EXPECT_GT(got.logit_pos.size(1), 0);
  EXPECT_GT(got.max_act.gt(0).sum().item<int64_t>(), 0);  // some latent fires on these prompts
  const std::string html = read_text(dir + "/dash.html");
  for (int64_t i = 0; i < d_sae; ++i) {
    EXPECT_NE(html.find("<section class=\"latent\" id=\"latent-" + std::to_string(i) + "\""), std::string::npos)
        << "no panel for latent " << i;
  }
  EXPECT_EQ(html.find("id=\"latent-" + std::to_string(d_sae) + "\""), std::string::npos);
  remove_tree(dir);
}

}  // namespace
}  // namespace mechlab::sae
