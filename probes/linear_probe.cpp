#include "probes/linear_probe.h"

#include "core/train/adamw.h"
#include "core/util/error.h"
#include "probes/batched_solvers.h"
#include "probes/fused_objective.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace mechlab::probes {

Penalty parse_penalty(const std::string& name) {
  if (name == "none") return Penalty::none;
  if (name == "l2") return Penalty::l2;
  if (name == "l1") return Penalty::l1;
  throw Error(str_cat("unknown penalty '", name, "'; use none, l2 or l1"));
}

Solver parse_solver(const std::string& name) {
  if (name == "auto" || name == "automatic") return Solver::automatic;
  if (name == "lbfgs") return Solver::lbfgs;
  if (name == "fista") return Solver::fista;
  if (name == "exact") return Solver::exact;
  if (name == "adam") return Solver::adam;
  throw Error(str_cat("unknown probe solver '", name, "'; use auto, lbfgs, fista, exact or adam"));
}

std::string to_string(Penalty p) {
  switch (p) {
    case Penalty::none: return "none";
    case Penalty::l2: return "l2";
    case Penalty::l1: return "l1";
  }
  return "?";
}

std::string to_string(Solver s) {
  switch (s) {
    case Solver::automatic: return "auto";
    case Solver::lbfgs: return "lbfgs";
    case Solver::fista: return "fista";
    case Solver::exact: return "exact";
    case Solver::adam: return "adam";
  }
  return "?";
}

namespace {

// One batch of probe problems: the data, the folded standardisation and the
// penalty; theta [P, D*O + O] holds the standardised coefficients v [P, D, O]
// then the intercepts b [P, O].
struct Problem {
  ProbeLoss loss = ProbeLoss::logistic;
  int64_t D = 0, O = 1, K = 0;
  at::Tensor x;      // [P, N, D]
  at::Tensor y;      // binary / squared: floating [P, N, 1]; multinomial: int64 [P, N]
  at::Tensor mu;     // [P, D]
  at::Tensor inv_s;  // [P, D]
  double l2 = 0;     // f += l2/2 ||v||^2
  bool fit_intercept = true;
  int64_t block_rows = 0;  // rows per block of an evaluation (0: all)
  bool batched_gemm = false;  // one bmm per product for all probes (always on a GPU)
  bool fused = true;          // the fused row-block kernel on the CPU where it applies
};

at::Tensor coef_of(const Problem& pr, const at::Tensor& theta) {
  return theta.narrow(1, 0, pr.D * pr.O).reshape({theta.size(0), pr.D, pr.O});  // [P, D, O]
}
at::Tensor intercept_of(const Problem& pr, const at::Tensor& theta) {
  return theta.narrow(1, pr.D * pr.O, pr.O);  // [P, O]
}

// Raw-feature weights of standardised coefficients: w = v / s, b' = b - mu . w.
std::pair<at::Tensor, at::Tensor> raw_params(const at::Tensor& v, const at::Tensor& b, const at::Tensor& mu,
                                             const at::Tensor& inv_s) {
  at::Tensor w = v * inv_s.unsqueeze(2);                    // [P, D, O]
  at::Tensor b_raw = b - (mu.unsqueeze(2) * w).sum(1);      // [P, O]
  return {w, b_raw};
}

// Per-row loss [..., n, O] and the residual dLoss/dz [..., n, O] of logits
// z, labels y of those rows ([P, n, O] for all probes, [n, O] for one).
std::pair<at::Tensor, at::Tensor> loss_and_residual(const Problem& pr, const at::Tensor& z, const at::Tensor& y,
                                                    bool need_r) {
  at::Tensor loss, r;
  if (pr.loss == ProbeLoss::squared) {
    r = z - y;
    loss = 0.5 * r * r;
  } else if (pr.O == 1) {
    // Binary: logloss = softplus(z) - y z, dL/dz = sigmoid(z) - y.
    loss = at::softplus(z) - y * z;
    if (need_r) r = at::sigmoid(z) - y;
  } else {
    at::Tensor lse = at::logsumexp(z, {-1}, /*keepdim=*/true);  // [..., n, 1]
    loss = lse - z.gather(-1, y.unsqueeze(-1));                  // [..., n, 1]
    if (need_r) r = at::exp(z - lse) - at::one_hot(y, pr.K).to(z.scalar_type());
  }
  return {loss, r};
}

// The data term of the selected probes through the fused row-block kernel:
// f[p] = sum of the loss, gwt[p] = sum r^T x [O, D], rs[p] = sum r [O].
template <typename T>
void fused_evaluation(const Problem& pr, const std::vector<int64_t>& probes, const at::Tensor& wt,
                      const at::Tensor& b_raw, at::Tensor& f, at::Tensor& gwt, at::Tensor& rs, bool need_grad) {
  const detail::RowLoss kind = pr.loss == ProbeLoss::squared ? detail::RowLoss::squared
                               : pr.O == 1                   ? detail::RowLoss::binary_logistic
                                                             : detail::RowLoss::multinomial_logistic;
  std::vector<detail::RowProblem<T>> rows(probes.size());
  for (size_t i = 0; i < probes.size(); ++i) {
    const int64_t p = probes[i];
    detail::RowProblem<T>& r = rows[i];
    r.x = pr.x.data_ptr<T>() + p * pr.x.stride(0);
    r.ldx = pr.x.stride(1);
    r.w = wt.data_ptr<T>() + p * pr.O * pr.D;  // [O, D]
    r.b = b_raw.data_ptr<T>() + p * pr.O;
    if (kind == detail::RowLoss::multinomial_logistic) {
      r.cls = pr.y.data_ptr<int64_t>() + p * pr.y.stride(0);
    } else {
      r.y = pr.y.data_ptr<T>() + p * pr.y.stride(0);
    }
    r.ldy = pr.y.stride(1);
    r.loss = f.data_ptr<double>() + p;
    if (need_grad) {
      r.grad = gwt.data_ptr<T>() + p * pr.O * pr.D;
      r.rsum = rs.data_ptr<T>() + p * pr.O;
    }
  }
  detail::fused_objective<T>(rows, pr.x.size(1), pr.D, pr.O, kind, need_grad);
}

// The data term through ATen's GEMMs, in row blocks of `block_rows`: per
// selected probe on the CPU (per_probe), one batched GEMM per product otherwise.
void aten_evaluation(const Problem& pr, const std::vector<int64_t>& probes, const at::Tensor& w, const at::Tensor& wt,
                     const at::Tensor& b_raw, at::Tensor& f, at::Tensor& gwt, at::Tensor& rs, bool need_grad,
                     bool per_probe) {
  const int64_t n = pr.x.size(1);
  const int64_t block = pr.block_rows > 0 ? std::min(pr.block_rows, n) : n;
  for (int64_t start = 0; start < n; start += block) {
    const int64_t len = std::min(block, n - start);
    const at::Tensor xb = block == n ? pr.x : pr.x.narrow(1, start, len);  // [P, len, D]
    const at::Tensor yb = block == n ? pr.y : pr.y.narrow(1, start, len);
    if (!per_probe) {
      at::Tensor z = at::baddbmm(b_raw.unsqueeze(1), xb, w);  // [P, len, O]
      auto [loss, r] = loss_and_residual(pr, z, yb, need_grad);
      f += loss.sum({1, 2}, false, at::kDouble);
      if (need_grad) {
        gwt.baddbmm_(r.transpose(1, 2), xb);
        rs += r.sum(1);
      }
      continue;
    }
    for (int64_t p : probes) {
      const at::Tensor xp = xb[p];  // [len, D]
      at::Tensor z = pr.O == 1 ? at::mv(xp, wt[p][0]).unsqueeze(1) : at::mm(wt[p], xp.t()).t().contiguous();
      z = z + b_raw[p];  // [len, O]
      auto [loss, r] = loss_and_residual(pr, z, yb[p], need_grad);
      f[p] += loss.sum(at::kDouble);
      if (need_grad) {
        gwt[p].addmm_(r.t().contiguous(), xp);  // [O, D]
        rs[p] += r.sum(0);
      }
    }
  }
}

// f [P] (float64) and its gradient [P, M] at theta for the probes where
// `which` [P] (bool, CPU) is true (undefined: all; the other entries are
// left 0).
//
// On the CPU, by default, the fused row-block kernel (fused_objective.h):
// one read of each probe's rows per evaluation, converged probes skipped.
// Otherwise (`fused` false) the rows in blocks of `block_rows` (one block
// by default), each selected probe its own pair of GEMMs, so that a
// converged probe costs nothing, in the forms MKL runs at memory speed:
// logits as a GEMV (O = 1) or (w^T x^T)^T, the gradient as r^T x [O, D].
// Measured with torch 2.11 / MKL on 12 x 16000 x 256 float32, one thread:
// bmm(x, w) was 2-3x and bmm(x^T, r) 4-8x slower than these. On a GPU, one
// batched GEMM per product over all probes.
std::pair<at::Tensor, at::Tensor> objective(const Problem& pr, const at::Tensor& theta, const at::Tensor& which = {},
                                            bool need_grad = true) {
  const int64_t P = theta.size(0), n = pr.x.size(1);
  at::Tensor v = coef_of(pr, theta), b = intercept_of(pr, theta);
  auto [w, b_raw] = raw_params(v, b, pr.mu, pr.inv_s);
  at::Tensor f = at::zeros({P}, theta.options().dtype(at::kDouble));
  at::Tensor gwt = need_grad ? at::zeros({P, pr.O, pr.D}, theta.options()) : at::Tensor();  // sum r^T x
  at::Tensor rs = need_grad ? at::zeros({P, pr.O}, theta.options()) : at::Tensor();        // sum r
  const bool per_probe = pr.x.device().is_cpu() && !pr.batched_gemm;
  std::vector<int64_t> probes;
  for (int64_t p = 0; p < P; ++p) {
    if (!which.defined() || which[p].item<bool>()) probes.push_back(p);
  }
  const at::Tensor wt = w.transpose(1, 2).contiguous();  // [P, O, D]
  if (per_probe && pr.fused && pr.x.stride(2) == 1 &&
      (pr.x.scalar_type() == at::kFloat || pr.x.scalar_type() == at::kDouble)) {
    AT_DISPATCH_FLOATING_TYPES(pr.x.scalar_type(), "fused probe objective", [&] {
      fused_evaluation<scalar_t>(pr, probes, wt, b_raw.contiguous(), f, gwt, rs, need_grad);
    });
  } else {
    aten_evaluation(pr, probes, w, wt, b_raw, f, gwt, rs, need_grad, per_probe);
  }
  f /= static_cast<double>(n);
  if (pr.l2 > 0) f = f + 0.5 * pr.l2 * v.to(at::kDouble).pow(2).sum({1, 2});
  if (!need_grad) return {f, at::Tensor()};
  at::Tensor gw = gwt.transpose(1, 2) / static_cast<double>(n);  // [P, D, O]
  rs /= static_cast<double>(n);
  at::Tensor gv = (gw - pr.mu.unsqueeze(2) * rs.unsqueeze(1)) * pr.inv_s.unsqueeze(2);
  if (pr.l2 > 0) gv = gv + pr.l2 * v;
  at::Tensor gb = pr.fit_intercept ? rs : at::zeros_like(rs);
  return {f, at::cat({gv.reshape({P, pr.D * pr.O}), gb}, 1)};
}

Problem subset(const Problem& pr, const at::Tensor& idx) {
  Problem s = pr;
  s.x = pr.x.index_select(1, idx);
  s.y = pr.y.index_select(1, idx);
  return s;
}

at::Tensor as_batched_features(const at::Tensor& x, const char* who) {
  MECHLAB_CHECK(x.defined() && (x.dim() == 2 || x.dim() == 3), who,
                ": the features must be [rows, d] or [probes, rows, d], got ",
                x.defined() ? x.sizes() : at::IntArrayRef{});
  MECHLAB_CHECK(at::isFloatingType(x.scalar_type()) && x.scalar_type() != at::kHalf &&
                    x.scalar_type() != at::kBFloat16,
                who, ": the features must be float32 or float64, got ", x.scalar_type(),
                "; convert them with .to(at::kFloat)");
  at::Tensor x3 = x.dim() == 2 ? x.unsqueeze(0) : x;
  MECHLAB_CHECK(x3.size(1) >= 1 && x3.size(2) >= 1, who, ": the features ", x.sizes(), " are empty");
  return x3;
}

// Labels or targets [N] or [P, N] -> [P, N].
at::Tensor as_batched_labels(const at::Tensor& y, int64_t P, int64_t N, const char* who, const char* what) {
  MECHLAB_CHECK(y.defined() && (y.dim() == 1 || y.dim() == 2), who, ": the ", what,
                " must be [rows] or [probes, rows], got ", y.defined() ? y.sizes() : at::IntArrayRef{});
  at::Tensor y2 = y.dim() == 1 ? y.unsqueeze(0).expand({P, y.size(0)}) : y;
  MECHLAB_CHECK(y2.size(0) == P && y2.size(1) == N, who, ": ", y.sizes(), " ", what, " for features of ", P,
                " probes and ", N, " rows; give one per row");
  return y2;
}

void standardisation(const at::Tensor& x, bool standardize, bool fused, at::Tensor& mu, at::Tensor& inv_s) {
  const int64_t P = x.size(0), D = x.size(2);
  const bool kernel = fused && x.device().is_cpu() && x.stride(2) == 1 &&
                      (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
  if (!standardize && !kernel) {
    mu = at::zeros({P, D}, x.options());
    inv_s = at::ones({P, D}, x.options());
    MECHLAB_CHECK(at::isfinite(x).all().item<bool>(),
                  "probe features hold NaN or infinite values; check the activations");
    return;
  }
  const int64_t N = x.size(1);
  at::Tensor mean, var;
  if (kernel) {
    // One read of x (fused_objective.h: column_moments), float64 statistics;
    // without standardisation it is the finiteness check (a NaN or inf row
    // makes its column's mean NaN).
    mean = at::empty({P, D}, x.options().dtype(at::kDouble));
    var = at::empty({P, D}, x.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "probe standardisation", [&] {
      std::vector<const scalar_t*> rows;
      for (int64_t p = 0; p < P; ++p) rows.push_back(x.data_ptr<scalar_t>() + p * x.stride(0));
      detail::column_moments<scalar_t>(rows, x.stride(1), N, D, mean.data_ptr<double>(), var.data_ptr<double>());
    });
  } else {
    // Mean and population variance as row sums through GEMVs (ones^T x):
    // at::var_mean over the middle dimension ran 20x slower than one pass
    // over x. Two passes (the second over (x - mean)^2 in row blocks) so that
    // a feature with a large mean keeps its variance in float32.
    at::Tensor ones = at::ones({P, 1, N}, x.options());
    mean = at::bmm(ones, x).squeeze(1) / static_cast<double>(N);  // [P, D]
    var = at::zeros({P, 1, D}, x.options());
    const int64_t block = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, P * D));
    for (int64_t start = 0; start < N; start += block) {
      const int64_t len = std::min(block, N - start);
      var.baddbmm_(ones.narrow(2, 0, len), (x.narrow(1, start, len) - mean.unsqueeze(1)).square());
    }
    var = var.squeeze(1) / static_cast<double>(N);
  }
  MECHLAB_CHECK(at::isfinite(mean).all().item<bool>() && at::isfinite(var).all().item<bool>(),
                "probe features hold NaN or infinite values; check the activations");
  if (!standardize) {
    mu = at::zeros({P, D}, x.options());
    inv_s = at::ones({P, D}, x.options());
    return;
  }
  at::Tensor s = var.sqrt();
  // A constant feature is left unscaled, as StandardScaler does.
  s = at::where(s > 0, s, at::ones_like(s));
  mu = mean.to(x.scalar_type());
  inv_s = (1.0 / s).to(x.scalar_type());
}

LinearProbes finish(const Problem& pr, const at::Tensor& theta, SolverResult r, Solver solver) {
  LinearProbes out;
  out.loss = pr.loss;
  out.num_classes = pr.K;
  out.coef = coef_of(pr, theta).contiguous();
  out.intercept = intercept_of(pr, theta).contiguous();
  if (pr.loss == ProbeLoss::logistic && pr.O > 1 && pr.fit_intercept) {
    out.intercept = out.intercept - out.intercept.mean(1, true);  // softmax is shift-invariant
  }
  out.mean = pr.mu;
  out.scale = 1.0 / pr.inv_s;
  std::tie(out.weight, out.bias) = raw_params(out.coef, out.intercept, pr.mu, pr.inv_s);
  out.iterations = r.iterations;
  out.converged = r.converged;
  out.stop_reason = r.stop_reason;
  out.solver = solver;
  return out;
}

LinearProbes fit_adam(const Problem& pr, const ProbeOptions& o, double l2_per_row, double l1) {
  const int64_t P = pr.x.size(0), N = pr.x.size(1);
  MECHLAB_CHECK(o.lr() > 0, "Adam probe: `lr` must be > 0, got ", o.lr());
  MECHLAB_CHECK(o.batch_size() >= 1, "Adam probe: `batch_size` must be >= 1, got ", o.batch_size());
  MECHLAB_CHECK(o.epochs() >= 1, "Adam probe: `epochs` must be >= 1, got ", o.epochs());
  MECHLAB_CHECK(o.patience() >= 1, "Adam probe: `patience` must be >= 1, got ", o.patience());
  MECHLAB_CHECK(o.validation_fraction() >= 0 && o.validation_fraction() < 1,
                "Adam probe: `validation_fraction` must be in [0, 1), got ", o.validation_fraction());
  const int64_t n_val = static_cast<int64_t>(std::floor(o.validation_fraction() * static_cast<double>(N)));
  MECHLAB_CHECK(o.validation_fraction() == 0 || (n_val >= 1 && n_val < N), "Adam probe: ", N,
                " rows cannot be split with `validation_fraction` ", o.validation_fraction(),
                "; give more rows or a different fraction");
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed());
  const auto dev = pr.x.device();
  at::Tensor perm = at::randperm(N, gen, at::TensorOptions().dtype(at::kLong)).to(dev);
  at::Tensor val_idx = perm.narrow(0, 0, n_val), fit_idx = perm.narrow(0, n_val, N - n_val);
  const int64_t n_fit = N - n_val;
  Problem val;
  if (n_val > 0) {
    val = subset(pr, val_idx);
    val.l2 = 0;  // early stopping watches the data loss
  }
  Problem base = pr;
  base.l2 = l2_per_row / static_cast<double>(n_fit);  // the full objective's penalty, unbiased per batch
  const double lam = l1 > 0 ? l1 : 0;
  at::Tensor mask = at::ones({pr.D * pr.O + pr.O}, pr.x.options());
  mask.narrow(0, pr.D * pr.O, pr.O).zero_();

  at::Tensor theta = at::zeros({P, pr.D * pr.O + pr.O}, pr.x.options()).requires_grad_(true);
  core::train::AdamW opt({theta}, core::train::AdamWOptions().weight_decay(0.0));
  at::Tensor best = theta.detach().clone();
  at::Tensor best_loss = at::full({P}, std::numeric_limits<double>::infinity(),
                                  at::TensorOptions().dtype(at::kDouble).device(dev));
  at::Tensor bad = at::zeros({P}, at::TensorOptions().dtype(at::kLong).device(dev));
  at::Tensor best_epoch = at::zeros_like(bad);
  for (int64_t epoch = 0; epoch < o.epochs(); ++epoch) {
    at::Tensor order = fit_idx.index_select(0, at::randperm(n_fit, gen, at::TensorOptions().dtype(at::kLong)).to(dev));
    for (int64_t start = 0; start < n_fit; start += o.batch_size()) {
      const int64_t len = std::min(o.batch_size(), n_fit - start);
      Problem batch = subset(base, order.narrow(0, start, len));
      at::Tensor g = objective(batch, theta.detach()).second;
      theta.mutable_grad() = g;
      opt.step(o.lr());
      if (lam > 0) {  // proximal step for the L1 term
        at::NoGradGuard ng;
        at::Tensor th = theta.detach();
        const double thr = o.lr() * lam;
        at::Tensor shrunk = th.sign() * (th.abs() - thr).clamp_min(0);
        th.copy_(at::where(mask.to(at::kBool).unsqueeze(0), shrunk, th));
      }
    }
    if (n_val == 0) {
      best = theta.detach().clone();
      best_epoch.fill_(epoch + 1);
      continue;
    }
    at::Tensor vloss = objective(val, theta.detach(), {}, false).first;  // [P]
    at::Tensor improved = vloss < best_loss;
    best = at::where(improved.unsqueeze(1), theta.detach(), best);
    best_loss = at::where(improved, vloss, best_loss);
    bad = at::where(improved, at::zeros_like(bad), bad + 1);
    best_epoch = at::where(improved, at::full_like(best_epoch, epoch + 1), best_epoch);
    if ((bad >= o.patience()).all().item<bool>()) break;
  }
  at::Tensor stopped_early = n_val > 0 ? bad >= o.patience() : at::ones_like(bad).to(at::kBool);
  // Adam's early stopping is a watch of the validation loss: StopReason::monitor.
  at::Tensor reason = at::where(stopped_early, at::full_like(bad, static_cast<int64_t>(StopReason::monitor)),
                                at::full_like(bad, static_cast<int64_t>(StopReason::max_iter)));
  SolverResult r{best, best_loss, best_epoch, stopped_early, reason};
  return finish(pr, best, r, Solver::adam);
}

// G [P, D, D] and R [P, D, 1] (float64) of each probe's standardised rows
// z = (x - c) * inv_s through the Gram kernel (probes/fused_objective.h).
// x [P, N, D] with contiguous features, c and inv_s [P, D], yc [P, N, 1]
// (centred targets).
template <typename T>
void kernel_gram(const at::Tensor& x, const at::Tensor& c, const at::Tensor& inv_s, const at::Tensor& yc,
                 at::Tensor& G, at::Tensor& R) {
  const int64_t P = x.size(0), N = x.size(1), D = x.size(2);
  const at::Tensor scale = inv_s.to(x.scalar_type()).contiguous();         // [P, D]
  const at::Tensor shift = (-c * inv_s).to(x.scalar_type()).contiguous();  // [P, D]: z = x * scale + shift
  const at::Tensor y = yc.to(x.scalar_type());                             // [P, N, 1]
  std::vector<detail::GramProblem<T>> problems(static_cast<size_t>(P));
  for (int64_t p = 0; p < P; ++p) {
    detail::GramProblem<T>& g = problems[static_cast<size_t>(p)];
    g.x = x.data_ptr<T>() + p * x.stride(0);
    g.ldx = x.stride(1);
    g.scale = scale.data_ptr<T>() + p * D;
    g.shift = shift.data_ptr<T>() + p * D;
    g.y = y.data_ptr<T>() + p * y.stride(0);
    g.ldy = y.stride(1);
    g.G = G.data_ptr<double>() + p * D * D;
    g.R = R.data_ptr<double>() + p * D;
  }
  detail::standardized_gram<T>(problems, N, D);
}

// Ridge / least squares from the normal equations in standardised
// coordinates, the Gram matrix accumulated in float64 over row chunks (the
// centred chunk is the only copy of x made).
LinearProbes fit_exact(Problem pr, const at::Tensor& x_mean, bool center, double alpha) {
  const int64_t P = pr.x.size(0), N = pr.x.size(1), D = pr.D;
  const auto dopts = pr.x.options().dtype(at::kDouble);
  at::Tensor c = center ? x_mean : at::zeros_like(x_mean);  // Ridge centres x when it fits an intercept
  at::Tensor y_mean = pr.fit_intercept ? pr.y.mean(1, true) : at::zeros({P, 1, 1}, pr.y.options());
  at::Tensor G = at::zeros({P, D, D}, dopts), R = at::zeros({P, D, 1}, dopts);
  if (pr.fused && pr.x.device().is_cpu() && pr.x.stride(2) == 1) {
    if (pr.x.scalar_type() == at::kFloat) {
      kernel_gram<float>(pr.x, c, pr.inv_s, pr.y - y_mean, G, R);
    } else {
      kernel_gram<double>(pr.x, c, pr.inv_s, pr.y - y_mean, G, R);
    }
  } else {
    const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 24) / std::max<int64_t>(1, P * D));
    for (int64_t start = 0; start < N; start += chunk) {
      const int64_t len = std::min(chunk, N - start);
      at::Tensor z = (pr.x.narrow(1, start, len) - c.unsqueeze(1)) * pr.inv_s.unsqueeze(1);  // [P, len, D]
      at::Tensor yc = pr.y.narrow(1, start, len) - y_mean;                                  // [P, len, 1]
      at::Tensor zt = z.transpose(1, 2);
      G += at::bmm(zt, z).to(at::kDouble);
      R += at::bmm(yc.transpose(1, 2), z).transpose(1, 2).to(at::kDouble);  // (y^T z)^T: 8x faster than z^T y on MKL
    }
  }
  at::Tensor v;
  if (alpha > 0) {
    G.diagonal(0, 1, 2).add_(alpha);
    v = at::cholesky_solve(R, at::linalg_cholesky(G));  // [P, D, 1]
  } else {
    v = std::get<0>(at::linalg_lstsq(G, R));
  }
  // Intercept on the standardised coordinates (x - mu) * inv_s.
  at::Tensor b = y_mean.squeeze(2).to(at::kDouble) -
                 (((c - pr.mu) * pr.inv_s).to(at::kDouble).unsqueeze(2) * v).sum(1);  // [P, 1]
  at::Tensor theta = at::cat({v.reshape({P, D}), b}, 1).to(pr.x.scalar_type());
  auto f = objective(pr, theta, {}, false).first;
  SolverResult r{theta, f, at::ones({P}, dopts.dtype(at::kLong)), at::ones({P}, dopts.dtype(at::kBool)),
                 at::full({P}, static_cast<int64_t>(StopReason::closed_form), dopts.dtype(at::kLong))};
  return finish(pr, theta, r, Solver::exact);
}

LinearProbes fit(ProbeLoss loss, const at::Tensor& x_in, const at::Tensor& y_in, const ProbeOptions& o) {
  const char* who = loss == ProbeLoss::logistic ? "logistic probe" : "linear probe";
  at::Tensor x = as_batched_features(x_in, who);
  const int64_t P = x.size(0), N = x.size(1), D = x.size(2);
  MECHLAB_CHECK(o.max_iter() >= 0, who, ": `ProbeOptions::max_iter` must be >= 0, got ", o.max_iter());
  MECHLAB_CHECK(o.tol() >= 0, who, ": `ProbeOptions::tol` must be >= 0, got ", o.tol());
  Problem pr;
  pr.loss = loss;
  pr.D = D;
  pr.x = x;
  pr.fit_intercept = o.fit_intercept();
  MECHLAB_CHECK(o.block_rows() >= 0, who, ": `ProbeOptions::block_rows` must be >= 0, got ", o.block_rows());
  pr.block_rows = o.block_rows();
  pr.batched_gemm = o.batched_gemm();
  pr.fused = o.fused();
  at::Tensor y = as_batched_labels(y_in, P, N, who, loss == ProbeLoss::logistic ? "labels" : "targets")
                     .to(x.device());
  if (loss == ProbeLoss::logistic) {
    MECHLAB_CHECK(!at::isFloatingType(y.scalar_type()) && y.scalar_type() != at::kBool, who,
                  ": the labels must be integers (class indices), got ", y.scalar_type());
    y = y.to(at::kLong);
    const int64_t lo = y.min().item<int64_t>(), hi = y.max().item<int64_t>();
    MECHLAB_CHECK(lo >= 0, who, ": label ", lo, " is negative; labels are class indices 0..K-1");
    const int64_t K = o.num_classes() > 0 ? o.num_classes() : hi + 1;
    MECHLAB_CHECK(hi < K, who, ": label ", hi, " is out of range for `num_classes` ", K);
    MECHLAB_CHECK(K >= 2, who, ": the labels hold one class only (", hi,
                  "); a classifier needs at least two classes");
    pr.K = K;
    pr.O = K == 2 ? 1 : K;
    pr.y = K == 2 ? y.to(x.scalar_type()).unsqueeze(2) : y.contiguous();
    MECHLAB_CHECK(o.C() > 0, who, ": `ProbeOptions::C` must be > 0, got ", o.C());
  } else {
    MECHLAB_CHECK(at::isFloatingType(y.scalar_type()), who, ": the targets must be floating point, got ",
                  y.scalar_type());
    MECHLAB_CHECK(at::isfinite(y).all().item<bool>(), who, ": the targets hold NaN or infinite values");
    pr.y = y.to(x.scalar_type()).unsqueeze(2);
    MECHLAB_CHECK(o.alpha() >= 0, who, ": `ProbeOptions::alpha` must be >= 0, got ", o.alpha());
  }
  standardisation(x, o.standardize(), o.fused(), pr.mu, pr.inv_s);

  // The penalty per the objective at the top of linear_probe.h: l2 multiplies
  // 0.5 ||v||^2 and l1 multiplies ||v||_1 in the mean-loss objective.
  const double n = static_cast<double>(N);
  const double strength_l2 = loss == ProbeLoss::logistic ? 1.0 / o.C() : o.alpha();  // times 1/n
  const double l1 = o.penalty() != Penalty::l1 ? 0.0 : loss == ProbeLoss::logistic ? 1.0 / (o.C() * n) : o.alpha();
  const double l2_per_row = o.penalty() == Penalty::l2 ? strength_l2 : 0.0;

  Solver solver = o.solver();
  if (solver == Solver::automatic) {
    solver = o.penalty() == Penalty::l1 ? Solver::fista
             : loss == ProbeLoss::squared ? Solver::exact
                                          : Solver::lbfgs;
  }
  MECHLAB_CHECK(!(o.penalty() == Penalty::l1 && solver == Solver::lbfgs), who,
                ": L-BFGS cannot minimise an L1 penalty (it is not differentiable); use solver fista or adam");
  MECHLAB_CHECK(!(solver == Solver::exact && (loss != ProbeLoss::squared || o.penalty() == Penalty::l1)), who,
                ": the exact solver is for ridge and least squares only; use lbfgs, fista or adam");

  if (solver == Solver::adam) return fit_adam(pr, o, l2_per_row, l1);
  if (solver == Solver::exact) {
    at::Tensor x_mean = o.standardize() ? pr.mu : x.mean(1);
    return fit_exact(pr, x_mean, o.standardize() || o.fit_intercept(), l2_per_row);
  }
  pr.l2 = l2_per_row / n;
  at::Tensor theta0 = at::zeros({P, D * pr.O + pr.O}, x.options());
  BatchedObjective fg = [&](const at::Tensor& th, const at::Tensor& which) { return objective(pr, th, which); };
  if (solver == Solver::fista) {
    at::Tensor mask = at::ones({D * pr.O + pr.O}, x.options());
    mask.narrow(0, D * pr.O, pr.O).zero_();
    SolverResult r = batched_fista(fg, theta0, mask, FistaOptions().max_iter(o.max_iter()).gtol(o.tol()).l1(l1));
    return finish(pr, r.theta, r, solver);
  }
  const LbfgsOptions lo = LbfgsOptions().max_iter(o.max_iter()).gtol(o.tol()).history(o.history());
  SolverResult r = batched_lbfgs(fg, theta0, lo);
  return finish(pr, r.theta, r, solver);
}

at::Tensor batched_for(const LinearProbes& p, const at::Tensor& x) {
  MECHLAB_CHECK(p.weight.defined(), "linear probes: not fitted");
  at::Tensor x3 = as_batched_features(x, "linear probes");
  if (x.dim() == 2) x3 = x3.expand({p.num_probes(), x3.size(1), x3.size(2)});
  MECHLAB_CHECK(x3.size(0) == p.num_probes() && x3.size(2) == p.num_features(), "linear probes: features ",
                x.sizes(), " for ", p.num_probes(), " probes of ", p.num_features(),
                " features; give [rows, d] or [probes, rows, d]");
  return x3;
}

}  // namespace

at::Tensor LinearProbes::decision_function(const at::Tensor& x) const {
  at::Tensor x3 = batched_for(*this, x);
  return at::baddbmm(bias.to(x3.scalar_type()).unsqueeze(1), x3, weight.to(x3.scalar_type()));  // [P, N, O]
}

at::Tensor LinearProbes::predict_proba(const at::Tensor& x) const {
  MECHLAB_CHECK(loss == ProbeLoss::logistic, "predict_proba: regression probes have no class probabilities");
  at::Tensor z = decision_function(x);
  if (z.size(2) == 1) {
    at::Tensor p1 = at::sigmoid(z);
    return at::cat({1 - p1, p1}, 2);
  }
  return at::softmax(z, 2);
}

at::Tensor LinearProbes::predict(const at::Tensor& x) const {
  at::Tensor z = decision_function(x);
  if (loss == ProbeLoss::squared) return z.squeeze(2);
  if (z.size(2) == 1) return (z.squeeze(2) > 0).to(at::kLong);
  return z.argmax(2);
}

at::Tensor LinearProbes::score(const at::Tensor& x) const {
  at::Tensor z = decision_function(x);
  MECHLAB_CHECK(z.size(2) == 1, "linear probes: a single score per row needs a binary or regression probe, not ",
                z.size(2), " classes; use predict_proba");
  return z.squeeze(2);
}

LinearProbes LinearProbes::to(const at::Device& device) const {
  LinearProbes out = *this;
  for (at::Tensor* t : {&out.coef, &out.intercept, &out.mean, &out.scale, &out.weight, &out.bias, &out.iterations,
                        &out.converged, &out.stop_reason}) {
    if (t->defined()) *t = t->to(device);
  }
  return out;
}

std::string fused_kernel_isa() { return detail::fused_objective_isa(); }

LinearProbes fit_logistic(const at::Tensor& x, const at::Tensor& labels, const ProbeOptions& options) {
  return fit(ProbeLoss::logistic, x, labels, options);
}

LinearProbes fit_linear(const at::Tensor& x, const at::Tensor& targets, const ProbeOptions& options) {
  return fit(ProbeLoss::squared, x, targets, options);
}

}  // namespace mechlab::probes
