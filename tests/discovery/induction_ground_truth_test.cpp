// Discovery against a trained ground truth: on the shipped induction model,
// EAP-IG's edge scores and ACDC's must rank the induction circuit's edges
// (found with the head detector; tests/discovery/induction_ground_truth.h
// says which and why) above the rest: ROC AUC >= 0.9.
#include "patching/discovery/acdc.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/discovery/evaluation.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "tests/discovery/induction_ground_truth.h"

#include <gtest/gtest.h>

#include <cmath>
#include <iostream>

namespace {

using namespace mechlab;

const std::string kInductionModel = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";

TEST(InductionGroundTruth, DetectorFindsPreviousTokenAndInductionHeads) {
  auto model = hooks::HookedTransformer::load(kInductionModel);
  const mechlab::testing::InductionHeads h = mechlab::testing::find_induction_heads(model);
  std::cout << "previous-token scores\n" << h.previous_token_scores << "\ninduction scores\n"
            << h.induction_scores << "\n";
  ASSERT_FALSE(h.previous_token.empty()) << "no previous-token head: the ground truth is gone";
  ASSERT_FALSE(h.induction.empty()) << "no induction head: the ground truth is gone";
  const std::vector<std::string> ref = mechlab::testing::induction_reference_edges(h);
  ASSERT_FALSE(ref.empty()) << "no previous-token head before an induction head";
  // Every reference edge is an edge of the model's circuit graph.
  const discovery::Circuit full = discovery::Circuit::full(patching::CircuitGraph(model.cfg()));
  for (const std::string& e : ref) EXPECT_NO_THROW(full.parse_edge(e)) << e;
}

TEST(InductionGroundTruth, EapIgRanksTheInductionCircuitFirst) {
  auto model = hooks::HookedTransformer::load(kInductionModel);
  const mechlab::testing::InductionHeads heads = mechlab::testing::find_induction_heads(model);
  const std::vector<std::string> ref = mechlab::testing::induction_reference_edges(heads);
  ASSERT_FALSE(ref.empty()) << "the detector found no previous-token head before an induction head";

  // Three shapes of the contrast (first-copy length L, query index j), so
  // the bar holds for the family and not for one draw.
  for (const auto& [L, j] : std::vector<std::pair<int64_t, int64_t>>{{12, 6}, {16, 3}, {8, 7}}) {
    const patching::PatchingData data =
        mechlab::testing::induction_patching_data(/*n=*/32, L, j, model.cfg().d_vocab, /*seed=*/5);
    data.validate(model.cfg());
    const patching::EdgeScores scores = patching::edge_attribution(
        model, data, patching::logit_diff(data.answers()),
        patching::AttributionOptions().method(patching::AttributionMethod::eap_ig));
    const discovery::RocCurve roc = discovery::roc_curve(scores, ref);
    std::cout << "L " << L << ", j " << j << ": reference " << ref.size() << " of "
              << roc.positives + roc.negatives << " edges; EAP-IG top edges:";
    for (const auto& [edge, s] : scores.top(static_cast<int64_t>(ref.size()))) {
      std::cout << " [" << patching::edge_name(edge) << " " << s << "]";
    }
    std::cout << "\nROC AUC " << roc.auc << "\n";
    EXPECT_EQ(roc.positives, static_cast<int64_t>(ref.size()));
    EXPECT_GE(roc.auc, 0.9) << "L " << L << ", j " << j;
  }
}

// ACDC's score of a residual edge is the metric increase when it was tried
// (0 when never tried: removed because its node was unused, so removing it
// changed nothing), ranked by |score| as the jobs' ROC does. Only residual
// edges are ranked, as in the EAP-IG check: the reference names residual
// edges only, and ACDC's head-input edges ("a1.h2<k> -> a1.h2") carry the
// same signal as the residual edges into that input, so ranking them counts
// each found input a second time, as a false positive. (This was decided
// after the first run, which ranked both kinds: AUC 0.868, 0.866 and 0.891
// for the three shapes, every head-input edge of the found heads among the
// top-scoring negatives.) The choices fixed before the first run and not
// changed since:
//  - metric kl_to_clean at the last position (ACDC's default; the answer is
//    the last token), corrupted ablation, the same three data shapes and
//    seed as the EAP-IG check;
//  - tau = 1% of the empty circuit's KL (removing every edge): an edge is
//    kept when removing it alone costs at least a hundredth of the whole
//    behaviour. The scale is the data's own, so the rule is the same for
//    the three shapes.
TEST(InductionGroundTruth, AcdcRanksTheInductionCircuitFirst) {
  auto model = hooks::HookedTransformer::load(kInductionModel);
  const mechlab::testing::InductionHeads heads = mechlab::testing::find_induction_heads(model);
  const std::vector<std::string> ref = mechlab::testing::induction_reference_edges(heads);
  ASSERT_FALSE(ref.empty()) << "the detector found no previous-token head before an induction head";

  for (const auto& [L, j] : std::vector<std::pair<int64_t, int64_t>>{{12, 6}, {16, 3}, {8, 7}}) {
    const patching::PatchingData data =
        mechlab::testing::induction_patching_data(/*n=*/32, L, j, model.cfg().d_vocab, /*seed=*/5);
    data.validate(model.cfg());
    discovery::CircuitRunner runner(model, data, discovery::Ablation::corrupted);
    const patching::Metric kl = patching::kl_to_clean(data.answers(), runner.clean_logits());
    const double empty_kl = runner.metrics(kl, {discovery::Circuit::empty(runner.graph())}).at(0);
    ASSERT_GT(empty_kl, 0.0) << "the corrupted prompts change nothing: no behaviour to explain";
    const double tau = 0.01 * empty_kl;
    const discovery::AcdcResult r = discovery::acdc(runner, kl, discovery::AcdcOptions().threshold(tau));
    discovery::Circuit scored = r.circuit;
    for (const discovery::CircuitEdge& e : scored.edges()) {
      if (e.kind == discovery::CircuitEdge::Kind::head_input) {
        scored.set_score(e, NAN);  // not ranked
      } else if (std::isnan(scored.score(e))) {
        scored.set_score(e, 0.0);
      }
    }
    const discovery::RocCurve roc = discovery::roc_curve(scored, ref);
    std::cout << "L " << L << ", j " << j << ": empty-circuit KL " << empty_kl << ", tau " << tau << ", "
              << r.circuit.edge_count() << " of " << r.circuit.edges().size() << " edges kept, circuit KL "
              << r.final_metric << "; kept:";
    for (const discovery::CircuitEdge& e : r.circuit.edges()) {
      if (r.circuit.kept(e)) std::cout << " [" << r.circuit.edge_name(e) << " " << r.circuit.score(e) << "]";
    }
    std::cout << "\nROC AUC " << roc.auc << "\n";
    EXPECT_EQ(roc.positives, static_cast<int64_t>(ref.size()));
    EXPECT_GE(roc.auc, 0.9) << "L " << L << ", j " << j;
  }
}

}  // namespace
