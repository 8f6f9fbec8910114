// Circuit evaluation (patching/discovery/evaluation.h): ROC/AUC against
// scikit-learn, CPR/CMD against numpy's trapezoid rule and MIB's top-k edge
// counts (tests/data/discovery/eval/, scripts/fixtures/make_discovery_eval_fixtures.py),
// and the faithfulness curve and target selection with a circuit metric whose
// values are known in closed form: m(C) = the sum of the kept edges' weights.
#include "core/model/presets.h"
#include "patching/discovery/evaluation.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

using mechlab::discovery::Circuit;
using mechlab::discovery::CircuitEdge;
using mechlab::discovery::CircuitMetricFn;
using mechlab::discovery::RankOptions;
using mechlab::patching::CircuitGraph;
using mechlab::testing::error_of;
namespace ev = mechlab::discovery;

namespace {

constexpr double kTol = 1e-12;

const nlohmann::json& fixture() {
  static const nlohmann::json j = [] {
    std::ifstream f(std::string(MECHLAB_TEST_DATA) + "/discovery/eval/roc_and_areas.json");
    EXPECT_TRUE(f.good()) << "missing tests/data/discovery/eval/roc_and_areas.json";
    std::stringstream ss;
    ss << f.rdbuf();
    return nlohmann::json::parse(ss.str());
  }();
  return j;
}

// Residual edges scored (i + 1) in edges() order, head inputs unscored.
Circuit scored_by_position(const CircuitGraph& g) {
  Circuit c = Circuit::full(g);
  double i = 0;
  for (const CircuitEdge& e : c.edges()) {
    if (e.kind == CircuitEdge::Kind::residual) c.set_score(e, ++i);
  }
  return c;
}

// m(C) = sum over kept residual edges of their score: analytic faithfulness.
CircuitMetricFn sum_of_kept_scores(const Circuit& weights, int* calls = nullptr,
                                   std::vector<int64_t>* sizes = nullptr) {
  return [weights, calls, sizes](const std::vector<Circuit>& cs) {
    if (calls) ++*calls;
    if (sizes) sizes->push_back(static_cast<int64_t>(cs.size()));
    std::vector<double> out;
    for (const Circuit& c : cs) {
      double m = 0;
      for (const CircuitEdge& e : c.edges()) {
        if (e.kind == CircuitEdge::Kind::residual && c.kept(e)) m += weights.score(e);
      }
      out.push_back(m);
    }
    return out;
  };
}

int64_t kept_residual(const Circuit& c) {
  int64_t n = 0;
  for (const CircuitEdge& e : c.edges()) n += e.kind == CircuitEdge::Kind::residual && c.kept(e);
  return n;
}

}  // namespace

TEST(Evaluation, RocCurveMatchesScikitLearnIncludingTiesAndConstantScores) {
  const auto& cases = fixture().at("roc");
  ASSERT_GE(cases.size(), 8u);
  for (const auto& c : cases) {
    const std::string name = c.at("name");
    const ev::RocCurve roc =
        ev::roc_curve(c.at("scores").get<std::vector<double>>(), c.at("labels").get<std::vector<int>>());
    const auto fpr = c.at("fpr").get<std::vector<double>>();
    const auto tpr = c.at("tpr").get<std::vector<double>>();
    const auto thr = c.at("thresholds").get<std::vector<double>>();
    ASSERT_EQ(roc.fpr.size(), fpr.size()) << name;
    ASSERT_EQ(roc.tpr.size(), tpr.size()) << name;
    ASSERT_EQ(roc.thresholds.size(), thr.size() + 1) << name;
    EXPECT_TRUE(std::isinf(roc.thresholds[0]) && roc.thresholds[0] > 0) << name;
    for (size_t i = 0; i < fpr.size(); ++i) {
      EXPECT_NEAR(roc.fpr[i], fpr[i], kTol) << name << " point " << i;
      EXPECT_NEAR(roc.tpr[i], tpr[i], kTol) << name << " point " << i;
    }
    for (size_t i = 0; i < thr.size(); ++i) EXPECT_EQ(roc.thresholds[i + 1], thr[i]) << name << " " << i;
    EXPECT_NEAR(roc.auc, c.at("auc").get<double>(), kTol) << name;
  }
}

TEST(Evaluation, AreasMatchNumpyTrapezoidsOverTheFractionAxis) {
  for (const auto& c : fixture().at("areas")) {
    const auto [cpr, cmd] = ev::faithfulness_areas(c.at("fractions").get<std::vector<double>>(),
                                                   c.at("faithfulness").get<std::vector<double>>());
    EXPECT_NEAR(cpr, c.at("cpr").get<double>(), kTol) << c.at("name");
    EXPECT_NEAR(cmd, c.at("cmd").get<double>(), kTol) << c.at("name");
  }
  EXPECT_EQ(ev::mib_fractions(), fixture().at("top_k")[0].at("fractions").get<std::vector<double>>());
  EXPECT_NE(error_of([] { ev::faithfulness_areas({0.1, 0.05}, {1, 1}); }).find("must increase"),
            std::string::npos);
  EXPECT_NE(error_of([] { ev::faithfulness_areas({0.1}, {1}); }).find("at least two"), std::string::npos);
}

TEST(Evaluation, FaithfulnessIsMibsNormalisationAndRefusesAFlatMetric) {
  EXPECT_DOUBLE_EQ(ev::faithfulness(3.0, 5.0, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(ev::faithfulness(-1.0, 5.0, 1.0), -0.5);
  EXPECT_DOUBLE_EQ(ev::faithfulness(1.0, -1.0, 3.0), 0.5);  // the full model may score lower
  const std::string msg = error_of([] { ev::faithfulness(2.0, 1.5, 1.5); });
  EXPECT_NE(msg.find("undefined"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);

  const CircuitGraph g(mechlab::core::preset("attn-only-2l"));
  const Circuit w = scored_by_position(g);
  Circuit half = Circuit::full(g);
  double kept = 0, total = 0;
  for (const CircuitEdge& e : half.edges()) {
    if (e.kind != CircuitEdge::Kind::residual) continue;
    total += w.score(e);
    if (static_cast<int64_t>(w.score(e)) % 2 == 0) {
      half.set_kept(e, false);
    } else {
      kept += w.score(e);
    }
  }
  const std::vector<double> f = ev::faithfulness({half, Circuit::full(g)}, sum_of_kept_scores(w));
  ASSERT_EQ(f.size(), 2u);
  EXPECT_NEAR(f[0], kept / total, kTol);
  EXPECT_NEAR(f[1], 1.0, kTol);
  const CircuitMetricFn flat = [](const std::vector<Circuit>& cs) { return std::vector<double>(cs.size(), 2.0); };
  EXPECT_NE(error_of([&] { ev::faithfulness({half}, flat); }).find("undefined"), std::string::npos);
  const CircuitMetricFn nan_fn = [](const std::vector<Circuit>& cs) {
    return std::vector<double>(cs.size(), std::numeric_limits<double>::quiet_NaN());
  };
  EXPECT_NE(error_of([&] { ev::faithfulness({half}, nan_fn); }).find("must be finite"), std::string::npos);
  const Circuit other = Circuit::full(CircuitGraph(mechlab::core::preset("tiny")));
  EXPECT_NE(error_of([&] { ev::faithfulness({half, other}, sum_of_kept_scores(w)); }).find("different graphs"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ev::roc_curve(w, other); }).find("another graph"), std::string::npos);
  const CircuitMetricFn short_fn = [](const std::vector<Circuit>&) { return std::vector<double>{1.0}; };
  EXPECT_NE(error_of([&] { ev::faithfulness({half}, short_fn); }).find("one metric per circuit"),
            std::string::npos);
}

// Scores i + 1 rank the last k residual edges first, so the top-k circuit
// (unpruned) has m = sum_{j=n-k+1}^{n} j = k (2n - k + 1) / 2 of n (n + 1) / 2.
TEST(Evaluation, FaithfulnessCurveOfTopKCircuitsIsAnalytic) {
  const CircuitGraph g(mechlab::core::preset("attn-only-2l"));
  const Circuit scored = scored_by_position(g);
  int calls = 0;
  std::vector<int64_t> sizes;
  const auto curve = ev::faithfulness_curve(scored, sum_of_kept_scores(scored, &calls, &sizes),
                                            RankOptions().prune(false));
  EXPECT_EQ(calls, 1) << "one batched call for every circuit of the curve";
  EXPECT_EQ(sizes, std::vector<int64_t>{12});
  const auto n = static_cast<double>(ev::ranked_edges(scored).size());
  ASSERT_EQ(curve.points.size(), ev::mib_fractions().size());
  std::vector<double> fs;
  for (const auto& p : curve.points) {
    const double k = std::floor(p.fraction * n);
    EXPECT_EQ(p.k, static_cast<int64_t>(k));
    EXPECT_NEAR(p.faithfulness, k * (2 * n - k + 1) / (n * (n + 1)), kTol) << p.fraction;
    fs.push_back(p.faithfulness);
  }
  EXPECT_NEAR(curve.metric_full, n * (n + 1) / 2, kTol);
  EXPECT_EQ(curve.metric_empty, 0.0);
  EXPECT_NEAR(curve.points.back().faithfulness, 1.0, kTol);
  const auto [cpr, cmd] = ev::faithfulness_areas(ev::mib_fractions(), fs);
  EXPECT_NEAR(curve.cpr, cpr, kTol);
  EXPECT_NEAR(curve.cmd, cmd, kTol);
  EXPECT_NE(error_of([&] { ev::faithfulness_curve(scored, sum_of_kept_scores(scored), {}, {0.5, 0.2}); })
                .find("fractions must increase within (0, 1]"),
            std::string::npos);

  // Ranking by signed score: negate the odd positions; the top k are the
  // largest even positions (the unsigned ranking would mix in negative ones).
  Circuit signed_scores = scored_by_position(g);  // a copy would share scored's tensors
  for (const CircuitEdge& e : signed_scores.edges()) {
    if (e.kind == CircuitEdge::Kind::residual && static_cast<int64_t>(scored.score(e)) % 2 == 1) {
      signed_scores.set_score(e, -scored.score(e));
    }
  }
  const std::vector<CircuitEdge> by_sign = ev::ranked_edges(signed_scores, RankOptions().absolute(false));
  const std::vector<CircuitEdge> by_abs = ev::ranked_edges(signed_scores);
  for (size_t i = 0; i < by_sign.size() / 2; ++i) {
    EXPECT_GT(signed_scores.score(by_sign[i]), 0) << i;
  }
  EXPECT_EQ(signed_scores.score(by_sign[0]), std::fmod(n, 2.0) == 0 ? n : n - 1);
  EXPECT_EQ(std::abs(signed_scores.score(by_abs[0])), n);
  EXPECT_LT(signed_scores.score(by_sign.back()), 0);
}

// MIB takes int(fraction * n) edges: checked on GPT-2 small's 32,491 residual
// edges (EAP's scores) and its 32,923 edges with head inputs scored too.
TEST(Evaluation, TopKEdgeCountsAreMibs) {
  const CircuitGraph g(mechlab::core::preset("gpt2-small"));
  Circuit residual = Circuit::full(g);
  Circuit all = Circuit::full(g);
  for (const CircuitEdge& e : all.edges()) {
    all.set_score(e, 1.0);
    if (e.kind == CircuitEdge::Kind::residual) residual.set_score(e, 1.0);
  }
  const CircuitMetricFn count = [](const std::vector<Circuit>& cs) {
    std::vector<double> out;
    for (const Circuit& c : cs) out.push_back(static_cast<double>(c.edge_count()));
    return out;
  };
  for (const auto& tk : fixture().at("top_k")) {
    const int64_t n = tk.at("n");
    if (n != 32491 && n != 32923) continue;
    const auto curve = ev::faithfulness_curve(n == 32491 ? residual : all, count, RankOptions().prune(false));
    const auto ks = tk.at("k").get<std::vector<int64_t>>();
    ASSERT_EQ(curve.points.size(), ks.size());
    for (size_t i = 0; i < ks.size(); ++i) {
      EXPECT_EQ(curve.points[i].k, ks[i]) << n << " at " << curve.points[i].fraction;
      // Unranked head inputs (432) stay kept when only residual edges are scored.
      EXPECT_EQ(curve.points[i].kept, ks[i] + (n == 32491 ? 432 : 0));
    }
  }
}

TEST(Evaluation, CurveCircuitsArePrunedOfDanglingEdges) {
  const CircuitGraph g(mechlab::core::preset("attn-only-2l"));
  const Circuit scored = scored_by_position(g);
  std::vector<Circuit> seen;
  const CircuitMetricFn record = [&](const std::vector<Circuit>& cs) {
    seen = cs;
    std::vector<double> out;
    for (const Circuit& c : cs) out.push_back(static_cast<double>(kept_residual(c)));
    return out;
  };
  const auto curve = ev::faithfulness_curve(scored, record, RankOptions(), {0.25, 0.5, 1.0});
  ASSERT_EQ(seen.size(), 5u);
  for (size_t i = 0; i < curve.points.size(); ++i) {
    const Circuit unpruned = ev::top_k_circuit(scored, curve.points[i].k, RankOptions().prune(false));
    const Circuit pruned = unpruned.without_dangling();
    EXPECT_EQ(seen[i + 2].edge_count(), pruned.edge_count());
    EXPECT_EQ(curve.points[i].kept, pruned.edge_count());
    for (const CircuitEdge& e : pruned.edges()) EXPECT_EQ(seen[i + 2].kept(e), pruned.kept(e));
  }
  // The top quarter (scores i + 1: the edges into output and the last
  // layer-1 inputs) has edges from heads whose inputs are not kept.
  EXPECT_LT(curve.points[0].kept, ev::top_k_circuit(scored, curve.points[0].k, RankOptions().prune(false)).edge_count());
}

TEST(Evaluation, SelectionFindsTheSmallestTopKReachingTheTarget) {
  const CircuitGraph g(mechlab::core::preset("attn-only-2l"));
  const Circuit scored = scored_by_position(g);
  const auto n = static_cast<int64_t>(ev::ranked_edges(scored).size());
  const double total = static_cast<double>(n) * static_cast<double>(n + 1) / 2;
  for (double target : {0.0, 0.3, 0.9, 0.99, 1.0}) {
    // Naive: the first k whose top-k score sum reaches the target.
    int64_t want = 0;
    double sum = 0;
    while (sum / total < target) sum += static_cast<double>(n - want++);
    int calls = 0;
    const auto sel = ev::select_by_faithfulness(scored, sum_of_kept_scores(scored, &calls), target,
                                                RankOptions().prune(false));
    EXPECT_EQ(sel.k, want) << target;
    EXPECT_EQ(kept_residual(sel.circuit), want) << target;
    EXPECT_GE(sel.faithfulness, target);
    EXPECT_LE(sel.evaluations, 4 + static_cast<int64_t>(std::ceil(std::log2(static_cast<double>(n)))));
    EXPECT_EQ(calls, static_cast<int>(sel.evaluations) - 3);  // the first call runs four circuits
  }
  const std::string msg =
      error_of([&] { ev::select_by_faithfulness(scored, sum_of_kept_scores(scored), 1.5); });
  EXPECT_NE(msg.find("no top-k circuit reaches faithfulness 1.5"), std::string::npos) << msg;
}

// A faithfulness that is not monotone in k: the search still returns a k at
// which the curve crosses the target.
TEST(Evaluation, SelectionOnANonMonotoneCurveReturnsACrossing) {
  const CircuitGraph g(mechlab::core::preset("attn-only-2l"));
  const Circuit scored = scored_by_position(g);
  const auto n = static_cast<int64_t>(ev::ranked_edges(scored).size());
  auto f_of_k = [n](int64_t k) {  // full = 1 at k = n, oscillating below
    return k == n ? 1.0 : 0.5 + 0.45 * std::sin(static_cast<double>(k) * 0.7);
  };
  const CircuitMetricFn fn = [&](const std::vector<Circuit>& cs) {
    std::vector<double> out;
    for (const Circuit& c : cs) {
      const int64_t k = kept_residual(c);
      // full (every edge) -> 1, empty (none) -> 0.
      out.push_back(k == 0 && c.edge_count() == 0 ? 0.0 : f_of_k(k));
    }
    return out;
  };
  const auto sel = ev::select_by_faithfulness(scored, fn, 0.9, RankOptions().prune(false));
  EXPECT_GE(f_of_k(sel.k), 0.9);
  ASSERT_GT(sel.k, 0);
  EXPECT_LT(f_of_k(sel.k - 1), 0.9);
  EXPECT_DOUBLE_EQ(sel.faithfulness, f_of_k(sel.k));
}

TEST(Evaluation, RocOfCircuitScoresAgainstReferenceEdges) {
  const CircuitGraph g(mechlab::core::preset("attn-only-2l"));
  Circuit scored = scored_by_position(g);
  // The reference is the three highest-scoring residual edges and one low one.
  const std::vector<CircuitEdge> ranked = ev::ranked_edges(scored);
  std::vector<std::string> ref{scored.edge_name(ranked[0]), scored.edge_name(ranked[1]),
                               scored.edge_name(ranked[2]), scored.edge_name(ranked.back())};
  const ev::RocCurve roc = ev::roc_curve(scored, ref);
  const double N = static_cast<double>(ranked.size()) - 4;
  // 3 positives on top, then every negative, then the last positive:
  // AUC = (3 * N + 0) / (4 * N).
  EXPECT_NEAR(roc.auc, 0.75, kTol);
  EXPECT_EQ(roc.positives, 4);
  EXPECT_EQ(roc.negatives, static_cast<int64_t>(N));

  // The same set as a reference circuit (its kept head inputs are not ranked
  // here, so they do not count).
  Circuit refc = Circuit::empty(g);
  for (const std::string& e : ref) refc.set_kept(refc.parse_edge(e), true);
  refc.set_kept(refc.parse_edge("a1.h0<k> -> a1.h0"), true);
  EXPECT_NEAR(ev::roc_curve(scored, refc).auc, 0.75, kTol);

  std::string msg = error_of([&] { ev::roc_curve(scored, std::vector<std::string>{"a1.h0<k> -> a1.h0"}); });
  EXPECT_NE(msg.find("not among the scored edges"), std::string::npos) << msg;
  msg = error_of([&] { ev::roc_curve(scored, std::vector<std::string>{}); });
  EXPECT_NE(msg.find("0 positives"), std::string::npos) << msg;

  scored.set_score(ranked[5], std::numeric_limits<double>::quiet_NaN());
  msg = error_of([&] { ev::roc_curve(scored, ref); });
  EXPECT_NE(msg.find("has no score (or NaN)"), std::string::npos) << msg;
  EXPECT_NE(msg.find(scored.edge_name(ranked[5])), std::string::npos) << msg;
  EXPECT_NE(error_of([] { ev::roc_curve({0.1, NAN}, {1, 0}); }).find("NaN"), std::string::npos);
  EXPECT_NE(error_of([] { ev::roc_curve({0.1, 0.2}, {1, 2}); }).find("0 or 1"), std::string::npos);
  EXPECT_NE(error_of([&] { ev::roc_curve(Circuit::full(g), ref); }).find("no edge scores"),
            std::string::npos);
}

// Edge attribution's [senders, receivers] matrix becomes residual-edge
// scores; head inputs stay unscored, so only residual edges are ranked.
TEST(Evaluation, ScoredCircuitTakesEdgeScoresMatrixEntries) {
  const CircuitGraph g(mechlab::core::preset("attn-only-2l"));
  const auto S = static_cast<int64_t>(g.senders().size());
  const auto R = static_cast<int64_t>(g.receivers().size());
  at::Tensor m = at::full({S, R}, std::numeric_limits<double>::quiet_NaN(), at::kFloat);  // [senders, receivers]
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t r = 0; r < R; ++r) {
      if (g.has_edge(g.senders()[static_cast<size_t>(s)], g.receivers()[static_cast<size_t>(r)])) {
        m[s][r] = static_cast<float>(s * 100 + r) * (r % 2 ? -1.0f : 1.0f);
      }
    }
  }
  const mechlab::patching::EdgeScores es{g, m, nlohmann::json::object()};
  const Circuit c = ev::scored_circuit(es);
  int64_t residual = 0;
  for (const CircuitEdge& e : c.edges()) {
    if (e.kind == CircuitEdge::Kind::residual) {
      ++residual;
      EXPECT_EQ(c.score(e), m[e.sender][e.receiver].item<double>()) << c.edge_name(e);
    } else {
      EXPECT_TRUE(std::isnan(c.score(e))) << c.edge_name(e);
    }
    EXPECT_TRUE(c.kept(e));
  }
  EXPECT_EQ(static_cast<int64_t>(ev::ranked_edges(c).size()), residual);
  EXPECT_EQ(static_cast<int64_t>(es.all().size()), residual);
  // The largest |score| first, as EdgeScores::top orders them.
  const auto top = es.top(3);
  const std::vector<CircuitEdge> ranked = ev::ranked_edges(c);
  for (size_t i = 0; i < top.size(); ++i) {
    EXPECT_EQ(c.edge_name(ranked[i]), mechlab::patching::edge_name(top[i].first)) << i;
  }
  const std::string first = c.edge_name(ranked[0]);
  EXPECT_NEAR(ev::roc_curve(es, {first}).auc, 1.0, kTol);
}
