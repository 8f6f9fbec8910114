// `mechlab generate` (and text prompts in `run` and `info`) as a user runs
// them, against transformers' greedy generate on tests/data/generate/gpt2_tok
// (a tiny GPT-2 with the 800-token GPT-2-style fixture tokenizer; made by
// scripts/fixtures/make_generate_fixtures.py, which prepends BOS as
// TransformerLens's prepend_bos does and stops at EOS as the CLI does).
#include "core/formats/hdf5_file.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace mechlab::cli {
namespace {

using mechlab::testing::run_cli;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kData = MECHLAB_TEST_DATA;
const std::string kModel = kData + "/generate/gpt2_tok";

struct TextCase {
  std::string text, continuation;
  std::vector<int64_t> ids, new_ids;  // BOS + text; transformers' greedy continuation
};

std::vector<int64_t> as_ids(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::vector<TextCase> text_cases() {
  core::H5File f = core::H5File::open_read(kData + "/generate/gpt2_tok.ref.h5");
  std::vector<TextCase> cases;
  for (const std::string& g : f.list("/")) {
    TextCase c;
    c.text = f.read_attr_string(g, "text");
    c.continuation = f.read_attr_string(g, "continuation");
    c.ids = as_ids(f.read_tensor(g + "/ids"));
    const std::vector<int64_t> all = as_ids(f.read_tensor(g + "/greedy"));
    c.new_ids.assign(all.begin() + c.ids.size(), all.end());
    cases.push_back(c);
  }
  return cases;
}

// The JSON lines of an output (the CLI prints one object per prompt).
std::vector<nlohmann::json> json_lines(const std::string& output) {
  std::vector<nlohmann::json> out;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] == '{') out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

void expect_matches(const nlohmann::json& j, const TextCase& c) {
  EXPECT_EQ(j.at("prompt_ids").get<std::vector<int64_t>>(), c.ids) << c.text;
  EXPECT_EQ(j.at("new_ids").get<std::vector<int64_t>>(), c.new_ids) << c.text;
  EXPECT_EQ(j.at("text").get<std::string>(), c.continuation);
}

TEST(GenerateCli, TextPromptsMatchTransformers) {
  const std::vector<TextCase> cases = text_cases();
  ASSERT_EQ(cases.size(), 2u);
  std::string both;
  for (const TextCase& c : cases) {
    const auto r = run_cli("generate " + kModel + " --prompt '" + c.text +
                           "' --greedy --max-new-tokens 12 --json");
    ASSERT_EQ(r.rc, 0) << r.output;
    const auto lines = json_lines(r.output);
    ASSERT_EQ(lines.size(), 1u) << r.output;
    expect_matches(lines[0], c);
    both += " --prompt '" + c.text + "'";
  }
  // Both prompts in one batch (left-padded): the same continuations.
  const auto r = run_cli("generate " + kModel + both + " --greedy --max-new-tokens 12 --json");
  ASSERT_EQ(r.rc, 0) << r.output;
  const auto lines = json_lines(r.output);
  ASSERT_EQ(lines.size(), 2u) << r.output;
  for (size_t i = 0; i < 2; ++i) expect_matches(lines[i], cases[i]);

  // The human-readable form shows the prompt and the continuation as text.
  const auto human = run_cli("generate " + kModel + " --prompt '" + cases[0].text +
                             "' --greedy --max-new-tokens 12");
  ASSERT_EQ(human.rc, 0) << human.output;
  EXPECT_THAT(human.output, HasSubstr("greedy, at most 12 new tokens"));
  EXPECT_THAT(human.output, HasSubstr(nlohmann::json(cases[0].continuation).dump()));
  EXPECT_THAT(human.output, HasSubstr("continuation (12 tokens, reached --max-new-tokens)"));
}

// GPT-2's older files (vocab.json + merges.txt) tokenise the same way.
TEST(GenerateCli, VocabAndMergesFolder) {
  namespace fs = std::filesystem;
  const std::string dir = mechlab::testing::temp_path("generate_cli", "gpt2_vm");
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors"}) {
    fs::copy_file(kModel + "/" + f, dir + "/" + f, fs::copy_options::overwrite_existing);
  }
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json"}) {
    fs::copy_file(kData + "/tokenizers/gpt2/" + f, dir + "/" + f,
                  fs::copy_options::overwrite_existing);
  }
  const TextCase c = text_cases()[1];
  const auto r =
      run_cli("generate " + dir + " --prompt '" + c.text + "' --greedy --max-new-tokens 12 --json");
  ASSERT_EQ(r.rc, 0) << r.output;
  const auto lines = json_lines(r.output);
  ASSERT_EQ(lines.size(), 1u) << r.output;
  expect_matches(lines[0], c);
}

TEST(GenerateCli, TokenIdsWithoutTokenizer) {
  // The greedy fixture's first gpt2 prompt (5 ids after the left padding).
  core::H5File f = core::H5File::open_read(kData + "/generate/greedy.ref.h5");
  const at::Tensor prompt = f.read_tensor("gpt2/prompt_tokens")[0];
  const at::Tensor mask = f.read_tensor("gpt2/prompt_mask")[0];
  const std::vector<int64_t> ids = as_ids(prompt.masked_select(mask.ne(0)));
  const std::vector<int64_t> greedy = as_ids(f.read_tensor("gpt2/greedy")[0]);
  std::string args;
  for (int64_t id : ids) args += " " + std::to_string(id);
  const auto r = run_cli("generate " + kData + "/hf/gpt2 --prompt-tokens" + args +
                         " --greedy --max-new-tokens 4");
  ASSERT_EQ(r.rc, 0) << r.output;
  const std::vector<int64_t> expected(greedy.begin() + prompt.size(0),
                                      greedy.begin() + prompt.size(0) + 4);
  EXPECT_THAT(r.output, HasSubstr("continuation (4 tokens, reached --max-new-tokens): " +
                                  nlohmann::json(expected).dump()));
}

TEST(GenerateCli, SamplingIsSeededAndStopsAtGivenTokens) {
  const std::string cmd = "generate " + kModel +
                          " --prompt 'the cat' --max-new-tokens 10 --top-k 20 --top-p 0.95 "
                          "--temperature 1.5 --json --seed ";
  const auto a = run_cli(cmd + "3"), b = run_cli(cmd + "3");
  ASSERT_EQ(a.rc, 0) << a.output;
  EXPECT_EQ(a.output, b.output);
  // --stop with the first sampled token's id ends the continuation right there.
  const int64_t first = json_lines(a.output).at(0).at("new_ids").at(0).get<int64_t>();
  const auto stopped = run_cli(cmd + "3 --stop " + std::to_string(first));
  ASSERT_EQ(stopped.rc, 0) << stopped.output;
  const auto j = json_lines(stopped.output).at(0);
  EXPECT_EQ(j.at("new_ids").get<std::vector<int64_t>>(), std::vector<int64_t>{first});
  EXPECT_TRUE(j.at("stopped").get<bool>());
}

TEST(GenerateCli, HelpExplainsEveryOption) {
  const auto r = run_cli("generate --help");
  ASSERT_EQ(r.rc, 0) << r.output;
  for (const char* opt :
       {"--prompt", "--prompt-tokens", "--max-new-tokens", "--greedy", "--temperature", "--top-k",
        "--top-p", "--seed", "--stop", "--no-stop-at-eos", "--tokenizer", "--no-bos",
        "--no-kv-cache", "--device", "--dtype", "--json"}) {
    EXPECT_THAT(r.output, HasSubstr(opt));
  }
}

TEST(GenerateCli, BadInputIsOneClearLine) {
  const auto bad_p = run_cli("generate " + kModel + " --prompt 'the cat' --top-p 0");
  EXPECT_EQ(bad_p.rc, 1);
  EXPECT_THAT(bad_p.output, HasSubstr("top_p must be in (0, 1]"));
  EXPECT_THAT(bad_p.output, Not(HasSubstr("Exception raised from")));
  const auto long_run = run_cli("generate " + kModel + " --prompt 'the cat' --max-new-tokens 40");
  EXPECT_EQ(long_run.rc, 1);
  EXPECT_THAT(long_run.output, HasSubstr("more than the model's n_ctx = 32"));
  const auto no_tok = run_cli("generate " + kData + "/hf/gpt2 --prompt 'hello'");
  EXPECT_EQ(no_tok.rc, 1);
  EXPECT_THAT(no_tok.output, HasSubstr("--prompt needs a tokenizer"));
  const auto big_id = run_cli("generate " + kData + "/hf/gpt2 --prompt-tokens 1 500");
  EXPECT_EQ(big_id.rc, 1);
  EXPECT_THAT(big_id.output, HasSubstr("prompt 0 has token id 500 at position 1"));
  const auto stop = run_cli("generate " + kModel + " --prompt 'the cat' --stop 'the cat sat'");
  EXPECT_EQ(stop.rc, 1);
  EXPECT_THAT(stop.output, HasSubstr("--stop 'the cat sat' is"));
}

TEST(RunCli, TextPromptShowsStringTokens) {
  const TextCase c = text_cases()[0];
  const auto r = run_cli("run " + kModel + " --prompt '" + c.text + "' --top-k 3");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(std::to_string(c.ids.size()) + " tokens"));
  EXPECT_THAT(r.output, HasSubstr("tokens: \"<|endoftext|>\" \"the\""));  // BOS prepended
  // The greedy continuation's first token is the top prediction, shown as text.
  EXPECT_THAT(r.output, HasSubstr("1. token " + std::to_string(c.new_ids[0])));
  const auto no_bos = run_cli("run " + kModel + " --prompt '" + c.text + "' --no-bos");
  ASSERT_EQ(no_bos.rc, 0) << no_bos.output;
  EXPECT_THAT(no_bos.output, HasSubstr(std::to_string(c.ids.size() - 1) + " tokens"));
  const auto info = run_cli("info " + kModel);
  ASSERT_EQ(info.rc, 0) << info.output;
  EXPECT_THAT(info.output, HasSubstr("tokenizer:  byte-level BPE"));
}

}  // namespace
}  // namespace mechlab::cli
