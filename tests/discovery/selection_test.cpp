// Edge selection from EAP scores (patching/discovery/selection.h), on a graph
// small enough to check by hand: a 2-layer attention-only model with one
// head per layer. Senders input, a0.h0, a1.h0; receivers a0.h0<q|k|v>,
// a1.h0<q|k|v>, output; 12 residual edges and 6 head-input edges.
#include "core/model/presets.h"
#include "patching/discovery/selection.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <set>

using mechlab::discovery::Circuit;
using mechlab::discovery::CircuitEdge;
using mechlab::discovery::select_edges;
using mechlab::discovery::SelectionOptions;
using mechlab::patching::CircuitGraph;
using mechlab::patching::EdgeScores;
using mechlab::testing::error_of;

namespace {

CircuitGraph one_head_graph() {
  mechlab::core::ModelConfig cfg = mechlab::core::preset("attn-only-2l");
  cfg.n_heads = 1;
  cfg.d_head = 64;
  return CircuitGraph(cfg);
}

// Every residual edge scores 0.01 except those given.
EdgeScores scores_of(const CircuitGraph& g, const std::map<std::string, double>& given) {
  const auto S = static_cast<int64_t>(g.senders().size());
  const auto R = static_cast<int64_t>(g.receivers().size());
  at::Tensor s = at::full({S, R}, std::numeric_limits<double>::quiet_NaN(), at::kDouble);
  for (const auto& e : g.edges()) s[g.sender_index(e.sender)][g.receiver_index(e.receiver)] = 0.01;
  for (const auto& [name, v] : given) {
    const auto e = g.parse_edge(name);
    s[g.sender_index(e.sender)][g.receiver_index(e.receiver)] = v;
  }
  return EdgeScores{g, s, nlohmann::json::object()};
}

std::set<std::string> kept_names(const Circuit& c) {
  std::set<std::string> out;
  for (const CircuitEdge& e : c.edges()) {
    if (c.kept(e)) out.insert(c.edge_name(e));
  }
  return out;
}

const std::map<std::string, double> kScores = {
    {"input -> a0.h0<v>", 0.5},      {"a0.h0 -> output", 0.9}, {"a0.h0 -> a1.h0<q>", -0.8},
    {"a1.h0 -> output", 0.05},       {"input -> a1.h0<k>", 0.3}, {"input -> output", -0.2}};

}  // namespace

TEST(Selection, TheGraphHasTheEdgesCountedByHand) {
  const Circuit full = Circuit::full(one_head_graph());
  EXPECT_EQ(full.edges().size(), 18u);
}

// |score| >= 0.25 keeps four residual edges and the head inputs <v> of a0.h0
// and <q>, <k> of a1.h0; a1.h0's only way out (-> output, 0.05) is dropped,
// so everything into a1.h0 dangles and goes. Left: input -> a0.h0<v> ->
// a0.h0 -> output.
TEST(Selection, ThresholdKeepsLargeEdgesThenPrunesTheDangling) {
  const EdgeScores e = scores_of(one_head_graph(), kScores);
  const Circuit c = select_edges(e, SelectionOptions().threshold(0.25));
  EXPECT_EQ(kept_names(c), (std::set<std::string>{"input -> a0.h0<v>", "a0.h0<v> -> a0.h0",
                                                   "a0.h0 -> output"}));
  EXPECT_EQ(c.edge_count(), 3);
  // |score| equal to the threshold is kept (0.5 here); 0.2 < 0.25 is not.
  const Circuit at = select_edges(e, SelectionOptions().threshold(0.5));
  EXPECT_EQ(kept_names(at), kept_names(c));
  const Circuit low = select_edges(e, SelectionOptions().threshold(0.2));
  EXPECT_TRUE(kept_names(low).count("input -> output"));
  // Every score is copied, kept or not; head inputs get the sum of their senders.
  EXPECT_DOUBLE_EQ(c.score(c.parse_edge("a1.h0 -> output")), 0.05);
  EXPECT_DOUBLE_EQ(c.score(c.parse_edge("a0.h0 -> a1.h0<q>")), -0.8);
  EXPECT_DOUBLE_EQ(c.score(c.parse_edge("a1.h0<q> -> a1.h0")), -0.8 + 0.01);
  EXPECT_DOUBLE_EQ(c.score(c.parse_edge("a0.h0<v> -> a0.h0")), 0.5);
  for (const CircuitEdge& edge : c.edges()) EXPECT_FALSE(std::isnan(c.score(edge))) << c.edge_name(edge);
}

// With a1.h0 -> output large, a1.h0 survives: its q input (from a0.h0) and
// k input (from input) stay, with their head-input edges.
TEST(Selection, AHeadWithAWayOutKeepsItsInputs) {
  auto given = kScores;
  given["a1.h0 -> output"] = 0.7;
  const Circuit c = select_edges(scores_of(one_head_graph(), given), SelectionOptions().threshold(0.25));
  EXPECT_EQ(kept_names(c),
            (std::set<std::string>{"input -> a0.h0<v>", "a0.h0<v> -> a0.h0", "a0.h0 -> output",
                                   "a0.h0 -> a1.h0<q>", "a1.h0<q> -> a1.h0", "input -> a1.h0<k>",
                                   "a1.h0<k> -> a1.h0", "a1.h0 -> output"}));
  EXPECT_EQ(c.nodes(), (std::vector<std::string>{"a0.h0", "a1.h0"}));
}

TEST(Selection, TopNRanksByMagnitudeAndPrunes) {
  const EdgeScores e = scores_of(one_head_graph(), kScores);
  // The top two (0.9, -0.8) leave from a0.h0, which nothing feeds: all dangle.
  EXPECT_EQ(select_edges(e, SelectionOptions().top_n(2)).edge_count(), 0);
  // The third (0.5) feeds a0.h0's value input.
  EXPECT_EQ(kept_names(select_edges(e, SelectionOptions().top_n(3))),
            (std::set<std::string>{"input -> a0.h0<v>", "a0.h0<v> -> a0.h0", "a0.h0 -> output"}));
  // More than there are: every residual edge, nothing dangles in the full graph.
  EXPECT_EQ(select_edges(e, SelectionOptions().top_n(1000)).edge_count(), 18);
}

// Equal |score|: the edge first in canonical order wins (input before a0.h0).
TEST(Selection, TopNBreaksTiesByCanonicalOrder) {
  auto given = kScores;
  given["input -> output"] = -0.9;
  const Circuit c = select_edges(scores_of(one_head_graph(), given), SelectionOptions().top_n(1));
  EXPECT_EQ(kept_names(c), (std::set<std::string>{"input -> output"}));
}

TEST(Selection, RefusesNeitherBothOrNegativeSelections) {
  const EdgeScores e = scores_of(one_head_graph(), kScores);
  EXPECT_NE(error_of([&] { select_edges(e, SelectionOptions()); }).find("exactly one of threshold and top_n (neither"),
            std::string::npos);
  EXPECT_NE(error_of([&] { select_edges(e, SelectionOptions().threshold(0.1).top_n(3)); }).find("(both"),
            std::string::npos);
  EXPECT_NE(error_of([&] { select_edges(e, SelectionOptions().threshold(-0.1)); }).find("negative"),
            std::string::npos);
  EXPECT_NE(error_of([&] { select_edges(e, SelectionOptions().top_n(-2)); }).find("negative"),
            std::string::npos);
}
