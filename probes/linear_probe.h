// Linear probes (Alain & Bengio 2016; Belinkov 2022): logistic regression
// (binary and multinomial) and linear regression on activations, many probes
// fitted at once (docs/ARCHITECTURE.md, "Probes").
//
// Batching: the features of P probes (one per layer, head or position of a
// sweep) are one tensor x [P, N, D]; labels are [N] (shared) or [P, N]. Every
// objective evaluation is one batched GEMM over all P probes; each probe has
// its own L-BFGS history, step sizes and convergence (probes/batched_solvers.h).
//
// Objectives (scikit-learn's, so that the fits can be compared; n = rows):
//   logistic, L2   (1/n) sum_i logloss_i + 1/(2 C n) ||w||^2     (LogisticRegression(C), lbfgs)
//   logistic, L1   (1/n) sum_i logloss_i + 1/(C n) ||w||_1        (penalty='l1', saga)
//   linear, L2     (1/2n) ||y - Xw - b||^2 + alpha/(2n) ||w||^2   (Ridge(alpha), scaled by 1/2n)
//   linear, L1     (1/2n) ||y - Xw - b||^2 + alpha ||w||_1        (Lasso(alpha))
// The intercept b is never penalised. Binary logistic has one output (the
// positive class's logit, sklearn's coef_ [1, D]); K > 2 classes are a
// multinomial softmax over K outputs (sklearn's coef_ [K, D]), whose
// intercepts are centred (the softmax ignores a shared shift).
//
// Standardisation (on by default) is that of scikit-learn's StandardScaler
// (mean and population std of the training rows, a zero std read as 1), and
// is folded into the weights rather than applied to a copy of x: the solver's
// variables are the coefficients on standardised features (`coef`,
// `intercept`: what a StandardScaler + model pipeline reports), and
// `weight`/`bias` act on raw features. Nothing of x's size is allocated.
//
// Solvers: L-BFGS (full batch; scikit-learn's stopping semantics: max |grad| <=
// tol on the objective above, at most max_iter iterations), proximal gradient
// (FISTA) for L1, Ridge's normal equations in closed form (Cholesky, the Gram
// matrix accumulated over row chunks), or mini-batch Adam with early stopping
// on a validation split (the best validation loss's weights are kept).
//
// Example:
//   at::Tensor x = ...;   // [layers, tokens, d_model]
//   LinearProbes p = fit_logistic(x, labels, ProbeOptions().C(1.0));
//   at::Tensor pred = p.predict(x_test);   // [layers, test tokens]
#pragma once

#include "core/util/options.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace mechlab::probes {

enum class Penalty { none, l2, l1 };
/// automatic: L-BFGS for smooth objectives, FISTA for L1, closed form for ridge.
enum class Solver { automatic, lbfgs, fista, exact, adam };
enum class ProbeLoss { logistic, squared };

/// "none", "l2", "l1" and back; an unknown name is an error listing the known ones.
Penalty parse_penalty(const std::string& name);
Solver parse_solver(const std::string& name);
std::string to_string(Penalty p);
std::string to_string(Solver s);

struct ProbeOptions {
  MECHLAB_OPTION(ProbeOptions, Penalty, penalty, Penalty::l2)
  /// Logistic regression: inverse regularisation strength (scikit-learn's C).
  MECHLAB_OPTION(ProbeOptions, double, C, 1.0)
  /// Linear regression: penalty strength (scikit-learn's Ridge / Lasso alpha).
  MECHLAB_OPTION(ProbeOptions, double, alpha, 1.0)
  MECHLAB_OPTION(ProbeOptions, Solver, solver, Solver::automatic)
  /// L-BFGS / FISTA iterations (scikit-learn's max_iter).
  MECHLAB_OPTION(ProbeOptions, int64_t, max_iter, 100)
  /// L-BFGS: stop at max |gradient| <= tol; FISTA: gradient mapping <= tol.
  MECHLAB_OPTION(ProbeOptions, double, tol, 1e-4)
  /// L-BFGS correction pairs (scikit-learn / scipy: 10).
  MECHLAB_OPTION(ProbeOptions, int64_t, history, 10)
  MECHLAB_OPTION(ProbeOptions, bool, standardize, true)
  MECHLAB_OPTION(ProbeOptions, bool, fit_intercept, true)
  /// Classes of a logistic probe; 0: 1 + the largest label.
  MECHLAB_OPTION(ProbeOptions, int64_t, num_classes, 0)
  /// CPU: evaluate the objective with the fused row-block kernel
  /// (probes/fused_objective.h: logits, loss and gradient from one read of
  /// the rows); false: ATen's per-probe GEMMs (two reads). The same fit up
  /// to rounding. Float32 and float64 features whose rows are contiguous;
  /// other layouts and GPUs take the ATen path.
  MECHLAB_OPTION(ProbeOptions, bool, fused, true)
  /// ATen path (`fused` false or not applicable): rows per block of one
  /// objective evaluation (0: all rows in one block). Any value gives the
  /// same fit up to rounding; smaller blocks keep each block in cache between
  /// its two products, at the cost of smaller GEMMs.
  MECHLAB_OPTION(ProbeOptions, int64_t, block_rows, 0)
  /// Evaluate every probe with one batched GEMM per product also on the CPU
  /// (the GPU's form; on the CPU the default is the fused kernel or per-probe
  /// GEMMs, which skip converged probes). The same fit up to rounding.
  MECHLAB_OPTION(ProbeOptions, bool, batched_gemm, false)
  /// Adam: learning rate, rows per step, passes over the rows, epochs without
  /// a better validation loss before stopping, share of rows held out for
  /// that (0: no early stopping), seed of the split and the batch order.
  MECHLAB_OPTION(ProbeOptions, double, lr, 1e-2)
  MECHLAB_OPTION(ProbeOptions, int64_t, batch_size, 1024)
  MECHLAB_OPTION(ProbeOptions, int64_t, epochs, 50)
  MECHLAB_OPTION(ProbeOptions, int64_t, patience, 5)
  MECHLAB_OPTION(ProbeOptions, double, validation_fraction, 0.1)
  MECHLAB_OPTION(ProbeOptions, uint64_t, seed, 0)
};

/// P fitted probes. O outputs: 1 for binary logistic and regression, K for K > 2 classes.
struct LinearProbes {
  ProbeLoss loss = ProbeLoss::logistic;
  int64_t num_classes = 0;  ///< 0 for regression
  at::Tensor coef;          ///< [P, D, O] on standardised features (= weight without standardisation)
  at::Tensor intercept;     ///< [P, O] on standardised features
  at::Tensor mean, scale;   ///< [P, D] the standardisation (0 and 1 without it)
  at::Tensor weight;        ///< [P, D, O] on raw features
  at::Tensor bias;          ///< [P, O] on raw features
  at::Tensor iterations;    ///< [P] int64 (Adam: epochs until the best validation loss)
  at::Tensor converged;     ///< [P] bool
  at::Tensor stop_reason;   ///< [P] int64, a StopReason (probes/batched_solvers.h)
  Solver solver = Solver::automatic;  ///< the solver that ran

  int64_t num_probes() const { return weight.size(0); }
  int64_t num_features() const { return weight.size(1); }
  /// x [P, N, D] or [N, D] (the same rows for every probe) -> logits or values [P, N, O].
  at::Tensor decision_function(const at::Tensor& x) const;
  /// Class probabilities [P, N, K] (K = 2 for binary); logistic probes only.
  at::Tensor predict_proba(const at::Tensor& x) const;
  /// Predicted class (int64) or value (floating) [P, N].
  at::Tensor predict(const at::Tensor& x) const;
  /// Score for AUROC: the positive class's logit (binary) or the value [P, N].
  at::Tensor score(const at::Tensor& x) const;
  /// A copy whose tensors are on `device` (fit on a GPU, then write or
  /// intervene from the CPU).
  LinearProbes to(const at::Device& device) const;
};

/// The instruction set the fused CPU kernels run with on this machine
/// ("avx512", "avx2" or "portable"; ProbeOptions::fused).
std::string fused_kernel_isa();

/// Logistic regression probes. x [P, N, D] or [N, D]; labels integers in
/// [0, K) [N] or [P, N].
LinearProbes fit_logistic(const at::Tensor& x, const at::Tensor& labels, const ProbeOptions& options = {});
/// Linear regression probes (ridge / lasso / least squares). targets [N] or [P, N].
LinearProbes fit_linear(const at::Tensor& x, const at::Tensor& targets, const ProbeOptions& options = {});

}  // namespace mechlab::probes
