#include "patching/discovery/evaluation.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <tuple>

namespace mechlab::discovery {

namespace {

using Kind = CircuitEdge::Kind;

// Every edge's score in edges() order, read once: Circuit::score reads a
// tensor element, too slow to call inside a sort.
std::vector<double> scores_of(const Circuit& c) {
  std::vector<double> s;
  s.reserve(c.edges().size());
  for (const CircuitEdge& e : c.edges()) s.push_back(c.score(e));
  return s;
}

// Which kinds are ranked: a kind is ranked when one of its edges has a score;
// then every edge of it must have one.
struct RankedKinds {
  bool residual = false, head_input = false;
  bool has(Kind k) const { return k == Kind::residual ? residual : head_input; }
};

RankedKinds ranked_kinds(const Circuit& c, const std::vector<double>& scores) {
  RankedKinds r;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (std::isnan(scores[i])) continue;
    (c.edges()[i].kind == Kind::residual ? r.residual : r.head_input) = true;
  }
  MECHLAB_CHECK(r.residual || r.head_input,
                "the circuit has no edge scores: evaluation ranks edges by score; set them "
                "(Circuit::set_score) or pass edge attribution scores");
  for (size_t i = 0; i < scores.size(); ++i) {
    const CircuitEdge& e = c.edges()[i];
    MECHLAB_CHECK(!r.has(e.kind) || !std::isnan(scores[i]), "edge \"", c.edge_name(e),
                  "\" has no score (or NaN) while other ",
                  e.kind == Kind::residual ? "residual" : "head-input",
                  " edges are scored: score every edge of a kind or none");
  }
  return r;
}

// The ranked edges with their scores, best first.
struct Ranking {
  RankedKinds kinds;
  std::vector<CircuitEdge> edges;
  std::vector<double> scores;  // raw scores, same order as edges
};

double rank_value(double score, const RankOptions& o) { return o.absolute() ? std::abs(score) : score; }

bool same_graph(const patching::CircuitGraph& a, const patching::CircuitGraph& b) {
  return a.senders() == b.senders() && a.receivers() == b.receivers();
}

const Circuit& one_graph(const std::vector<Circuit>& circuits) {
  MECHLAB_CHECK(!circuits.empty(), "faithfulness needs at least one circuit");
  for (const Circuit& c : circuits) {
    MECHLAB_CHECK(same_graph(c.graph(), circuits[0].graph()),
                  "the circuits passed to faithfulness belong to different graphs: evaluate "
                  "circuits of one model together");
    MECHLAB_CHECK(c.n_positions() == circuits[0].n_positions(),
                  "the circuits passed to faithfulness differ in their position split (", c.n_positions(), " and ",
                  circuits[0].n_positions(), " positions): evaluate circuits of one split together");
  }
  return circuits[0];
}

std::vector<double> run(const CircuitMetricFn& fn, const std::vector<Circuit>& circuits) {
  std::vector<double> m = fn(circuits);
  MECHLAB_CHECK(m.size() == circuits.size(), "the circuit metric callback returned ", m.size(),
                " values for ", circuits.size(), " circuits: return one metric per circuit");
  for (double v : m) {
    MECHLAB_CHECK(std::isfinite(v), "the circuit metric callback returned ", v,
                  ": circuit metrics must be finite");
  }
  return m;
}

}  // namespace

Circuit scored_circuit(const patching::EdgeScores& scores) {
  const int64_t S = static_cast<int64_t>(scores.graph.senders().size());
  const int64_t R = static_cast<int64_t>(scores.graph.receivers().size());
  MECHLAB_CHECK(scores.scores.defined() &&
                    ((scores.scores.dim() == 2 && scores.scores.size(0) == S && scores.scores.size(1) == R) ||
                     (scores.scores.dim() == 3 && scores.scores.size(1) == S && scores.scores.size(2) == R)),
                "edge scores must be a [senders, receivers] matrix of their graph (or [pos, senders, receivers] "
                "split by position)");
  // Per-position scores give a position-split circuit.
  Circuit c = Circuit::full(scores.graph, scores.n_positions());
  const at::Tensor s = scores.scores.to(at::kCPU, at::kDouble).contiguous();  // [(pos,) senders, receivers]
  const double* a = s.data_ptr<double>();
  for (const CircuitEdge& e : c.edges()) {
    if (e.kind == Kind::residual) c.set_score(e, a[(std::max<int64_t>(e.pos, 0) * S + e.sender) * R + e.receiver]);
  }
  return c;
}

double faithfulness(double m_circuit, double m_full, double m_empty) {
  MECHLAB_CHECK(m_full != m_empty, "faithfulness is undefined: the full model and the empty circuit give the same ",
                "metric (", m_full, "); use a metric and data on which ablating every edge changes the output");
  return (m_circuit - m_empty) / (m_full - m_empty);
}

std::vector<double> faithfulness(const std::vector<Circuit>& circuits, const CircuitMetricFn& fn) {
  const Circuit& first = one_graph(circuits);
  std::vector<Circuit> all{Circuit::full(first.graph(), first.n_positions()),
                           Circuit::empty(first.graph(), first.n_positions())};
  all.insert(all.end(), circuits.begin(), circuits.end());
  const std::vector<double> m = run(fn, all);
  std::vector<double> out;
  for (size_t i = 2; i < m.size(); ++i) out.push_back(faithfulness(m[i], m[0], m[1]));
  return out;
}

namespace {

Ranking rank(const Circuit& scored, const RankOptions& options) {
  const std::vector<double> all = scores_of(scored);
  Ranking r;
  r.kinds = ranked_kinds(scored, all);
  std::vector<size_t> idx;
  for (size_t i = 0; i < all.size(); ++i) {
    if (r.kinds.has(scored.edges()[i].kind)) idx.push_back(i);
  }
  // Stable: equal values keep edges() order, so top-k is deterministic.
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    return rank_value(all[a], options) > rank_value(all[b], options);
  });
  for (size_t i : idx) {
    r.edges.push_back(scored.edges()[i]);
    r.scores.push_back(all[i]);
  }
  return r;
}

}  // namespace

std::vector<CircuitEdge> ranked_edges(const Circuit& scored, const RankOptions& options) {
  return rank(scored, options).edges;
}

namespace {

Circuit top_k_of(const Circuit& scored, const std::vector<CircuitEdge>& ranked, int64_t k,
                 const RankOptions& options) {
  MECHLAB_CHECK(k >= 0 && k <= static_cast<int64_t>(ranked.size()), "top-k circuit: k = ", k,
                " is outside [0, ", ranked.size(), "], the number of scored edges");
  // A fresh circuit: copies of a Circuit share its tensors, so removing
  // edges from a copy of `scored` would change `scored`.
  Circuit c = Circuit::full(scored.graph(), scored.n_positions());
  for (size_t i = static_cast<size_t>(k); i < ranked.size(); ++i) c.set_kept(ranked[i], false);
  return options.prune() ? c.without_dangling() : c;
}

}  // namespace

Circuit top_k_circuit(const Circuit& scored, int64_t k, const RankOptions& options) {
  return top_k_of(scored, ranked_edges(scored, options), k, options);
}

const std::vector<double>& mib_fractions() {
  static const std::vector<double> f{0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0};
  return f;
}

std::pair<double, double> faithfulness_areas(const std::vector<double>& fractions,
                                             const std::vector<double>& faithfulness) {
  MECHLAB_CHECK(fractions.size() == faithfulness.size() && fractions.size() >= 2,
                "faithfulness areas need at least two (fraction, faithfulness) points, as many of each; got ",
                fractions.size(), " fractions and ", faithfulness.size(), " values");
  double cpr = 0, cmd = 0;
  for (size_t i = 0; i + 1 < fractions.size(); ++i) {
    MECHLAB_CHECK(fractions[i + 1] > fractions[i], "faithfulness areas: fractions must increase; ",
                  fractions[i + 1], " follows ", fractions[i]);
    const double dx = fractions[i + 1] - fractions[i];
    cpr += dx * (faithfulness[i] + faithfulness[i + 1]) / 2;
    cmd += dx * (std::abs(1 - faithfulness[i]) + std::abs(1 - faithfulness[i + 1])) / 2;
  }
  return {cpr, cmd};
}

FaithfulnessCurve faithfulness_curve(const Circuit& scored, const CircuitMetricFn& fn,
                                     const RankOptions& options, std::vector<double> fractions) {
  if (fractions.empty()) fractions = mib_fractions();
  for (size_t i = 0; i < fractions.size(); ++i) {
    MECHLAB_CHECK(fractions[i] > 0 && fractions[i] <= 1 && (i == 0 || fractions[i] > fractions[i - 1]),
                  "faithfulness curve: fractions must increase within (0, 1]; got ", fractions[i],
                  i == 0 ? "" : " after ", i == 0 ? std::string() : std::to_string(fractions[i - 1]));
  }
  MECHLAB_CHECK(fractions.size() >= 2, "faithfulness curve: give at least two fractions (the areas need them)");
  const std::vector<CircuitEdge> ranked = ranked_edges(scored, options);
  const auto n = static_cast<double>(ranked.size());

  FaithfulnessCurve curve;
  std::vector<Circuit> circuits{Circuit::full(scored.graph(), scored.n_positions()),
                                Circuit::empty(scored.graph(), scored.n_positions())};
  for (double f : fractions) {
    FaithfulnessPoint p;
    p.fraction = f;
    // MIB's int(pct * n_edges): the same double product, truncated, so k
    // is MIB's exactly (0.1 * n may round below n / 10 in both).
    p.k = static_cast<int64_t>(std::floor(f * n));
    circuits.push_back(top_k_of(scored, ranked, p.k, options));
    p.kept = circuits.back().edge_count();
    curve.points.push_back(p);
  }
  const std::vector<double> m = run(fn, circuits);
  curve.metric_full = m[0];
  curve.metric_empty = m[1];
  std::vector<double> fs;
  for (size_t i = 0; i < curve.points.size(); ++i) {
    curve.points[i].metric = m[i + 2];
    curve.points[i].faithfulness = faithfulness(m[i + 2], m[0], m[1]);
    fs.push_back(curve.points[i].faithfulness);
  }
  std::tie(curve.cpr, curve.cmd) = faithfulness_areas(fractions, fs);
  return curve;
}

FaithfulnessCurve faithfulness_curve(const patching::EdgeScores& scores, const CircuitMetricFn& fn,
                                     const RankOptions& options, std::vector<double> fractions) {
  return faithfulness_curve(scored_circuit(scores), fn, options, std::move(fractions));
}

TopKSelection select_by_faithfulness(const Circuit& scored, const CircuitMetricFn& fn, double target,
                                     const RankOptions& options) {
  MECHLAB_CHECK(std::isfinite(target), "the faithfulness target must be a finite number; got ", target);
  const std::vector<CircuitEdge> ranked = ranked_edges(scored, options);
  const auto n = static_cast<int64_t>(ranked.size());

  // First call: full, empty, top-0 and top-n.
  std::vector<Circuit> first{Circuit::full(scored.graph(), scored.n_positions()),
                             Circuit::empty(scored.graph(), scored.n_positions()),
                             top_k_of(scored, ranked, 0, options), top_k_of(scored, ranked, n, options)};
  std::vector<double> m = run(fn, first);
  const double m_full = m[0], m_empty = m[1];
  int64_t evaluations = 4;
  const double f0 = faithfulness(m[2], m_full, m_empty);
  if (f0 >= target) return TopKSelection{0, first[2], f0, evaluations};
  const double fn_ = faithfulness(m[3], m_full, m_empty);
  MECHLAB_CHECK(fn_ >= target, "no top-k circuit reaches faithfulness ", target, ": all ", n,
                " scored edges give ", fn_, "; lower the target");

  // Invariant: f(lo) < target <= f(hi).
  int64_t lo = 0, hi = n;
  Circuit best = first[3];
  double best_f = fn_;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    Circuit c = top_k_of(scored, ranked, mid, options);
    const double f = faithfulness(run(fn, {c})[0], m_full, m_empty);
    ++evaluations;
    if (f >= target) {
      hi = mid;
      best = std::move(c);
      best_f = f;
    } else {
      lo = mid;
    }
  }
  return TopKSelection{hi, std::move(best), best_f, evaluations};
}

namespace {

RocCurve roc_of_ranking(const Ranking& r, const std::vector<char>& positive, const RankOptions& options) {
  std::vector<double> s;
  std::vector<int> y;
  for (size_t i = 0; i < r.edges.size(); ++i) {
    s.push_back(rank_value(r.scores[i], options));
    y.push_back(positive[i] ? 1 : 0);
  }
  const int64_t pos = std::count(y.begin(), y.end(), 1);
  MECHLAB_CHECK(pos > 0 && pos < static_cast<int64_t>(y.size()), "ROC curve: the labels have ", pos,
                " positives and ", static_cast<int64_t>(y.size()) - pos,
                " negatives; the ROC needs both (check the reference set against the scored edges)");
  return roc_curve(s, y);
}

// Position of each ranked edge, by (kind, sender, receiver).
std::map<std::tuple<int, int64_t, int64_t>, size_t> positions(const Ranking& r) {
  std::map<std::tuple<int, int64_t, int64_t>, size_t> pos;
  for (size_t i = 0; i < r.edges.size(); ++i) {
    pos[{static_cast<int>(r.edges[i].kind), r.edges[i].sender, r.edges[i].receiver}] = i;
  }
  return pos;
}

}  // namespace

RocCurve roc_curve(const Circuit& scored, const std::vector<std::string>& reference,
                   const RankOptions& options) {
  const Ranking r = rank(scored, options);
  const auto pos = positions(r);
  std::vector<char> positive(r.edges.size(), 0);
  for (const std::string& name : reference) {
    const CircuitEdge e = scored.parse_edge(name);
    auto it = pos.find({static_cast<int>(e.kind), e.sender, e.receiver});
    MECHLAB_CHECK(it != pos.end(), "reference edge \"", name,
                  "\" is not among the scored edges (its kind has no scores); leave it out of the reference");
    positive[it->second] = 1;
  }
  return roc_of_ranking(r, positive, options);
}

RocCurve roc_curve(const Circuit& scored, const Circuit& reference, const RankOptions& options) {
  MECHLAB_CHECK(same_graph(reference.graph(), scored.graph()),
                "the reference circuit belongs to another graph than the scored edges: use one model's circuits");
  const Ranking r = rank(scored, options);
  std::vector<char> positive(r.edges.size(), 0);
  for (size_t i = 0; i < r.edges.size(); ++i) positive[i] = reference.kept(r.edges[i]) ? 1 : 0;
  return roc_of_ranking(r, positive, options);
}

RocCurve roc_curve(const patching::EdgeScores& scores, const std::vector<std::string>& reference,
                   const RankOptions& options) {
  return roc_curve(scored_circuit(scores), reference, options);
}

}  // namespace mechlab::discovery
