// `mechlab info` and `mechlab run` on Hugging Face folders, as a user runs them.
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace mechlab::core {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using mechlab::testing::run_cli;

std::string folder(const std::string& name) { return std::string(MECHLAB_TEST_DATA) + "/hf/" + name; }

TEST(HfCli, InfoDescribesAFolder) {
  const auto r = run_cli("info " + folder("llama_sharded"));
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("source:     Hugging Face folder (LlamaForCausalLM)"));
  EXPECT_THAT(r.output, HasSubstr("\"n_kv_heads\": 2"));
  EXPECT_THAT(r.output, HasSubstr("blocks.1.attn.hook_rot_k"));
}

TEST(HfCli, RunTakesPromptTokens) {
  const auto r = run_cli("run " + folder("gpt2") + " --prompt-tokens 5 17 42 99 --top-k 3");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("model gpt2 on cpu"));
  EXPECT_THAT(r.output, HasSubstr("loss: "));
  EXPECT_THAT(r.output, HasSubstr("top-3 next tokens"));
  const auto bf16 = run_cli("run " + folder("qwen2") + " --prompt-tokens 1 2 3 --dtype bf16");
  ASSERT_EQ(bf16.rc, 0) << bf16.output;
  EXPECT_THAT(bf16.output, HasSubstr("BFloat16"));
}

TEST(RunCli, CacheSummaryCountsNonFiniteActivations) {
  // Finite weights whose sum overflows float32: W_E + W_pos = 6e38 = Inf in
  // the residual stream, and the LayerNorm of Inf is NaN. Before, the summary
  // printed the statistics of the finite entries and dropped the rest.
  Transformer model(preset("attn-only-2l"), 0);
  {
    at::NoGradGuard no_grad;
    model.mutable_weights().W_E.fill_(3e38);
    model.mutable_weights().W_pos.fill_(3e38);
  }
  const std::string path = mechlab::testing::temp_path("hf_cli_test", "overflow.h5");
  model.save(path);
  const auto r = run_cli("run " + path + " --prompt-tokens 1 2 3 --cache 'blocks.0.*'");
  ASSERT_EQ(r.rc, 0) << r.output;
  // [1, 3, 64]: every entry of the residual stream is +Inf (none NaN).
  EXPECT_THAT(r.output, ContainsRegex("blocks.0.hook_resid_pre +\\[1, 3, 64\\].*"
                                      "NON-FINITE 192 of 192 \\(0 NaN\\)"));
  EXPECT_THAT(r.output, ContainsRegex("blocks.0.ln1.hook_normalized .*NON-FINITE 192 of 192 "
                                      "\\(192 NaN\\)"));
}

TEST(HfCli, BadFolderIsOneClearLine) {
  const auto r = run_cli("info " + folder("gpt2/model.safetensors"));
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.output, HasSubstr("pass the folder that holds it"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("Exception raised from")));  // no LibTorch trace
}

}  // namespace
}  // namespace mechlab::core
