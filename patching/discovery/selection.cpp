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

  Circuit c = Circuit::empty(scores.graph);
  const at::Tensor s = scores.scores.to(at::kCPU, at::kDouble).contiguous();  // [senders, receivers]
  MECHLAB_CHECK(s.dim() == 2 && s.size(0) == static_cast<int64_t>(scores.graph.senders().size()) &&
                    s.size(1) == static_cast<int64_t>(scores.graph.receivers().size()),
                "edge scores of shape ", c10::str(s.sizes()), " do not match their graph (",
                scores.graph.senders().size(), " senders x ", scores.graph.receivers().size(),
                " receivers)");
  auto sa = s.accessor<double, 2>();

  // Residual edges in canonical order with their scores.
  std::vector<CircuitEdge> residual;
  for (const CircuitEdge& e : c.edges()) {
    if (e.kind != CircuitEdge::Kind::residual) continue;
    residual.push_back(e);
    c.set_score(e, sa[e.sender][e.receiver]);
  }
  auto magnitude = [&](const CircuitEdge& e) {
    const double v = sa[e.sender][e.receiver];
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
  for (const CircuitEdge& e : c.edges()) {
    if (e.kind != CircuitEdge::Kind::head_input) continue;
    bool any = false;
    double sum = 0.0;
    for (const CircuitEdge& r : residual) {
      if (r.receiver != e.receiver) continue;
      any = any || c.kept(r);
      if (!std::isnan(sa[r.sender][r.receiver])) sum += sa[r.sender][r.receiver];
    }
    c.set_kept(e, any);
    c.set_score(e, sum);
  }
  return c.without_dangling();
}

}  // namespace mechlab::discovery
