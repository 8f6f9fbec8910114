#include "probes/evaluation.h"

#include "core/util/error.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace mechlab::probes {
namespace {

at::Generator generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

at::Tensor sorted(const at::Tensor& idx) { return std::get<0>(idx.sort()); }

// groups [rows] -> (the distinct ids ascending [G], each row's group index [rows]).
std::pair<at::Tensor, at::Tensor> group_index(const at::Tensor& groups, const char* who) {
  MECHLAB_CHECK(groups.defined() && groups.dim() == 1 && groups.size(0) >= 1, who,
                ": `groups` must be [rows] with at least one row, got ",
                groups.defined() ? groups.sizes() : at::IntArrayRef{});
  MECHLAB_CHECK(!at::isFloatingType(groups.scalar_type()) && groups.scalar_type() != at::kBool, who,
                ": `groups` must be integer ids, got ", groups.scalar_type());
  auto [ids, inverse] = at::_unique(groups.cpu().to(at::kLong), /*sorted=*/true, /*return_inverse=*/true);
  return {ids, inverse};
}

// The rows (ascending) whose group index is among `chosen` (group indices).
at::Tensor rows_of(const at::Tensor& inverse, const at::Tensor& chosen) {
  return at::isin(inverse, chosen).nonzero().squeeze(1);
}

void check_fractions(const SplitOptions& o, const char* who) {
  MECHLAB_CHECK(o.test_fraction() >= 0 && o.validation_fraction() >= 0 &&
                    o.test_fraction() + o.validation_fraction() < 1,
                who, ": `test_fraction` (", o.test_fraction(), ") and `validation_fraction` (",
                o.validation_fraction(), ") must be >= 0 and sum to less than 1");
}

// `units` (rows or groups) in a seeded order (or in order without
// `shuffle`), cut into train, validation and test of the sizes given; the
// parts hold unit indices in that order.
Split shuffled_parts(int64_t units, int64_t n_test, int64_t n_val, const SplitOptions& o) {
  at::Generator gen = generator(o.seed());
  const at::Tensor order =
      o.shuffle() ? at::randperm(units, gen, at::TensorOptions().dtype(at::kLong)) : at::arange(units, at::kLong);
  const int64_t n_train = units - n_test - n_val;
  Split s;
  s.train = order.narrow(0, 0, n_train);
  s.validation = order.narrow(0, n_train, n_val);
  s.test = order.narrow(0, n_train + n_val, n_test);
  return s;
}

// The percentile interval over resamples drawn by `draw` (row indices).
BootstrapInterval percentile_interval(const std::function<at::Tensor(const at::Tensor&)>& metric, int64_t rows,
                                      const BootstrapOptions& o, const std::function<at::Tensor(at::Generator&)>& draw,
                                      const char* who) {
  MECHLAB_CHECK(o.resamples() >= 2, who, ": `BootstrapOptions::resamples` must be >= 2, got ", o.resamples());
  MECHLAB_CHECK(o.confidence() > 0 && o.confidence() < 1, who,
                ": `BootstrapOptions::confidence` must be in (0, 1), got ", o.confidence());
  BootstrapInterval out;
  out.estimate = metric(at::arange(rows, at::kLong)).to(at::kDouble).cpu().reshape({-1});
  at::Generator gen = generator(o.seed());
  std::vector<at::Tensor> values;
  values.reserve(static_cast<size_t>(o.resamples()));
  for (int64_t b = 0; b < o.resamples(); ++b) values.push_back(metric(draw(gen)).to(at::kDouble).cpu().reshape({-1}));
  at::Tensor all = at::stack(values, 1);  // [P, resamples]
  const double a = (1 - o.confidence()) / 2;
  // A resample where the metric is undefined (NaN: an AUROC of a resample
  // that lacks a class) is left out of that probe's percentiles.
  out.defined = at::isnan(all).logical_not().sum(1);  // [P] int64
  // numpy's default (linear) quantile over the defined values, as
  // numpy.nanpercentile (all NaN: NaN).
  out.lower = at::nanquantile(all, a, /*dim=*/1);
  out.upper = at::nanquantile(all, 1 - a, /*dim=*/1);
  return out;
}

}  // namespace

Split random_split(int64_t rows, const SplitOptions& o) {
  MECHLAB_CHECK(rows >= 1, "random_split: no rows to split");
  check_fractions(o, "random_split");
  const int64_t n_test = static_cast<int64_t>(std::floor(o.test_fraction() * static_cast<double>(rows)));
  const int64_t n_val = static_cast<int64_t>(std::floor(o.validation_fraction() * static_cast<double>(rows)));
  MECHLAB_CHECK(rows - n_test - n_val >= 1, "random_split: ", rows, " rows leave none to train on");
  Split s = shuffled_parts(rows, n_test, n_val, o);
  for (at::Tensor* part : {&s.train, &s.validation, &s.test}) *part = sorted(*part);
  return s;
}

Split group_split(const at::Tensor& groups, const SplitOptions& o) {
  auto [ids, inverse] = group_index(groups, "group_split");
  const int64_t G = ids.size(0);
  check_fractions(o, "group_split");
  // GroupShuffleSplit's sizes: ceil of the fraction of the groups.
  const int64_t n_test = static_cast<int64_t>(std::ceil(o.test_fraction() * static_cast<double>(G)));
  const int64_t n_val = static_cast<int64_t>(std::ceil(o.validation_fraction() * static_cast<double>(G)));
  MECHLAB_CHECK(G - n_test - n_val >= 1, "group_split: ", G, " groups leave none to train on; give more groups");
  Split s = shuffled_parts(G, n_test, n_val, o);  // group indices
  for (at::Tensor* part : {&s.train, &s.validation, &s.test}) *part = rows_of(inverse, *part);
  return s;
}

std::vector<Split> group_k_fold(const at::Tensor& groups, int64_t k, bool shuffle, uint64_t seed) {
  auto [ids, inverse] = group_index(groups, "group_k_fold");
  MECHLAB_CHECK(k >= 2, "group_k_fold: `k` must be >= 2, got ", k);
  MECHLAB_CHECK(ids.size(0) >= k, "group_k_fold: ", ids.size(0), " groups cannot make ", k,
                " folds; use fewer folds or more groups");
  std::vector<Split> folds = k_fold(ids.size(0), k, shuffle, seed);  // folds of group indices
  for (Split& f : folds) {
    f.test = rows_of(inverse, f.test);
    f.train = rows_of(inverse, f.train);
  }
  return folds;
}

std::vector<Split> k_fold(int64_t rows, int64_t k, bool shuffle, uint64_t seed) {
  MECHLAB_CHECK(k >= 2, "k_fold: `k` must be >= 2, got ", k);
  MECHLAB_CHECK(rows >= k, "k_fold: ", rows, " rows cannot make ", k, " folds; use fewer folds");
  at::Generator gen = generator(seed);
  at::Tensor order =
      shuffle ? at::randperm(rows, gen, at::TensorOptions().dtype(at::kLong)) : at::arange(rows, at::kLong);
  std::vector<Split> folds;
  int64_t start = 0;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t len = rows / k + (i < rows % k ? 1 : 0);
    Split s;
    s.test = sorted(order.narrow(0, start, len));
    s.train = sorted(at::cat({order.narrow(0, 0, start), order.narrow(0, start + len, rows - start - len)}));
    s.validation = at::empty({0}, at::kLong);
    folds.push_back(std::move(s));
    start += len;
  }
  return folds;
}

at::Tensor control_labels(const at::Tensor& token_ids, const at::Tensor& labels, uint64_t seed) {
  MECHLAB_CHECK(token_ids.dim() == 1 && labels.dim() == 1 && token_ids.size(0) == labels.size(0),
                "control_labels: token_ids ", token_ids.sizes(), " and labels ", labels.sizes(),
                " must both be [rows]");
  MECHLAB_CHECK(token_ids.size(0) >= 1, "control_labels: no rows");
  MECHLAB_CHECK(!at::isFloatingType(labels.scalar_type()) && !at::isFloatingType(token_ids.scalar_type()),
                "control_labels: token ids and labels must be integers");
  at::Tensor tok = token_ids.cpu().to(at::kLong), y = labels.cpu().to(at::kLong);
  auto [types, inverse] = at::_unique(tok, /*sorted=*/true, /*return_inverse=*/true);
  // The label values and their frequencies: the empirical distribution.
  auto [values, v_inverse, counts] = at::_unique2(y, /*sorted=*/true, /*return_inverse=*/false, /*return_counts=*/true);
  (void)v_inverse;
  at::Generator gen = generator(seed);
  at::Tensor draw = at::multinomial(counts.to(at::kDouble), types.size(0), /*replacement=*/true, gen);  // [types]
  at::Tensor type_label = values.index_select(0, draw);
  return type_label.index_select(0, inverse).to(labels.device());
}

at::Tensor cross_validate(
    const at::Tensor& x, const at::Tensor& labels, const std::vector<Split>& folds, const ProbeOptions& options,
    const std::function<at::Tensor(const LinearProbes&, const at::Tensor&, const at::Tensor&)>& metric) {
  MECHLAB_CHECK(!folds.empty(), "cross_validate: no folds; make them with k_fold");
  MECHLAB_CHECK(x.dim() == 3 || x.dim() == 2, "cross_validate: the features must be [rows, d] or [probes, rows, d]");
  const int64_t row_dim = x.dim() - 2;
  const int64_t label_dim = labels.dim() - 1;  // [N] or [P, N]
  const bool classify = !at::isFloatingType(labels.scalar_type());
  std::vector<at::Tensor> scores;
  for (const Split& f : folds) {
    at::Tensor tr = f.train.to(x.device()), te = f.test.to(x.device());
    at::Tensor x_tr = x.index_select(row_dim, tr), x_te = x.index_select(row_dim, te);
    at::Tensor y_tr = labels.index_select(label_dim, tr.to(labels.device()));
    at::Tensor y_te = labels.index_select(label_dim, te.to(labels.device()));
    LinearProbes p = classify ? fit_logistic(x_tr, y_tr, options) : fit_linear(x_tr, y_tr, options);
    scores.push_back(metric(p, x_te, y_te).to(at::kDouble).cpu().reshape({-1}));
  }
  return at::stack(scores);  // [k, P]
}

BootstrapInterval bootstrap_ci(const std::function<at::Tensor(const at::Tensor&)>& metric, int64_t rows,
                               const BootstrapOptions& o) {
  MECHLAB_CHECK(rows >= 1, "bootstrap_ci: no rows");
  return percentile_interval(
      metric, rows, o,
      [rows](at::Generator& gen) { return at::randint(rows, {rows}, gen, at::TensorOptions().dtype(at::kLong)); },
      "bootstrap_ci");
}

BootstrapInterval cluster_bootstrap_ci(const std::function<at::Tensor(const at::Tensor&)>& metric,
                                       const at::Tensor& groups, const BootstrapOptions& o) {
  auto [ids, inverse] = group_index(groups, "cluster_bootstrap_ci");
  const int64_t G = ids.size(0), rows = inverse.size(0);
  const at::Tensor all_rows = at::arange(rows, at::kLong);
  return percentile_interval(
      metric, rows, o,
      [&](at::Generator& gen) {
        // G draws of a group; each row repeated as often as its group was drawn.
        const at::Tensor draws = at::randint(G, {G}, gen, at::TensorOptions().dtype(at::kLong));
        const at::Tensor times = at::bincount(draws, {}, G).index_select(0, inverse);  // [rows]
        return at::repeat_interleave(all_rows, times);
      },
      "cluster_bootstrap_ci");
}

}  // namespace mechlab::probes
