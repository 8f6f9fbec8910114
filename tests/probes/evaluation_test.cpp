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

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

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

// Multinomial probes: scikit-learn's roc_auc_score(multi_class="ovr",
// average="macro") of its own predict_proba, and of our fit of the same
// probes (tight on both sides: the coefficients agree to a cosine of
// 0.9999999, so at most a near-tie of two rows' scores may order differently).
TEST(ProbeMetrics, MulticlassAurocIsSklearnsOneVsRestMacro) {
  const ProbeFixture m = probe_fixture("multinomial");
  const at::Tensor proba = m.file->read_tensor("/multinomial/test_proba");  // [P, n_test, K]
  EXPECT_TRUE(at::allclose(auroc_ovr(proba, m.y_test), m.test_auroc, 0, 1e-12)) << auroc_ovr(proba, m.y_test)
                                                                                 << m.test_auroc;
  // Column k ranked alone: log-probabilities give the same value.
  EXPECT_TRUE(at::allclose(auroc_ovr(proba.log(), m.y_test), m.test_auroc, 0, 1e-12));
  // One probe given as [N, K].
  EXPECT_NEAR(auroc_ovr(proba[1], m.y_test).item<double>(), m.test_auroc[1].item<double>(), 1e-12);
  // Not the raw logits: class k's probability depends on every logit.
  LinearProbes p = fit_logistic(m.x_train, m.y_train, ProbeOptions().tol(1e-9).max_iter(2000));
  const at::Tensor ours = probe_auroc(p, m.x_test, m.y_test);
  EXPECT_TRUE(at::allclose(ours, m.test_auroc, 0, 1e-3)) << ours << m.test_auroc;
  EXPECT_TRUE(at::allclose(ResampledAuroc(auroc_scores(p.decision_function(m.x_test)), m.y_test)(
                               at::arange(m.y_test.size(0), at::kLong)),
                           ours, 0, 1e-12));
  // A binary probe's AUROC is that of its logit.
  const ProbeFixture b = probe_fixture("binary");
  LinearProbes pb = fit_logistic(b.x_train, b.y_train);
  EXPECT_TRUE(at::equal(probe_auroc(pb, b.x_test, b.y_test), auroc(pb.score(b.x_test), b.y_test)));
}

// Hand-made scores with many ties (repeated rows, five distinct probability
// rows, quarter steps) and 200 bootstrap resamples of their 40 rows, scored
// by scikit-learn: each resample's AUROC, NaN where it has none because the
// resample lacks class 3 (3 rows of 40; scikit-learn raises) or both
// positives (scikit-learn returns NaN).
TEST(ProbeMetrics, AurocWithTiesAndResamplesMatchesSklearn) {
  core::H5File& f = mechlab::testing::probe_fixture_file();
  const at::Tensor ms = f.read_tensor("/auroc/multiclass_scores"), my = f.read_tensor("/auroc/multiclass_labels");
  const at::Tensor bs = f.read_tensor("/auroc/binary_scores"), by = f.read_tensor("/auroc/binary_labels");
  EXPECT_TRUE(at::allclose(auroc_ovr(ms, my), f.read_tensor("/auroc/multiclass_auroc"), 0, 1e-12));
  EXPECT_TRUE(at::allclose(auroc(bs, by), f.read_tensor("/auroc/binary_auroc"), 0, 1e-12));
  const at::Tensor resamples = f.read_tensor("/auroc/resamples");  // [B, N]
  const at::Tensor want_m = f.read_tensor("/auroc/multiclass_resampled");  // [B, P]
  const at::Tensor want_b = f.read_tensor("/auroc/binary_resampled");
  const ResampledAuroc multi(ms, my), binary(bs, by);
  int64_t undefined_m = 0, undefined_b = 0;
  for (int64_t r = 0; r < resamples.size(0); ++r) {
    const at::Tensor rows = resamples[r];
    const at::Tensor got_m = multi(rows), got_b = binary(rows);
    EXPECT_TRUE(at::equal(at::isnan(got_m), at::isnan(want_m[r]))) << "resample " << r << got_m << want_m[r];
    EXPECT_TRUE(at::equal(at::isnan(got_b), at::isnan(want_b[r]))) << "resample " << r << got_b << want_b[r];
    EXPECT_TRUE(at::allclose(got_m, want_m[r], 0, 1e-12, /*equal_nan=*/true)) << "resample " << r;
    EXPECT_TRUE(at::allclose(got_b, want_b[r], 0, 1e-12, /*equal_nan=*/true)) << "resample " << r;
    undefined_m += at::isnan(got_m[0]).item<bool>();
    undefined_b += at::isnan(got_b[0]).item<bool>();
  }
  // Both kinds occur, so neither the NaN rule nor the values are untested.
  EXPECT_GT(undefined_m, 0);
  EXPECT_LT(undefined_m, resamples.size(0));
  EXPECT_GT(undefined_b, 0);
  EXPECT_LT(undefined_b, resamples.size(0));
  // All rows once: the plain AUROC.
  EXPECT_TRUE(at::allclose(multi(at::arange(40, at::kLong)), auroc_ovr(ms, my), 0, 1e-12));
  // The plain functions refuse what scikit-learn refuses, naming the class.
  EXPECT_NE(error_of([&] { auroc_ovr(ms, my.clamp_max(2)); }).find("class 3 has no rows"), std::string::npos);
  EXPECT_NE(error_of([&] { auroc_ovr(ms, my + 1); }).find("class indices in [0, 4)"), std::string::npos);
}

// The one-pass scoring of a resample against the definition on a larger
// draw: auroc / auroc_ovr (core/stats/roc.h's roc_curve) of the resampled
// rows themselves, a repeated row a tie with itself; 4 probes x 6 classes x
// 3000 rows with many ties (scores on a grid of 1/4), 25 resamples.
TEST(ProbeMetrics, ResampledAurocEqualsTheAurocOfTheResampledRows) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(31);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t P = 4, N = 3000, K = 6;
  const at::Tensor labels = at::randint(K, {N}, gen, at::TensorOptions().dtype(at::kLong));
  const at::Tensor signal = at::one_hot(labels, K).to(at::kDouble).unsqueeze(0) * at::arange(P, f64).view({P, 1, 1});
  const at::Tensor multi = ((at::randn({P, N, K}, gen, f64) + signal) * 4).round() / 4;  // [P, N, K]
  const at::Tensor bin_labels = labels.remainder(2);
  const at::Tensor binary = multi.select(2, 1);  // [P, N]
  const ResampledAuroc rm(multi, labels), rb(binary, bin_labels);
  for (int r = 0; r < 25; ++r) {
    const at::Tensor rows = at::randint(N, {N}, gen, at::TensorOptions().dtype(at::kLong));
    const at::Tensor want_m = auroc_ovr(multi.index_select(1, rows), labels.index_select(0, rows));
    const at::Tensor want_b = auroc(binary.index_select(1, rows), bin_labels.index_select(0, rows));
    EXPECT_TRUE(at::allclose(rm(rows), want_m, 0, 1e-12)) << r << rm(rows) << want_m;
    EXPECT_TRUE(at::allclose(rb(rows), want_b, 0, 1e-12)) << r << rb(rows) << want_b;
  }
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

// scikit-learn's GroupShuffleSplit: ceil(0.2 x 37) = 8 of 37 groups held
// out, every row of a group on its group's side, the rows partitioned.
TEST(ProbeSplits, GroupSplitHoldsOutWholeGroups) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(2);
  const at::Tensor sizes = at::randint(1, 10, {37}, gen, at::TensorOptions().dtype(at::kLong));
  // Group ids 100, 103, ..., not contiguous, each repeated `size` times, shuffled.
  const at::Tensor ids = at::arange(37, at::kLong) * 3 + 100;
  at::Tensor groups = at::repeat_interleave(ids, sizes);
  groups = groups.index_select(0, at::randperm(groups.size(0), gen, at::TensorOptions().dtype(at::kLong)));
  const int64_t n = groups.size(0);
  const Split s = group_split(groups, SplitOptions().test_fraction(0.2).validation_fraction(0.1).seed(4));
  const at::Tensor g_test = std::get<0>(at::_unique(groups.index_select(0, s.test)));
  const at::Tensor g_val = std::get<0>(at::_unique(groups.index_select(0, s.validation)));
  const at::Tensor g_train = std::get<0>(at::_unique(groups.index_select(0, s.train)));
  EXPECT_EQ(g_test.size(0), 8);
  EXPECT_EQ(g_val.size(0), 4);  // ceil(3.7)
  EXPECT_EQ(g_train.size(0), 25);
  EXPECT_FALSE(at::isin(g_test, g_train).any().item<bool>());
  EXPECT_FALSE(at::isin(g_val, g_train).any().item<bool>());
  EXPECT_FALSE(at::isin(g_test, g_val).any().item<bool>());
  // Whole groups: a held-out group's rows are all its rows.
  EXPECT_EQ(s.test.size(0), at::isin(groups, g_test).sum().item<int64_t>());
  EXPECT_TRUE(at::equal(std::get<0>(at::cat({s.train, s.validation, s.test}).sort()), at::arange(n, at::kLong)));
  EXPECT_FALSE(at::equal(g_test, std::get<0>(at::_unique(groups.index_select(
                                     0, group_split(groups, SplitOptions().test_fraction(0.2).seed(5)).test)))))
      << "the seed decides the groups";
  EXPECT_NE(error_of([] { group_split(at::tensor({1, 1, 2}, at::kLong), SplitOptions().test_fraction(0.6)); })
                .find("leave none to train on"),
            std::string::npos);
}

// group_k_fold: KFold(3) over 7 groups without shuffling tests groups
// {0, 1, 2}, {3, 4}, {5, 6} (ids in ascending order), each with all its rows.
TEST(ProbeSplits, GroupKFoldTestsEachGroupOnceWithAllItsRows) {
  const at::Tensor groups = at::tensor({6, 0, 3, 3, 1, 5, 2, 4, 0, 6, 6, 2}, at::kLong);
  const std::vector<Split> folds = group_k_fold(groups, 3, /*shuffle=*/false);
  ASSERT_EQ(folds.size(), 3u);
  EXPECT_TRUE(at::equal(folds[0].test, at::tensor({1, 4, 6, 8, 11}, at::kLong)));  // groups 0, 1, 2
  EXPECT_TRUE(at::equal(folds[1].test, at::tensor({2, 3, 7}, at::kLong)));         // groups 3, 4
  EXPECT_TRUE(at::equal(folds[2].test, at::tensor({0, 5, 9, 10}, at::kLong)));     // groups 5, 6
  for (const Split& f : group_k_fold(groups, 3, true, 9)) {
    EXPECT_EQ(f.train.size(0) + f.test.size(0), groups.size(0));
    EXPECT_FALSE(at::isin(groups.index_select(0, f.test), groups.index_select(0, f.train)).any().item<bool>());
  }
  EXPECT_NE(error_of([&] { group_k_fold(groups, 8); }).find("use fewer folds or more groups"), std::string::npos);
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

// The cluster bootstrap resamples groups: 400 groups of 10 rows, each
// group's rows all 1 or all 0 (half the groups), so the mean over rows
// varies as a mean over 400 groups: p +- 1.96 sqrt(p (1 - p) / 400) =
// 0.5 +- 0.049, three times the 0.5 +- 0.0155 of 4000 independent rows
// (which bootstrap_ci would give).
TEST(ProbeBootstrap, ClusterIntervalCountsGroupsNotRows) {
  const int64_t G = 400, per = 10;
  const at::Tensor groups = at::arange(G, at::kLong).repeat_interleave(per);
  const at::Tensor value = (groups % 2).to(at::kDouble);
  auto mean = [&](const at::Tensor& rows) { return value.index_select(0, rows).mean().reshape({1}); };
  const BootstrapInterval ci = cluster_bootstrap_ci(mean, groups, BootstrapOptions().resamples(2000).seed(3));
  const double half = 1.96 * std::sqrt(0.25 / G);
  EXPECT_DOUBLE_EQ(ci.estimate.item<double>(), 0.5);
  EXPECT_NEAR(ci.lower.item<double>(), 0.5 - half, 0.006);
  EXPECT_NEAR(ci.upper.item<double>(), 0.5 + half, 0.006);
  // A resample passes whole groups: every row of a drawn group, as often as drawn.
  int64_t calls = 0;
  cluster_bootstrap_ci(
      [&](const at::Tensor& rows) {
        if (calls++ > 0) {
          const at::Tensor g = groups.index_select(0, rows);
          EXPECT_EQ(rows.size(0) % per, 0);
          EXPECT_TRUE(at::equal(at::bincount(g, {}, G) % per, at::zeros({G}, at::kLong)));
          EXPECT_EQ(rows.size(0), G * per);
        }
        return value.index_select(0, rows).mean().reshape({1});
      },
      groups, BootstrapOptions().resamples(3));
  EXPECT_EQ(calls, 4);
}

// A metric undefined on some resamples (NaN) leaves them out: the bounds are
// the linear percentiles of the defined values alone (numpy.nanpercentile),
// computed here naively from the values the metric returned.
TEST(ProbeBootstrap, ResamplesWithAnUndefinedMetricAreLeftOut) {
  const int64_t n = 50;
  std::vector<double> seen;  // probe 1's values, in order
  auto metric = [&](const at::Tensor& rows) {
    const double mean = rows.to(at::kDouble).mean().item<double>();
    // Probe 0 always defined; probe 1 undefined when row 0 is not drawn.
    const double v1 = (rows == 0).any().item<bool>() ? mean : std::nan("");
    seen.push_back(v1);
    return at::tensor({mean, v1}, at::kDouble);
  };
  BootstrapInterval ci = bootstrap_ci(metric, n, BootstrapOptions().resamples(400).confidence(0.9).seed(3));
  seen.erase(seen.begin());  // the estimate's call on all rows
  std::vector<double> defined;
  for (double v : seen) {
    if (!std::isnan(v)) defined.push_back(v);
  }
  // P(row 0 drawn) = 1 - (49/50)^50 = 0.64: both kinds occur.
  ASSERT_GT(defined.size(), 100u);
  ASSERT_LT(defined.size(), 400u);
  EXPECT_EQ(ci.defined[0].item<int64_t>(), 400);
  EXPECT_EQ(ci.defined[1].item<int64_t>(), static_cast<int64_t>(defined.size()));
  std::sort(defined.begin(), defined.end());
  auto percentile = [&](double q) {  // numpy's linear method
    const double h = q * static_cast<double>(defined.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(h));
    const size_t hi = std::min(lo + 1, defined.size() - 1);
    return defined[lo] + (h - static_cast<double>(lo)) * (defined[hi] - defined[lo]);
  };
  EXPECT_NEAR(ci.lower[1].item<double>(), percentile(0.05), 1e-12);
  EXPECT_NEAR(ci.upper[1].item<double>(), percentile(0.95), 1e-12);
  EXPECT_FALSE(std::isnan(ci.lower[0].item<double>()));
  // Never defined: NaN bounds, zero defined resamples.
  BootstrapInterval none = bootstrap_ci([](const at::Tensor&) { return at::full({1}, std::nan(""), at::kDouble); }, n,
                                        BootstrapOptions().resamples(10));
  EXPECT_EQ(none.defined.item<int64_t>(), 0);
  EXPECT_TRUE(std::isnan(none.lower.item<double>()) && std::isnan(none.upper.item<double>()));
}

// k-fold AUROC of multinomial probes: each fold's one-vs-rest AUROC as
// scikit-learn's cross_val_score(scoring="roc_auc_ovr") with KFold(4),
// tight fits on both sides (then at most a near-tie orders differently).
TEST(ProbeCrossValidation, MulticlassAurocFoldsMatchSklearn) {
  const ProbeFixture fx = probe_fixture("multinomial");
  at::Tensor cv = cross_validate(fx.x_train, fx.y_train, k_fold(fx.x_train.size(1), 4, false),
                                 ProbeOptions().tol(1e-9).max_iter(2000), [](const LinearProbes& p, const at::Tensor& x,
                                                                             const at::Tensor& y) {
                                   return probe_auroc(p, x, y);
                                 });
  const at::Tensor want = fx.file->read_tensor("/multinomial/cv4_auroc").t();  // [4 folds, P]
  EXPECT_TRUE(at::allclose(cv, want, 0, 1e-3)) << cv << want;
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
