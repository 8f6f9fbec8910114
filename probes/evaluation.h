// Evaluating probes (docs/ARCHITECTURE.md, "Probes"): train / validation /
// test splits and k-fold cross-validation over rows, control tasks in
// Hewitt & Liang's sense (2019) and selectivity, and bootstrap confidence
// intervals of any per-probe metric.
//
//   random_split     a seeded permutation of the rows cut into test,
//                    validation and train (sizes floor(n * fraction)).
//   group_split      the same over groups of rows (scikit-learn's
//                    GroupShuffleSplit: ceil(fraction * groups) groups held
//                    out): every row of a group lands on one side. Tokens of
//                    one prompt are not independent draws (they share the
//                    prompt's words and its label), so a probe scored on
//                    tokens of prompts it was trained on is scored on
//                    memory; the probing run groups by example.
//   k_fold           scikit-learn's KFold: fold i of k holds n/k rows, the
//                    first n % k folds one more; shuffle = a seeded
//                    permutation first, else contiguous folds in row order.
//   group_k_fold     KFold over the groups (each fold tests whole groups).
//   cross_validate   a sweep fitted on each fold's train rows and scored on
//                    its test rows: [k, P].
//   control_labels   each token type gets one label drawn from the empirical
//                    distribution of the task's labels, and every row of
//                    that type carries it: a task a probe can only solve by
//                    memorising token identity. selectivity = task metric -
//                    control metric (high: the probe reads what the
//                    representation encodes, not what it can memorise).
//   bootstrap_ci     percentile interval (numpy's linear quantiles) of a
//                    metric over `resamples` resamplings of the rows with
//                    replacement; the estimate is the metric on all rows.
//                    Resamples where the metric is NaN (undefined) are left
//                    out, as numpy.nanpercentile.
//   cluster_bootstrap_ci  the same, resampling groups (all rows of each
//                    drawn group, a group drawn twice counted twice): the
//                    cluster bootstrap (Davison & Hinkley 1997, 3.8), whose
//                    interval carries the correlation of rows of one group.
//
// Example:
//   Split s = random_split(n, SplitOptions().test_fraction(0.2));
//   at::Tensor ctrl = control_labels(token_ids, labels, 7);
//   BootstrapInterval ci = bootstrap_ci([&](const at::Tensor& rows) {
//       return accuracy(pred.index_select(1, rows), y.index_select(0, rows)); }, n_test);
#pragma once

#include "core/util/options.h"
#include "probes/linear_probe.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace mechlab::probes {

/// Row indices (int64, sorted within each part for contiguous reads).
struct Split {
  at::Tensor train, validation, test;
};

struct SplitOptions {
  MECHLAB_OPTION(SplitOptions, double, validation_fraction, 0.0)
  MECHLAB_OPTION(SplitOptions, double, test_fraction, 0.2)
  MECHLAB_OPTION(SplitOptions, uint64_t, seed, 0)
  /// false: test = the last rows, validation before them (no permutation).
  MECHLAB_OPTION(SplitOptions, bool, shuffle, true)
};

Split random_split(int64_t rows, const SplitOptions& options = {});

/// Rows split by group: groups [rows] (integer ids, e.g. each row's example)
/// are permuted (seeded) and ceil(test_fraction * G) of the G groups go to
/// test, ceil(validation_fraction * G) to validation, the rest to train, as
/// scikit-learn's GroupShuffleSplit; every row of a group lands where its
/// group does. Refused when no group is left to train on.
Split group_split(const at::Tensor& groups, const SplitOptions& options = {});

/// k (train, test) splits; validation is empty.
std::vector<Split> k_fold(int64_t rows, int64_t k, bool shuffle = true, uint64_t seed = 0);

/// k folds of whole groups (groups [rows], integer ids): KFold over the
/// distinct groups (in ascending id order, or a seeded permutation), each
/// fold's test rows the rows of its groups. Fold sizes count groups, not
/// rows (scikit-learn's GroupKFold balances rows instead).
std::vector<Split> group_k_fold(const at::Tensor& groups, int64_t k, bool shuffle = true, uint64_t seed = 0);

/// Hewitt & Liang control labels [N] (int64) for token_ids [N] and the task's labels [N].
at::Tensor control_labels(const at::Tensor& token_ids, const at::Tensor& labels, uint64_t seed = 0);

/// task - control, per probe.
inline at::Tensor selectivity(const at::Tensor& task_metric, const at::Tensor& control_metric) {
  return task_metric - control_metric;
}

/// k-fold cross-validation of a sweep: for each fold, fit on its train rows
/// (logistic for integer labels, linear regression for floating targets)
/// and score its test rows with `metric` (predictions or, for AUROC, the
/// caller's choice inside it). Returns [k, P] float64.
///   at::Tensor acc = cross_validate(x, y, k_fold(N, 5), ProbeOptions(),
///       [](const LinearProbes& p, const at::Tensor& x_test, const at::Tensor& y_test) {
///         return accuracy(p.predict(x_test), y_test); });
at::Tensor cross_validate(
    const at::Tensor& x, const at::Tensor& labels, const std::vector<Split>& folds, const ProbeOptions& options,
    const std::function<at::Tensor(const LinearProbes&, const at::Tensor&, const at::Tensor&)>& metric);

struct BootstrapOptions {
  MECHLAB_OPTION(BootstrapOptions, int64_t, resamples, 1000)
  MECHLAB_OPTION(BootstrapOptions, double, confidence, 0.95)
  MECHLAB_OPTION(BootstrapOptions, uint64_t, seed, 0)
};

struct BootstrapInterval {
  at::Tensor estimate, lower, upper;  ///< [P] float64
  at::Tensor defined;                 ///< [P] int64: resamples whose metric was defined (not NaN)
};

/// `metric` maps row indices (int64 [n], with repeats) to a per-probe value [P].
/// A NaN value (the metric is undefined on that resample, e.g. an AUROC of
/// rows that lack a class) leaves that resample out of that probe's interval
/// (`defined` counts the others); with none defined the bounds are NaN.
BootstrapInterval bootstrap_ci(const std::function<at::Tensor(const at::Tensor&)>& metric, int64_t rows,
                               const BootstrapOptions& options = {});

/// The cluster bootstrap: each resample draws G of the G groups with
/// replacement (groups [rows], integer ids) and passes `metric` every row of
/// each drawn group (int64, ascending, a group drawn twice twice). The
/// estimate is the metric on all rows, as bootstrap_ci.
BootstrapInterval cluster_bootstrap_ci(const std::function<at::Tensor(const at::Tensor&)>& metric,
                                       const at::Tensor& groups, const BootstrapOptions& options = {});

}  // namespace mechlab::probes
