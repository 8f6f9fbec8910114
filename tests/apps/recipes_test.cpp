// The shipped recipe models (apps/models/*.h5) do what apps/models/README.md
// says: each reaches its recipe's accuracy on the test split of its own
// config's data, the induction model has a previous-token head in layer 0 and
// an induction head in layer 1, and the modular-addition model embeds its
// numbers on a few Fourier frequencies (Nanda et al. 2023). (tests/core/train_test.cpp retrains the
// induction recipe, shortened, to show the recipe itself still works.)
#include "core/train/objective.h"
#include "core/train/train_data.h"
#include "hooks/analysis/head_detector.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace mechlab::core::train {
namespace {

const std::string kModels = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/";

// Top-1 accuracy of the shipped model on (the first max_rows of) its recipe's test split.
double test_accuracy(const std::string& recipe, hooks::HookedTransformer& model,
                     int64_t max_rows = 2000) {
  const TrainConfig cfg = TrainConfig::load(kModels + recipe + ".json");
  const TrainData data = load_train_data(cfg);
  at::NoGradGuard no_grad;
  const Split test = data.test.head(std::min<int64_t>(max_rows, data.test.size()));
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
  const auto opt = analysis::HeadDetectorOptions().exclude_bos(true);
  at::Tensor prev = analysis::detect_head(model, tokens, analysis::HeadType::previous_token, opt);
  at::Tensor ind = analysis::detect_head(model, tokens, analysis::HeadType::induction, opt);
  EXPECT_GT(prev[0].max().item<double>(), 0.5) << prev;
  EXPECT_GT(ind[1].max().item<double>(), 0.3) << ind;
  EXPECT_EQ(prev.argmax().item<int64_t>() / prev.size(1), 0) << prev;
  EXPECT_EQ(ind.argmax().item<int64_t>() / ind.size(1), 1) << ind;
}

TEST(RecipeModelsTest, IoiModelNamesTheIndirectObject) {
  auto model = hooks::HookedTransformer::load(kModels + "ioi.h5");
  EXPECT_GE(test_accuracy("ioi", model), 0.90);
}

TEST(RecipeModelsTest, ModularAdditionModelGrokkedOnAFewFourierFrequencies) {
  auto model = hooks::HookedTransformer::load(kModels + "modular_addition.h5");
  EXPECT_GE(test_accuracy("modular_addition", model, /*max_rows=*/1 << 20), 0.99);
  // The generalising solution represents a as cos/sin(w_k a) for a handful of
  // key frequencies k; a memorising one spreads W_E over all p / 2 of them
  // (a random embedding puts ~8/56 = 14% of its energy on any 8).
  const int64_t p = model.cfg().d_vocab - 1;                   // the last token is "="
  at::Tensor W_E = model.model().weights().W_E.narrow(0, 0, p);  // [p, d_model]
  at::Tensor energy = at::fft_rfft(W_E, c10::nullopt, 0).abs().pow(2).sum(1);  // [p/2 + 1]
  energy = energy.narrow(0, 1, energy.size(0) - 1);  // the constant term carries no number
  const double top8 = std::get<0>(at::topk(energy, 8)).sum().item<double>() / energy.sum().item<double>();
  EXPECT_GT(top8, 0.7) << "share of W_E's Fourier energy on its 8 largest frequencies";
}

}  // namespace
}  // namespace mechlab::core::train
