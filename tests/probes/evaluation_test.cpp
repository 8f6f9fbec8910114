// Probe evaluation: the metrics against scikit-learn's on the fixtures'
// predictions, splits and k-fold against KFold's documented layout, control
// tasks and selectivity, bootstrap intervals against the normal
// approximation, and the planted-direction test (a label written along a
// known direction plus noise: the probe recovers the direction, the control
// task stays at chance).
#include "probes/evaluation.h"
#include "probes/linear_probe.h"
#include "probes/metrics.h"

#include "tests/probes/probe_fixture.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <set>

namespace mechlab::probes {
namespace {

using mechlab::testing::cosine;
using mechlab::testing::error_of;
using mechlab::testing::probe_fixture;
using mechlab::testing::ProbeFixture;

TEST(ProbeMetrics, MatchSklearnMetricsOnTheFixturePredictions) {
  const ProbeFixture b = probe_fixture("binary");
  EXPECT_TRUE(at::allclose(accuracy(b.test_pred, b.y_test), b.test_accuracy, 0, 1e-12));
  EXPECT_TRUE(at::allclose(f1(b.test_pred, b.y_test), b.test_f1, 0, 1e-12));
  EXPECT_TRUE(at::allclose(auroc(b.test_score, b.y_test), b.test_auroc, 0, 1e-12));
  const ProbeFixture m = probe_fixture("multinomial");
  EXPECT_TRUE(at::allclose(accuracy(m.test_pred, m.y_test), m.test_accuracy, 0, 1e-12));
  EXPECT_TRUE(at::allclose(f1(m.test_pred, m.y_test, F1Average::macro), m.test_f1, 0, 1e-12))
      << f1(m.test_pred, m.y_test, F1Average::macro) << m.test_f1;
  const ProbeFixture r = probe_fixture("ridge");
  EXPECT_TRUE(at::allclose(r2(r.test_pred, r.y_test), r.test_r2, 0, 1e-12));
  // One probe given as [N].
  EXPECT_DOUBLE_EQ(accuracy(b.test_pred[2], b.y_test).item<double>(), b.test_accuracy[2].item<double>());
}

TEST(ProbeMetrics, EdgeCasesFollowSklearn) {
  at::Tensor y = at::tensor({1.0, 1.0, 1.0}, at::kDouble);
  EXPECT_EQ(r2(y, y).item<double>(), 1.0);                                   // constant target, exact
  EXPECT_EQ(r2(at::tensor({1.0, 2.0, 1.0}, at::kDouble), y).item<double>(), 0.0);  // constant target, wrong
  // No predicted or true positive: F1 = 0 (zero_division = 0).
  at::Tensor zeros = at::zeros({4}, at::kLong);
  EXPECT_EQ(f1(zeros, zeros).item<double>(), 0.0);
  EXPECT_NE(error_of([&] { f1(at::tensor({0, 2}, at::kLong), at::tensor({0, 1}, at::kLong)); }).find("macro"),
            std::string::npos);
  EXPECT_NE(error_of([&] { auroc(at::tensor({0.1, 0.2}, at::kDouble), at::tensor({1, 1}, at::kLong)); })
                .find("needs both classes"),
            std::string::npos);
  EXPECT_NE(error_of([&] { accuracy(at::zeros({3}), at::zeros({4})); }).find("one label per row"),
            std::string::npos);
}

TEST(ProbeSplits, KFoldHasSklearnsFoldSizesAndOrder) {
  // KFold(3) on 10 rows without shuffling: [0..3], [4..6], [7..9].
  std::vector<Split> folds = k_fold(10, 3, /*shuffle=*/false);
  ASSERT_EQ(folds.size(), 3u);
  EXPECT_TRUE(at::equal(folds[0].test, at::arange(0, 4, at::kLong)));
  EXPECT_TRUE(at::equal(folds[1].test, at::arange(4, 7, at::kLong)));
  EXPECT_TRUE(at::equal(folds[2].test, at::arange(7, 10, at::kLong)));
  EXPECT_TRUE(at::equal(folds[1].train, at::tensor({0, 1, 2, 3, 7, 8, 9}, at::kLong)));
  // Shuffled: each row is tested exactly once and never trained on in its fold.
  std::vector<Split> sh = k_fold(23, 4, true, 5);
  std::vector<int> tested(23, 0);
  for (const Split& s : sh) {
    EXPECT_EQ(s.train.size(0) + s.test.size(0), 23);
    for (int64_t i = 0; i < s.test.size(0); ++i) tested[s.test[i].item<int64_t>()] += 1;
    EXPECT_FALSE(at::isin(s.test, s.train).any().item<bool>());
  }
  for (int t : tested) EXPECT_EQ(t, 1);
  EXPECT_FALSE(at::equal(sh[0].test, k_fold(23, 4, true, 6)[0].test)) << "the seed decides the folds";
  EXPECT_NE(error_of([] { k_fold(3, 4); }).find("use fewer folds"), std::string::npos);
}

TEST(ProbeSplits, RandomSplitPartitionsTheRows) {
  Split s = random_split(101, SplitOptions().test_fraction(0.2).validation_fraction(0.1).seed(1));
  EXPECT_EQ(s.test.size(0), 20);
  EXPECT_EQ(s.validation.size(0), 10);
  EXPECT_EQ(s.train.size(0), 71);
  at::Tensor all = std::get<0>(at::cat({s.train, s.validation, s.test}).sort());
  EXPECT_TRUE(at::equal(all, at::arange(101, at::kLong)));
  Split tail = random_split(10, SplitOptions().test_fraction(0.3).shuffle(false));
  EXPECT_TRUE(at::equal(tail.test, at::arange(7, 10, at::kLong)));
  EXPECT_NE(error_of([] { random_split(10, SplitOptions().test_fraction(0.6).validation_fraction(0.5)); })
                .find("less than 1"),
            std::string::npos);
}

TEST(ProbeControlTask, OneLabelPerTokenTypeDrawnFromTheLabelDistribution) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const int64_t N = 20000;
  at::Tensor tokens = at::randint(2000, {N}, gen, at::TensorOptions().dtype(at::kLong));
  // Labels: 70% class 0, 20% class 3, 10% class 5.
  at::Tensor u = at::rand({N}, gen, at::TensorOptions().dtype(at::kDouble));
  at::Tensor labels = at::where(u < 0.7, at::zeros_like(tokens), at::where(u < 0.9, at::full_like(tokens, 3),
                                                                           at::full_like(tokens, 5)));
  at::Tensor ctrl = control_labels(tokens, labels, 3);
  // Consistent: every row of a token type has the same control label.
  auto [types, inverse] = at::_unique(tokens, true, true);
  at::Tensor first = at::full({types.size(0)}, -1, at::kLong).scatter(0, inverse, ctrl);
  EXPECT_TRUE(at::equal(first.index_select(0, inverse), ctrl));
  // Values from the label set, in about the label frequencies (over ~2000 types: +-3 sigma).
  std::set<int64_t> seen;
  for (int64_t t = 0; t < types.size(0); ++t) seen.insert(first[t].item<int64_t>());
  EXPECT_EQ(seen, (std::set<int64_t>{0, 3, 5}));
  const double share0 = (first == 0).to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(share0, 0.7, 3 * std::sqrt(0.7 * 0.3 / static_cast<double>(types.size(0))));
  EXPECT_FALSE(at::equal(ctrl, control_labels(tokens, labels, 4))) << "the seed decides the assignment";
}

TEST(ProbeBootstrap, IntervalOfAnAccuracyMatchesTheNormalApproximation) {
  // 0/1 correctness of 2000 rows at accuracy 0.8: the percentile interval is
  // close to p +- 1.96 sqrt(p (1 - p) / n).
  const int64_t n = 2000;
  at::Tensor correct = (at::arange(n, at::kLong) % 5 != 0).to(at::kDouble);  // exactly 0.8
  BootstrapInterval ci = bootstrap_ci([&](const at::Tensor& rows) { return correct.index_select(0, rows).mean().reshape({1}); },
                                      n, BootstrapOptions().resamples(2000).seed(1));
  const double half = 1.96 * std::sqrt(0.8 * 0.2 / n);  // 0.0175
  EXPECT_DOUBLE_EQ(ci.estimate.item<double>(), 0.8);
  EXPECT_NEAR(ci.lower.item<double>(), 0.8 - half, 0.003);
  EXPECT_NEAR(ci.upper.item<double>(), 0.8 + half, 0.003);
}

TEST(ProbeCrossValidation, EachFoldIsAFitOnItsTrainRowsScoredOnItsTestRows) {
  const ProbeFixture fx = probe_fixture("multinomial");
  const int64_t N = fx.x_train.size(1);
  std::vector<Split> folds = k_fold(N, 4, true, 9);
  auto acc_of = [](const LinearProbes& p, const at::Tensor& x, const at::Tensor& y) {
    return accuracy(p.predict(x), y);
  };
  at::Tensor cv = cross_validate(fx.x_train, fx.y_train, folds, ProbeOptions(), acc_of);
  ASSERT_EQ(cv.sizes(), (at::IntArrayRef{4, 3}));
  // Fold 2 by hand.
  LinearProbes p = fit_logistic(fx.x_train.index_select(1, folds[2].train), fx.y_train.index_select(0, folds[2].train));
  at::Tensor want = accuracy(p.predict(fx.x_train.index_select(1, folds[2].test)), fx.y_train.index_select(0, folds[2].test));
  EXPECT_TRUE(at::allclose(cv[2], want, 0, 0));
  // Unshuffled folds are KFold(4)'s: each fold's accuracy as sklearn's
  // cross_val_score (default tolerance on both sides: one row of ~88 may differ).
  at::Tensor cv_plain = cross_validate(fx.x_train, fx.y_train, k_fold(N, 4, false), ProbeOptions(), acc_of);
  at::Tensor want_cv = fx.file->read_tensor("/multinomial/cv4_accuracy").t();  // [4 folds, P]
  EXPECT_TRUE(at::allclose(cv_plain, want_cv, 0, 1.5 / 87)) << cv_plain << want_cv;
  // Regression targets go to linear probes.
  const ProbeFixture r = probe_fixture("ridge");
  at::Tensor r2s = cross_validate(r.x_train, r.y_train, k_fold(r.x_train.size(1), 3), ProbeOptions().alpha(10.0),
                                  [](const LinearProbes& p, const at::Tensor& x, const at::Tensor& y) {
                                    return r2(p.predict(x), y);
                                  });
  EXPECT_NEAR(r2s.mean(0)[2].item<double>(), r.test_r2[2].item<double>(), 0.08);
}

TEST(ProbePlantedDirection, ProbeRecoversTheDirectionAndTheControlTaskStaysAtChance) {
  // Three "layers": the label is written along a known unit direction u with
  // strength 0, 0.5 and 1.5 (plus isotropic noise); the token ids are random,
  // independent of the activations.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(2026);
  const int64_t N = 5000, n_train = 4000, D = 32;
  auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor u = at::randn({D}, gen, opts);
  u = u / u.norm();
  at::Tensor y = at::randint(2, {N}, gen, at::TensorOptions().dtype(at::kLong));
  at::Tensor tokens = at::randint(300, {N}, gen, at::TensorOptions().dtype(at::kLong));
  at::Tensor sign = (2 * y - 1).to(at::kDouble).unsqueeze(1);  // [N, 1]
  std::vector<at::Tensor> layers;
  for (double s : {0.0, 0.5, 1.5}) layers.push_back(at::randn({N, D}, gen, opts) + s * sign * u);
  at::Tensor x = at::stack(layers);  // [3, N, D]
  at::Tensor xtr = x.narrow(1, 0, n_train), xte = x.narrow(1, n_train, N - n_train);
  at::Tensor ytr = y.narrow(0, 0, n_train), yte = y.narrow(0, n_train, N - n_train);

  LinearProbes task = fit_logistic(xtr, ytr);
  at::Tensor acc = accuracy(task.predict(xte), yte);
  // Bayes accuracy Phi(s): 0.5, 0.69, 0.93.
  EXPECT_NEAR(acc[0].item<double>(), 0.5, 0.05);
  EXPECT_NEAR(acc[1].item<double>(), 0.69, 0.04);
  EXPECT_NEAR(acc[2].item<double>(), 0.93, 0.03);
  EXPECT_GE(cosine(task.weight[2].squeeze(1), u), 0.98);
  EXPECT_GE(cosine(task.weight[1].squeeze(1), u), 0.9);
  EXPECT_GE(auroc(task.score(xte), yte)[2].item<double>(), 0.97);

  at::Tensor ctrl = control_labels(tokens, y, 1);
  LinearProbes control = fit_logistic(xtr, ctrl.narrow(0, 0, n_train));
  at::Tensor ctrl_test = ctrl.narrow(0, n_train, N - n_train);
  at::Tensor cacc = accuracy(control.predict(xte), ctrl_test);
  // Chance: the majority share of the control labels on the test rows (+-0.05 = 3 sigma over 1000 rows).
  const double major = std::max(ctrl_test.to(at::kDouble).mean().item<double>(),
                                1 - ctrl_test.to(at::kDouble).mean().item<double>());
  for (int64_t p = 0; p < 3; ++p) EXPECT_NEAR(cacc[p].item<double>(), major, 0.05) << "layer " << p;
  at::Tensor sel = selectivity(acc, cacc);
  EXPECT_GE(sel[2].item<double>(), 0.35);
  EXPECT_LT(sel[0].item<double>(), 0.08);
  EXPECT_EQ(sel.argmax().item<int64_t>(), 2) << "the sweep picks the layer that encodes the label";
}

}  // namespace
}  // namespace mechlab::probes
