// The probing run's pieces (probes/probe_run.h): the "repeated" label
// against the probe task generator's own "seen_before" labels (an
// independent implementation in core/data), per-example labels, the depth
// axis, and the refusals of bad labels before any work.
#include "core/data/tasks/probe.h"
#include "core/data/tasks/tasks.h"
#include "hooks/hooked_transformer.h"
#include "probes/metrics.h"
#include "probes/probe_data.h"
#include "probes/probe_run.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>

#include <filesystem>
#include <fstream>

namespace mechlab::probes {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

TEST(ProbeRun, RepeatedLabelsEqualTheProbeTasksSeenBefore) {
  const core::Dataset ds = core::tasks::make_probe(core::tasks::ProbeOptions().n(50).seq_len(24).pool(6).seed(4));
  const at::Tensor mine = token_labels("repeated", ds.tokens, {}, "probe task");  // [N, T]
  ASSERT_EQ(mine.sizes(), ds.labels.sizes());
  const at::Tensor has = ds.labels.ge(0);  // the generator leaves BOS unlabelled
  EXPECT_TRUE(at::equal(mine.masked_select(has), ds.labels.masked_select(has)));
  // Both classes are there, so the comparison is not of constants.
  EXPECT_GT(mine.sum().item<int64_t>(), 0);
  EXPECT_LT(mine.sum().item<int64_t>(), mine.numel());
}

TEST(ProbeRun, RepeatedIsComputedPerSequenceOverEarlierPositionsOnly) {
  const at::Tensor tokens = at::tensor({5, 7, 5, 9, 7, 7, 1, 2, 3, 4, 1, 2}, at::kInt).reshape({2, 6});
  const at::Tensor want = at::tensor({0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 1, 1}, at::kLong).reshape({2, 6});
  EXPECT_TRUE(at::equal(token_labels("repeated", tokens, {}, "d"), want));
}

TEST(ProbeRun, PerExampleLabelsCoverEveryToken) {
  const at::Tensor tokens = at::zeros({3, 4}, at::kInt);
  const at::Tensor per_example = at::tensor({2, -1, 0}, at::kLong);
  const at::Tensor rows = token_labels("labels", tokens, per_example, "d");
  ASSERT_EQ(rows.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(at::equal(rows.select(1, 3), per_example));
  EXPECT_TRUE(at::equal(rows.select(1, 0), per_example));
}

TEST(ProbeRun, UnknownOrMissingLabelsAreRefusedNamingTheRemedy) {
  const at::Tensor tokens = at::zeros({2, 3}, at::kInt);
  EXPECT_EQ(error_of([&] { token_labels("seen", tokens, {}, "d.h5"); }),
            "unknown probe label 'seen'; use one of: labels, repeated");
  EXPECT_THAT(error_of([&] { token_labels("labels", tokens, {}, "d.h5"); }),
              HasSubstr("dataset d.h5 has no /labels; give a dataset with labels"));
}

TEST(ProbeRun, DepthFollowsTheResidualStream) {
  EXPECT_EQ(hook_depth("hook_embed"), 0);
  EXPECT_EQ(hook_depth("blocks.0.hook_resid_pre"), 0);
  EXPECT_EQ(hook_depth("blocks.0.attn.hook_z"), 0.5);
  EXPECT_EQ(hook_depth("blocks.0.hook_resid_post"), 1);
  EXPECT_EQ(hook_depth("blocks.1.hook_resid_pre"), 1);
  EXPECT_EQ(hook_depth("blocks.11.hook_resid_post"), 12);
}

TEST(ProbeRun, OutputThatIsAFileOrAnotherKindIsRefusedBeforeAnyWork) {
  const std::string file = mechlab::testing::temp_path("probe_run", "plain.txt");
  { std::ofstream(file) << "x"; }
  EXPECT_THAT(error_of([&] { check_probe_output(file, true); }),
              HasSubstr("output folder " + file + " is a file"));
  const std::string dir = mechlab::testing::temp_path("probe_run", "out");
  std::filesystem::create_directories(dir);
  { std::ofstream(dir + "/probes.svg") << "<svg/>"; }
  EXPECT_THAT(error_of([&] { check_probe_output(dir, false); }),
              HasSubstr("probes.svg already exists; pass `overwrite`"));
  check_probe_output(dir, true);
}

// --ablate's losses are those of forwards whose hook projects the probe's
// raw weight vector out (written here as a plain hook, unnormalised), and
// the loss without ablation is the plain forward's.
TEST(ProbeRun, AblationLossesEqualForwardsWithTheDirectionProjectedOut) {
  const std::string model_path = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  const std::string data = mechlab::testing::temp_path("probe_run", "induction.h5");
  core::save_dataset(data, core::tasks::make_task("induction", {{"n", 40}, {"seed", 3}, {"d_vocab", 256}}));
  const ProbeRunResult r = run_probes(model_path, data,
                                      ProbeRunOptions()
                                          .hooks({"hook_embed", "blocks.0.hook_resid_post"})
                                          .label("repeated")
                                          .resamples(20)
                                          .ablate(true)
                                          .ablate_examples(6));
  ASSERT_TRUE(r.ablated_loss.defined());
  ASSERT_EQ(r.ablated_loss.size(0), 2);
  auto model = hooks::HookedTransformer::from_pretrained(model_path);
  const at::Tensor tokens = core::load_dataset(data).tokens.slice(0, 0, 6).to(at::kLong);  // [6, T]
  EXPECT_NEAR(r.clean_loss, core::mean_loss(model.forward(tokens), tokens).item<double>(), 1e-6);
  for (int64_t p = 0; p < 2; ++p) {
    const at::Tensor w = r.probes.weight[p].select(1, 0).to(at::kDouble);  // [d_model]
    const at::Tensor logits = model.run_with_hooks(
        tokens, {{r.names[static_cast<size_t>(p)], [&](at::Tensor& x, const hooks::HookPoint&) {
                    const at::Tensor xd = x.to(at::kDouble);  // [batch, pos, d_model]
                    x = (xd - (xd * w).sum(-1, true) / w.dot(w) * w).to(x.scalar_type());
                  }}});
    const double want = core::mean_loss(logits, tokens).item<double>();
    EXPECT_NEAR(r.ablated_loss[p].item<double>(), want, 1e-5) << r.names[static_cast<size_t>(p)];
    EXPECT_NE(r.ablated_loss[p].item<double>(), r.clean_loss);  // the edit did something
  }
}

// A 3-class label (the position mod 3): --ablate projects out each probe's
// two weight differences w_1 - w_0, w_2 - w_0 (rank 2), checked against
// forwards whose hook subtracts the projection A pinv(A) x (the projector by
// SVD, apart from the module's Gram-Schmidt); the AUROC is one-vs-rest and
// its interval brackets it.
TEST(ProbeRun, MulticlassAblationProjectsOutTheSpanOfTheWeightDifferences) {
  const std::string model_path = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  const std::string data = mechlab::testing::temp_path("probe_run", "induction3.h5");
  core::Dataset ds = core::tasks::make_task("induction", {{"n", 40}, {"seed", 3}, {"d_vocab", 256}});
  const int64_t T = ds.tokens.size(1);
  ds.labels = (at::arange(T, at::kLong) % 3).unsqueeze(0).expand({ds.tokens.size(0), T}).contiguous();
  core::save_dataset(data, ds);
  const ProbeRunResult r = run_probes(model_path, data,
                                      ProbeRunOptions()
                                          .hooks({"hook_embed", "blocks.0.hook_resid_post"})
                                          .label("labels")
                                          .resamples(50)
                                          .ablate(true)
                                          .ablate_examples(6));
  ASSERT_EQ(r.num_classes, 3);
  ASSERT_TRUE(r.ablated_loss.defined());
  EXPECT_TRUE(at::equal(r.ablated_dims, at::full({2}, 2, at::kLong)));
  auto model = hooks::HookedTransformer::from_pretrained(model_path);
  const at::Tensor tokens = core::load_dataset(data).tokens.slice(0, 0, 6).to(at::kLong);  // [6, T]
  EXPECT_NEAR(r.clean_loss, core::mean_loss(model.forward(tokens), tokens).item<double>(), 1e-6);
  for (int64_t p = 0; p < 2; ++p) {
    const at::Tensor w = r.probes.weight[p].to(at::kDouble);               // [d_model, 3]
    const at::Tensor a = w.narrow(1, 1, 2) - w.narrow(1, 0, 1);            // [d_model, 2]
    const at::Tensor proj = at::matmul(a, at::linalg_pinv(a));             // [d_model, d_model]
    const at::Tensor logits = model.run_with_hooks(
        tokens, {{r.names[static_cast<size_t>(p)], [&](at::Tensor& x, const hooks::HookPoint&) {
                    const at::Tensor xd = x.to(at::kDouble);  // [batch, pos, d_model]
                    x = (xd - at::matmul(xd, proj)).to(x.scalar_type());
                  }}});
    const double want = core::mean_loss(logits, tokens).item<double>();
    EXPECT_NEAR(r.ablated_loss[p].item<double>(), want, 1e-5) << r.names[static_cast<size_t>(p)];
    EXPECT_NE(r.ablated_loss[p].item<double>(), r.clean_loss);
    const double auc = r.auroc[p].item<double>();
    EXPECT_LE(r.auroc_ci.lower[p].item<double>(), auc);
    EXPECT_GE(r.auroc_ci.upper[p].item<double>(), auc);
  }
  // The AUROC is the probes' one-vs-rest AUROC on the test rows, recomputed
  // here from one forward over all 40 prompts (every token is a row, in
  // example order) and the run's seeded split.
  const at::Tensor all = core::load_dataset(data).tokens.to(at::kLong);  // [40, T]
  auto [logits, cache] = model.run_with_cache(
      all, hooks::NamesFilter::predicate([](const std::string& n) {
        return n == "hook_embed" || n == "blocks.0.hook_resid_post";
      }));
  const at::Tensor x = features_from_cache(cache, r.names).x;  // [2, R, d_model]
  ASSERT_EQ(x.size(1), r.rows);
  const at::Tensor test = random_split(r.rows, SplitOptions().test_fraction(0.2).seed(0)).test;
  const at::Tensor y = ds.labels.reshape({-1}).index_select(0, test);
  const at::Tensor want = probe_auroc(r.probes, x.index_select(1, test), y);
  EXPECT_TRUE(at::allclose(r.auroc, want, 0, 1e-6)) << r.auroc << want;
  EXPECT_EQ(r.auroc_ci.defined.min().item<int64_t>(), 50);
}

}  // namespace
}  // namespace mechlab::probes
