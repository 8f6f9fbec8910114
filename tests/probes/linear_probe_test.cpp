// Linear probes against scikit-learn 1.9.1 (tests/data/probes/probes.h5):
// the same test-split predictions and coefficient vectors with cosine
// similarity >= 0.999, for binary and multinomial logistic regression (L2,
// L-BFGS), L1 logistic regression (FISTA against saga), ridge (closed form and
// L-BFGS) and lasso; plus the batching contract (P probes at once = each alone).
#include "probes/linear_probe.h"
#include "probes/batched_solvers.h"

#include "tests/probes/probe_fixture.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace mechlab::probes {
namespace {

using mechlab::testing::cosine;
using mechlab::testing::error_of;
using mechlab::testing::probe_fixture;
using mechlab::testing::ProbeFixture;

// Tight tolerances on both sides: the comparison is of the minimisers, not of
// where two solvers happened to stop.
ProbeOptions tight() { return ProbeOptions().tol(1e-9).max_iter(2000); }

void expect_matches(const ProbeFixture& fx, const LinearProbes& probes, double min_cos, int64_t max_pred_diff,
                    const std::string& what) {
  const int64_t P = fx.coef.size(0);
  ASSERT_EQ(probes.num_probes(), P) << what;
  at::Tensor pred = probes.predict(fx.x_test);  // [P, n_test]
  for (int64_t p = 0; p < P; ++p) {
    const double c = cosine(probes.coef[p], fx.coef[p]);
    EXPECT_GE(c, min_cos) << what << " probe " << p;
    if (probes.loss == ProbeLoss::logistic) {
      const int64_t diff = (pred[p] != fx.test_pred[p]).sum().item<int64_t>();
      EXPECT_LE(diff, max_pred_diff) << what << " probe " << p << ": test predictions differing from sklearn's";
      const double acc = (pred[p] == fx.y_test).to(at::kDouble).mean().item<double>();
      EXPECT_NEAR(acc, fx.test_accuracy[p].item<double>(), (max_pred_diff + 0.5) / fx.y_test.size(0))
          << what << " probe " << p;
    } else {
      EXPECT_TRUE(at::allclose(pred[p], fx.test_pred[p], 1e-3, 1e-3)) << what << " probe " << p;
    }
  }
}

TEST(LinearProbe, BinaryLogisticMatchesSklearn) {
  const ProbeFixture fx = probe_fixture("binary");
  LinearProbes p = fit_logistic(fx.x_train, fx.y_train, tight());
  expect_matches(fx, p, 0.999999, 0, "binary");
  EXPECT_TRUE(p.converged.all().item<bool>());
  EXPECT_TRUE(at::allclose(p.intercept, fx.intercept, 1e-5, 1e-5)) << p.intercept << fx.intercept;
}

TEST(LinearProbe, BinaryLogisticInFloat32MatchesSklearn) {
  const ProbeFixture fx = probe_fixture("binary");
  LinearProbes p = fit_logistic(fx.x_train.to(at::kFloat), fx.y_train, ProbeOptions().tol(1e-5).max_iter(500));
  ProbeFixture f32 = fx;
  f32.x_test = fx.x_test.to(at::kFloat);
  expect_matches(f32, p, 0.999, 1, "binary float32");
}

TEST(LinearProbe, BinaryLogisticOnRawFeaturesMatchesSklearn) {
  const ProbeFixture fx = probe_fixture("binary_raw");
  LinearProbes p = fit_logistic(fx.x_train, fx.y_train, tight().C(0.5).standardize(false));
  expect_matches(fx, p, 0.999999, 0, "binary_raw");
  EXPECT_TRUE(at::allclose(p.weight, p.coef)) << "without standardisation the raw weights are the coefficients";
}

TEST(LinearProbe, DefaultToleranceGivesSklearnsDefaultAccuracy) {
  // scikit-learn's defaults (tol 1e-4, max_iter 100) on both sides.
  const ProbeFixture fx = probe_fixture("binary_default");
  LinearProbes p = fit_logistic(fx.x_train, fx.y_train);
  expect_matches(fx, p, 0.999, 1, "binary_default");
}

TEST(LinearProbe, MultinomialLogisticMatchesSklearn) {
  const ProbeFixture fx = probe_fixture("multinomial");
  LinearProbes p = fit_logistic(fx.x_train, fx.y_train, tight());
  ASSERT_EQ(p.coef.size(2), 4);
  expect_matches(fx, p, 0.999999, 0, "multinomial");
  for (int64_t k = 0; k < 4; ++k) {
    EXPECT_GE(cosine(p.coef.select(2, k), fx.coef.select(2, k)), 0.99999) << "class " << k;
  }
  EXPECT_TRUE(at::allclose(p.intercept, fx.intercept, 1e-4, 1e-4)) << p.intercept << fx.intercept;
  // Probabilities are a softmax over the classes.
  at::Tensor proba = p.predict_proba(fx.x_test);
  EXPECT_TRUE(at::allclose(proba.sum(2), at::ones({3, fx.x_test.size(1)}, at::kDouble)));
}

TEST(LinearProbe, L1LogisticMatchesSklearnSaga) {
  const ProbeFixture fx = probe_fixture("binary_l1");
  LinearProbes p = fit_logistic(fx.x_train, fx.y_train,
                                ProbeOptions().penalty(Penalty::l1).C(0.05).tol(1e-9).max_iter(50000));
  EXPECT_EQ(p.solver, Solver::fista);
  expect_matches(fx, p, 0.999, 1, "binary_l1");
  // The L1 penalty zeroes the same coefficients (sklearn's saga leaves ~1e-10 where it means 0).
  at::Tensor ours_zero = p.coef.abs() < 1e-7, theirs_zero = fx.coef.abs() < 1e-6;
  EXPECT_GT(theirs_zero.sum().item<int64_t>(), 0) << "the fixture should have sparse coefficients";
  EXPECT_TRUE(at::equal(ours_zero, theirs_zero)) << p.coef.squeeze(2) << fx.coef.squeeze(2);
}

TEST(LinearProbe, RidgeClosedFormAndLbfgsMatchSklearn) {
  const ProbeFixture fx = probe_fixture("ridge");
  LinearProbes exact = fit_linear(fx.x_train, fx.y_train, ProbeOptions().alpha(10.0));
  EXPECT_EQ(exact.solver, Solver::exact);
  expect_matches(fx, exact, 0.9999999, 0, "ridge exact");
  EXPECT_TRUE(at::allclose(exact.coef, fx.coef, 1e-7, 1e-8));
  EXPECT_TRUE(at::allclose(exact.intercept, fx.intercept, 1e-7, 1e-8));
  LinearProbes lbfgs = fit_linear(fx.x_train, fx.y_train, tight().alpha(10.0).solver(Solver::lbfgs));
  expect_matches(fx, lbfgs, 0.999999, 0, "ridge lbfgs");
}

TEST(LinearProbe, LassoMatchesSklearn) {
  const ProbeFixture fx = probe_fixture("lasso");
  LinearProbes p = fit_linear(fx.x_train, fx.y_train,
                              ProbeOptions().penalty(Penalty::l1).alpha(0.05).tol(1e-10).max_iter(50000));
  expect_matches(fx, p, 0.99999, 0, "lasso");
}

TEST(LinearProbe, FullBatchAdamReachesSklearnsOptimum) {
  // Adam's gradient path (the penalty, the folded standardisation) has the
  // same minimiser: one batch of all rows, no early stopping, many steps.
  const ProbeFixture fx = probe_fixture("binary");
  LinearProbes p = fit_logistic(fx.x_train, fx.y_train,
                                ProbeOptions().solver(Solver::adam).lr(0.02).batch_size(1000).epochs(3000)
                                    .validation_fraction(0));
  EXPECT_EQ(p.solver, Solver::adam);
  expect_matches(fx, p, 0.9999, 1, "binary full-batch adam");
}

TEST(LinearProbe, MiniBatchAdamStopsEarlyOnTheValidationSplit) {
  const ProbeFixture fx = probe_fixture("binary");
  LinearProbes p = fit_logistic(fx.x_train, fx.y_train,
                                ProbeOptions().solver(Solver::adam).lr(0.05).batch_size(32).epochs(300)
                                    .patience(10).validation_fraction(0.2).seed(3));
  // Early stopping ends well before 300 epochs and keeps the best epoch's weights.
  EXPECT_LT(p.iterations.max().item<int64_t>(), 300);
  EXPECT_TRUE(p.converged.all().item<bool>()) << "every probe ran out of patience";
  // Early stopping regularises: on the probes with signal (sklearn's test
  // accuracy 0.87 and 0.95) the direction and accuracy are close to the
  // optimum's; probe 0 has none (accuracy 0.5), its weights are noise.
  at::Tensor pred = p.predict(fx.x_test);
  for (int64_t k : {1, 2}) {
    EXPECT_GE(cosine(p.coef[k], fx.coef[k]), 0.95) << "probe " << k;  // a random direction: ~0.25
    const double acc = (pred[k] == fx.y_test).to(at::kDouble).mean().item<double>();
    EXPECT_NEAR(acc, fx.test_accuracy[k].item<double>(), 0.03) << "probe " << k;
  }
}

TEST(LinearProbe, BatchedProbesEqualProbesFittedOneByOne) {
  const ProbeFixture fx = probe_fixture("multinomial");
  LinearProbes all = fit_logistic(fx.x_train, fx.y_train, tight());
  for (int64_t p = 0; p < fx.x_train.size(0); ++p) {
    LinearProbes one = fit_logistic(fx.x_train[p], fx.y_train, tight());
    EXPECT_TRUE(at::allclose(one.coef[0], all.coef[p], 1e-6, 1e-7)) << "probe " << p;
  }
  // Per-probe labels: the same problem with a second, different label set.
  at::Tensor y2 = at::stack({fx.y_train, fx.y_train.flip(0)});
  at::Tensor x2 = at::stack({fx.x_train[2], fx.x_train[2]});
  LinearProbes two = fit_logistic(x2, y2, tight());
  EXPECT_TRUE(at::allclose(two.coef[0], all.coef[2], 1e-6, 1e-7));
  EXPECT_LT(cosine(two.coef[1], two.coef[0]), 0.9) << "the second probe saw other labels";
}

// Each probe of a batch is the fit it would be alone, also where the batch
// mixes probes that converge with probes stopped by max_iter: per probe the
// same coefficients (bit for bit: the per-probe objective and the per-probe
// L-BFGS state do not see the other probes), iterations and stop reason.
TEST(LinearProbe, BatchedProbesEqualProbesFittedAloneAlsoAtMaxIter) {
  const ProbeFixture fx = probe_fixture("binary");
  // With C 100 and tol 1e-2 the three probes converge alone after 6, 22 and
  // 8 iterations: max_iter 10 stops the second only.
  const ProbeOptions o = ProbeOptions().C(100).tol(1e-2).max_iter(10);
  const LinearProbes all = fit_logistic(fx.x_train, fx.y_train, o);
  const int64_t stopped = all.converged.logical_not().sum().item<int64_t>();
  ASSERT_GE(stopped, 1) << all.iterations;
  ASSERT_LT(stopped, all.num_probes()) << all.iterations;
  for (int64_t p = 0; p < all.num_probes(); ++p) {
    const LinearProbes one = fit_logistic(fx.x_train[p], fx.y_train, o);
    EXPECT_TRUE(at::equal(one.coef[0], all.coef[p])) << "probe " << p;
    EXPECT_EQ(one.iterations[0].item<int64_t>(), all.iterations[p].item<int64_t>()) << "probe " << p;
    EXPECT_EQ(one.converged[0].item<bool>(), all.converged[p].item<bool>()) << "probe " << p;
    EXPECT_EQ(one.stop_reason[0].item<int64_t>(), all.stop_reason[p].item<int64_t>()) << "probe " << p;
  }
}

TEST(LinearProbe, BlockedEvaluationGivesTheSameFit) {
  // One pass over the rows in blocks (ProbeOptions::block_rows, the ATen
  // path's) sums the same loss and gradient as one block of all rows.
  const ProbeFixture fx = probe_fixture("multinomial");
  LinearProbes whole = fit_logistic(fx.x_train, fx.y_train, tight().fused(false).block_rows(1 << 20));
  LinearProbes blocked = fit_logistic(fx.x_train, fx.y_train, tight().fused(false).block_rows(37));  // 350 = 9 x 37 + 17
  EXPECT_TRUE(at::allclose(blocked.coef, whole.coef, 1e-7, 1e-9));
  const ProbeFixture bx = probe_fixture("binary");
  EXPECT_TRUE(at::allclose(fit_logistic(bx.x_train, bx.y_train, tight().fused(false).block_rows(50)).coef, bx.coef,
                           1e-5, 1e-6));
}

TEST(LinearProbe, BatchedGemmFormGivesTheSameFit) {
  // The GPU's form (one bmm per product over all probes, converged ones
  // included) against the CPU's per-probe GEMMs.
  for (const char* group : {"binary", "multinomial", "ridge"}) {
    const ProbeFixture fx = probe_fixture(group);
    ProbeOptions o = tight();
    if (std::string(group) == "ridge") o.alpha(10.0).solver(Solver::lbfgs);
    at::Tensor a = (std::string(group) == "ridge" ? fit_linear : fit_logistic)(fx.x_train, fx.y_train, o).coef;
    at::Tensor b =
        (std::string(group) == "ridge" ? fit_linear : fit_logistic)(fx.x_train, fx.y_train, o.batched_gemm(true)).coef;
    EXPECT_TRUE(at::allclose(a, b, 1e-7, 1e-9)) << group;
    EXPECT_GE(cosine(b, fx.coef), 0.999999) << group;
  }
}

TEST(LinearProbe, RawWeightsActOnRawFeatures) {
  // weight/bias on raw x give the same logits as coef/intercept on standardised x.
  const ProbeFixture fx = probe_fixture("binary");
  LinearProbes p = fit_logistic(fx.x_train, fx.y_train, tight());
  at::Tensor z_std = at::baddbmm(p.intercept.unsqueeze(1), (fx.x_test - p.mean.unsqueeze(1)) / p.scale.unsqueeze(1),
                                 p.coef);
  EXPECT_TRUE(at::allclose(p.decision_function(fx.x_test), z_std, 1e-9, 1e-9));
}

TEST(LinearProbe, StopReasonOfEachSolver) {
  const ProbeFixture fx = probe_fixture("ridge");
  LinearProbes ridge = fit_linear(fx.x_train, fx.y_train);
  EXPECT_TRUE((ridge.stop_reason == static_cast<int64_t>(StopReason::closed_form)).all().item<bool>());
  const ProbeFixture bx = probe_fixture("binary");
  LinearProbes lb = fit_logistic(bx.x_train, bx.y_train, tight());
  at::Tensor r = lb.stop_reason;
  EXPECT_TRUE(((r == static_cast<int64_t>(StopReason::gradient)) | (r == static_cast<int64_t>(StopReason::objective)))
                  .all()
                  .item<bool>())
      << r;
}

// mechlab bench probe reports each sweep with each probe's iterations and
// stop reason, and its sizes default to the issue's (12 layers, 100k tokens
// x 768, 80% train, 10 classes), which scripts/bench/probe_vs_sklearn.sh
// runs when given no flags.
TEST(LinearProbe, BenchReportsEachSweepAtTheIssuesDefaultSize) {
  const mechlab::testing::CliResult r =
      mechlab::testing::run_cli("bench probe --tokens 600 --d-model 8 --layers 2 --classes 3 --threads 1");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("| binary logistic sweep "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| 3-class logistic sweep "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| ridge sweep "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 layers x 600 tokens x 8, 480 train"), std::string::npos) << r.output;
  const size_t at = r.output.find("probe_json ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output.substr(at + 11, r.output.find('\n', at) - at - 11));
  for (const char* k : {"binary", "multinomial"}) {
    const nlohmann::json& fit = j[k];
    ASSERT_EQ(fit["stop_reason"].size(), 2u) << k;
    ASSERT_EQ(fit["test_accuracy"].size(), 2u) << k;
    for (const auto& reason : fit["stop_reason"]) {
      const std::string why = reason.get<std::string>();
      EXPECT_TRUE(why == "gradient" || why == "objective") << k << " " << why;
    }
    for (int64_t it : fit["iterations"]) EXPECT_GE(it, 1) << k;
  }
  EXPECT_EQ(j["ridge"]["test_r2"].size(), 2u);
  EXPECT_EQ(j["n_train"], 480);
  const std::string help = mechlab::testing::run_cli("bench probe --help").output;
  for (const char* d : {"--tokens INT:> 0=100000", "--d-model INT:> 0=768", "--layers INT:> 0=12", "=10\n",
                        "FLOAT in [0.01 - 0.99]=0.8"}) {
    EXPECT_NE(help.find(d), std::string::npos) << d << "\n" << help;
  }
}

TEST(LinearProbe, RefusesBadInputsNamingThem) {
  at::Tensor x = at::randn({10, 3}, at::kDouble);
  EXPECT_NE(error_of([&] { fit_logistic(x, at::zeros({10}, at::kLong)); }).find("one class only"),
            std::string::npos);
  EXPECT_NE(error_of([&] { fit_logistic(x, at::zeros({9}, at::kLong)); }).find("give one per row"),
            std::string::npos);
  EXPECT_NE(error_of([&] { fit_logistic(x, at::full({10}, -1, at::kLong)); }).find("negative"), std::string::npos);
  at::Tensor y = at::arange(10, at::kLong) % 2;
  EXPECT_NE(error_of([&] {
              fit_logistic(x, y, ProbeOptions().penalty(Penalty::l1).solver(Solver::lbfgs));
            }).find("L-BFGS cannot minimise an L1 penalty"),
            std::string::npos);
  EXPECT_NE(error_of([&] { fit_logistic(x, y, ProbeOptions().C(-1)); }).find("logistic probe: `ProbeOptions::C` must be > 0, got -1"), std::string::npos);
  EXPECT_NE(error_of([&] { fit_logistic(x.to(at::kHalf), y); }).find("float32 or float64"), std::string::npos);
  at::Tensor bad = x.clone();
  bad[3][1] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_NE(error_of([&] { fit_logistic(bad, y); }).find("NaN"), std::string::npos);
  EXPECT_NE(error_of([&] { fit_linear(x, y); }).find("floating point"), std::string::npos);
  EXPECT_NE(error_of([&] { parse_solver("newton"); }).find("use auto, lbfgs, fista, exact or adam"),
            std::string::npos);
}

}  // namespace
}  // namespace mechlab::probes
