// The shipped recipe models (apps/models/*.h5) do what apps/models/README.md
// says: each reaches its recipe's accuracy on the test split of its own
// config's data, and the induction model has a previous-token head in layer
// 0 and an induction head in layer 1. (tests/core/train_test.cpp retrains the
// induction recipe, shortened, to show the recipe itself still works.)
#include "core/train/objective.h"
#include "core/train/train_data.h"
#include "hooks/head_detector.h"

#include <gtest/gtest.h>

namespace mechlab::core::train {
namespace {

const std::string kModels = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/";

// Top-1 accuracy of the shipped model on its recipe's test split.
double test_accuracy(const std::string& recipe, hooks::HookedTransformer& model) {
  const TrainConfig cfg = TrainConfig::load(kModels + recipe + ".json");
  const TrainData data = load_train_data(cfg);
  at::NoGradGuard no_grad;
  const Split test = data.test.head(std::min<int64_t>(2000, data.test.size()));
  ForwardOptions fwd;
  fwd.attention_mask = test.mask;
  const Correct c = count_correct(cfg.objective, model.model().forward(test.tokens, fwd), test);
  EXPECT_GT(c.scored, 0);
  return static_cast<double>(c.correct) / static_cast<double>(c.scored);
}

TEST(RecipeModelsTest, InductionModelPredictsTheRepeatWithInductionHeads) {
  auto model = hooks::HookedTransformer::load(kModels + "induction.h5");
  EXPECT_GE(test_accuracy("induction", model), 0.95);
  const TrainConfig cfg = TrainConfig::load(kModels + "induction.json");
  at::Tensor tokens = load_train_data(cfg).test.tokens.narrow(0, 0, 64);
  const auto opt = hooks::HeadDetectorOptions().exclude_bos(true);
  at::Tensor prev = hooks::detect_head(model, tokens, hooks::HeadType::previous_token, opt);
  at::Tensor ind = hooks::detect_head(model, tokens, hooks::HeadType::induction, opt);
  EXPECT_GT(prev[0].max().item<double>(), 0.5) << prev;
  EXPECT_GT(ind[1].max().item<double>(), 0.3) << ind;
  EXPECT_EQ(prev.argmax().item<int64_t>() / prev.size(1), 0) << prev;
  EXPECT_EQ(ind.argmax().item<int64_t>() / ind.size(1), 1) << ind;
}

TEST(RecipeModelsTest, IoiModelNamesTheIndirectObject) {
  auto model = hooks::HookedTransformer::load(kModels + "ioi.h5");
  EXPECT_GE(test_accuracy("ioi", model), 0.90);
}

}  // namespace
}  // namespace mechlab::core::train
