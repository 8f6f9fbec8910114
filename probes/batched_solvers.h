// Solvers for many small convex problems at once: P independent problems of
// M parameters each are stacked as one tensor theta [P, M], and the caller's
// objective evaluates all of them in one call (for probes: one batched GEMM
// per evaluation, docs/ARCHITECTURE.md, "Probes"). Each problem has its own
// step sizes, curvature history and convergence test; a converged problem
// stops moving (its direction is zero) while the others go on.
//
//   batched_lbfgs   L-BFGS (Nocedal 1980) for smooth objectives: the two-loop
//                   recursion over the last `history` pairs, an Armijo
//                   backtracking line search with quadratic interpolation
//                   (step 1 first, 1/||g|| at the first iteration, as
//                   L-BFGS-B), pairs with s.y <= 0 skipped. Stops a problem
//                   as scipy's L-BFGS-B (what scikit-learn's lbfgs calls
//                   with gtol = tol, ftol = 64 * DBL_EPSILON):
//                   max_i |g_i| <= gtol, or (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ftol,
//                   or the line search fails to decrease f (abnormal
//                   termination: converged = false).
//   batched_fista   proximal gradient with Nesterov momentum (Beck &
//                   Teboulle 2009) for smooth + lambda * ||theta[mask]||_1:
//                   backtracking on the smooth part, adaptive restart when
//                   the objective rises (O'Donoghue & Candes 2015). Stops a
//                   problem when the gradient mapping ||(x - x+)/t||_inf <= gtol.
//
// Example:
//   BatchedObjective fg = [&](const at::Tensor& th, const at::Tensor& which) { ... return {f, g}; };
//   SolverResult r = batched_lbfgs(fg, at::zeros({P, M}), LbfgsOptions().gtol(1e-6));
#pragma once

#include "core/util/options.h"

#include <ATen/ATen.h>

#include <cfloat>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>

namespace mechlab::probes {

/// (theta [P, M], which [P] bool on the CPU) -> (f [P] float64, gradient
/// [P, M] in theta's dtype). Only the problems where `which` is true need be
/// evaluated (the solvers ignore the other entries): converged problems and
/// those whose line search has already accepted a step cost nothing.
using BatchedObjective =
    std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor& theta, const at::Tensor& which)>;

/// Why a problem stopped (SolverResult::stop_reason holds these as int64).
enum class StopReason : int64_t {
  max_iter = 0,     ///< ran out of iterations: not converged
  gradient = 1,     ///< max |g| <= gtol (FISTA: the gradient mapping)
  objective = 2,    ///< relative decrease of f <= ftol
  line_search = 3,  ///< the line search failed to decrease f: not converged
  monitor = 4,      ///< a watch outside the solver said done (Adam: early stopping on the validation loss)
  closed_form = 5,  ///< no iterations: solved directly (ridge's normal equations)
};
std::string to_string(StopReason r);

struct LbfgsOptions {
  /// Iterations (each: one direction and its line search), as scikit-learn's max_iter.
  MECHLAB_OPTION(LbfgsOptions, int64_t, max_iter, 100)
  /// Correction pairs kept (scipy's maxcor, scikit-learn's default 10).
  MECHLAB_OPTION(LbfgsOptions, int64_t, history, 10)
  /// Stop when max |g_i| <= gtol (scikit-learn's tol).
  MECHLAB_OPTION(LbfgsOptions, double, gtol, 1e-4)
  /// Stop when the relative decrease of f is <= ftol (scikit-learn: 64 * DBL_EPSILON).
  MECHLAB_OPTION(LbfgsOptions, double, ftol, 64 * DBL_EPSILON)
  /// Objective evaluations per line search before it is declared failed.
  MECHLAB_OPTION(LbfgsOptions, int64_t, max_linesearch, 20)
};

struct FistaOptions {
  MECHLAB_OPTION(FistaOptions, int64_t, max_iter, 1000)
  /// Stop when the gradient mapping's max norm is <= gtol.
  MECHLAB_OPTION(FistaOptions, double, gtol, 1e-4)
  /// L1 strength lambda (of the objective f + lambda * ||theta[mask]||_1).
  MECHLAB_OPTION(FistaOptions, double, l1, 0.0)
  /// First step size tried; backtracking halves it per problem as needed.
  MECHLAB_OPTION(FistaOptions, double, step, 1.0)
  MECHLAB_OPTION(FistaOptions, int64_t, max_backtrack, 40)
};

struct SolverResult {
  at::Tensor theta;       ///< [P, M]
  at::Tensor objective;   ///< [P] float64, the final objective (the L1 term included for FISTA)
  at::Tensor iterations;  ///< [P] int64
  at::Tensor converged;   ///< [P] bool: a stopping test was met (not max_iter or a failed line search)
  at::Tensor stop_reason;  ///< [P] int64, a StopReason
};

/// Minimises each problem's smooth objective from theta0 [P, M].
SolverResult batched_lbfgs(const BatchedObjective& fg, at::Tensor theta0, const LbfgsOptions& options = {});

/// Minimises f(theta) + l1 * ||theta * l1_mask||_1 per problem from theta0 [P, M];
/// l1_mask [M] (1 = penalised, 0 = not: an intercept), in theta's dtype.
SolverResult batched_fista(const BatchedObjective& fg, at::Tensor theta0, const at::Tensor& l1_mask,
                           const FistaOptions& options = {});

}  // namespace mechlab::probes
