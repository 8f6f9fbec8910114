// Probe features from an activation store or a live run's cache, any hook,
// stacked as one sweep x [P, N, D] (docs/ARCHITECTURE.md, "Probes"): one
// probe per hook, or per hook and head (hooks whose per-token shape is
// [heads, d_head], e.g. hook_z), or per position; and labels given per
// sequence turned into labels per row.
//
// Example:
//   auto store = core::ActivationStore::open("acts.h5");
//   ProbeFeatures f = features_from_store(store, {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"});
//   at::Tensor y = sequence_labels_to_rows(store.row_source(0, store.num_rows()), labels_per_example);
//   LinearProbes p = fit_logistic(f.x, y);   // one probe per layer, fitted together
#pragma once

#include "core/store/activation_store.h"
#include "core/util/options.h"
#include "hooks/activation_cache.h"

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace mechlab::probes {

struct ProbeFeatures {
  at::Tensor x;                    ///< [P, N, D]
  std::vector<std::string> names;  ///< one per probe: the hook, "<hook> head h" or "<hook> pos p"
};

struct FeatureOptions {
  /// One probe per head for hooks of per-token shape [heads, d_head].
  MECHLAB_OPTION(FeatureOptions, bool, split_heads, false)
  /// The features' dtype (the probes fit in float32 or float64).
  MECHLAB_OPTION(FeatureOptions, at::ScalarType, dtype, at::kFloat)
};

/// Rows [start, start + count) of `hooks` (count -1: to the last committed
/// row) as one sweep. Every probe must have the same width D.
ProbeFeatures features_from_store(const core::ActivationStore& store, const std::vector<std::string>& hooks,
                                  int64_t start = 0, int64_t count = -1, const FeatureOptions& options = {});

/// The cache's `hooks` ([batch, pos, ...] each) as rows in (example,
/// position) order, the positions where `row_mask` [batch, pos] is true
/// (undefined: all; pass the attention mask to skip padding, as a store does).
ProbeFeatures features_from_cache(const hooks::ActivationCache& cache, const std::vector<std::string>& hooks,
                                  const at::Tensor& row_mask = {}, const FeatureOptions& options = {});

/// One probe per position of one hook: x [pos, batch, D] (with split_heads:
/// [pos x heads, batch, d_head], position-major), rows are the examples.
ProbeFeatures features_per_position(const hooks::ActivationCache& cache, const std::string& hook,
                                    const FeatureOptions& options = {});

/// Per-row labels [N] from per-sequence labels [examples] and the rows'
/// (example, position) [N, 2] (a store's row_source).
at::Tensor sequence_labels_to_rows(const at::Tensor& row_source, const at::Tensor& sequence_labels);

/// Indices (int64) of the rows at `position` of their example, or with a
/// negative position the row that many from the end of its example's rows
/// (-1: its last row, the last real token), from row_source [N, 2] in store
/// order (examples in turn, positions ascending). An example without such a
/// row has none in the result.
at::Tensor rows_at_position(const at::Tensor& row_source, int64_t position);

}  // namespace mechlab::probes
