// EAP and EAP-IG per token position (AttributionOptions::split_positions):
//  - identity: the per-position scores summed over positions are the
//    unsplit scores (both are linear in the position sum), NaN at the same
//    non-edges, on the four fixture models, both methods and directions;
//  - analytic zeros: at positions where no prompt's corrupted token differs
//    yet (the fixtures' positions 0 and 1) every sender difference is 0, so
//    every score there is 0, while later positions carry the scores;
//  - top-n selection and threshold selection on (edge, position) pairs,
//    against a ranking written here over the raw score tensor;
//  - evaluation of the split scored circuit through the split runner.
#include "core/formats/hdf5_file.h"
#include "hooks/hooked_transformer.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/discovery/evaluation.h"
#include "patching/discovery/selection.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "tests/discovery/discovery_fixtures.h"
#include "tests/patching/patching_fixtures.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <tuple>

using mechlab::discovery::Ablation;
using mechlab::discovery::Circuit;
using mechlab::discovery::CircuitEdge;
using mechlab::discovery::CircuitRunner;
using mechlab::hooks::HookedTransformer;
using mechlab::testing::error_of;
using mechlab::testing::load_f64;
using mechlab::testing::fixture_data;
using mechlab::testing::kept_names;
using namespace mechlab::patching;

TEST(EapPerPosition, ScoresSummedOverPositionsAreTheUnsplitScores) {
  for (const char* name : {"gpt2_like", "attn_only", "llama_like", "neox_like"}) {
    HookedTransformer model = load_f64(name);
    const PatchingData data = fixture_data(name);
    const Metric m = logit_diff(data.answers());
    for (AttributionMethod method : {AttributionMethod::attribution, AttributionMethod::eap_ig}) {
      for (Direction dir : {Direction::noising, Direction::denoising}) {
        const AttributionOptions opts = AttributionOptions().method(method).steps(3).direction(dir);
        const EdgeScores whole = edge_attribution(model, data, m, opts);
        const EdgeScores split = edge_attribution(model, data, m, AttributionOptions(opts).split_positions(true));
        const std::string what = std::string(name) + " " + method_name(method) + " " + direction_name(dir);
        ASSERT_EQ(split.n_positions(), data.seq_len()) << what;
        ASSERT_EQ(split.scores.dim(), 3) << what;
        EXPECT_TRUE(split.scores.isnan().equal(whole.scores.isnan().unsqueeze(0).expand_as(split.scores))) << what;
        const at::Tensor sum = split.scores.nan_to_num(0).sum(0);   // [senders, receivers]
        const at::Tensor want = whole.scores.nan_to_num(0);
        const double scale = want.abs().max().item<double>();
        ASSERT_GT(scale, 1e-6) << what;
        EXPECT_LT((sum - want).abs().max().item<double>(), 1e-10 * scale) << what;
        // Positions 0 and 1 are the same in every clean and corrupted prompt:
        // no sender output differs there (causal), so no edge there scores.
        EXPECT_EQ(split.scores.narrow(0, 0, 2).nan_to_num(0).abs().max().item<double>(), 0.0) << what;
        // and the scores are spread over the positions, not all at one.
        const at::Tensor per_pos = split.scores.nan_to_num(0).abs().sum(at::IntArrayRef{1, 2});  // [pos]
        EXPECT_GE((per_pos > 1e-6 * scale).sum().item<int64_t>(), 2) << what;
        EXPECT_EQ(split.config.value("split_positions", false), true) << what;
      }
    }
  }
}

// select_edges on per-position scores keeps the top n (edge, position)
// pairs by |score| (ties in canonical order, positions innermost), then
// adds the head-input edges at the positions they feed and prunes dangling edges.
TEST(EapPerPosition, TopNAndThresholdSelectEdgePositionPairs) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  const EdgeScores split =
      edge_attribution(model, data, logit_diff(data.answers()), AttributionOptions().split_positions(true));
  const int64_t P = split.n_positions();
  // The ranking written over the raw tensor: (|score|, canonical index) pairs.
  const at::Tensor s = split.scores.to(at::kDouble).contiguous();  // [pos, senders, receivers]
  std::vector<std::tuple<double, int64_t, CircuitEdge>> ranked;
  const Circuit shape = Circuit::full(split.graph, P);
  int64_t canonical = 0;
  for (const CircuitEdge& e : shape.edges()) {
    if (e.kind != CircuitEdge::Kind::residual) continue;
    ranked.emplace_back(std::abs(s[e.pos][e.sender][e.receiver].item<double>()), canonical++, e);
  }
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    return std::get<0>(a) > std::get<0>(b) || (std::get<0>(a) == std::get<0>(b) && std::get<1>(a) < std::get<1>(b));
  });
  for (int64_t n : {int64_t(5), int64_t(40)}) {
    Circuit want = Circuit::empty(split.graph, P);
    for (int64_t i = 0; i < n; ++i) want.set_kept(std::get<2>(ranked[static_cast<size_t>(i)]), true);
    for (const CircuitEdge& h : want.edges()) {  // a head input with a kept sender at that position
      if (h.kind != CircuitEdge::Kind::head_input) continue;
      bool any = false;
      for (const CircuitEdge& e : want.edges()) {
        any = any || (e.kind == CircuitEdge::Kind::residual && e.receiver == h.receiver && e.pos == h.pos && want.kept(e));
      }
      want.set_kept(h, any);
    }
    const Circuit got = mechlab::discovery::select_edges(split, mechlab::discovery::SelectionOptions().top_n(n));
    EXPECT_TRUE(got.split());
    EXPECT_EQ(kept_names(got), kept_names(want.without_dangling())) << "top " << n;
    for (const CircuitEdge& e : got.edges()) {
      if (e.kind == CircuitEdge::Kind::residual) {
        const double v = s[e.pos][e.sender][e.receiver].item<double>();
        ASSERT_EQ(got.score(e), v) << got.edge_name(e);
      }
    }
    // The threshold at the n-th |score| keeps the same pairs (no ties there).
    const double tau = std::get<0>(ranked[static_cast<size_t>(n - 1)]);
    ASSERT_GT(tau, std::get<0>(ranked[static_cast<size_t>(n)])) << "a tie at the cut";
    EXPECT_EQ(kept_names(mechlab::discovery::select_edges(split, mechlab::discovery::SelectionOptions().threshold(tau))),
              kept_names(got))
        << "threshold for top " << n;
  }
  // The top edges of the JSON listing are the ranking's, named with their positions.
  const nlohmann::json j = split.to_json(3);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(j["top_edges"][i]["edge"], shape.edge_name(std::get<2>(ranked[i])));
    EXPECT_EQ(j["top_edges"][i]["position"], std::get<2>(ranked[i]).pos);
  }
  EXPECT_NE(error_of([&] { split.all(); }).find("use entries()"), std::string::npos);
}

// The faithfulness curve of per-position scores runs split circuits through
// the split runner; keeping every scored (edge, position) is the full model
// (f = 1), keeping none but the unscored head inputs leaves the residual
// edges all removed (the empty circuit's metric).
TEST(EapPerPosition, FaithfulnessCurveOfPerPositionScoresRunsSplitCircuits) {
  HookedTransformer model = load_f64("attn_only");
  const PatchingData data = fixture_data("attn_only");
  const Metric m = logit_diff(data.answers());
  const EdgeScores split = edge_attribution(model, data, m, AttributionOptions().split_positions(true));
  CircuitRunner runner(model, data, Ablation::corrupted);
  int64_t split_circuits = 0;
  const mechlab::discovery::CircuitMetricFn fn = [&](const std::vector<Circuit>& cs) {
    for (const Circuit& c : cs) split_circuits += c.split() ? 1 : 0;
    return runner.metrics(m, cs);
  };
  const auto curve = mechlab::discovery::faithfulness_curve(split, fn);
  EXPECT_EQ(split_circuits, static_cast<int64_t>(curve.points.size()) + 2);
  EXPECT_NEAR(curve.points.back().faithfulness, 1.0, 1e-9);
  const Circuit none = mechlab::discovery::top_k_circuit(mechlab::discovery::scored_circuit(split), 0);
  EXPECT_NEAR(runner.metrics(m, {none})[0], curve.metric_empty, 1e-9);
}

TEST(EapPerPosition, RefusesPromptsPaddedDifferently) {
  HookedTransformer model = load_f64("gpt2_like");
  PatchingData data = fixture_data("gpt2_like");
  data.attention_mask = at::ones_like(data.clean_tokens);
  data.attention_mask[1][6] = 0;
  data.answer_pos = at::tensor({int64_t(6), int64_t(5), int64_t(6)});
  const std::string e = error_of([&] {
    edge_attribution(model, data, logit_diff(data.answers()), AttributionOptions().split_positions(true));
  });
  EXPECT_NE(e.find("edge attribution per position (split_positions) needs prompts of one length"), std::string::npos) << e;
  EXPECT_NE(e.find("prompt 1's attention mask differs from prompt 0's"), std::string::npos) << e;
}
