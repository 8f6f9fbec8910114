#include "patching/discovery/selection.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace mechlab::discovery {

Circuit select_edges(const patching::EdgeScores& scores, const SelectionOptions& options) {
  const bool by_threshold = !std::isnan(options.threshold());
  const bool by_top = options.top_n() != 0;
  MECHLAB_CHECK(by_threshold != by_top, "edge selection needs exactly one of threshold and top_n (",
                by_threshold ? "both" : "neither", " given)");
  MECHLAB_CHECK(!by_threshold || options.threshold() >= 0.0, "edge selection threshold ",
                options.threshold(), " is negative; give a threshold >= 0 (|score| >= threshold is kept)");
  MECHLAB_CHECK(!by_top || options.top_n() > 0, "edge selection top_n ", options.top_n(),
                " is negative; give the number of edges to keep (> 0)");

  const int64_t S = static_cast<int64_t>(scores.graph.senders().size());
  const int64_t R = static_cast<int64_t>(scores.graph.receivers().size());
  const at::Tensor s = scores.scores.to(at::kCPU, at::kDouble).contiguous();  // [(pos,) senders, receivers]
  MECHLAB_CHECK((s.dim() == 2 || s.dim() == 3) && s.size(-2) == S && s.size(-1) == R,
                "edge scores of shape ", c10::str(s.sizes()), " do not match their graph (",
                scores.graph.senders().size(), " senders x ", scores.graph.receivers().size(),
                " receivers, optionally split by position)");
  // Per-position scores select (edge, position) pairs of a position-split circuit.
  Circuit c = Circuit::empty(scores.graph, scores.n_positions());
  const double* sp = s.data_ptr<double>();
  auto raw = [&](const CircuitEdge& e) { return sp[(std::max<int64_t>(e.pos, 0) * S + e.sender) * R + e.receiver]; };

  // Residual edges in canonical order with their scores.
  std::vector<CircuitEdge> residual;
  for (const CircuitEdge& e : c.edges()) {
    if (e.kind != CircuitEdge::Kind::residual) continue;
    residual.push_back(e);
    c.set_score(e, raw(e));
  }
  auto magnitude = [&](const CircuitEdge& e) {
    const double v = raw(e);
    return std::isnan(v) ? -1.0 : std::fabs(v);  // an unscored edge is never selected
  };
  if (by_threshold) {
    for (const CircuitEdge& e : residual) {
      if (magnitude(e) >= options.threshold()) c.set_kept(e, true);
    }
  } else {
    std::vector<size_t> order(residual.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return magnitude(residual[a]) > magnitude(residual[b]);
    });
    const size_t n = std::min(order.size(), static_cast<size_t>(options.top_n()));
    for (size_t i = 0; i < n; ++i) {
      if (magnitude(residual[order[i]]) >= 0.0) c.set_kept(residual[order[i]], true);
    }
  }
  // Head-input edges: kept when a residual edge into the input is kept;
  // scored by the sum of the residual edges into it.
  // One pass over the residual edges, per (receiver, position).
  const int64_t P = std::max<int64_t>(1, scores.n_positions());
  std::vector<char> any(static_cast<size_t>(P * R), 0);
  std::vector<double> sum(static_cast<size_t>(P * R), 0.0);
  for (const CircuitEdge& r : residual) {
    const auto i = static_cast<size_t>(std::max<int64_t>(r.pos, 0) * R + r.receiver);
    any[i] = any[i] || c.kept(r);
    if (!std::isnan(raw(r))) sum[i] += raw(r);
  }
  for (const CircuitEdge& e : c.edges()) {
    if (e.kind != CircuitEdge::Kind::head_input) continue;
    const auto i = static_cast<size_t>(std::max<int64_t>(e.pos, 0) * R + e.receiver);
    c.set_kept(e, any[i] != 0);
    c.set_score(e, sum[i]);
  }
  return c.without_dangling();
}

}  // namespace mechlab::discovery
