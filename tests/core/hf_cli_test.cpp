// `mechlab info` and `mechlab run` on Hugging Face folders, as a user runs them.
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace mechlab::core {
namespace {

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

TEST(HfCli, BadFolderIsOneClearLine) {
  const auto r = run_cli("info " + folder("gpt2/model.safetensors"));
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.output, HasSubstr("pass the folder that holds it"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("Exception raised from")));  // no LibTorch trace
}

}  // namespace
}  // namespace mechlab::core
