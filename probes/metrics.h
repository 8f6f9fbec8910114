// Metrics of probes on a split, per probe (docs/ARCHITECTURE.md, "Probes"),
// each as scikit-learn's sklearn.metrics function of the same name:
//   accuracy   accuracy_score
//   f1         f1_score (binary: of class 1; macro: unweighted mean over the
//              classes present in the labels or the predictions)
//   auroc      roc_auc_score of a binary probe's scores (core/stats/roc.h)
//   r2         r2_score (1 - SS_res / SS_tot; a constant target gives 1 if
//              predicted exactly, else 0, as force_finite=True)
// Predictions, scores and targets are [P, N] (or [N]: one probe); labels
// and targets [N] (shared by the probes) or [P, N]. Results are [P] float64.
//
// Example:
//   at::Tensor acc = accuracy(probes.predict(x_test), y_test);   // [P]
#pragma once

#include <ATen/ATen.h>

namespace mechlab::probes {

enum class F1Average { binary, macro };

at::Tensor accuracy(const at::Tensor& predictions, const at::Tensor& labels);
at::Tensor f1(const at::Tensor& predictions, const at::Tensor& labels, F1Average average = F1Average::binary);
at::Tensor auroc(const at::Tensor& scores, const at::Tensor& labels);
at::Tensor r2(const at::Tensor& predictions, const at::Tensor& targets);

}  // namespace mechlab::probes
