// Patching library tests with analytic expectations: ablations, the bulk
// patcher's exact identities, results files, heatmaps, and bad input (each
// a mechlab::Error whose message is checked).
#include "core/formats/hdf5_file.h"
#include "hooks/hooked_transformer.h"
#include "patching/ablation.h"
#include "patching/bulk_patcher.h"
#include "patching/heatmap.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/sweep_file.h"
#include "patching/sweeps.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/patching/patching_fixtures.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

using mechlab::core::H5File;
using mechlab::hooks::HookedTransformer;
using mechlab::hooks::NamesFilter;
using mechlab::testing::close;
using mechlab::testing::error_of;
using mechlab::testing::runtime_model;
using namespace mechlab::patching;

namespace {

// The gpt2_like runtime fixture model and the patching fixture's prompts.
class PatchingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = std::make_unique<HookedTransformer>(HookedTransformer::load(runtime_model("gpt2_like")));
    H5File ref = H5File::open_read(std::string(MECHLAB_TEST_DATA) + "/patching/gpt2_like.h5");
    data_.clean_tokens = ref.read_tensor("inputs/clean_tokens");
    data_.corrupted_tokens = ref.read_tensor("inputs/corrupted_tokens");
    data_.answer_tokens = ref.read_tensor("inputs/answer_tokens");
    data_.wrong_tokens = ref.read_tensor("inputs/wrong_tokens");
    data_.answer_pos = ref.read_tensor("inputs/answer_pos");
  }
  std::unique_ptr<HookedTransformer> model_;
  PatchingData data_;
};

TEST_F(PatchingTest, PatchingTheWholeFirstResidualGivesTheCleanRun) {
  // Denoising resid_pre[0] at every position replaces the whole input: the
  // patched run is the clean run (exact identity), noising likewise gives the corrupted run.
  const Metric m = logit_diff(data_.answers());
  auto [clean_logits, clean] = model_->run_with_cache(data_.clean_tokens);
  auto [corr_logits, corr] = model_->run_with_cache(data_.corrupted_tokens);
  PatchConfig all{{PatchTarget::at("blocks.0.hook_resid_pre", model_->cfg())}};
  BulkPatcher denoise(*model_, data_.corrupted_tokens, {}, m);
  EXPECT_NEAR(denoise.run({all}, clean.items())[0].item<double>(), m(clean_logits).item<double>(), 1e-5);
  EXPECT_NEAR(denoise.baseline(), m(corr_logits).item<double>(), 1e-6);
  BulkPatcher noise(*model_, data_.clean_tokens, {}, m);
  EXPECT_NEAR(noise.run({all}, corr.items())[0].item<double>(), m(corr_logits).item<double>(), 1e-5);
}

TEST_F(PatchingTest, NoOpPatchesAreSkippedAndGiveTheBaseline) {
  // The prompts differ at positions 2, 4 and 5 (of 0..6). resid_pre[0] is the
  // embedding, computed token by token: positions 0, 1, 3 and 6 are no-ops there.
  // resid_pre[1] has mixed positions causally: only 0 and 1 are still no-ops.
  const Metric m = logit_diff(data_.answers());
  SweepResult r = run_sweep(*model_, data_, "resid_pre", m);
  EXPECT_EQ(r.config["bulk"]["skipped_noop"].get<int64_t>(), 4 + 2);
  const double corrupted = r.config["corrupted_metric"].get<double>();
  for (auto [l, p] : std::vector<std::pair<int, int>>{{0, 0}, {0, 1}, {0, 3}, {0, 6}, {1, 0}, {1, 1}}) {
    EXPECT_DOUBLE_EQ(r.values[l][p].item<double>(), corrupted) << l << ", " << p;
  }
  EXPECT_NE(r.values[1][3].item<double>(), corrupted);  // runs: prompt 1 differs before it
}

TEST_F(PatchingTest, PaddedPromptsStackedEqualOneConfigPerForward) {
  // Left-pad prompt 0 by two positions: the mask must follow each copy when
  // configurations are stacked along the batch, so stacking changes nothing.
  data_.attention_mask = at::ones({3, 7}, at::kByte);
  data_.attention_mask[0][0] = 0, data_.attention_mask[0][1] = 0;
  data_.clean_tokens = data_.clean_tokens.clone(), data_.corrupted_tokens = data_.corrupted_tokens.clone();
  data_.clean_tokens[0][0] = 0, data_.clean_tokens[0][1] = 0;
  data_.corrupted_tokens[0][0] = 0, data_.corrupted_tokens[0][1] = 0;
  const Metric m = logit_diff(data_.answers());
  SweepOptions one, many;
  one.bulk().max_copies(1);
  one.bulk().skip_identical(false);
  SweepResult a = run_sweep(*model_, data_, "attn_head_out_by_pos", m, one);
  SweepResult b = run_sweep(*model_, data_, "attn_head_out_by_pos", m, many);
  EXPECT_GT(b.config["bulk"]["max_copies_per_forward"].get<int64_t>(), 1);
  EXPECT_TRUE(close(b.values, a.values, 1e-5, "stacked vs one per forward"));
  // And patching the whole input gives the clean run, padding included.
  mechlab::hooks::RunOptions ro;
  ro.attention_mask(data_.attention_mask);
  auto [clean_logits, clean] = model_->run_with_cache(data_.clean_tokens, {}, ro);
  BulkPatcher p(*model_, data_.corrupted_tokens, data_.attention_mask, m);
  PatchConfig all{{PatchTarget::at("blocks.0.hook_resid_pre", model_->cfg())}};
  EXPECT_NEAR(p.run({all}, clean.items())[0].item<double>(), m(clean_logits).item<double>(), 1e-5);
}

TEST_F(PatchingTest, TwoSourcesAtOneHookThroughValueKeys) {
  // One config, two slices of one hook from two sources: head 0 from the
  // clean run, head 1 at position 5 zeroed. Equals doing both by hand.
  const Metric m = logit_diff(data_.answers());
  const std::string hook = "blocks.1.attn.hook_z";
  auto [unused, clean] = model_->run_with_cache(data_.clean_tokens, NamesFilter({hook}));
  const at::Tensor& clean_z = clean[hook];  // [batch, pos, head, d_head]
  PatchTarget a = PatchTarget::at(hook, model_->cfg()).with_head(0).with_value_key("clean");
  PatchTarget b = PatchTarget::at(hook, model_->cfg()).with_pos(5).with_head(1).with_value_key("zero");
  BulkPatcher p(*model_, data_.corrupted_tokens, {}, m);
  const double got =
      p.run({PatchConfig{{a, b}}}, {{"clean", clean_z}, {"zero", at::zeros({})}})[0].item<double>();
  at::Tensor logits = model_->run_with_hooks(
      data_.corrupted_tokens, {{hook, [&](at::Tensor& z, const mechlab::hooks::HookPoint&) {
                                  z = z.clone();
                                  z.select(2, 0).copy_(clean_z.select(2, 0));
                                  z.select(1, 5).select(1, 1).zero_();
                                }}});
  EXPECT_NEAR(got, m(logits).item<double>(), 1e-5);
  EXPECT_GT(std::abs(got - p.baseline()), 1e-4);  // the patch does something
}

TEST_F(PatchingTest, ZeroAblatingEveryHeadLeavesOnlyTheOutputBias) {
  // attn_out = sum_h z_h W_O[h] + b_O: with every z zeroed, attn_out = b_O at every position.
  PatchTarget z = PatchTarget::at("blocks.1.attn.hook_z", model_->cfg());
  at::Tensor zero = ablation_value(*model_, z.hook_name(), Ablation::zero, data_.clean_tokens);
  at::Tensor attn_out;
  model_->run_with_hooks(data_.clean_tokens,
                         {{z.hook_name(), ablation_hook(z, zero)},
                          {"blocks.1.hook_attn_out",
                           [&](at::Tensor& a, const mechlab::hooks::HookPoint&) { attn_out = a.clone(); }}});
  at::Tensor b_O = model_->model().weights().blocks[1].b_O;  // [d_model]
  EXPECT_TRUE(close(attn_out, b_O.expand_as(attn_out), 1e-6, "attn_out"));
}

TEST_F(PatchingTest, MeanAndPositionalMeanValues) {
  // [batch 2, pos 3, d 1] with the last position of prompt 1 padded.
  at::Tensor act = at::tensor({1.f, 2.f, 3.f, 5.f, 6.f, 100.f}).view({2, 3, 1});
  at::Tensor mask = at::tensor({1, 1, 1, 1, 1, 0}, at::kByte).view({2, 3});
  at::Tensor mean = ablation_value(Ablation::mean, act, mask);  // (1+2+3+5+6)/5
  ASSERT_EQ(mean.sizes(), (std::vector<int64_t>{1, 1, 1}));
  EXPECT_NEAR(mean.item<double>(), 17.0 / 5, 1e-6);
  at::Tensor pm = ablation_value(Ablation::positional_mean, act, mask);  // [1, 3, 1]
  EXPECT_TRUE(close(pm, at::tensor({3.f, 4.f, 3.f}).view({1, 3, 1}), 1e-6, "positional mean"));
  EXPECT_TRUE(at::equal(ablation_value(Ablation::resample, act), act));
  // Attention maps average over prompts only.
  at::Tensor pat = at::arange(2 * 1 * 2 * 2, at::kFloat).view({2, 1, 2, 2});
  EXPECT_TRUE(close(ablation_value(Ablation::mean, pat, {}, true), pat.mean(0, true), 1e-6, "map"));
}

TEST_F(PatchingTest, MeanAblationSweepThroughTheBulkPatcher) {
  // Mean-ablating resid_pre[0] at every position with the mean over the run's
  // own prompts: every prompt then sees the same input, so each prompt's
  // logits equal the logits of a run fed that mean residual directly.
  const Metric m = logit_diff(data_.answers());
  const std::string hook = "blocks.0.hook_resid_pre";
  at::Tensor mean = ablation_value(*model_, hook, Ablation::mean, data_.clean_tokens);  // [1, 1, d]
  BulkPatcher patcher(*model_, data_.clean_tokens, {}, m);
  const double got = patcher.run({PatchConfig{{PatchTarget::at(hook, model_->cfg())}}}, {{hook, mean}})[0]
                         .item<double>();
  mechlab::hooks::RunOptions ro;
  ro.start_at_layer(0);
  at::Tensor resid = mean.expand({data_.batch(), data_.seq_len(), -1}).contiguous();
  const double want = m(model_->forward(resid, ro)).item<double>();
  EXPECT_NEAR(got, want, 1e-5);
}

TEST_F(PatchingTest, ResultsFileRoundTripAndHeatmap) {
  SweepOptions opts;
  opts.position_labels({"0: a", "1: b", "2: c", "3: d", "4: e", "5: f", "6: <g>"});
  auto results = run_sweeps(*model_, data_, {"attn_head_out_by_pos", "block_every"},
                            logit_diff(data_.answers()), opts);
  const std::string path = mechlab::testing::temp_path("patching", "sweeps.h5");
  write_sweep_file(path, results);
  auto back = read_sweep_file(path);
  ASSERT_EQ(back.size(), 2u);
  for (const auto& r : back) {
    const SweepResult& orig = r.sweep == results[0].sweep ? results[0] : results[1];
    EXPECT_TRUE(at::equal(r.values, orig.values)) << r.sweep;
    EXPECT_EQ(r.axes, orig.axes);
    EXPECT_EQ(r.labels, orig.labels);
    EXPECT_EQ(r.config, orig.config);
  }
  EXPECT_EQ(results[1].labels[0], (std::vector<std::string>{"resid_pre", "attn_out", "mlp_out"}));

  const std::string svg = heatmap_svg(results[0], "test");
  size_t cells = 0;
  for (size_t at = svg.find("<title>"); at != std::string::npos; at = svg.find("<title>", at + 1)) ++cells;
  EXPECT_EQ(cells, static_cast<size_t>(results[0].values.numel()));
  EXPECT_NE(svg.find("6: &lt;g&gt;"), std::string::npos);  // token labels, escaped
  EXPECT_NE(svg.find(">L1 H3<"), std::string::npos);      // rows: layer x head
  EXPECT_NE(svg.find(">layer × head<"), std::string::npos);
  EXPECT_NE(svg.find(">pos<"), std::string::npos);
  // Colour bar ticks on the normalised scale (0 = corrupted, 1 = clean),
  // symmetric around the unpatched run: 0 when denoising.
  const double clean = results[0].config["clean_metric"].get<double>();
  const double corrupted = results[0].config["corrupted_metric"].get<double>();
  const double vmax =
      ((results[0].values.to(at::kDouble) - corrupted) / (clean - corrupted)).abs().max().item<double>();
  char tick[32];
  std::snprintf(tick, sizeof tick, ">%.4g<", -vmax);
  EXPECT_NE(svg.find(tick), std::string::npos) << tick;
  std::snprintf(tick, sizeof tick, ">%.4g<", vmax);
  EXPECT_NE(svg.find(tick), std::string::npos) << tick;
  EXPECT_NE(svg.find(">0<"), std::string::npos);
}

// ------------------------------------------------------------------ bad input

TEST_F(PatchingTest, CleanAndCorruptedOfDifferentShapesAreRefused) {
  data_.corrupted_tokens = data_.corrupted_tokens.slice(1, 0, 5);
  const std::string msg = error_of([&] { data_.validate(model_->cfg()); });
  EXPECT_NE(msg.find("clean_tokens [3, 7] and corrupted_tokens [3, 5] have different shapes"),
            std::string::npos) << msg;
  EXPECT_NE(error_of([&] { run_sweep(*model_, data_, "resid_pre", logit_diff(data_.answers())); })
                .find("different shapes"),
            std::string::npos);
}

TEST_F(PatchingTest, AnswerTokensOutsideTheVocabularyAreRefused) {
  data_.answer_tokens = data_.answer_tokens.clone();
  data_.answer_tokens[1][0] = 61;  // d_vocab = 61
  const std::string msg = error_of([&] { data_.validate(model_->cfg()); });
  EXPECT_NE(msg.find("answer_tokens holds token id 61 (example 1, column 0) outside the model's "
                     "vocabulary [0, 61)"),
            std::string::npos) << msg;
}

TEST_F(PatchingTest, UnknownHookNameIsRefusedWithSuggestions) {
  const std::string msg = error_of([&] { PatchTarget::at("blocks.0.attn.hook_zz", model_->cfg()); });
  EXPECT_NE(msg.find("unknown hook name \"blocks.0.attn.hook_zz\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("blocks.0.attn.hook_z"), std::string::npos) << msg;
  const std::string sweep = error_of([&] {
    run_sweep(*model_, data_, "attn_head_z_by_pos", logit_diff(data_.answers()));
  });
  EXPECT_NE(sweep.find("unknown sweep \"attn_head_z_by_pos\"; sweeps: resid_pre"), std::string::npos)
      << sweep;
}

TEST_F(PatchingTest, HookMissingFromTheArchitectureIsRefused) {
  HookedTransformer attn_only = HookedTransformer::load(runtime_model("attn_only"));
  const std::string msg =
      error_of([&] { run_sweep(attn_only, data_, "mlp_out", logit_diff(data_.answers())); });
  EXPECT_NE(msg.find("has no hook point blocks.0.hook_mlp_out (attention-only models have no MLP)"),
            std::string::npos) << msg;
}

TEST_F(PatchingTest, PositionsBeyondTheSequenceAreRefused) {
  const Metric m = logit_diff(data_.answers());
  auto [logits, clean] = model_->run_with_cache(data_.clean_tokens, NamesFilter({"blocks.1.attn.hook_z"}));
  BulkPatcher patcher(*model_, data_.corrupted_tokens, {}, m);
  PatchTarget t = PatchTarget::at("blocks.1.attn.hook_z", model_->cfg()).with_pos(7).with_head(0);
  std::string msg = error_of([&] { patcher.run({PatchConfig{{t}}}, clean.items()); });
  EXPECT_NE(msg.find("patch target blocks.1.attn.hook_z[pos=7, head=0]: position 7 is beyond the "
                     "sequence (positions 0..6)"),
            std::string::npos) << msg;
  t.pos = 1, t.head = 4;
  msg = error_of([&] { patcher.run({PatchConfig{{t}}}, clean.items()); });
  EXPECT_NE(msg.find("head 4 is out of range; blocks.1.attn.hook_z has 4 heads"), std::string::npos)
      << msg;
  data_.answer_pos = at::tensor({6, 9, 6}, at::kInt);
  msg = error_of([&] { data_.validate(model_->cfg()); });
  EXPECT_NE(msg.find("answer_pos of example 1 is 9, beyond the sequence (positions 0..6)"),
            std::string::npos) << msg;
}

TEST_F(PatchingTest, MissingPatchValueIsRefused) {
  BulkPatcher patcher(*model_, data_.corrupted_tokens, {}, logit_diff(data_.answers()));
  PatchTarget t = PatchTarget::at("blocks.1.hook_mlp_out", model_->cfg()).with_pos(3);
  const std::string msg = error_of([&] { patcher.run({PatchConfig{{t}}}, {}); });
  EXPECT_NE(msg.find("no value given for hook blocks.1.hook_mlp_out"), std::string::npos) << msg;
}

}  // namespace
