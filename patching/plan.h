// A patching experiment as data (PatchPlan) and the one call that runs it
// (run_patching), returning typed results. `mechlab patch` is flags -> plan
// -> run_patching -> print -> write_patching_results (patching/plan_output.h);
// a C++ user writes the same plan in a few lines.
//
// What a plan runs, per direction:
//   sweeps   node sweeps of patching/sweeps.h ("attn_head_out_by_pos", ...):
//            exact activation patching (method activation) or their gradient
//            estimates (attribution, eap-ig; patching/attribution.h);
//            "path:RECEIVERS" = path patching from every single head to the
//            receivers (patching/path_patching.h; activation only);
//            "point:HOOK" / "point_all_pos:HOOK" = one hook point, a model
//            site or an attached module's (activation only)
//   paths    "SENDERS -> RECEIVERS" path patching of one sender set
//            (CircuitGraph::parse_path; activation only)
//   edges    every circuit-graph edge scored by attribution or eap-ig
//            (patching/edge_attribution.h)
// Directions: as given, or by default denoising for activation node sweeps
// (TransformerLens's default) and noising for everything else (Wang et al.;
// Syed et al.). The metric is built per direction by make_metric
// (patching/metrics.h). Every name and spec is checked before any forward.
//
// Results come in this order: node sweeps (each direction), then path
// sweeps, paths and edges (each direction), the order `mechlab patch`
// prints and stores them in.
//
// Example:
//   PatchingData data = PatchingData::from_dataset(core::load_dataset("ioi.h5"));
//   auto plan = PatchPlan().sweeps({"attn_head_out_all_pos"}).paths({"a0.h1 -> a1.h2<q>"})
//                   .metric(MetricOptions().name("normalised_logit_diff"));
//   for (const PatchResult& r : run_patching(model, data, plan)) {
//     r.values;                  // [layer, head] for attn_head_out_all_pos
//     r.axes[1].labels;          // {"0", "1", ...}
//     r.stats.clean_metric;      // the unpatched baselines
//     top_effects(r, 5);         // the largest changes, labelled
//   }
#pragma once

#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "patching/attribution.h"
#include "patching/bulk_patcher.h"
#include "patching/circuit_graph.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/sweeps.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace mechlab::patching {

/// How a value is obtained: exact activation/path patching, or a gradient estimate.
enum class PatchMethod {
  activation,   ///< exact: one patched forward per configuration (in bulk)
  attribution,  ///< gradient x (source - base): Nanda 2023; Syed et al. 2023
  eap_ig,       ///< gradients averaged over interpolated inputs: Hanna et al. 2024
};
/// "activation", "attribution", "eap-ig".
const char* patch_method_name(PatchMethod m);
/// Accepts the names above ("patching" too, for activation; "eap_ig" for eap-ig).
PatchMethod parse_patch_method(const std::string& text);

struct PatchPlan {
  /// Node sweeps (patching/sweeps.h) and path sweeps "path:RECEIVERS".
  MECHLAB_OPTION(PatchPlan, std::vector<std::string>, sweeps, {})
  /// Path patching specs "SENDERS -> RECEIVERS" (CircuitGraph::parse_path).
  MECHLAB_OPTION(PatchPlan, std::vector<std::string>, paths, {})
  /// Score every circuit-graph edge (method attribution or eap-ig).
  MECHLAB_OPTION(PatchPlan, bool, edges, false)
  MECHLAB_OPTION(PatchPlan, PatchMethod, method, PatchMethod::activation)
  /// EAP-IG interpolation steps m (>= 1; method eap-ig).
  MECHLAB_OPTION(PatchPlan, int, steps, 5)
  /// Directions to run, in order; empty = the defaults at the top of this file.
  MECHLAB_OPTION(PatchPlan, std::vector<Direction>, directions, {})
  MECHLAB_OPTION(PatchPlan, MetricOptions, metric, {})
  /// Batching of exact patching (memory budget, copies per forward, no-op skipping).
  MECHLAB_OPTION(PatchPlan, BulkOptions, bulk, {})
  /// One label per position (position_labels(dataset)); empty = the indices.
  MECHLAB_OPTION(PatchPlan, std::vector<std::string>, position_labels, {})
  /// Provenance: what the model and the dataset are (a path, a hub id); the
  /// dataset's task. Recorded in every result, not used to run.
  MECHLAB_OPTION(PatchPlan, std::string, model_id, "")
  MECHLAB_OPTION(PatchPlan, std::string, dataset_id, "")
  MECHLAB_OPTION(PatchPlan, std::string, dataset_task, "")

  /// Throws mechlab::Error naming the first unknown sweep, bad path spec or
  /// option that does not fit the method; no forward runs.
  void check(const core::ModelConfig& cfg) const;
  /// The directions run for node sweeps and for the rest (paths, path sweeps, edges).
  std::vector<Direction> node_directions() const;
  std::vector<Direction> graph_directions() const;
  /// The plan as JSON (for results files and logs).
  nlohmann::json to_json() const;
};

/// What a result holds.
enum class ResultKind {
  node_sweep,  ///< a sweep of patching/sweeps.h (exact or estimated)
  path_sweep,  ///< "path:RECEIVERS": every single head as the sender, [layer, head]
  path,        ///< one "SENDERS -> RECEIVERS" path: a scalar
  edges,       ///< every edge of the circuit graph: [sender, receiver], NaN = no edge
};

/// One axis of a result's values.
struct ResultAxis {
  std::string name;                 ///< "layer", "pos", "head", "patch_type", "sender", ...
  int64_t size = 0;
  std::vector<std::string> labels;  ///< one per index: "0", "3: S2", "output", "a0.h3"
};

/// The metric around a result. NaN where a field does not apply.
struct PatchStats {
  static constexpr double kNone = std::numeric_limits<double>::quiet_NaN();
  double clean_metric = kNone;      ///< the metric on the unpatched clean run
  double corrupted_metric = kNone;  ///< the metric on the unpatched corrupted run
  double base_metric = kNone;       ///< the run that is patched (corrupted when denoising)
  double source_metric = kNone;     ///< the run whose activations are patched in
  int64_t configs = 0;              ///< exact: patch configurations
  int64_t skipped_noop = 0;         ///< exact: configurations provably unchanged (no forward)
  int64_t forwards = 0;             ///< forwards run
  int64_t backwards = 0;            ///< backwards run (gradient methods)
};

/// Where a result comes from.
struct Provenance {
  std::string model_id;           ///< PatchPlan::model_id
  std::string model_name;         ///< ModelConfig::name
  std::string model_config_hash;  ///< ModelConfig::hash()
  std::string device;             ///< where the model ran, "cpu", "cuda:0"
  std::string dtype;              ///< the model's dtype, "float32"
  std::string dataset_id;         ///< PatchPlan::dataset_id
  std::string dataset_task;       ///< PatchPlan::dataset_task
  int64_t n_prompts = 0;
  int64_t seq_len = 0;
  PatchPlan plan;                 ///< the plan that produced it
};

struct PatchResult {
  /// "attn_head_out_by_pos", "eap-ig:attn_head_out_by_pos", "path:a1.h0<q>",
  /// "a0.h1+m0 -> a1.h2<q>" (a path), "edges:attribution".
  std::string name;
  ResultKind kind = ResultKind::node_sweep;
  PatchMethod method = PatchMethod::activation;
  Direction direction = Direction::denoising;
  std::string metric;  ///< the metric's name
  /// float32, one dimension per axis; a path's value is 0-dimensional.
  at::Tensor values;
  std::vector<ResultAxis> axes;
  /// true for gradient methods: values estimate the CHANGE of the metric;
  /// false: values are the metric after patching.
  bool values_are_changes = false;
  PatchStats stats;
  Provenance provenance;
  /// kind == edges: the scores with their graph (top edges, JSON).
  std::shared_ptr<const EdgeScores> edge_scores;
  /// The producing function's record (TL function name, bulk options, ...),
  /// stored as the result's config in the results file.
  nlohmann::json details = nlohmann::json::object();

  /// The change of the metric at a value: value - base_metric, or the value
  /// itself for gradient estimates.
  double change(double value) const;
  /// As stored in the results file (patching/sweep_file.h) and drawn by heatmap_svg.
  SweepResult as_sweep_result() const;
};

/// Runs the plan. Checks it first (PatchPlan::check), so a typo fails before
/// the first forward.
std::vector<PatchResult> run_patching(hooks::HookedTransformer& model, const PatchingData& data,
                                      const PatchPlan& plan);

/// One cell of a result, for the "top effects" tables.
struct Effect {
  std::vector<int64_t> index;  ///< one index per axis
  std::string label;           ///< "L0 H2", "L1 pos 9: S2", ...
  double value = 0;            ///< the result's value there
  double change = 0;           ///< PatchResult::change(value)
  /// The metric there on the 0 = corrupted, 1 = clean scale; NaN when the
  /// baselines are unknown or equal.
  double normalised = std::numeric_limits<double>::quiet_NaN();
};
/// The k cells of largest |change|, largest first (all when k <= 0); NaN cells are skipped.
std::vector<Effect> top_effects(const PatchResult& result, int64_t k);

}  // namespace mechlab::patching
