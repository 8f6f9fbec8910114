#include "probes/batched_solvers.h"

#include "core/util/error.h"

#include <cmath>
#include <vector>

namespace mechlab::probes {
namespace {

// Per-problem mask [P] broadcast over the parameters [P, M].
at::Tensor rows(const at::Tensor& mask) { return mask.unsqueeze(1); }

void check_theta(const at::Tensor& theta, const char* who) {
  MECHLAB_CHECK(theta.defined() && theta.dim() == 2, who, ": theta0 must be [problems, parameters], got ",
                theta.defined() ? theta.sizes() : at::IntArrayRef{});
  MECHLAB_CHECK(at::isFloatingType(theta.scalar_type()), who, ": theta0 must be floating point, got ",
                theta.scalar_type());
}

std::pair<at::Tensor, at::Tensor> evaluate(const BatchedObjective& fg, const at::Tensor& theta,
                                           const at::Tensor& which) {
  auto [f, g] = fg(theta, which.cpu());
  MECHLAB_CHECK(f.dim() == 1 && f.size(0) == theta.size(0) && g.sizes() == theta.sizes(),
                "batched solver: the objective returned f ", f.sizes(), " and gradient ", g.sizes(),
                " for theta ", theta.sizes(), "; it must return f [P] and a gradient shaped like theta");
  return {f.to(at::kDouble), g};
}

// Records reason r for the problems in `now` that have no reason yet.
void set_reason(at::Tensor& reason, at::Tensor& decided, const at::Tensor& now, StopReason r) {
  at::Tensor fresh = now & decided.logical_not();
  reason.masked_fill_(fresh, static_cast<int64_t>(r));
  decided = decided | fresh;
}

}  // namespace

std::string to_string(StopReason r) {
  switch (r) {
    case StopReason::max_iter: return "max_iter";
    case StopReason::gradient: return "gradient";
    case StopReason::objective: return "objective";
    case StopReason::line_search: return "line_search";
    case StopReason::monitor: return "monitor";
    case StopReason::closed_form: return "closed_form";
  }
  return "?";
}

SolverResult batched_lbfgs(const BatchedObjective& fg, at::Tensor theta, const LbfgsOptions& o) {
  check_theta(theta, "L-BFGS");
  MECHLAB_CHECK(o.history() >= 1, "L-BFGS: `history` must be >= 1, got ", o.history());
  MECHLAB_CHECK(o.max_iter() >= 0, "L-BFGS: `max_iter` must be >= 0, got ", o.max_iter());
  MECHLAB_CHECK(o.max_linesearch() >= 1, "L-BFGS: `max_linesearch` must be >= 1, got ", o.max_linesearch());
  const int64_t P = theta.size(0), M = theta.size(1), m = o.history();
  (void)M;
  const auto dt = theta.scalar_type();
  const auto dev = theta.device();
  const auto bool_opts = at::TensorOptions().dtype(at::kBool).device(dev);
  const auto dbl_opts = at::TensorOptions().dtype(at::kDouble).device(dev);

  theta = theta.contiguous().clone();
  auto [f, g] = evaluate(fg, theta, at::ones({P}, at::kBool));  // f [P] double, g [P, M]
  at::Tensor S = at::zeros({m, P, M}, theta.options());  // s_k = theta_k+1 - theta_k, ring buffer
  at::Tensor Y = at::zeros({m, P, M}, theta.options());  // y_k = g_k+1 - g_k
  at::Tensor rho = at::zeros({m, P}, dbl_opts);          // 1 / (s.y); 0 = empty or skipped pair
  at::Tensor gamma = at::ones({P}, dbl_opts);            // H0 = gamma I, s.y / y.y of the newest pair
  at::Tensor first = at::ones({P}, bool_opts);           // no step taken yet
  at::Tensor iterations = at::zeros({P}, dbl_opts.dtype(at::kLong));
  at::Tensor converged = g.abs().amax(1).to(at::kDouble) <= o.gtol();
  at::Tensor active = converged.logical_not();
  at::Tensor reason = at::zeros({P}, dbl_opts.dtype(at::kLong));  // StopReason::max_iter until decided
  at::Tensor decided = at::zeros({P}, bool_opts);
  set_reason(reason, decided, converged, StopReason::gradient);
  int64_t slot = 0;  // next ring position (shared by all problems; a skipped pair leaves zeros)

  for (int64_t it = 0; it < o.max_iter(); ++it) {
    if (!active.any().item<bool>()) break;
    // Two-loop recursion, newest pair first: d = -H g.
    at::Tensor q = g.to(at::kDouble);
    std::vector<at::Tensor> a(m);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t i = ((slot - 1 - j) % m + m) % m;
      a[i] = rho[i] * (S[i].to(at::kDouble) * q).sum(1);  // [P]
      q = q - rows(a[i]) * Y[i].to(at::kDouble);
    }
    at::Tensor r = rows(gamma) * q;
    for (int64_t j = m - 1; j >= 0; --j) {
      const int64_t i = ((slot - 1 - j) % m + m) % m;
      at::Tensor b = rho[i] * (Y[i].to(at::kDouble) * r).sum(1);
      r = r + rows(a[i] - b) * S[i].to(at::kDouble);
    }
    at::Tensor d = r.neg();                                // [P, M] double
    at::Tensor gd = (g.to(at::kDouble) * d).sum(1);        // [P]
    // Not a descent direction (round-off in a bad history): restart from -g.
    at::Tensor reset = gd >= 0;
    if (reset.any().item<bool>()) {
      d = at::where(rows(reset), g.to(at::kDouble).neg(), d);
      rho.masked_fill_(reset.unsqueeze(0), 0.0);
      gamma.masked_fill_(reset, 1.0);
      first = first | reset;
      gd = (g.to(at::kDouble) * d).sum(1);
    }
    d = d * rows(active.to(at::kDouble));
    // First step of a problem: 1 / ||d||, as L-BFGS-B; later steps start at 1.
    at::Tensor t = at::where(first, (1.0 / d.norm(2, {1})).clamp_max(1.0), at::ones_like(gamma));
    t = at::where(active, t, at::zeros_like(t));

    // Backtracking line search, all undecided problems in one evaluation per trial.
    at::Tensor accepted = active.logical_not();
    at::Tensor theta_new = theta.clone(), f_new = f.clone(), g_new = g.clone();
    const at::Tensor d_dt = d.to(dt);
    for (int64_t ls = 0; ls < o.max_linesearch(); ++ls) {
      at::Tensor cand = theta + rows(t.to(dt)) * d_dt;
      auto [fc, gc] = evaluate(fg, cand, accepted.logical_not());
      at::Tensor ok = (fc <= f + 1e-4 * t * gd) & at::isfinite(fc) & accepted.logical_not();
      theta_new = at::where(rows(ok), cand, theta_new);
      f_new = at::where(ok, fc, f_new);
      g_new = at::where(rows(ok), gc, g_new);
      accepted = accepted | ok;
      if (accepted.all().item<bool>()) break;
      // Minimiser of the quadratic through f(0), f'(0) and f(t), kept in [0.1 t, 0.5 t].
      at::Tensor tq = -gd * t * t / (2 * (fc - f - gd * t));
      tq = at::where(at::isfinite(tq), tq, 0.5 * t);
      tq = at::minimum(at::maximum(tq, 0.1 * t), 0.5 * t);
      t = at::where(accepted, t, tq);
    }
    at::Tensor stepped = active & accepted;
    set_reason(reason, decided, active & accepted.logical_not(), StopReason::line_search);
    active = stepped;  // a failed line search stops its problem, not converged

    at::Tensor s = theta_new - theta, y = g_new - g;
    at::Tensor sy = (s.to(at::kDouble) * y.to(at::kDouble)).sum(1);
    at::Tensor yy = (y.to(at::kDouble) * y.to(at::kDouble)).sum(1);
    at::Tensor good = stepped & (sy > 1e-10 * yy) & (yy > 0);
    S[slot] = at::where(rows(good), s, at::zeros_like(s));
    Y[slot] = at::where(rows(good), y, at::zeros_like(y));
    rho[slot] = at::where(good, 1.0 / sy, at::zeros_like(sy));
    gamma = at::where(good, sy / yy, gamma);
    slot = (slot + 1) % m;
    iterations += stepped.to(at::kLong);

    at::Tensor rel = (f - f_new) / at::maximum(at::maximum(f.abs(), f_new.abs()), at::ones_like(f));
    theta = theta_new;
    f = f_new;
    g = g_new;
    first = first & stepped.logical_not();
    at::Tensor by_gradient = stepped & (g.abs().amax(1).to(at::kDouble) <= o.gtol());
    at::Tensor by_objective = stepped & (rel <= o.ftol());
    set_reason(reason, decided, by_gradient, StopReason::gradient);
    set_reason(reason, decided, by_objective, StopReason::objective);
    const at::Tensor done = by_gradient | by_objective;
    converged = converged | done;
    active = active & done.logical_not();
  }
  return {theta, f, iterations, converged, reason};
}

SolverResult batched_fista(const BatchedObjective& fg, at::Tensor theta, const at::Tensor& l1_mask,
                           const FistaOptions& o) {
  check_theta(theta, "FISTA");
  MECHLAB_CHECK(l1_mask.dim() == 1 && l1_mask.size(0) == theta.size(1), "FISTA: `l1_mask` must be [",
                theta.size(1), "], got ", l1_mask.sizes());
  MECHLAB_CHECK(o.l1() >= 0, "FISTA: `l1` must be >= 0, got ", o.l1());
  MECHLAB_CHECK(o.step() > 0, "FISTA: `step` must be > 0, got ", o.step());
  const auto dt = theta.scalar_type();
  const auto dev = theta.device();
  const auto dbl_opts = at::TensorOptions().dtype(at::kDouble).device(dev);
  const at::Tensor mask = l1_mask.to(dev, dt).unsqueeze(0).to(at::kBool);  // [1, M]
  const double lam = o.l1();
  auto l1_term = [&](const at::Tensor& x) {
    return lam * (x.to(at::kDouble).abs() * mask.to(at::kDouble)).sum(1);  // [P]
  };
  auto prox = [&](const at::Tensor& v, const at::Tensor& thresh) {  // thresh [P] double
    at::Tensor shrunk = v.sign() * (v.abs() - rows(thresh).to(dt)).clamp_min(0);
    return at::where(mask, shrunk, v);
  };

  at::Tensor x = theta.contiguous().clone();
  at::Tensor yv = x.clone();
  const int64_t P = x.size(0);
  at::Tensor F = evaluate(fg, x, at::ones({P}, at::kBool)).first + l1_term(x);  // [P] composite objective at x
  at::Tensor tk = at::ones({P}, dbl_opts);             // momentum sequence
  at::Tensor step = at::full({P}, o.step(), dbl_opts);
  at::Tensor active = at::ones({P}, dbl_opts.dtype(at::kBool));
  at::Tensor converged = at::zeros_like(active);
  at::Tensor iterations = at::zeros({P}, dbl_opts.dtype(at::kLong));
  at::Tensor reason = at::zeros({P}, dbl_opts.dtype(at::kLong));  // StopReason::max_iter until decided
  at::Tensor decided = at::zeros_like(active);

  for (int64_t it = 0; it < o.max_iter(); ++it) {
    if (!active.any().item<bool>()) break;
    auto [fy, gy] = evaluate(fg, yv, active);
    at::Tensor accepted = active.logical_not();
    at::Tensor xn = x.clone(), fxn = F.clone();
    for (int64_t bt = 0; bt < o.max_backtrack(); ++bt) {
      at::Tensor cand = prox(yv - rows(step).to(dt) * gy, step * lam);
      at::Tensor fc = evaluate(fg, cand, accepted.logical_not()).first;
      at::Tensor diff = (cand - yv).to(at::kDouble);
      // Sufficient decrease of the smooth part: the quadratic model at y majorises f.
      at::Tensor model = fy + (gy.to(at::kDouble) * diff).sum(1) + (diff * diff).sum(1) / (2 * step);
      at::Tensor ok = (fc <= model + 1e-12 * fy.abs()) & at::isfinite(fc) & accepted.logical_not();
      xn = at::where(rows(ok), cand, xn);
      fxn = at::where(ok, fc, fxn);
      accepted = accepted | ok;
      if (accepted.all().item<bool>()) break;
      step = at::where(accepted, step, 0.5 * step);
    }
    at::Tensor stepped = active & accepted;
    at::Tensor Fn = at::where(stepped, fxn + l1_term(xn), F);
    xn = at::where(rows(stepped), xn, x);
    // Gradient mapping at y: (y - x+) / t; zero at a minimiser.
    at::Tensor gmap = ((yv - xn).to(at::kDouble) / rows(step)).abs().amax(1);
    at::Tensor done = stepped & (gmap <= o.gtol());
    // Adaptive restart: the objective rose, so drop the momentum.
    at::Tensor restart = stepped & (Fn > F);
    at::Tensor tk1 = (1 + at::sqrt(1 + 4 * tk * tk)) / 2;
    at::Tensor beta = at::where(restart, at::zeros_like(tk), (tk - 1) / tk1);
    tk = at::where(restart, at::ones_like(tk), tk1);
    yv = xn + rows(beta).to(dt) * (xn - x);
    yv = at::where(rows(stepped), yv, xn);
    x = xn;
    F = Fn;
    iterations += stepped.to(at::kLong);
    converged = converged | done;
    set_reason(reason, decided, done, StopReason::gradient);
    set_reason(reason, decided, active & stepped.logical_not(), StopReason::line_search);
    active = stepped & done.logical_not();
  }
  return {x, F, iterations, converged, reason};
}

}  // namespace mechlab::probes
