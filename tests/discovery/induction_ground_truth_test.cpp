// Discovery against a trained ground truth: on the shipped induction model,
// EAP-IG's edge scores must rank the induction circuit's edges (found with
// the head detector; tests/discovery/induction_ground_truth.h says which and
// why) above the rest: ROC AUC >= 0.9.
#include "patching/discovery/evaluation.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "tests/discovery/induction_ground_truth.h"

#include <gtest/gtest.h>

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

}  // namespace
