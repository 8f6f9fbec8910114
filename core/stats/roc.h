// Receiver operating characteristic of scores against binary labels, as
// scikit-learn's roc_curve(y, s, drop_intermediate=False) and
// roc_auc_score(y, s). One home for every ROC in mechlab: circuit discovery
// ranks edges against a reference circuit with it
// (patching/discovery/evaluation.h), probes score their test split
// (probes/metrics.h).
//
// Example:
//   RocCurve roc = roc_curve({0.9, 0.1, 0.4}, {1, 0, 1});   // roc.auc == 1
#pragma once

#include <cstdint>
#include <vector>

namespace mechlab::core::stats {

struct RocCurve {
  /// One point per distinct score, from the highest, after (0, 0): the
  /// rates when every item scoring >= threshold is called positive.
  std::vector<double> fpr, tpr, thresholds;  ///< thresholds[0] = +inf
  double auc = 0;                            ///< trapezoids over (fpr, tpr)
  int64_t positives = 0, negatives = 0;
};

/// ROC of raw scores against 0/1 labels, as scikit-learn's
/// roc_curve(y, s, drop_intermediate=False) and roc_auc_score(y, s): tied
/// scores form one point (the tie is half credit in the AUC). NaN scores,
/// labels other than 0/1, and labels of one class only are errors.
RocCurve roc_curve(const std::vector<double>& scores, const std::vector<int>& labels);

}  // namespace mechlab::core::stats
