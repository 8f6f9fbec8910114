// The CLI's messages for a newcomer's mistakes: each is one line that names
// the problem and what to do, with a non-zero exit, and leaves every file as
// it was (docs/ARCHITECTURE.md, "The CLI").
#include "core/store/activation_store.h"
#include "core/data/dataset.h"
#include "core/data/tokenizer/word_tokenizer.h"
#include "core/model/checkpoint.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "core/util/mkl_dispatch.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace mechlab {
namespace {

using testing::run_cli;

std::string temp_path(const std::string& name) {
  return testing::temp_path("cli_messages_test", name);
}

const std::string kModels = std::string(MECHLAB_SOURCE_DIR) + "/apps/models/";

int count_lines(const std::string& text) {
  int n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

// --version: the version, LibTorch's threading (the OpenMP backend whose
// pool --threads sizes), which MKL kernels run and how ACDC's node path
// sizes its team; the MKL and task lines follow MECHLAB_MKL_AVX512_ON_AMD
// and MECHLAB_ADAPTIVE_THREADS as the library does.
TEST(CliMessages, VersionSaysTheVersionThreadingAndMklKernels) {
  const auto r = run_cli("--version");
  EXPECT_EQ(r.rc, 0) << r.output;
  EXPECT_EQ(r.output.rfind("mechlab ", 0), 0u) << r.output;
  EXPECT_NE(r.output.find("at::get_num_threads()"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ATen parallel backend: OpenMP"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(mkl_dispatch_summary()), std::string::npos) << r.output;
  const auto off = testing::run_program("MECHLAB_MKL_AVX512_ON_AMD=0 " + std::string(MECHLAB_BINARY) + " --version");
  EXPECT_EQ(off.rc, 0) << off.output;
  EXPECT_NE(off.output.find("MKL: its own choice"), std::string::npos) << off.output;
  // And how ACDC's node path sizes its team, with the variable that fixes it.
  EXPECT_NE(r.output.find("Tasks (ACDC's node path): on the cores other processes leave free"), std::string::npos)
      << r.output;
  const auto fixed = testing::run_program("MECHLAB_ADAPTIVE_THREADS=0 OMP_WAIT_POLICY=PASSIVE " +
                                          std::string(MECHLAB_BINARY) + " --version");
  EXPECT_NE(fixed.output.find("Tasks (ACDC's node path): always on --threads threads (MECHLAB_ADAPTIVE_THREADS=0); "
                              "OMP_WAIT_POLICY PASSIVE"),
            std::string::npos)
      << fixed.output;
}

TEST(CliMessages, EveryComputeCommandTakesABoundedThreadCount) {
  for (const char* cmd : {"run", "cache", "patch", "heads", "generate", "train", "dataset make",
                          "bench train", "bench cache", "bench runtime", "bench patch",
                          "sae train", "sae eval", "sae dashboard", "probe"}) {
    const auto r = run_cli(std::string(cmd) + " --help");
    EXPECT_EQ(r.rc, 0) << cmd;
    EXPECT_NE(r.output.find("--threads"), std::string::npos) << cmd << " has no --threads";
  }
  // Out of range: one line, before anything runs (100000 threads used to hang).
  for (const char* n : {"100000", "-1"}) {
    const auto r = run_cli(std::string("train ") + kModels + "induction.json --out " +
                           temp_path("run") + " --threads " + n);
    EXPECT_NE(r.rc, 0) << r.output;
    EXPECT_NE(r.output.find("--threads must be between 1 and"), std::string::npos) << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << r.output;
    EXPECT_FALSE(std::filesystem::exists(temp_path("run")));
  }
}

TEST(CliMessages, MisspeltCommandsGetASuggestion) {
  auto r = run_cli("infoo model.h5");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.output.find("unknown command 'infoo'; did you mean 'info'?"), std::string::npos)
      << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  r = run_cli("dataset mak ioi --out x.h5");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.output.find("unknown command 'dataset mak'; did you mean 'dataset make'?"),
            std::string::npos)
      << r.output;
  r = run_cli("store inspekt s.h5");
  EXPECT_NE(r.output.find("did you mean 'store inspect'?"), std::string::npos) << r.output;
}

TEST(CliMessages, RangeErrorsSayTheBound) {
  for (const std::string& args :
       {"heads " + kModels + "induction.h5 --examples 0",
        "patch " + kModels + "ioi.h5 no_such_data.h5 --method eap-ig --steps 0 --out patch_out"}) {
    const auto r = run_cli(args);
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.output.find("must be > 0"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("179769313486"), std::string::npos) << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << r.output;
  }
}

TEST(CliMessages, ControlBytesInAnErrorAreEscaped) {
  const auto r = run_cli("info \"$(printf 'no\\007such\\033[2J.h5')\"");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.output.find("no\\x07such\\x1b[2J.h5"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('\a'), std::string::npos);
  EXPECT_EQ(r.output.find('\x1b'), std::string::npos);
}

TEST(CliMessages, DatasetSizeIsEstimatedBeforeAllocating) {
  const std::string out = temp_path("huge.h5");
  const auto r = run_cli("dataset make induction --n 1e12 --out " + out);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.output.find("--n 1000000000000 needs about"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" GB of memory"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("bad_alloc"), std::string::npos) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(CliMessages, CacheChunkSizeIsEstimatedBeforeAllocating) {
  const std::string data = temp_path("ioi.h5"), out = temp_path("store.h5");
  ASSERT_EQ(run_cli("dataset make ioi --n 4 --out " + data).rc, 0);
  const auto r = run_cli("cache " + kModels + "ioi.h5 " + data +
                         " --hooks 'blocks.*.hook_resid_post' --out " + out +
                         " --chunk-rows 1e12 --no-progress");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.output.find("--chunk-rows 1000000000000 needs about"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("use a smaller --chunk-rows"), std::string::npos) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(CliMessages, NegativeCountsAndSeedsAreRefusedByTheirOptionName) {
  const std::string out = temp_path("neg.h5");
  struct Case {
    std::string args, want;
  };
  const std::vector<Case> cases{
      {"dataset make ioi --seed -1 --out " + out, "--seed must be >= 0"},
      // The generator's own option name ("ioi: option \"n\"") is not what the user typed.
      {"dataset make ioi --n 0 --out " + out, "--n must be > 0"},
      {"new " + out + " --seed -1", "--seed: must be >= 0"},
      {"generate " + kModels + "induction.h5 --prompt-tokens 0 1 --seed -1", "--seed: must be >= 0"},
      {"heads " + kModels + "induction.h5 --seed -1", "--seed: must be >= 0"},
      {"train " + kModels + "induction.json --out " + temp_path("negrun") + " --set seed=-1",
       "\"seed\" must be >= 0"},
  };
  for (const Case& c : cases) {
    const auto r = run_cli(c.args);
    EXPECT_NE(r.rc, 0) << c.args;
    EXPECT_NE(r.output.find(c.want), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.find("option \""), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << c.args << "\n" << r.output;
    EXPECT_FALSE(std::filesystem::exists(out)) << c.args;
  }
}

// ---------------------------------------------------------------- vocabularies

TEST(CliMessages, ShippedIoiModelReadsAndPrintsWords) {
  const auto r = run_cli("run " + kModels +
                         "ioi.h5 --prompt \"When Mary and John went to the store, John gave a "
                         "drink to\"");
  ASSERT_EQ(r.rc, 0) << r.output;
  // The indirect object is Mary: the top prediction, printed as the word.
  const size_t top = r.output.find(" 1. token");
  ASSERT_NE(top, std::string::npos) << r.output;
  const std::string line = r.output.substr(top, r.output.find('\n', top) - top);
  EXPECT_NE(line.find("\"Mary\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tokens: \"When\" \"Mary\""), std::string::npos) << r.output;
}

TEST(CliMessages, EveryShippedModelCarriesItsTasksVocabulary) {
  for (const char* name : {"ioi", "induction", "modular_addition"}) {
    const core::Checkpoint ckpt = core::load_checkpoint(kModels + name + ".h5");
    ASSERT_FALSE(ckpt.tokenizer.empty()) << name;
    const auto words = core::WordTokenizer::from_json_string(ckpt.tokenizer);
    EXPECT_LE(words.size(), ckpt.config.d_vocab) << name;
  }
  const auto r = run_cli("run " + kModels + "modular_addition.h5 --prompt \"5 7 =\" --top-k 1");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("\"12\""), std::string::npos) << r.output;  // 5 + 7 mod 113
}

TEST(CliMessages, AttachTokenizerKeepsTheWeightsByteForByte) {
  const std::string model = temp_path("tiny.h5"), data = temp_path("ioi_vocab.h5");
  core::ModelConfig cfg = core::preset("tiny");
  cfg.d_vocab = 128;
  core::Transformer(cfg, 3).save(model);
  const core::Checkpoint before = core::load_checkpoint(model);
  ASSERT_TRUE(before.tokenizer.empty());
  ASSERT_EQ(run_cli("dataset make ioi --n 2 --out " + data).rc, 0);
  const auto r = run_cli("attach-tokenizer " + model + " --from " + data);
  ASSERT_EQ(r.rc, 0) << r.output;
  const core::Checkpoint after = core::load_checkpoint(model);
  EXPECT_EQ(after.tokenizer, core::load_dataset(data).tokenizer);
  ASSERT_EQ(after.params.size(), before.params.size());
  for (size_t i = 0; i < before.params.size(); ++i) {
    EXPECT_EQ(after.params[i].first, before.params[i].first);
    EXPECT_EQ(after.params[i].second.scalar_type(), before.params[i].second.scalar_type());
    EXPECT_TRUE(at::equal(after.params[i].second, before.params[i].second)) << before.params[i].first;
  }
  // A vocabulary larger than the model's d_vocab is refused, the file untouched.
  core::ModelConfig small = core::preset("tiny");
  small.d_vocab = 8;
  const std::string small_model = temp_path("small.h5");
  core::Transformer(small, 3).save(small_model);
  const auto refused = run_cli("attach-tokenizer " + small_model + " --from " + data);
  EXPECT_NE(refused.rc, 0);
  EXPECT_NE(refused.output.find("but the model's d_vocab is 8"), std::string::npos) << refused.output;
  EXPECT_TRUE(core::load_checkpoint(small_model).tokenizer.empty());
}

TEST(CliMessages, TrainStoresTheDatasetsVocabularyInModelH5) {
  const std::string dir = temp_path("vocab_run");
  const auto r = run_cli("train " + kModels + "induction.json --out " + dir +
                         " --no-progress --threads 1 --set steps=2 --set warmup_steps=1 "
                         "--set data.options.n=64 --set data.options.d_vocab=12 --set eval_every=2");
  ASSERT_EQ(r.rc, 0) << r.output;
  const core::Checkpoint ckpt = core::load_checkpoint(dir + "/model.h5");
  const auto words = core::WordTokenizer::from_json_string(ckpt.tokenizer);
  EXPECT_EQ(words.size(), 12);
  EXPECT_EQ(words.word(0), "<bos>");
  EXPECT_EQ(words.word(11), "11");
  const auto run = run_cli("run " + dir + "/model.h5 --prompt \"<bos> 3 4\" --top-k 1");
  EXPECT_EQ(run.rc, 0) << run.output;
  EXPECT_NE(run.output.find("tokens: \"<bos>\" \"3\" \"4\""), std::string::npos) << run.output;
}

// ---------------------------------------------------------------- store inspect --rows

TEST(CliMessages, StoreInspectPrintsRowsWithTheirTokens) {
  const std::string data = temp_path("ioi_rows.h5"), store = temp_path("rows_store.h5");
  ASSERT_EQ(run_cli("dataset make ioi --n 6 --out " + data).rc, 0);
  ASSERT_EQ(run_cli("cache " + kModels + "ioi.h5 " + data +
                    " --hooks blocks.0.hook_resid_post --out " + store +
                    " --dtype f32 --no-progress")
                .rc,
            0);
  const auto r = run_cli("store inspect " + store + " --rows 3:7 --hook blocks.0.hook_resid_post");
  ASSERT_EQ(r.rc, 0) << r.output;
  // Independent reference: the dataset's token at each row's (example, pos).
  const core::Dataset ds = core::load_dataset(data);
  const auto words = core::WordTokenizer::from_json_string(ds.tokenizer);
  auto s = core::ActivationStore::open(store);
  const at::Tensor src = s.row_source(3, 4).to(at::kLong);
  const at::Tensor acts = s.rows("blocks.0.hook_resid_post", 3, 4).to(at::kFloat);
  std::istringstream lines(r.output);
  std::string line;
  int seen = 0;
  while (std::getline(lines, line)) {
    std::istringstream in(line);
    int64_t row = -1, ex = -1, pos = -1, id = -1;
    if (!(in >> row >> ex >> pos >> id)) continue;
    const int64_t i = row - 3;
    ASSERT_GE(i, 0);
    ASSERT_LT(i, 4);
    EXPECT_EQ(ex, src[i][0].item<int64_t>());
    EXPECT_EQ(pos, src[i][1].item<int64_t>());
    const int64_t want = ds.prompts()[ex][pos].item<int64_t>();
    EXPECT_EQ(id, want);
    std::string word;
    in >> word;
    EXPECT_EQ(word, "\"" + words.word(want) + "\"") << line;
    double norm = 0;
    in >> norm;
    EXPECT_NEAR(norm, acts[i].norm().item<double>(), 1e-3) << line;
    ++seen;
  }
  EXPECT_EQ(seen, 4) << r.output;

  const auto past = run_cli("store inspect " + store + " --rows 100:110 --hook blocks.0.hook_resid_post");
  EXPECT_NE(past.rc, 0);
  EXPECT_NE(past.output.find("reaches past the store's " + std::to_string(s.num_rows()) +
                             " committed rows"),
            std::string::npos)
      << past.output;
  const auto hook = run_cli("store inspect " + store + " --rows 0:2 --hook blocks.9.hook_resid_post");
  EXPECT_NE(hook.rc, 0);
  EXPECT_NE(hook.output.find("--hook 'blocks.9.hook_resid_post' is not in store"), std::string::npos)
      << hook.output;
  EXPECT_NE(hook.output.find("it holds: blocks.0.hook_resid_post"), std::string::npos);
  const auto bad = run_cli("store inspect " + store + " --rows 5:2 --hook blocks.0.hook_resid_post");
  EXPECT_NE(bad.output.find("--rows wants START:END"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace mechlab
