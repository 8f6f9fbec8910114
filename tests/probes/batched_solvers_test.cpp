// The batched solvers on problems with known minimisers: each problem
// converges on its own (a problem that converges early stops moving and is
// no longer evaluated), and the result equals solving it alone.
#include "probes/batched_solvers.h"

#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

namespace mechlab::probes {
namespace {

// f_p(theta) = 1/2 (theta - c_p)^T A_p (theta - c_p), A_p = B_p B_p^T + mu_p I:
// minimiser c_p, condition number growing with p.
struct Quadratics {
  at::Tensor A, c;  // [P, M, M], [P, M]
  std::vector<int64_t> evaluated;  // how many times each problem was asked for
  BatchedObjective fg() {
    return [this](const at::Tensor& th, const at::Tensor& which) {
      for (int64_t p = 0; p < th.size(0); ++p) evaluated[p] += which[p].item<bool>() ? 1 : 0;
      // One problem at a time, so that rounding does not depend on the batch.
      at::Tensor f = at::zeros({th.size(0)}, at::kDouble), g = at::zeros_like(th);
      for (int64_t p = 0; p < th.size(0); ++p) {
        at::Tensor d = th[p] - c[p];
        at::Tensor Ad = at::mv(A[p], d);
        f[p] = 0.5 * d.dot(Ad).item<double>();
        g[p] = Ad;
      }
      return std::make_pair(f, g);
    };
  }
};

Quadratics make(int64_t P, int64_t M) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  auto o = at::TensorOptions().dtype(at::kDouble);
  Quadratics q;
  at::Tensor B = at::randn({P, M, M}, gen, o);
  q.A = at::bmm(B, B.transpose(1, 2)) / M;
  for (int64_t p = 0; p < P; ++p) q.A[p].diagonal().add_(p == 0 ? 1.0 : 0.01 / p);
  q.c = at::randn({P, M}, gen, o);
  q.evaluated.assign(P, 0);
  return q;
}

TEST(BatchedSolvers, LbfgsFindsEachMinimiserAndStopsConvergedProblems) {
  Quadratics q = make(4, 20);
  // ftol 0: only the gradient test stops (scipy's ftol = 64 eps would stop
  // where f - f* ~ 1e-14, |theta - c| ~ 1e-6 for the worst-conditioned problem).
  const LbfgsOptions opts = LbfgsOptions().gtol(1e-10).ftol(0).max_iter(500);
  SolverResult r = batched_lbfgs(q.fg(), at::zeros({4, 20}, at::kDouble), opts);
  EXPECT_TRUE(r.converged.all().item<bool>());
  EXPECT_TRUE(at::allclose(r.theta, q.c, 1e-7, 1e-7)) << (r.theta - q.c).abs().max();
  // Problem 0 is the best conditioned: it needs the fewest iterations, and
  // is evaluated no more after it has converged.
  const int64_t it0 = r.iterations[0].item<int64_t>();
  EXPECT_LT(it0, r.iterations.max().item<int64_t>());
  EXPECT_LT(q.evaluated[0], q.evaluated[3]);
  // The same problem alone takes the same path.
  Quadratics one = make(4, 20);
  one.A = one.A.narrow(0, 3, 1).contiguous();
  one.c = one.c.narrow(0, 3, 1).contiguous();
  SolverResult alone = batched_lbfgs(one.fg(), at::zeros({1, 20}, at::kDouble), opts);
  EXPECT_EQ(alone.iterations[0].item<int64_t>(), r.iterations[3].item<int64_t>());
  EXPECT_TRUE(at::allclose(alone.theta[0], r.theta[3], 1e-12, 1e-12));
}

TEST(BatchedSolvers, FistaSolvesTheLassoOfAnIsotropicQuadratic) {
  // f = 1/2 ||theta - c||^2 + l ||theta||_1 has the soft-threshold of c as its minimiser.
  at::Tensor c = at::tensor({3.0, -0.5, 0.2, -2.0, 0.1, 0.0, -4.0, 1.5}, at::kDouble).view({2, 4});
  BatchedObjective fg = [&](const at::Tensor& th, const at::Tensor&) {
    return std::make_pair(0.5 * (th - c).pow(2).sum(1), th - c);
  };
  at::Tensor mask = at::tensor({1.0, 1.0, 1.0, 0.0}, at::kDouble);  // the last is unpenalised
  SolverResult r = batched_fista(fg, at::zeros({2, 4}, at::kDouble), mask, FistaOptions().l1(1.0).gtol(1e-12));
  at::Tensor want = at::tensor({2.0, 0.0, 0.0, -2.0, 0.0, 0.0, -3.0, 1.5}, at::kDouble).view({2, 4});
  EXPECT_TRUE(at::allclose(r.theta, want, 1e-9, 1e-9)) << r.theta;
  EXPECT_TRUE(r.converged.all().item<bool>());
}

TEST(BatchedSolvers, RefuseMalformedObjectives) {
  BatchedObjective bad = [](const at::Tensor& th, const at::Tensor&) {
    return std::make_pair(th.sum(1), th.narrow(1, 0, 1));
  };
  EXPECT_NE(mechlab::testing::error_of([&] { batched_lbfgs(bad, at::zeros({2, 3}, at::kDouble)); })
                .find("a gradient shaped like theta"),
            std::string::npos);
  EXPECT_NE(mechlab::testing::error_of([&] { batched_lbfgs(bad, at::zeros({3}, at::kDouble)); })
                .find("[problems, parameters]"),
            std::string::npos);
}

TEST(BatchedSolvers, StopReasonsSayWhyEachProblemStopped) {
  Quadratics q = make(2, 20);
  SolverResult r = batched_lbfgs(q.fg(), at::zeros({2, 20}, at::kDouble),
                                 LbfgsOptions().gtol(1e-10).ftol(0).max_iter(2));
  EXPECT_FALSE(r.converged.any().item<bool>());
  EXPECT_TRUE((r.stop_reason == static_cast<int64_t>(StopReason::max_iter)).all().item<bool>());
  // Already at the minimiser: stopped by the gradient test before any step.
  SolverResult at_min = batched_lbfgs(q.fg(), q.c.clone(), LbfgsOptions());
  EXPECT_TRUE((at_min.stop_reason == static_cast<int64_t>(StopReason::gradient)).all().item<bool>());
  EXPECT_TRUE((at_min.iterations == 0).all().item<bool>());
  // scipy's ftol stops where f no longer decreases relatively.
  SolverResult rel = batched_lbfgs(q.fg(), at::zeros({2, 20}, at::kDouble),
                                   LbfgsOptions().gtol(0).ftol(1e-3).max_iter(500));
  EXPECT_TRUE((rel.stop_reason == static_cast<int64_t>(StopReason::objective)).all().item<bool>());
  EXPECT_EQ(to_string(StopReason::monitor), "monitor");
}

}  // namespace
}  // namespace mechlab::probes
