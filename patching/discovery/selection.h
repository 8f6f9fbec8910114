// A circuit from edge scores (EAP, EAP-IG: patching/edge_attribution.h):
// the edges whose score is large in magnitude, as Syed et al. (2023) and
// Hanna et al. (2024) select them.
//
//   threshold τ:  keep every residual edge with |score| >= τ
//   top_n n:      keep the n residual edges of largest |score| (ties broken
//                 by the graph's canonical edge order, so the result is
//                 deterministic)
//
// Head-input edges ("a1.h2<q> -> a1.h2"), which EAP does not score, are kept
// when any residual edge into that input is kept: a head input with no kept
// sender carries nothing, one with a kept sender must reach the head. Their
// score is the sum of the scores of the residual edges into that input (a
// receiver input's difference is the sum of its senders' differences, so
// this is EAP's own linear estimate of removing the input). Every edge's
// score is copied into the circuit, kept or not. Last, dangling edges are
// pruned (Circuit::without_dangling): an edge whose sender is not reached
// from the input, or whose receiver does not reach the output, cannot
// change the metric.
//
// Example:
//   EdgeScores e = patching::edge_attribution(model, data, metric);
//   Circuit c = select_edges(e, SelectionOptions().top_n(50));
#pragma once

#include "core/util/options.h"
#include "patching/discovery/circuit.h"
#include "patching/edge_attribution.h"

#include <cstdint>
#include <limits>

namespace mechlab::discovery {

/// Exactly one of threshold (>= 0) and top_n (> 0) must be given.
struct SelectionOptions {
  /// Keep residual edges with |score| >= threshold; NaN = not given.
  MECHLAB_OPTION(SelectionOptions, double, threshold, std::numeric_limits<double>::quiet_NaN())
  /// Keep the top_n residual edges by |score|; 0 = not given.
  MECHLAB_OPTION(SelectionOptions, int64_t, top_n, 0)
};

/// The selected circuit, dangling edges pruned, every score set. Throws
/// mechlab::Error when the options give neither or both selections, or a
/// negative threshold / top_n.
Circuit select_edges(const patching::EdgeScores& scores, const SelectionOptions& options);

}  // namespace mechlab::discovery
