#include "core/stats/roc.h"

#include "core/util/error.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace mechlab::core::stats {

RocCurve roc_curve(const std::vector<double>& scores, const std::vector<int>& labels) {
  MECHLAB_CHECK(scores.size() == labels.size(), "ROC curve: ", scores.size(), " scores but ", labels.size(),
                " labels; give one label per score");
  RocCurve roc;
  for (size_t i = 0; i < scores.size(); ++i) {
    MECHLAB_CHECK(!std::isnan(scores[i]), "ROC curve: score ", i, " is NaN; NaN scores cannot be ranked");
    MECHLAB_CHECK(labels[i] == 0 || labels[i] == 1, "ROC curve: label ", i, " is ", labels[i],
                  "; labels must be 0 or 1");
    (labels[i] ? roc.positives : roc.negatives) += 1;
  }
  MECHLAB_CHECK(roc.positives > 0 && roc.negatives > 0, "ROC curve: the labels have ", roc.positives,
                " positives and ", roc.negatives,
                " negatives; the ROC needs both classes");

  // Scores descending; each distinct score is one threshold: every item
  // scoring >= it is called positive (scikit-learn's _binary_clf_curve).
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  roc.fpr.push_back(0);
  roc.tpr.push_back(0);
  roc.thresholds.push_back(std::numeric_limits<double>::infinity());
  int64_t tp = 0, fp = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    (labels[order[i]] ? tp : fp) += 1;
    if (i + 1 < order.size() && scores[order[i + 1]] == scores[order[i]]) continue;  // tie: one point
    roc.fpr.push_back(static_cast<double>(fp) / static_cast<double>(roc.negatives));
    roc.tpr.push_back(static_cast<double>(tp) / static_cast<double>(roc.positives));
    roc.thresholds.push_back(scores[order[i]]);
  }
  for (size_t i = 0; i + 1 < roc.fpr.size(); ++i) {
    roc.auc += (roc.fpr[i + 1] - roc.fpr[i]) * (roc.tpr[i] + roc.tpr[i + 1]) / 2;
  }
  return roc;
}

}  // namespace mechlab::core::stats
