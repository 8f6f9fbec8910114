// Path patching (Wang et al. 2022, "Interpretability in the Wild"; the
// TransformerLens IOI tutorial): how much of the metric flows from a set of
// sender nodes to a set of receiver inputs along direct paths only.
//
// The three runs of the classic algorithm, on the circuit graph
// (patching/circuit_graph.h):
//   1. cache the base run and the source run (noising: base = clean prompts,
//      source = corrupted prompts, Wang et al.'s direction; denoising: the other
//      way round);
//   2. run the base prompts with every sender at its source value and every
//      other head (hook_z) and MLP (hook_mlp_out) frozen at its base value, and
//      record the receivers' inputs;
//   3. run the base prompts again, patching only the receivers' inputs with
//      what run 2 recorded; the metric of this run is the result.
// Run 2 needs no forward in mechlab: with every other node frozen, the
// residual stream it builds is the base run's plus the senders' differences
// (patching/sender_delta.h), so a receiver's run-2 input is exactly
//   base input + sum over senders with an edge to it of (source - base output).
// Run 3 goes through the BulkPatcher: many sender sets, one forward per
// stack of them, restarting at the receivers' first layer. Receivers are
// patched at their own input hook (hook_q_input/k_input/v_input head slices,
// hook_mlp_in, the final hook_resid_post), so a head's query can change while
// its keys and values stay. tests/patching compares with TransformerLens's
// hook-based three-run algorithm (freezing by hooks, run 2 executed).
//
// Freezing MLPs too (not only heads, as some tutorials do) makes the result
// the effect of the direct edges sender -> receiver of the circuit graph, the
// quantity edge patching and ACDC reason about.
//
// Example:
//   CircuitGraph g(model.cfg());
//   PathPatchResult r = path_patch(model, data, g.parse_senders("a0.h1+m0"),
//                                  g.parse_receivers("a1.h2<q>"), logit_diff(data.answers()));
//   SweepResult s = path_patch_sweep(model, data, g.parse_receivers("a1.h0<q>+a1.h1<q>"), metric);
//   s.values;   // [layer, head]: every single head as the sender
#pragma once

#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "patching/bulk_patcher.h"
#include "patching/circuit_graph.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/sweeps.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace mechlab::patching {

struct PathPatchOptions {
  /// noising (default, Wang et al.): base = clean prompts, senders take their
  /// corrupted values; denoising: base = corrupted, senders take clean values.
  MECHLAB_OPTION(PathPatchOptions, Direction, direction, Direction::noising)
  MECHLAB_OPTION(PathPatchOptions, BulkOptions, bulk, {})
  /// One label per position for pictures and files; default: the index.
  MECHLAB_OPTION(PathPatchOptions, std::vector<std::string>, position_labels, {})
  /// Extra fields copied into the sweep result's config.
  MECHLAB_OPTION(PathPatchOptions, nlohmann::json, extra_config, nlohmann::json::object())
};

struct PathPatchResult {
  double value = 0;          ///< the metric after path patching
  double base_metric = 0;    ///< the metric of the unpatched base run
  double source_metric = 0;  ///< the metric of the source run
};

/// Path patching from `senders` to `receivers`. Throws mechlab::Error if no
/// sender writes the residual stream before any receiver reads it (then no
/// path exists), or if either set is empty.
PathPatchResult path_patch(hooks::HookedTransformer& model, const PatchingData& data,
                           const std::vector<CircuitNode>& senders,
                           const std::vector<ReceiverInput>& receivers, const Metric& metric,
                           const PathPatchOptions& options = {});

/// Path patching of several sender sets to the same receivers, in bulk:
/// float [sets]. A set with no edge to any receiver gets the base metric.
at::Tensor path_patch_sets(hooks::HookedTransformer& model, const PatchingData& data,
                           const std::vector<std::vector<CircuitNode>>& sender_sets,
                           const std::vector<ReceiverInput>& receivers, const Metric& metric,
                           const PathPatchOptions& options = {}, PathPatchResult* baselines = nullptr,
                           BulkStats* stats = nullptr);

/// Every single head as the sender, to `receivers`: values [layer, head]
/// (heads in or after the receivers' layer have no path: base metric).
/// sweep = "path:" + the receivers joined by '+', e.g. "path:a1.h0<q>+a1.h1<q>".
SweepResult path_patch_sweep(hooks::HookedTransformer& model, const PatchingData& data,
                             const std::vector<ReceiverInput>& receivers, const Metric& metric,
                             const PathPatchOptions& options = {});

}  // namespace mechlab::patching
