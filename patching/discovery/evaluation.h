// Evaluating circuits, whatever method found them (docs/ARCHITECTURE.md,
// "Circuit discovery", "Evaluation"):
//
//   faithfulness      f(C) = (m(C) - m(empty)) / (m(full) - m(empty)), the MIB
//                     circuit-localization track's (Mueller et al. 2025): 1 = the
//                     circuit does what the model does, 0 = no better than
//                     every edge ablated.
//   faithfulness curve  f of the top-k circuits for MIB's edge fractions
//                     (0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20%, 50%, 100%),
//                     dangling edges pruned, and its areas: CPR (area under f)
//                     and CMD (area under |1 - f|), trapezoids over the fraction.
//   target selection  the smallest top-k circuit reaching a faithfulness target.
//   ROC / AUC         edge scores against a reference edge set, as
//                     scikit-learn's roc_curve(drop_intermediate=False) and
//                     roc_auc_score (core/stats/roc.h).
//
// Circuits are run by the caller through CircuitMetricFn, so this file does
// not depend on how the masked forward is done.
//
// Which edges are ranked: those of the kinds (residual, head input) that
// carry scores. A kind with no score at all (EdgeScores never scores head
// inputs) is not ranked: its edges are kept in every top-k circuit and the
// pruning removes those left dangling. A kind scored in part is an error
// naming the first unscored edge, and so is a NaN score of a ranked edge.
//
// Example:
//   CircuitMetricFn fn = [&](const std::vector<Circuit>& cs) { return runner.metrics(metric, cs); };
//   Circuit scored = scored_circuit(edge_attribution(model, data, metric));
//   FaithfulnessCurve curve = faithfulness_curve(scored, fn);     // curve.cpr, curve.cmd
//   TopKSelection best = select_by_faithfulness(scored, fn, 0.9);  // best.circuit, best.k
//   RocCurve roc = roc_curve(scored, reference_edge_names);        // roc.auc
#pragma once

#include "core/stats/roc.h"
#include "core/util/options.h"
#include "patching/discovery/circuit.h"
#include "patching/edge_attribution.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mechlab::discovery {

/// Metric of each circuit (the masked forward: removed edges read ablated values). Supplied by the caller,
/// e.g. [&](const std::vector<Circuit>& cs) { return runner.metrics(metric, cs); } with CircuitRunner.
using CircuitMetricFn = std::function<std::vector<double>(const std::vector<Circuit>&)>;

/// The full circuit of `scores.graph` with each residual edge's score set
/// from `scores` (head-input edges stay unscored).
Circuit scored_circuit(const patching::EdgeScores& scores);

/// (m(C) - m(empty)) / (m(full) - m(empty)) from the three metric values;
/// an error when m(full) == m(empty) (faithfulness is then undefined).
double faithfulness(double m_circuit, double m_full, double m_empty);

/// Faithfulness of each circuit: one call of `fn` on [full, empty, circuits...]
/// of the circuits' graph (all circuits must share one graph).
std::vector<double> faithfulness(const std::vector<Circuit>& circuits, const CircuitMetricFn& fn);

struct RankOptions {
  /// Rank edges by |score| (MIB's default, absolute=True: a large negative
  /// effect matters as much as a large positive one); false: by signed score.
  MECHLAB_OPTION(RankOptions, bool, absolute, true)
  /// Remove dangling edges (Circuit::without_dangling) from each top-k
  /// circuit before it is run, as MIB's apply_topn(prune=True) does.
  MECHLAB_OPTION(RankOptions, bool, prune, true)
};

/// The ranked edges (see the top of this file), best first: by |score| or
/// score descending, ties in edges() order.
std::vector<CircuitEdge> ranked_edges(const Circuit& scored, const RankOptions& options = {});

/// The circuit of the first k ranked edges (plus every edge of an unranked
/// kind), pruned if options.prune(); a new circuit without scores (the
/// kept state of `scored` plays no part). 0 <= k <= ranked_edges().size().
Circuit top_k_circuit(const Circuit& scored, int64_t k, const RankOptions& options = {});

/// MIB's edge fractions: 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.
const std::vector<double>& mib_fractions();

struct FaithfulnessPoint {
  double fraction = 0;  ///< requested share of the ranked edges
  int64_t k = 0;        ///< floor(fraction * ranked edges), MIB's int(pct * n)
  int64_t kept = 0;     ///< edges kept after pruning (Circuit::edge_count)
  double metric = 0;    ///< m(circuit)
  double faithfulness = 0;
};

struct FaithfulnessCurve {
  std::vector<FaithfulnessPoint> points;
  double metric_full = 0, metric_empty = 0;
  double cpr = 0;  ///< area under f over the fraction axis (trapezoids)
  double cmd = 0;  ///< area under |1 - f| over the fraction axis (trapezoids)
};

/// CPR and CMD of (fraction, faithfulness) points, fractions increasing:
/// trapezoids over the linear fraction axis, as MIB's
/// evaluate_area_under_curve (log_scale=False). At least two points.
std::pair<double, double> faithfulness_areas(const std::vector<double>& fractions,
                                             const std::vector<double>& faithfulness);

/// The top-k circuits for `fractions` (default mib_fractions(); increasing,
/// in (0, 1]), run in one call of `fn` with the full and empty circuits.
FaithfulnessCurve faithfulness_curve(const Circuit& scored, const CircuitMetricFn& fn,
                                     const RankOptions& options = {},
                                     std::vector<double> fractions = {});
FaithfulnessCurve faithfulness_curve(const patching::EdgeScores& scores, const CircuitMetricFn& fn,
                                     const RankOptions& options = {},
                                     std::vector<double> fractions = {});

struct TopKSelection {
  int64_t k = 0;  ///< ranked edges taken
  Circuit circuit;
  double faithfulness = 0;
  int64_t evaluations = 0;  ///< circuits run, full and empty included
};

/// The top-k circuit with the smallest k whose faithfulness reaches
/// `target`, by binary search over k: f(0) and f(n) first (f(n) below the
/// target is an error), then halving [lo, hi] with f(lo) < target <= f(hi).
/// Faithfulness need not grow with k; the search then returns a k with
/// f(k) >= target > f(k - 1), and a smaller k may also reach the target.
TopKSelection select_by_faithfulness(const Circuit& scored, const CircuitMetricFn& fn, double target,
                                     const RankOptions& options = {});

/// ROC curves (one home: core/stats/roc.h); the overloads below rank edges.
using core::stats::RocCurve;
using core::stats::roc_curve;

/// ROC of the ranked edges' scores (|score| unless !options.absolute())
/// against a reference edge set: edge names (Circuit::parse_edge's form) or
/// a circuit's kept edges of the ranked kinds. A named edge that is not
/// ranked is an error.
RocCurve roc_curve(const Circuit& scored, const std::vector<std::string>& reference,
                   const RankOptions& options = {});
RocCurve roc_curve(const Circuit& scored, const Circuit& reference, const RankOptions& options = {});
RocCurve roc_curve(const patching::EdgeScores& scores, const std::vector<std::string>& reference,
                   const RankOptions& options = {});

}  // namespace mechlab::discovery
