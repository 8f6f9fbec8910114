// The fused row-block kernel of the probe objective (probes/fused_objective.h)
// against the definition computed by ATen in float64: loss, gradient r^T x
// and residual sums for binary, multinomial and squared losses, float32 and
// float64, on every instruction set this machine runs, with row counts that
// are not multiples of the block or the chunk, d not a multiple of any
// vector width, and strided rows; the same sums whatever the thread count;
// and whole fits equal to the ATen path's. Likewise ridge's Gram kernel.
#include "probes/fused_objective.h"
#include "probes/linear_probe.h"

#include "tests/probes/probe_fixture.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

namespace mechlab::probes {
namespace {

using detail::RowLoss;
using detail::RowProblem;

struct Case {
  int64_t n, d, O;
  RowLoss loss;
  int64_t pad;  // row stride d + pad
};

struct Inputs {
  at::Tensor xs;  // [n, d + pad]: the rows, strided when pad > 0
  at::Tensor w, b, y, cls;
};

Inputs make_inputs(const Case& c, at::ScalarType dt, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto o = at::TensorOptions().dtype(dt);
  Inputs in;
  // Unequal means and scales, as activations have.
  in.xs = at::randn({c.n, c.d + c.pad}, gen, o) * 1.5 + 0.3;
  in.w = at::randn({c.O, c.d}, gen, o) / std::sqrt(static_cast<double>(c.d));
  in.b = at::randn({c.O}, gen, o) * 0.5;
  if (c.loss == RowLoss::multinomial_logistic) {
    in.cls = at::randint(c.O, {c.n}, gen, at::TensorOptions().dtype(at::kLong));
  } else if (c.loss == RowLoss::binary_logistic) {
    in.y = at::randint(2, {c.n}, gen, o);
  } else {
    in.y = at::randn({c.n}, gen, o);
  }
  return in;
}

struct Sums {
  double loss = 0;
  at::Tensor grad, rsum;  // [O, d], [O]
  at::Tensor grad_scale, rsum_scale;  // the reference's: sum_i |r_i| |x_i|^T [O, d], sum_i |r_i| [O]
};

// The definition in float64: z = x w^T + b, the loss and r = dl/dz per row.
// The scales are the sizes of the sums' terms.
Sums reference(const Case& c, const Inputs& in) {
  at::Tensor x = in.xs.narrow(1, 0, c.d).to(at::kDouble);  // [n, d]
  at::Tensor z = at::addmm(in.b.to(at::kDouble), x, in.w.to(at::kDouble).t());  // [n, O]
  at::Tensor r, loss;
  if (c.loss == RowLoss::multinomial_logistic) {
    at::Tensor lse = at::logsumexp(z, {1}, true);
    loss = lse - z.gather(1, in.cls.unsqueeze(1));
    r = at::softmax(z, 1) - at::one_hot(in.cls, c.O).to(at::kDouble);
  } else if (c.loss == RowLoss::binary_logistic) {
    at::Tensor y = in.y.to(at::kDouble).unsqueeze(1);
    loss = at::softplus(z) - y * z;
    r = at::sigmoid(z) - y;
  } else {
    r = z - in.y.to(at::kDouble).unsqueeze(1);
    loss = 0.5 * r * r;
  }
  return {loss.sum().item<double>(), at::mm(r.t(), x), r.sum(0), at::mm(r.abs().t(), x.abs()), r.abs().sum(0)};
}

Sums run_kernel(const Case& c, const Inputs& in, bool need_grad = true) {
  Sums out;
  AT_DISPATCH_FLOATING_TYPES(in.xs.scalar_type(), "test", [&] {
    at::Tensor grad = at::full({c.O, c.d}, 7.0, in.xs.options());  // overwritten, not added to
    at::Tensor rsum = at::full({c.O}, 7.0, in.xs.options());
    RowProblem<scalar_t> p;
    p.x = in.xs.data_ptr<scalar_t>();
    p.ldx = in.xs.stride(0);
    p.w = in.w.data_ptr<scalar_t>();
    p.b = in.b.data_ptr<scalar_t>();
    if (c.loss == RowLoss::multinomial_logistic) {
      p.cls = in.cls.data_ptr<int64_t>();
    } else {
      p.y = in.y.data_ptr<scalar_t>();
    }
    p.grad = grad.data_ptr<scalar_t>();
    p.rsum = rsum.data_ptr<scalar_t>();
    p.loss = &out.loss;
    detail::fused_objective<scalar_t>({p}, c.n, c.d, c.O, c.loss, need_grad);
    out.grad = grad.to(at::kDouble);
    out.rsum = rsum.to(at::kDouble);
  });
  return out;
}

std::string name(const Case& c, at::ScalarType dt) {
  const char* l = c.loss == RowLoss::multinomial_logistic ? "multinomial"
                  : c.loss == RowLoss::binary_logistic    ? "binary"
                                                          : "squared";
  return str_cat(l, " n=", c.n, " d=", c.d, " O=", c.O, " pad=", c.pad, " ", dt, " isa ",
                 detail::fused_objective_isa());
}

const std::vector<Case> kCases = {
    {1, 1, 1, RowLoss::binary_logistic, 0},
    {33, 7, 1, RowLoss::binary_logistic, 0},
    // one chunk and a bit, blocks of 32 with a remainder of 5, d = 768
    {detail::kChunkRows + 37, 768, 1, RowLoss::binary_logistic, 0},
    {detail::kChunkRows + 37, 768, 10, RowLoss::multinomial_logistic, 0},
    {70, 45, 10, RowLoss::multinomial_logistic, 3},
    {65, 24, 3, RowLoss::multinomial_logistic, 0},
    {101, 17, 7, RowLoss::multinomial_logistic, 5},
    {33, 40, 1, RowLoss::squared, 9},
    {1, 5, 2, RowLoss::multinomial_logistic, 0},
};

TEST(FusedObjective, EqualsTheDefinitionOnEveryInstructionSet) {
  const std::vector<std::string> isas = detail::fused_objective_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.back(), "portable");
  for (const std::string& isa : isas) {
    detail::force_fused_objective_isa(isa);
    for (at::ScalarType dt : {at::kFloat, at::kDouble}) {
      // float32: the sums of up to a chunk of rows in float32 and the logits'
      // rounding; a wrong or missing row moves a sum by ~1/n of its terms'
      // size (2.4e-4 at n = 4133), which this catches.
      const double tol = dt == at::kFloat ? 2e-5 : 1e-12;
      uint64_t seed = 1;
      for (const Case& c : kCases) {
        const Inputs in = make_inputs(c, dt, seed++);
        const Sums ref = reference(c, in);
        const Sums got = run_kernel(c, in);
        const std::string what = name(c, dt);
        EXPECT_NEAR(got.loss, ref.loss, tol * (std::abs(ref.loss) + c.n)) << what;
        EXPECT_LE(((got.grad - ref.grad).abs() / (ref.grad_scale + 1e-30)).max().item<double>(), tol) << what;
        EXPECT_LE(((got.rsum - ref.rsum).abs() / (ref.rsum_scale + 1e-30)).max().item<double>(), tol) << what;
        // Without the gradient: the same loss, the outputs untouched.
        const Sums loss_only = run_kernel(c, in, false);
        EXPECT_EQ(loss_only.loss, got.loss) << what;
        EXPECT_TRUE((loss_only.grad == 7.0).all().item<bool>()) << what;
      }
    }
  }
  detail::force_fused_objective_isa("");
  EXPECT_EQ(detail::fused_objective_isa(), isas.front());
}

TEST(FusedObjective, SameSumsWhateverTheThreadCount) {
  const Case c{3 * detail::kChunkRows + 100, 96, 10, RowLoss::multinomial_logistic, 0};
  const Inputs in = make_inputs(c, at::kFloat, 9);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const Sums one = run_kernel(c, in);
  at::set_num_threads(2);
  const Sums two = run_kernel(c, in);
  at::set_num_threads(3);
  const Sums three = run_kernel(c, in);
  at::set_num_threads(threads);
  EXPECT_EQ(one.loss, two.loss);
  EXPECT_EQ(one.loss, three.loss);
  EXPECT_TRUE(at::equal(one.grad, two.grad));
  EXPECT_TRUE(at::equal(one.grad, three.grad));
  EXPECT_TRUE(at::equal(one.rsum, three.rsum));
}

TEST(FusedObjective, UnknownInstructionSetIsRefusedNamingTheAvailableOnes) {
  const std::string msg = mechlab::testing::error_of([] { detail::force_fused_objective_isa("avx1024"); });
  EXPECT_NE(msg.find("instruction set 'avx1024' is not available here; use one of "), std::string::npos) << msg;
  EXPECT_NE(msg.find("portable"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

// Whole fits through the kernel equal the ATen path's (per-probe GEMMs):
// the same iterations and stop reasons, coefficients equal up to rounding.
TEST(FusedObjective, FitsEqualTheAtenPaths) {
  using mechlab::testing::probe_fixture;
  for (const char* group : {"binary", "multinomial", "ridge", "lasso"}) {
    const mechlab::testing::ProbeFixture fx = probe_fixture(group);
    const std::string g = group;
    ProbeOptions o = ProbeOptions().tol(1e-9).max_iter(2000);
    if (g == "ridge") o.alpha(10.0).solver(Solver::lbfgs);
    if (g == "lasso") o.penalty(Penalty::l1).alpha(0.05).tol(1e-8).max_iter(5000);
    auto fit = [&](const ProbeOptions& opts) {
      return g == "ridge" || g == "lasso" ? fit_linear(fx.x_train, fx.y_train, opts)
                                          : fit_logistic(fx.x_train, fx.y_train, opts);
    };
    const LinearProbes fused = fit(o.fused(true));
    const LinearProbes aten = fit(o.fused(false));
    // FISTA's backtracking and restarts react to rounding; its minimiser does not.
    EXPECT_TRUE(at::allclose(fused.coef, aten.coef, g == "lasso" ? 1e-5 : 1e-7, g == "lasso" ? 1e-7 : 1e-9)) << group;
    EXPECT_TRUE(at::equal(fused.stop_reason, aten.stop_reason)) << group;
    EXPECT_LE((fused.iterations - aten.iterations).abs().max().item<int64_t>(), g == "lasso" ? 2 : 0) << group;
    // float32 features: the same fit as ATen's float32 path, to float32 rounding.
    const at::Tensor x32 = fx.x_train.to(at::kFloat);
    ProbeOptions o32 = ProbeOptions().tol(1e-4).max_iter(500);
    if (g == "binary" || g == "multinomial") {
      const LinearProbes f32 = fit_logistic(x32, fx.y_train, o32.fused(true));
      const LinearProbes a32 = fit_logistic(x32, fx.y_train, o32.fused(false));
      EXPECT_GE(mechlab::testing::cosine(f32.coef, a32.coef), 0.99999) << group;
    }
  }
}


// The Gram kernel: G = z^T z and R = z^T y of standardised rows
// z = x * scale + shift, against the definition in float64 on the same
// inputs, for two probes at once (a probe's sums must not reach the other's).
struct GramCase {
  int64_t n, d, pad;  // row stride d + pad
};

struct GramSums {
  at::Tensor G, R;  // [P, d, d], [P, d] float64
};

GramSums run_gram(const at::Tensor& xs, int64_t d, const at::Tensor& scale, const at::Tensor& shift,
                  const at::Tensor& y) {
  const int64_t P = xs.size(0), n = xs.size(1);
  GramSums out{at::full({P, d, d}, 7.0, at::kDouble), at::full({P, d}, 7.0, at::kDouble)};
  AT_DISPATCH_FLOATING_TYPES(xs.scalar_type(), "gram test", [&] {
    std::vector<detail::GramProblem<scalar_t>> problems(static_cast<size_t>(P));
    for (int64_t p = 0; p < P; ++p) {
      auto& g = problems[static_cast<size_t>(p)];
      g.x = xs.data_ptr<scalar_t>() + p * xs.stride(0);
      g.ldx = xs.stride(1);
      g.scale = scale.data_ptr<scalar_t>() + p * d;
      g.shift = shift.data_ptr<scalar_t>() + p * d;
      g.y = y.data_ptr<scalar_t>() + p * n;
      g.G = out.G.data_ptr<double>() + p * d * d;
      g.R = out.R.data_ptr<double>() + p * d;
    }
    detail::standardized_gram<scalar_t>(problems, n, d);
  });
  return out;
}

TEST(FusedObjective, StandardizedGramEqualsTheDefinitionOnEveryInstructionSet) {
  // d not a multiple of any panel (12, 24, 48 columns) or tile; n past a
  // block (kGramRows) and past a float64 flush (kGramFlushRows); strided rows.
  const std::vector<GramCase> cases = {{1, 1, 0}, {37, 5, 3}, {detail::kGramRows + 3, 50, 0},
                                       {detail::kGramFlushRows + 300, 97, 4}, {600, 130, 0}};
  const std::vector<std::string> isas = detail::fused_objective_isas();
  for (const std::string& isa : isas) {
    detail::force_fused_objective_isa(isa);
    for (at::ScalarType dt : {at::kFloat, at::kDouble}) {
      // float32 sums over up to kGramFlushRows rows: relative to sum |z_i z_j|;
      // a missing or doubled row moves a sum by ~1/n of it.
      const double tol = dt == at::kFloat ? 2e-5 : 1e-12;
      uint64_t seed = 40;
      for (const GramCase& c : cases) {
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed++);
        auto o = at::TensorOptions().dtype(dt);
        const at::Tensor xs = (at::randn({2, c.n, c.d + c.pad}, gen, o) * 1.5 + 0.3);
        const at::Tensor x = xs.narrow(2, 0, c.d);  // [2, n, d], rows d + pad apart
        const at::Tensor scale = at::rand({2, c.d}, gen, o) + 0.5;
        const at::Tensor shift = at::randn({2, c.d}, gen, o);
        const at::Tensor y = at::randn({2, c.n}, gen, o);
        const GramSums got = run_gram(x, c.d, scale, shift, y);
        const at::Tensor z = x.to(at::kDouble) * scale.to(at::kDouble).unsqueeze(1) +
                             shift.to(at::kDouble).unsqueeze(1);  // [2, n, d]
        const at::Tensor yd = y.to(at::kDouble).unsqueeze(2);     // [2, n, 1]
        const at::Tensor G = at::bmm(z.transpose(1, 2), z), R = at::bmm(z.transpose(1, 2), yd).squeeze(2);
        const at::Tensor Gs = at::bmm(z.abs().transpose(1, 2), z.abs());
        const at::Tensor Rs = at::bmm(z.abs().transpose(1, 2), yd.abs()).squeeze(2);
        const std::string what = str_cat("n=", c.n, " d=", c.d, " pad=", c.pad, " ", dt, " isa ", isa);
        EXPECT_LE(((got.G - G).abs() / Gs).max().item<double>(), tol) << what;
        EXPECT_LE(((got.R - R).abs() / (Rs + 1e-30)).max().item<double>(), tol) << what;
        EXPECT_TRUE(at::equal(got.G, got.G.transpose(1, 2))) << what;
      }
    }
  }
  detail::force_fused_objective_isa("");
}

TEST(FusedObjective, StandardizedGramSameSumsWhateverTheThreadCount) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const int64_t n = 2 * detail::kGramFlushRows + 77, d = 200;
  const at::Tensor x = at::randn({3, n, d}, gen) + 1.0;
  const at::Tensor scale = at::rand({3, d}, gen) + 0.5, shift = at::randn({3, d}, gen), y = at::randn({3, n}, gen);
  const int threads = at::get_num_threads();
  std::vector<GramSums> runs;
  for (int t : {1, 2, 3}) {
    at::set_num_threads(t);
    runs.push_back(run_gram(x, d, scale, shift, y));
  }
  at::set_num_threads(threads);
  for (size_t i = 1; i < runs.size(); ++i) {
    EXPECT_TRUE(at::equal(runs[0].G, runs[i].G)) << i;
    EXPECT_TRUE(at::equal(runs[0].R, runs[i].R)) << i;
  }
}

// Ridge through the Gram kernel (D = 300: six panels of 48 and part of a
// seventh on AVX-512; N = 9000 rows: two float64 flushes and part of a third)
// gives the closed form of the plain batched products.
TEST(FusedObjective, RidgeThroughTheGramKernelEqualsThePlainProducts) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(4);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t N = 9000, D = 300;
  at::Tensor x = at::randn({2, N, D}, gen, f64) * (at::rand({1, 1, D}, gen, f64) + 0.5) + 2.0;
  at::Tensor w = at::randn({D}, gen, f64);
  at::Tensor y = at::mv(x[1], w) + at::randn({N}, gen, f64);
  for (bool standardize : {true, false}) {
    const ProbeOptions o = ProbeOptions().alpha(3.0).standardize(standardize);
    const LinearProbes blocks = fit_linear(x, y, ProbeOptions(o).fused(true));
    const LinearProbes plain = fit_linear(x, y, ProbeOptions(o).fused(false));
    EXPECT_TRUE(at::allclose(blocks.coef, plain.coef, 1e-9, 1e-12)) << standardize;
    EXPECT_TRUE(at::allclose(blocks.intercept, plain.intercept, 1e-9, 1e-12)) << standardize;
    // And the normal equations hold: G v = z^T y with G = z^T z + alpha I.
    at::Tensor z = (x[1] - blocks.mean[1]) / blocks.scale[1];
    at::Tensor v = blocks.coef[1].squeeze(1);
    at::Tensor zc = z - z.mean(0);
    at::Tensor lhs = at::mv(zc.t(), at::mv(zc, v)) + 3.0 * v, rhs = at::mv(zc.t(), y - y.mean());
    EXPECT_LE(((lhs - rhs).abs().max() / rhs.abs().max()).item<double>(), 1e-10) << standardize;
  }
}

}  // namespace
}  // namespace mechlab::probes
