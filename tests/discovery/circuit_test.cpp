// The circuit type (patching/discovery/circuit.h): edge counts as the ACDC
// paper reports them, names, the patch mask, dangling-edge pruning, JSON.
#include "core/model/presets.h"
#include "patching/discovery/circuit.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

using mechlab::discovery::Circuit;
using mechlab::discovery::CircuitEdge;
using mechlab::patching::CircuitGraph;
using mechlab::testing::error_of;

namespace {

std::set<std::string> kept_names(const Circuit& c) {
  std::set<std::string> out;
  for (const CircuitEdge& e : c.edges()) {
    if (c.kept(e)) out.insert(c.edge_name(e));
  }
  return out;
}

}  // namespace

// Conmy et al. (2023) count 32,923 edges in GPT-2 small's graph: the 32,491
// residual edges of edge attribution (Syed et al.) plus one head-input edge
// per head and q/k/v (12 x 12 x 3 = 432).
TEST(Circuit, Gpt2SmallHasTheEdgeCountOfTheAcdcPaper) {
  const Circuit full = Circuit::full(CircuitGraph(mechlab::core::preset("gpt2-small")));
  EXPECT_EQ(full.edges().size(), 32923u);
  EXPECT_EQ(full.edge_count(), 32923);
  int64_t residual = 0;
  for (const CircuitEdge& e : full.edges()) residual += e.kind == CircuitEdge::Kind::residual;
  EXPECT_EQ(residual, 32491);
  EXPECT_EQ(Circuit::empty(full.graph()).edge_count(), 0);
}

TEST(Circuit, EveryEdgeNameParsesBackToItsEdge) {
  for (const char* preset : {"tiny", "llama-tiny", "neox-tiny", "attn-only-2l"}) {
    const Circuit c = Circuit::full(CircuitGraph(mechlab::core::preset(preset)));
    for (const CircuitEdge& e : c.edges()) {
      EXPECT_EQ(c.parse_edge(c.edge_name(e)), e) << preset << " " << c.edge_name(e);
    }
  }
  const Circuit c = Circuit::full(CircuitGraph(mechlab::core::preset("tiny")));
  EXPECT_EQ(c.edge_name(c.parse_edge("a1.h2<k>->a1.h2")), "a1.h2<k> -> a1.h2");
  EXPECT_NE(error_of([&] { c.parse_edge("a1.h2<k> -> a1.h3"); }).find("same head"), std::string::npos);
  EXPECT_NE(error_of([&] { c.parse_edge("a1.h2 -> a0.h1<q>"); }).find("a1.h2"), std::string::npos);
  EXPECT_NE(error_of([&] { c.parse_edge("a1.h2"); }).find("SENDER -> RECEIVER"), std::string::npos);
}

TEST(Circuit, RemovedMaskPatchesRemovedEdgesAndEveryEdgeIntoARemovedHeadInput) {
  const CircuitGraph g(mechlab::core::preset("tiny"));
  Circuit c = Circuit::full(g);
  EXPECT_EQ(c.removed_mask().sum().item<double>(), 0.0);

  c.set_kept(c.parse_edge("a0.h3 -> m1"), false);
  at::Tensor m = c.removed_mask();  // [receivers, senders]
  ASSERT_EQ(m.sizes(), (std::vector<int64_t>{static_cast<int64_t>(g.receivers().size()),
                                             static_cast<int64_t>(g.senders().size())}));
  EXPECT_EQ(m.sum().item<double>(), 1.0);
  EXPECT_EQ(m[g.receiver_index(g.parse_receiver("m1"))][g.sender_index(g.parse_sender("a0.h3"))].item<double>(),
            1.0);

  c.set_kept(c.parse_edge("a1.h2<q> -> a1.h2"), false);
  m = c.removed_mask();
  const int64_t q = g.receiver_index(g.parse_receiver("a1.h2<q>"));
  // a1.h2<q> reads input, the four heads of layer 0 and m0.
  EXPECT_EQ(m[q].sum().item<double>(), 6.0);
  EXPECT_EQ(m.sum().item<double>(), 7.0);
  EXPECT_EQ(c.edge_count(), static_cast<int64_t>(c.edges().size()) - 2);
}

TEST(Circuit, DanglingEdgesArePruned) {
  const CircuitGraph g(mechlab::core::preset("tiny"));
  Circuit c = Circuit::empty(g);
  const std::set<std::string> path = {"input -> a0.h1<q>", "a0.h1<q> -> a0.h1", "a0.h1 -> m0",
                                      "m0 -> output"};
  for (const auto& e : path) c.set_kept(c.parse_edge(e), true);
  // Dangling: a0.h2 is never fed (its inputs' head-input edges are removed);
  // a1.h0 is fed but reaches nothing; a0.h3<v>'s edge is kept but its head-input edge is not.
  for (const char* e : {"a0.h2 -> output", "input -> a1.h0<v>", "a1.h0<v> -> a1.h0", "input -> a0.h3<v>",
                        "a0.h3 -> output"}) {
    c.set_kept(c.parse_edge(e), true);
  }
  EXPECT_EQ(kept_names(c.without_dangling()), path);
  EXPECT_EQ(c.without_dangling().nodes(), (std::vector<std::string>{"a0.h1", "m0"}));
}

TEST(Circuit, JsonRoundTripsAndRefusesAnotherModelsCircuit) {
  const CircuitGraph g(mechlab::core::preset("tiny"));
  Circuit c = Circuit::full(g);
  c.set_kept(c.parse_edge("input -> a1.h0<k>"), false);
  c.set_score(c.parse_edge("input -> a1.h0<k>"), 0.25);
  const auto j = c.to_json();
  EXPECT_EQ(j["n_edges"].get<int64_t>(), static_cast<int64_t>(c.edges().size()));
  EXPECT_EQ(j["n_kept"].get<int64_t>(), c.edge_count());
  const Circuit back = Circuit::from_json(g, j);
  EXPECT_EQ(kept_names(back), kept_names(c));
  EXPECT_EQ(back.score(back.parse_edge("input -> a1.h0<k>")), 0.25);
  EXPECT_TRUE(std::isnan(back.score(back.parse_edge("input -> output"))));

  const CircuitGraph other(mechlab::core::preset("attn-only-2l"));
  EXPECT_NE(error_of([&] { Circuit::from_json(other, j); }).find("m0"), std::string::npos);
}
