// Differential tests against TransformerLens 2.18 `transformer_lens.patching`.
// Fixtures: tests/data/patching/<model>.h5, made by
// scripts/fixtures/make_patching_fixtures.py on the runtime fixture models
// (tests/data/runtime/<model>.h5); see tests/data/patching/README.md.
// Tolerance: kF32Tol (fixture_compare.h), as for the runtime fixtures: 1e-5
// normwise per sweep plus an element-wise bound.
#include "core/formats/hdf5_file.h"
#include "hooks/hooked_transformer.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/plan.h"
#include "patching/sweeps.h"
#include "tests/hooks/fixture_compare.h"

#include "tests/patching/patching_fixtures.h"

#include <gtest/gtest.h>

using mechlab::core::H5File;
using mechlab::hooks::HookedTransformer;
using mechlab::testing::close;
using namespace mechlab::patching;

namespace {

constexpr auto kTol = mechlab::testing::kF32Tol;

using mechlab::testing::runtime_model;
using mechlab::testing::test_data_h5;

class TransformerLensPatching : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ref_ = std::make_unique<H5File>(H5File::open_read(test_data_h5("patching", GetParam())));
    model_ = std::make_unique<HookedTransformer>(
        HookedTransformer::load(runtime_model(GetParam())));
    data_ = mechlab::testing::read_fixture_inputs(*ref_);
  }

  // Runs every sweep the fixture holds for `direction` in one call and
  // compares each with TransformerLens.
  void check_direction(Direction direction, const Metric& metric, const BulkOptions& bulk) {
    const std::string dir = direction_name(direction);
    const std::vector<std::string> sweeps = ref_->list(dir);
    ASSERT_GE(sweeps.size(), 14u);
    SweepOptions opts;
    opts.direction(direction);
    opts.bulk(bulk);
    auto results = run_sweeps(*model_, data_, sweeps, metric, opts);
    ASSERT_EQ(results.size(), sweeps.size());
    for (size_t i = 0; i < sweeps.size(); ++i) {
      EXPECT_EQ(results[i].sweep, sweeps[i]);
      EXPECT_TRUE(close(results[i].values, ref_->read_tensor(dir + "/" + sweeps[i]), kTol,
                        GetParam() + " " + dir + " " + sweeps[i]));
    }
  }

  // The same through the plan and runner (patching/plan.h), the way
  // `mechlab patch` runs them: metric by name, every sweep in one plan.
  void check_plan(Direction direction) {
    const std::string dir = direction_name(direction);
    const std::vector<std::string> sweeps = ref_->list(dir);
    ASSERT_GE(sweeps.size(), 14u);
    auto results = run_patching(*model_, data_,
                                PatchPlan().sweeps(sweeps).directions({direction}).metric(
                                    MetricOptions().name("logit_diff")));
    ASSERT_EQ(results.size(), sweeps.size());
    for (size_t i = 0; i < sweeps.size(); ++i) {
      EXPECT_EQ(results[i].name, sweeps[i]);
      EXPECT_EQ(results[i].direction, direction);
      EXPECT_TRUE(close(results[i].values, ref_->read_tensor(dir + "/" + sweeps[i]), kTol,
                        GetParam() + " plan " + dir + " " + sweeps[i]));
    }
  }

  std::unique_ptr<H5File> ref_;
  std::unique_ptr<HookedTransformer> model_;
  PatchingData data_;
};

TEST_P(TransformerLensPatching, EverySweepDenoising) {
  check_direction(Direction::denoising, logit_diff(data_.answers()), BulkOptions{});
}

TEST_P(TransformerLensPatching, EverySweepNoising) {
  check_direction(Direction::noising, logit_diff(data_.answers()), BulkOptions{});
}

TEST_P(TransformerLensPatching, EverySweepThroughThePlanBothDirections) {
  check_plan(Direction::denoising);
  check_plan(Direction::noising);
}

// The same numbers through the other code paths: every config run (no no-op
// skipping), few copies per forward (chunking), and a user-supplied metric
// that reads all logits (full unembedding, copy-by-copy evaluation).
TEST_P(TransformerLensPatching, EverySweepWithoutShortcuts) {
  const AnswerSpec a = data_.answers();
  Metric custom = Metric::custom("my_logit_diff", [a](const at::Tensor& logits) {
    at::Tensor rows = at::arange(logits.size(0));
    at::Tensor l = logits.index({rows, a.answer_pos});  // [batch, d_vocab]
    return (l.gather(-1, a.answer_tokens) - l.gather(-1, a.wrong_tokens)).mean();
  });
  check_direction(Direction::denoising, custom,
                  BulkOptions{}.skip_identical(false).max_copies(5));
}

TEST_P(TransformerLensPatching, MetricsMatch) {
  const AnswerSpec a = data_.answers();
  at::InferenceMode guard;
  at::Tensor clean = model_->forward(data_.clean_tokens);          // [batch, pos, d_vocab]
  at::Tensor corrupted = model_->forward(data_.corrupted_tokens);  // [batch, pos, d_vocab]
  auto m = [&](const std::string& name) { return ref_->read_tensor("metrics/" + name); };
  EXPECT_TRUE(close(logit_diff(a)(clean), m("logit_diff_clean"), kTol, "logit_diff clean"));
  EXPECT_TRUE(close(logit_diff(a)(corrupted), m("logit_diff_corrupted"), kTol, "logit_diff corr"));
  EXPECT_TRUE(close(logit_diff_per_prompt(logits_at(clean, a.answer_pos), a),
                    m("logit_diff_per_prompt_clean"), kTol, "per prompt"));
  EXPECT_TRUE(close(answer_prob(a)(corrupted), m("answer_prob_corrupted"), kTol, "answer_prob"));
  EXPECT_TRUE(close(kl_to_clean(a, clean)(corrupted), m("kl_clean_to_corrupted"), kTol, "kl"));
  EXPECT_TRUE(close(cross_entropy(data_.corrupted_tokens)(corrupted), m("cross_entropy_corrupted"),
                    kTol, "cross_entropy"));
  // Analytic: normalised logit difference is 1 on the clean run, 0 on the corrupted one;
  // KL of the clean run to itself is 0.
  const double lc = logit_diff(a)(clean).item<double>(), lx = logit_diff(a)(corrupted).item<double>();
  Metric norm = normalised_logit_diff(a, lc, lx);
  EXPECT_NEAR(norm(clean).item<double>(), 1.0, 1e-5);
  EXPECT_NEAR(norm(corrupted).item<double>(), 0.0, 1e-5);
  EXPECT_NEAR(kl_to_clean(a, clean)(clean).item<double>(), 0.0, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Models, TransformerLensPatching,
                         ::testing::Values("gpt2_like", "attn_only", "llama_like", "neox_like"));

}  // namespace
