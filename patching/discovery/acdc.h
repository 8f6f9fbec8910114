// ACDC (Conmy et al. 2023, "Towards Automated Circuit Discovery"): prune the
// circuit graph edge by edge, from the output backwards, keeping an edge only
// if removing it raises the metric by tau or more.
//
// Same model, data, metric and tau give the reference implementation's circuit
// (acdc/TLACDCExperiment.py): the same masked forward (circuit_runner.h), the
// same visit order of receivers and of their incoming edges, the same rule
// for unused nodes and the same threshold rule (docs/ARCHITECTURE.md,
// "Circuit discovery" -> "ACDC", lists them and the differences).
//
// Fast: each trial restarts at its receiver's layer from the cached state of
// the current circuit, and several candidates are tried in one forward as
// cumulative prefixes (trial j removes candidates 1..j); the decisions are
// those of the one-edge-at-a-time algorithm.
//
// Example:
//   CircuitRunner clean_run(model, data, Ablation::corrupted);   // or let acdc() build its own
//   Metric kl = kl_to_clean(data.answers(), model.forward(data.clean_tokens));
//   AcdcResult r = acdc(model, data, kl, AcdcOptions().threshold(0.01));
//   for (const CircuitEdge& e : r.circuit.edges()) if (r.circuit.kept(e)) std::cout << r.circuit.edge_name(e) << "\n";
//
// The metric must fall as the circuit breaks (KL, loss). A higher-is-better
// metric (logit_diff, answer_prob) is refused unless abs_value is set; pass
// its negation, as the reference's IOI runs do: acdc(model, data, logit_diff(a).negated(), ...).
#pragma once

#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "patching/discovery/circuit.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::discovery {

struct AcdcOptions {
  /// tau; negative or NaN refused.
  MECHLAB_OPTION(AcdcOptions, double, threshold, 0.0)
  /// Threshold on the absolute metric increase.
  MECHLAB_OPTION(AcdcOptions, bool, abs_value, false)
  MECHLAB_OPTION(AcdcOptions, Ablation, ablation, Ablation::corrupted)
  /// "normal" (a layer's heads from the last) or "reverse" (from the first).
  MECHLAB_OPTION(AcdcOptions, std::string, indices_mode, "normal")
  /// Trials per batched forward; 1 = sequential; 0 = automatic: 1 on the
  /// CPU (stacking saves no arithmetic there and loses the trials after each
  /// kept edge), from the memory budget on a GPU.
  MECHLAB_OPTION(AcdcOptions, int64_t, max_batch, 0)
  /// 0 = as BulkOptions.
  MECHLAB_OPTION(AcdcOptions, int64_t, memory_budget_bytes, 0)
  /// Split every edge by token position (Circuit's position split): decisions
  /// per (edge, position), each receiver's positions from the last to the
  /// first. The prompts must share one padding.
  MECHLAB_OPTION(AcdcOptions, bool, split_positions, false)
  /// EAP -> ACDC: edges removed here are removed from the start and never tried
  /// (split like the run: split_positions).
  MECHLAB_OPTION(AcdcOptions, std::optional<Circuit>, start, std::nullopt)
};

struct AcdcStep {            // one decided edge, in decision order
  std::string edge;          // Circuit::edge_name
  bool kept = false;
  bool tried = true;         // false: removed because its node was unused (no forward)
  double score = NAN;        // metric increase when removed (NaN if not tried)
  double metric = NAN;       // the current metric after this decision
};

struct AcdcResult {
  Circuit circuit;           // scores = the tried edges' metric increases
  std::vector<AcdcStep> steps;
  double full_metric, final_metric;   // metric of the full model (0 for KL) and of the circuit
  int64_t forwards = 0, trials = 0;   // batched forwards run, edges evaluated
  double seconds = 0;
  nlohmann::json config;     // method, tau, abs_value, ablation, indices_mode, metric, model
};

using AcdcObserver = std::function<void(const AcdcStep& step, int64_t decided, int64_t total)>;

/// `resume`: steps of an interrupted run of the same job, replayed without forwards (each must name the
/// edge this run decides next, else mechlab::Error saying the journal belongs to another job); the run continues after them.
/// `observer` sees each new decision (not the replayed ones), with the count decided so far, replayed included,
/// and the total: the edges kept in the start circuit.
AcdcResult acdc(hooks::HookedTransformer& model, const patching::PatchingData& data, const patching::Metric& metric,
                const AcdcOptions& options = {}, const std::vector<AcdcStep>& resume = {},
                const AcdcObserver& observer = {});

/// The same on an existing runner (its model, data and ablation), whose
/// clean and ablated runs are reused: a tau sweep makes them once for all its
/// taus. `options.ablation()` must be the runner's; the runner's memory budget
/// applies (`options.memory_budget_bytes()` is not read). The runner's state
/// (set_state) is replaced.
AcdcResult acdc(CircuitRunner& runner, const patching::Metric& metric, const AcdcOptions& options = {},
                const std::vector<AcdcStep>& resume = {}, const AcdcObserver& observer = {});

/// The same decisions the slow way: every trial one full masked forward from
/// the embedding, one trial per forward (no restart, no batching). The
/// baseline `mechlab bench acdc` measures acdc() against.
AcdcResult acdc_one_forward_per_edge(hooks::HookedTransformer& model, const patching::PatchingData& data,
                                     const patching::Metric& metric, const AcdcOptions& options = {});

}  // namespace mechlab::discovery
