// HookedTransformer's front door: from_pretrained (checkpoint or Hugging Face
// folder, weight processing, dtype, device, tokenizer) and TransformerLens's
// to_tokens / to_str_tokens / to_string. Expected ids come from Hugging Face
// `tokenizers` (tests/data/tokenizers/gpt2/cases.json, see its README).
#include "core/hf/model_loader.h"
#include "core/model/presets.h"
#include "hooks/hooked_transformer.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

namespace mechlab::hooks {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

const std::string kData = MECHLAB_TEST_DATA;
const std::string kGpt2Tokenizer = kData + "/tokenizers/gpt2";

/// A random checkpoint whose vocabulary fits the gpt2 fixture tokenizer (800 ids).
std::string checkpoint_for_the_fixture_tokenizer() {
  core::ModelConfig cfg = core::preset("tiny");
  cfg.d_vocab = 800;
  const std::string path = mechlab::testing::temp_path("from_pretrained", "tiny800.h5");
  core::Transformer(cfg, /*seed=*/3).save(path);
  return path;
}

nlohmann::json gpt2_cases() {
  std::ifstream in(kGpt2Tokenizer + "/cases.json");
  return nlohmann::json::parse(in)["cases"];
}

TEST(FromPretrained, ToTokensPrependsBosAsTransformerLensAndRoundTrips) {
  auto model = HookedTransformer::from_pretrained(checkpoint_for_the_fixture_tokenizer(),
                                                  PretrainedOptions().tokenizer(kGpt2Tokenizer));
  ASSERT_NE(model.tokenizer(), nullptr);
  const int64_t bos = *model.tokenizer()->bos_id();  // <|endoftext|>, as GPT-2's
  int checked = 0;
  for (const auto& c : gpt2_cases()) {
    const std::vector<int64_t> ids = c["ids"].get<std::vector<int64_t>>();
    if (ids.empty() || checked == 40) continue;
    const std::string text = c["text"].get<std::string>();
    // TransformerLens's to_tokens: BOS, then the tokenizer's ids.
    std::vector<int64_t> expected{bos};
    expected.insert(expected.end(), ids.begin(), ids.end());
    const at::Tensor tokens = model.to_tokens(text);  // [1, pos]
    ASSERT_EQ(tokens.dim(), 2);
    EXPECT_TRUE(at::equal(tokens, at::tensor(expected, at::kLong).view({1, -1}))) << text;
    EXPECT_TRUE(at::equal(model.to_tokens(text, /*prepend_bos=*/false),
                          at::tensor(ids, at::kLong).view({1, -1})))
        << text;
    std::vector<std::string> str_tokens{"<|endoftext|>"};
    for (const auto& s : c["str_tokens"]) str_tokens.push_back(s.get<std::string>());
    EXPECT_EQ(model.to_str_tokens(text), str_tokens) << text;
    EXPECT_EQ(model.to_str_tokens(tokens), str_tokens) << text;
    EXPECT_EQ(model.to_string(tokens.narrow(1, 1, tokens.size(1) - 1)), c["decoded"].get<std::string>());
    ++checked;
  }
  EXPECT_EQ(checked, 40);
  // The tokens run through the model as they are.
  EXPECT_EQ(model.forward(model.to_tokens("Hello world")).size(2), 800);
}

TEST(FromPretrained, AppliesWeightProcessingAndDtype) {
  const std::string folder = kData + "/hf/gpt2";
  auto processed = HookedTransformer::from_pretrained(
      folder, PretrainedOptions().process(core::ProcessOptions::all()));
  EXPECT_FALSE(processed.cfg().processed.empty());
  EXPECT_EQ(processed.tokenizer(), nullptr);  // the fixture folder has no tokenizer files
  // Processing leaves log-probs unchanged (tests/core/weight_processing_test.cpp
  // checks that against TransformerLens); here it shows the options arrived.
  const at::Tensor tokens = at::tensor(std::vector<int64_t>{1, 5, 7, 9}).view({1, -1});
  auto plain = HookedTransformer::from_pretrained(folder);
  EXPECT_TRUE(plain.cfg().processed.empty());
  const at::Tensor lp_plain = at::log_softmax(plain.forward(tokens), -1);
  const at::Tensor lp_processed = at::log_softmax(processed.forward(tokens), -1);
  EXPECT_LT((lp_plain - lp_processed).abs().max().item<double>(), 1e-5);
  // centre_writing_weights moved W_E (the fixture's unembedding is tied to it).
  EXPECT_GT((plain.model().weights().W_E - processed.model().weights().W_E).abs().max().item<double>(), 1e-4);

  auto bf16 = HookedTransformer::from_pretrained(folder, PretrainedOptions().dtype(at::kBFloat16));
  EXPECT_EQ(bf16.model().dtype(), at::kBFloat16);
}

TEST(FromPretrained, RefusesWithoutATokenizerOrWithOneTooLarge) {
  auto model = HookedTransformer::from_pretrained(kData + "/hf/gpt2");  // d_vocab 101
  EXPECT_THAT(error_of([&] { model.to_tokens("hi"); }),
              HasSubstr("this model has no tokenizer (a mechlab checkpoint, or a folder without "
                        "tokenizer.json); give one with PretrainedOptions().tokenizer(path)"));
  EXPECT_THAT(error_of([&] {
                HookedTransformer::from_pretrained(kData + "/hf/gpt2",
                                                   PretrainedOptions().tokenizer(kGpt2Tokenizer));
              }),
              HasSubstr("the tokenizer's ids reach 799 but the model's d_vocab is 101"));
  auto with_tok = HookedTransformer::from_pretrained(checkpoint_for_the_fixture_tokenizer(),
                                                     PretrainedOptions().tokenizer(kGpt2Tokenizer));
  EXPECT_THAT(error_of([&] { with_tok.to_string(at::zeros({2, 3}, at::kLong)); }),
              HasSubstr("tokens must have shape [pos] or [1, pos], got [2, 3]"));
}

}  // namespace
}  // namespace mechlab::hooks
