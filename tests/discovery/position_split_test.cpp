// The position-split circuit graph (Circuit with n_positions, the runner's
// per-position masks, ACDC per (edge, position)):
//  - identity: removing an edge at every position is removing the unsplit
//    edge (the masked forward and dangling-edge pruning), on the fixture models;
//  - the runner's split forward against the naive hooked forward of
//    tests/discovery/naive_acdc.h, position by position;
//  - ACDC split by position against the naive ACDC's split run (one full
//    hooked forward per (edge, position)) on two models and two taus;
//  - names, JSON and refusals.
// Models run in float64 (see acdc_test.cpp for the tolerances).
#include "core/formats/hdf5_file.h"
#include "core/model/presets.h"
#include "hooks/hooked_transformer.h"
#include "patching/discovery/acdc.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/metrics.h"
#include "tests/discovery/discovery_fixtures.h"
#include "tests/discovery/naive_acdc.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/patching/patching_fixtures.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

using mechlab::discovery::AcdcOptions;
using mechlab::discovery::AcdcResult;
using mechlab::discovery::Ablation;
using mechlab::discovery::Circuit;
using mechlab::discovery::CircuitEdge;
using mechlab::discovery::CircuitRunner;
using mechlab::hooks::HookedTransformer;
using mechlab::testing::error_of;
using mechlab::testing::load_f64;
using mechlab::testing::fixture_data;
using mechlab::testing::kl_metric;
using mechlab::testing::kept_names;
using mechlab::testing::NaiveAcdc;
using mechlab::testing::NaiveResult;
using namespace mechlab::patching;

namespace {

// The split circuit with each edge of `c` at every position as c has it.
Circuit split_copy(const Circuit& c, int64_t P) {
  Circuit s = Circuit::full(c.graph(), P);
  for (const CircuitEdge& e : c.edges()) {
    for (int64_t p = 0; p < P; ++p) s.set_kept({e.kind, e.sender, e.receiver, p}, c.kept(e));
  }
  return s;
}

// A random unsplit circuit: each edge (head-input edges included) removed with probability `drop`.
Circuit random_circuit(const CircuitGraph& g, double drop, uint64_t seed, int64_t P = 0) {
  at::manual_seed(static_cast<int64_t>(seed));
  Circuit c = Circuit::full(g, P);
  const at::Tensor u = at::rand({static_cast<int64_t>(c.edges().size())}, at::kDouble);
  const double* up = u.data_ptr<double>();
  for (size_t i = 0; i < c.edges().size(); ++i) {
    if (up[i] < drop) c.set_kept(c.edges()[i], false);
  }
  return c;
}

const char* const kModels[] = {"gpt2_like", "attn_only", "llama_like", "neox_like"};

}  // namespace

// ------------------------------------------------------------- the circuit

TEST(PositionSplit, EdgeNamesCarryThePositionAndParseBack) {
  const CircuitGraph g(mechlab::core::preset("llama-tiny"));  // GQA: kv heads in <k>/<v>
  const Circuit unsplit = Circuit::full(g);
  const Circuit c = Circuit::full(g, 5);
  EXPECT_EQ(c.n_positions(), 5);
  EXPECT_EQ(c.edges().size(), 5 * unsplit.edges().size());
  EXPECT_EQ(c.edge_count(), 5 * unsplit.edge_count());
  for (const CircuitEdge& e : c.edges()) ASSERT_EQ(c.parse_edge(c.edge_name(e)), e) << c.edge_name(e);
  const CircuitEdge e = c.parse_edge("a0.h3 -> a1.h1<k>@4");
  EXPECT_EQ(c.edge_name(e), "a0.h3 -> a1.h1<k> @4");
  EXPECT_EQ(c.edge_name(c.parse_edge("a1.h2<q> -> a1.h2 @0")), "a1.h2<q> -> a1.h2 @0");
  EXPECT_NE(error_of([&] { c.parse_edge("a0.h3 -> a1.h1<k>"); }).find("lacks its position"), std::string::npos);
  EXPECT_NE(error_of([&] { c.parse_edge("a0.h3 -> a1.h1<k> @5"); }).find("positions 0..4"), std::string::npos);
  EXPECT_NE(error_of([&] { c.parse_edge("a0.h3 -> a1.h1<k> @x"); }).find("must be a token position"),
            std::string::npos);
  EXPECT_NE(error_of([&] { unsplit.parse_edge("a0.h3 -> a1.h1<k> @2"); }).find("not split by position"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c.kept({CircuitEdge::Kind::residual, 0, 0, -1}); }).find("outside"), std::string::npos);
  EXPECT_NE(error_of([&] { unsplit.kept({CircuitEdge::Kind::residual, 0, 0, 2}); }).find("not split"),
            std::string::npos);
}

// removed_mask()[p] of a split circuit is the unsplit mask of the circuit
// that circuit is at position p; with every position alike, every slice is
// the unsplit mask.
TEST(PositionSplit, RemovedMaskHasOneUnsplitMaskPerPosition) {
  const CircuitGraph g(mechlab::core::preset("tiny"));
  const Circuit c = random_circuit(g, 0.4, 3);
  const at::Tensor split_mask = split_copy(c, 4).removed_mask();  // [pos, receivers, senders]
  ASSERT_EQ(split_mask.dim(), 3);
  for (int64_t p = 0; p < 4; ++p) EXPECT_TRUE(split_mask[p].equal(c.removed_mask())) << p;
  // One edge removed at one position: only that slice has it.
  Circuit one = Circuit::full(g, 4);
  one.set_kept(one.parse_edge("a0.h1 -> a1.h2<v> @2"), false);
  one.set_kept(one.parse_edge("a1.h3<q> -> a1.h3 @1"), false);
  const at::Tensor m = one.removed_mask();
  EXPECT_EQ(m.sum().item<double>(), 1.0 + static_cast<double>(m[1].sum().item<double>()));
  EXPECT_EQ(m[2].sum().item<double>(), 1.0);
  EXPECT_EQ(m[0].sum().item<double>() + m[3].sum().item<double>(), 0.0);
  int64_t into_q = 0;  // every edge into a1.h3<q> at position 1
  const Circuit unsplit = Circuit::full(g);
  for (const CircuitEdge& e : unsplit.edges()) {
    into_q += e.kind == CircuitEdge::Kind::residual && c.edge_name(e).find("-> a1.h3<q>") != std::string::npos;
  }
  EXPECT_EQ(m[1].sum().item<double>(), static_cast<double>(into_q));
}

// Pruning dangling edges of a circuit alike at every position gives the
// unsplit pruning at every position.
TEST(PositionSplit, DanglingEdgesOfACircuitAlikeAtEveryPositionAreTheUnsplitOnes) {
  for (const char* preset : {"tiny", "llama-tiny", "neox-tiny", "attn-only-2l"}) {
    const CircuitGraph g(mechlab::core::preset(preset));
    for (uint64_t seed : {1, 2, 3}) {
      const Circuit c = random_circuit(g, 0.6, seed);
      EXPECT_EQ(kept_names(split_copy(c, 3).without_dangling()), kept_names(split_copy(c.without_dangling(), 3)))
          << preset << " seed " << seed;
    }
  }
}

// The causal reading of keys and values: a head reached at position 2 only
// through its key input at position 0 is reached there (it attends back),
// and a key at position 2 is useless to a head used only at position 0.
TEST(PositionSplit, AKeyInputFeedsTheHeadAtItsPositionAndEveryLaterOne) {
  const CircuitGraph g(mechlab::core::preset("attn-only-2l"));
  Circuit c = Circuit::empty(g, 3);
  auto keep = [&](const std::string& e) { c.set_kept(c.parse_edge(e), true); };
  keep("input -> a0.h0<k> @0");
  keep("a0.h0<k> -> a0.h0 @0");
  keep("a0.h0 -> output @2");
  keep("input -> a0.h1<k> @2");
  keep("a0.h1<k> -> a0.h1 @2");
  keep("a0.h1 -> output @0");
  EXPECT_EQ(kept_names(c.without_dangling()),
            (std::set<std::string>{"input -> a0.h0<k> @0", "a0.h0<k> -> a0.h0 @0", "a0.h0 -> output @2"}));
}

TEST(PositionSplit, JsonListsEdgePositionsAndReadsBack) {
  const CircuitGraph g(mechlab::core::preset("tiny"));
  Circuit c = random_circuit(g, 0.5, 9, 3);
  c.set_score(c.edges()[5], 0.25);
  c.set_position_labels({"0: BOS", "1: Mary", "2: END"});
  const nlohmann::json j = c.to_json();
  EXPECT_EQ(j["n_positions"], 3);
  EXPECT_EQ(j["edges"][5]["position"], c.edges()[5].pos);
  const Circuit back = Circuit::from_json(g, j);
  EXPECT_EQ(kept_names(back), kept_names(c));
  EXPECT_EQ(back.score(c.edges()[5]), 0.25);
  EXPECT_EQ(back.position_labels(), c.position_labels());
  EXPECT_TRUE(back.same_shape(c));
  EXPECT_FALSE(Circuit::full(g).same_shape(c));  // unsplit
  EXPECT_FALSE(Circuit::full(g, 4).same_shape(c));  // other positions
  EXPECT_NE(error_of([&] { Circuit::from_json(g, Circuit::full(g).to_json()).set_position_labels({"a"}); })
                .find("one label per position"),
            std::string::npos);
}

// ---------------------------------------------------------------- runner

// Removing an edge at every position equals removing the unsplit edge: the
// split forward of a circuit alike at every position gives the unsplit
// forward's logits, on every fixture model and every ablation.
TEST(PositionSplit, RemovingAnEdgeAtEveryPositionEqualsRemovingTheUnsplitEdge) {
  for (const char* name : kModels) {
    HookedTransformer model = load_f64(name);
    const PatchingData data = fixture_data(name);
    for (Ablation abl : {Ablation::corrupted, Ablation::mean, Ablation::zero}) {
      CircuitRunner runner(model, data, abl);
      const int64_t P = runner.seq_len();
      for (uint64_t seed : {11, 12}) {
        const Circuit c = random_circuit(runner.graph(), seed == 11 ? 0.3 : 0.7, seed);
        const at::Tensor want = runner.logits(c);
        EXPECT_TRUE(mechlab::testing::close(runner.logits(split_copy(c, P)), want, 1e-10, "split"))
            << name << " " << ablation_name(abl) << " seed " << seed;
      }
      EXPECT_TRUE(mechlab::testing::close(runner.logits(Circuit::empty(runner.graph(), P)),
                                          runner.logits(Circuit::empty(runner.graph())), 1e-10, "empty"))
          << name << " " << ablation_name(abl);
    }
  }
}

// The split forward of circuits that differ by position equals the naive
// hooked forward that patches each position by hand, and the batched
// metrics and restarts agree with it.
TEST(PositionSplit, SplitForwardEqualsTheNaiveForwardPositionByPosition) {
  for (const char* name : kModels) {
    HookedTransformer model = load_f64(name);
    const PatchingData data = fixture_data(name);
    const Metric kl = kl_metric(model, data);
    for (bool zero : {false, true}) {
      CircuitRunner runner(model, data, zero ? Ablation::zero : Ablation::corrupted,
                           mechlab::discovery::RunnerOptions().max_copies(2));
      NaiveAcdc naive(model, data, zero);
      const int64_t P = runner.seq_len();
      std::vector<Circuit> circuits;
      for (uint64_t seed : {21, 22, 23}) circuits.push_back(random_circuit(runner.graph(), 0.2 * (seed - 20), seed, P));
      const std::vector<double> batched = runner.metrics(kl, circuits);
      for (size_t i = 0; i < circuits.size(); ++i) {
        const at::Tensor want = naive.forward(circuits[i]);  // [batch, pos, d_vocab]
        EXPECT_TRUE(mechlab::testing::close(runner.logits(circuits[i]), want, 1e-9, "split forward"))
            << name << (zero ? " zero" : " corrupted") << " circuit " << i;
        EXPECT_NEAR(batched[i], kl(want).item<double>(), 1e-9) << name << " circuit " << i;
      }
      // A restart at layer 1 from circuit 0's state, masks that differ from it only at layers >= 1.
      runner.set_state(circuits[0], kl);
      Circuit later = circuits[0];
      for (const CircuitEdge& e : circuits[2].edges()) {
        const auto& r = runner.graph().receivers()[static_cast<size_t>(e.receiver)];
        if (r.node.layer >= 1 || r.node.kind == CircuitNode::Kind::output) later.set_kept(e, circuits[2].kept(e));
      }
      const std::vector<double> restarted = runner.restart(1, kl, {later.removed_mask(), circuits[0].removed_mask()});
      EXPECT_NEAR(restarted[0], kl(naive.forward(later)).item<double>(), 1e-9) << name;
      EXPECT_NEAR(restarted[1], kl(naive.forward(circuits[0])).item<double>(), 1e-9) << name;
    }
  }
}

// ------------------------------------------------------------------ ACDC

namespace {

// acdc(split_positions) gives the naive split ACDC's steps and circuit;
// returns the fraction of (edge, position) pairs kept.
double expect_split_equals_naive(const char* name, double tau, bool zero) {
  const std::string what = std::string(name) + " tau " + std::to_string(tau) + (zero ? " zero" : "");
  HookedTransformer model = load_f64(name);
  const PatchingData data = fixture_data(name);
  const Metric kl = kl_metric(model, data);
  NaiveAcdc naive(model, data, zero);
  const NaiveResult want = naive.run(kl, tau, false, false, /*split=*/true);
  EXPECT_GT(want.smallest_margin, 1e-6) << what << ": a decision is too close to tau to compare";
  const AcdcResult got = mechlab::discovery::acdc(
      model, data, kl,
      AcdcOptions().threshold(tau).split_positions(true).ablation(zero ? Ablation::zero : Ablation::corrupted));
  EXPECT_EQ(got.steps.size(), want.steps.size()) << what;
  for (size_t i = 0; i < std::min(got.steps.size(), want.steps.size()); ++i) {
    const auto& g = got.steps[i];
    const auto& w = want.steps[i];
    EXPECT_EQ(g.edge, w.edge) << what << " step " << i;
    EXPECT_EQ(g.kept, w.kept) << what << " step " << i << " " << g.edge;
    EXPECT_EQ(g.tried, w.tried) << what << " step " << i << " " << g.edge;
    if (w.tried) {
      EXPECT_NEAR(g.score, w.score, 1e-7) << what << " step " << i << " " << g.edge;
    }
    if (g.edge != w.edge || g.kept != w.kept) break;  // later steps differ as a consequence
  }
  EXPECT_TRUE(got.circuit.split()) << what;
  EXPECT_EQ(kept_names(got.circuit), kept_names(want.circuit)) << what;
  EXPECT_NEAR(got.final_metric, kl(naive.forward(want.circuit)).item<double>(), 1e-5) << what;
  EXPECT_EQ(got.config.value("split_positions", false), true) << what;
  int64_t forced = 0;
  for (const auto& s : got.steps) forced += s.tried ? 0 : 1;
  EXPECT_GT(forced, 0) << what << ": the unused-node rule never fired";
  return static_cast<double>(got.circuit.edge_count()) / static_cast<double>(got.circuit.edges().size());
}

}  // namespace

TEST(PositionSplit, AcdcEqualsTheNaiveSplitAcdcOnGpt2Like) {
  const double many = expect_split_equals_naive("gpt2_like", 0.0008, false);
  const double few = expect_split_equals_naive("gpt2_like", 0.005, false);
  EXPECT_GT(many, few);
  EXPECT_GT(few, 0.0);
}

TEST(PositionSplit, AcdcEqualsTheNaiveSplitAcdcOnGqaModel) {
  const double many = expect_split_equals_naive("llama_like", 0.0005, false);
  const double few = expect_split_equals_naive("llama_like", 0.005, true);
  EXPECT_GT(many, 0.0);
  EXPECT_GT(few, 0.0);
}

// Batched trials decide as one trial per forward when split too.
TEST(PositionSplit, BatchedSplitTrialsDecideAsSequentialOnes) {
  HookedTransformer model = load_f64("neox_like");
  const PatchingData data = fixture_data("neox_like");
  const Metric kl = kl_metric(model, data);
  const auto opts = AcdcOptions().threshold(0.002).split_positions(true);
  const AcdcResult seq = mechlab::discovery::acdc(model, data, kl, AcdcOptions(opts).max_batch(1));
  const AcdcResult bat = mechlab::discovery::acdc(model, data, kl, AcdcOptions(opts).max_batch(4));
  ASSERT_EQ(bat.steps.size(), seq.steps.size());
  for (size_t i = 0; i < seq.steps.size(); ++i) {
    ASSERT_EQ(bat.steps[i].edge, seq.steps[i].edge) << i;
    ASSERT_EQ(bat.steps[i].kept, seq.steps[i].kept) << i;
    if (seq.steps[i].tried) {
      EXPECT_NEAR(bat.steps[i].score, seq.steps[i].score, 1e-9) << i;
    }
  }
  EXPECT_LT(bat.forwards, seq.forwards);
}

// ------------------------------------------------------------- refusals

TEST(PositionSplit, RefusesPromptsPaddedDifferentlyNamingTheFirstOne) {
  HookedTransformer model = load_f64("gpt2_like");
  PatchingData data = fixture_data("gpt2_like");
  data.attention_mask = at::ones_like(data.clean_tokens);
  data.attention_mask[2][6] = 0;  // prompt 2 is one token shorter
  data.answer_pos = at::tensor({int64_t(6), int64_t(5), int64_t(5)});
  const Metric kl = kl_metric(model, data);
  const std::string e = error_of([&] {
    mechlab::discovery::acdc(model, data, kl, AcdcOptions().threshold(0.01).split_positions(true));
  });
  EXPECT_NE(e.find("prompt 2's attention mask differs from prompt 0's"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  // Unsplit runs on the same data are fine.
  EXPECT_NO_THROW(mechlab::discovery::acdc(model, data, kl, AcdcOptions().threshold(0.05)));
  // A split start circuit for an unsplit run, and one of the wrong length.
  const PatchingData ok = fixture_data("gpt2_like");
  const std::string e2 = error_of([&] {
    mechlab::discovery::acdc(model, ok, kl, AcdcOptions().start(Circuit::full(CircuitGraph(model.cfg()), 7)));
  });
  EXPECT_NE(e2.find("same split"), std::string::npos) << e2;
  CircuitRunner runner(model, ok, Ablation::corrupted);
  EXPECT_NE(error_of([&] { runner.logits(Circuit::full(runner.graph(), 4)); }).find("4 positions but the prompts have 7"),
            std::string::npos);
}
