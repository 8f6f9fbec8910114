// Metrics of probes on a split, per probe (docs/ARCHITECTURE.md, "Probes"),
// each as scikit-learn's sklearn.metrics function of the same name:
//   accuracy   accuracy_score
//   f1         f1_score (binary: of class 1; macro: unweighted mean over the
//              classes present in the labels or the predictions)
//   auroc      roc_auc_score of a binary probe's scores (core/stats/roc.h)
//   auroc_ovr  roc_auc_score(y, proba, multi_class="ovr", average="macro"):
//              the mean over the K classes of the binary AUROC of
//              (label == k) against class k's column
//   r2         r2_score (1 - SS_res / SS_tot; a constant target gives 1 if
//              predicted exactly, else 0, as force_finite=True)
// Predictions, scores and targets are [P, N] (or [N]: one probe); labels
// and targets [N] (shared by the probes) or [P, N]. Results are [P] float64.
//
// AUROC of a fitted probe (probe_auroc): a binary probe's positive logit, a
// multinomial probe's class log-probabilities one-vs-rest. ResampledAuroc
// scores many resamples of the same rows (bootstrap_ci) in one pass each;
// a resample that lacks a class has no AUROC and gives NaN (scikit-learn
// 1.9: NaN with a warning when binary, an error when one-vs-rest), which
// bootstrap_ci leaves out.
//
// Example:
//   at::Tensor acc = accuracy(probes.predict(x_test), y_test);   // [P]
//   at::Tensor auc = probe_auroc(probes, x_test, y_test);        // [P], binary or one-vs-rest
#pragma once

#include "probes/linear_probe.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace mechlab::probes {

enum class F1Average { binary, macro };

at::Tensor accuracy(const at::Tensor& predictions, const at::Tensor& labels);
at::Tensor f1(const at::Tensor& predictions, const at::Tensor& labels, F1Average average = F1Average::binary);
/// Binary AUROC of scores [P, N] or [N] against labels in {0, 1}.
at::Tensor auroc(const at::Tensor& scores, const at::Tensor& labels);
/// One-vs-rest macro AUROC of per-class scores [P, N, K] or [N, K] (K >= 2)
/// against labels in [0, K). Column k is ranked against (label == k), so any
/// increasing function of the class probability per column gives the same
/// value: predict_proba, or log-probabilities (no float32 saturation ties).
/// Not the raw logits: class k's probability depends on every logit. Every
/// class must occur in the labels (scikit-learn raises otherwise).
at::Tensor auroc_ovr(const at::Tensor& scores, const at::Tensor& labels);
/// The scores an AUROC ranks, from a logistic probe's logits [P, N, O]
/// (decision_function): O = 1, the positive logit [P, N]; O = K > 1, the
/// log-probabilities [P, N, K] (float64).
at::Tensor auroc_scores(const at::Tensor& logits);
/// AUROC of logistic probes on rows x with labels: auroc of the binary
/// probes' logits, auroc_ovr of the multinomial probes' log-probabilities.
at::Tensor probe_auroc(const LinearProbes& probes, const at::Tensor& x, const at::Tensor& labels);
at::Tensor r2(const at::Tensor& predictions, const at::Tensor& targets);

/// AUROC of resamples of fixed rows, for bootstrap_ci: each score column is
/// sorted once and a resample (row indices [n], repeats allowed) is scored
/// from its row counts in one pass over each column in score order (O(rows),
/// no temporaries, columns in parallel). The value of a resample equals auroc /
/// auroc_ovr of the resampled rows (a repeated row is a tie with itself);
/// where the resample lacks a class (binary: positives or negatives) it is
/// NaN (scikit-learn: NaN when binary, an error when one-vs-rest).
class ResampledAuroc {
 public:
  /// scores [P, N] (binary, labels in {0, 1}) or [P, N, K] (one-vs-rest
  /// macro, labels in [0, K)); labels [N] or [P, N].
  ResampledAuroc(const at::Tensor& scores, const at::Tensor& labels);
  /// [P] float64 for row indices [n] (int64) into the N rows.
  at::Tensor operator()(const at::Tensor& rows) const;

 private:
  int64_t probes_ = 0, classes_ = 1, rows_ = 0;  // columns = probes_ * classes_
  // [columns, N] int32: each column's rows by ascending score (bits 0-28),
  // kPositiveBit where the row is of the column's class, kLastBit where the
  // next sorted row has another score (the end of a tie group).
  at::Tensor sorted_;
  static constexpr int32_t kRowMask = (1 << 29) - 1, kPositiveBit = 1 << 29, kLastBit = 1 << 30;
};

}  // namespace mechlab::probes
