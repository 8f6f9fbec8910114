// The SAE commands driven from outside, as a user would: every refusal is
// one line, before any work, and leaves every existing file intact; train's
// output folder holds one run's files only; resume compares a store by its
// content, not its path, and configs with defaults filled in; export's
// staging folder never takes a user's folder; import refuses what training
// would refuse.
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "sae/registry.h"
#include "sae/saelens_io.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <fstream>
#include <string>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using mechlab::testing::error_line;
using mechlab::testing::read_file;
using mechlab::testing::write_file;
using mechlab::testing::run_cli;
using mechlab::testing::temp_path;

const std::string kData = std::string(MECHLAB_TEST_DATA);
const std::string kModel = kData + "/runtime/gpt2_like.h5";
const std::string kTopk = kData + "/sae/saved/topk";
const std::string kInduction = std::string(MECHLAB_SOURCE_DIR) + "/apps/models/induction.h5";

std::string fresh_dir(const std::string& name) {
  const std::string d = temp_path("sae_cli_safety", name);
  mechlab::testing::remove_tree(d);
  fs::create_directories(d);
  return d;
}

/// The eval fixture's tokens [8, 12] (gpt2_like's vocabulary, 61) as a dataset.
std::string eval_dataset(const std::string& dir) {
  const std::string path = dir + "/ds.h5";
  core::Dataset ds;
  ds.d_vocab = 61;
  ds.tokens = core::H5File::open_read(kData + "/sae/sae_eval.h5").read_tensor("tokens").to(at::kInt);
  core::save_dataset(path, ds);
  return path;
}

// A small toy run (seconds): topk, k 4.
const char* kToy = "name: toy\nsae: {architecture: topk, d_in: 16, d_sae: 32, k: 4}\n"
                   "data: {toy: {n_features: 24, d: 16}}\nsteps: 8\nbatch_size: 64\nlr: 1e-3\n"
                   "eval_every: 4\neval_rows: 64\ncheckpoint_every: 2\n";

TEST(SaeCliSafety, TrainRefusesBadValuesInOneLineBeforeCreatingTheOutputFolder) {
  const std::string dir = fresh_dir("refuse");
  // The store need not exist: every value is checked before anything is opened.
  // `extra` goes inside `sae:`; YAML's .nan is how a NaN reaches the config.
  auto arch = [](const std::string& fallback, const std::string& extra) {
    return extra.find("architecture") == std::string::npos ? ", architecture: " + fallback : std::string();
  };
  auto store = [&](const std::string& extra) {
    write_file(dir + "/store.yaml", "sae: {d_in: 64, d_sae: 128" + arch("relu", extra) + extra + "}\n"
               "data: {store: acts.h5, hook: blocks.1.hook_resid_post}\nsteps: 6\nbatch_size: 32\n");
    return "sae train " + dir + "/store.yaml --no-progress --out " + dir + "/out";
  };
  auto toy = [&](const std::string& extra) {
    write_file(dir + "/toy.yaml", "sae: {d_in: 16, d_sae: 32, k: 4" + arch("topk", extra) + extra + "}\n"
               "data: {toy: {n_features: 24, d: 16}}\nsteps: 6\nbatch_size: 32\n");
    return "sae train " + dir + "/toy.yaml --no-progress --out " + dir + "/out";
  };
  struct Case {
    std::function<std::string(const std::string&)> base;  // writes its config first
    std::string extra, flags, want;
  };
  const std::vector<Case> cases = {
      {store, "", "--set sae.hook_name=blocks.0.hook_resid_post",
       "\"sae.hook_name\" is \"blocks.0.hook_resid_post\" but the SAE trains on data.hook "
       "\"blocks.1.hook_resid_post\""},
      {store, "", "--set sae.hook_name=blocks.0.attn.hook_z", "\"sae.hook_name\" is \"blocks.0.attn.hook_z\""},
      {store, ", l1_coefficient: .nan", "", "\"sae.l1_coefficient\" must be a finite number >= 0, got nan"},
      {store, ", l1_coefficient: -1", "", "\"sae.l1_coefficient\" must be a finite number >= 0, got -1"},
      {store, ", lp_norm: 0", "", "\"sae.lp_norm\" must be a finite number > 0, got 0"},
      {store, ", lp_norm: .nan", "", "\"sae.lp_norm\" must be a finite number > 0, got nan"},
      {store, ", architecture: jumprelu, l0_coefficient: .nan", "", "\"sae.l0_coefficient\" must be a finite number >= 0"},
      {store, ", architecture: jumprelu, l0_coefficient: -0.5", "",
       "\"sae.l0_coefficient\" must be a finite number >= 0, got -0.5"},
      {toy, ", aux_loss_coefficient: .nan", "", "\"sae.aux_loss_coefficient\" must be a finite number >= 0, got nan"},
      {toy, ", aux_loss_coefficient: -2", "", "\"sae.aux_loss_coefficient\" must be a finite number >= 0, got -2"},
      {toy, ", architecture: batchtopk, topk_threshold_lr: .nan", "", "\"sae.topk_threshold_lr\" must be in [0, 1], got nan"},
      {store, "", "--set data.buffer_rows=-100", "\"data.buffer_rows\" must be >= 1, got -100"},
      {toy, "", "--set beta1=1.5", "\"beta1\" must be in [0, 1), got 1.5"},
      {toy, "", "--max-steps -5", "--max-steps must be -1 (to the config's steps) or >= 0, got -5"},
  };
  for (const Case& c : cases) {
    const std::string args = c.base(c.extra) + " " + c.flags;
    SCOPED_TRACE(args);
    EXPECT_THAT(error_line(run_cli(args)), HasSubstr(c.want));
    EXPECT_FALSE(fs::exists(dir + "/out")) << "a refused run created its output folder";
  }
  // --out an existing file: one clear line, the file intact.
  write_file(dir + "/file", "mine\n");
  toy("");
  EXPECT_THAT(error_line(run_cli("sae train " + dir + "/toy.yaml --no-progress --out " + dir + "/file")),
              HasSubstr("is a file, not a folder"));
  EXPECT_EQ(read_file(dir + "/file"), "mine\n");
}

TEST(SaeCliSafety, OverwriteRemovesTheEarlierRunsOwnFilesOnlyAndAFolderHoldingThemNeedsIt) {
  const std::string dir = fresh_dir("overwrite");
  write_file(dir + "/toy.yaml", kToy);
  const std::string train = "sae train " + dir + "/toy.yaml --no-progress --threads 1 --out ";
  const std::string ow = dir + "/ow";
  ASSERT_EQ(run_cli(train + ow).rc, 0);
  ASSERT_TRUE(fs::exists(ow + "/config.json"));
  ASSERT_TRUE(fs::exists(ow + "/sae/cfg.json"));
  write_file(ow + "/notes.txt", "my notes\n");
  // A new run that stops early: none of the old run's config.json and sae/.
  const auto r = run_cli(train + ow + " --overwrite --set sae.k=6 --max-steps 3");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_FALSE(fs::exists(ow + "/config.json")) << "the k=4 run's config.json is left";
  EXPECT_FALSE(fs::exists(ow + "/sae")) << "the k=4 run's sae/ is left";
  EXPECT_TRUE(fs::exists(ow + "/checkpoint.h5"));
  EXPECT_EQ(read_file(ow + "/notes.txt"), "my notes\n");
  // Finished, they are the new run's.
  ASSERT_EQ(run_cli(train + ow + " --resume --set sae.k=6").rc, 0);
  EXPECT_EQ(nlohmann::json::parse(read_file(ow + "/config.json"))["sae"]["k"], 6.0);
  EXPECT_EQ(nlohmann::json::parse(read_file(ow + "/sae/cfg.json"))["k"], 6);
  // train_log says what its columns are for an SAE, not a language model's accuracy.
  const std::string csv = read_file(ow + "/train_log.csv");
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "step,lr,train_loss_total,grad_norm,eval_explained_variance,eval_mse,eval_mmcs,seconds");
  const std::string svg = read_file(ow + "/train_log.svg");
  EXPECT_THAT(svg, HasSubstr("MMCS (ground truth)"));
  EXPECT_THAT(svg, HasSubstr("evaluation MSE"));
  EXPECT_THAT(svg, Not(HasSubstr("accuracy")));

  // A folder holding another program's config.json (a model folder): refused
  // without --overwrite, and with it (it is not the run's), intact.
  const std::string hf = dir + "/hf";
  fs::create_directories(hf);
  write_file(hf + "/config.json", "{\"model_type\": \"gpt2\"}\n");
  EXPECT_THAT(error_line(run_cli(train + hf)), HasSubstr("already holds a training run (config.json)"));
  EXPECT_THAT(error_line(run_cli(train + hf + " --overwrite")),
              HasSubstr("is not an SAE training config mechlab wrote"));
  EXPECT_EQ(read_file(hf + "/config.json"), "{\"model_type\": \"gpt2\"}\n");
  EXPECT_FALSE(fs::exists(hf + "/checkpoint.h5"));
  // A folder holding sae/ with a user's file in it: the same.
  const std::string s = dir + "/s";
  fs::create_directories(s + "/sae");
  write_file(s + "/sae/cfg.json", "{}\n");
  write_file(s + "/sae/mine.txt", "x\n");
  EXPECT_THAT(error_line(run_cli(train + s)), HasSubstr("already holds a training run (sae)"));
  EXPECT_THAT(error_line(run_cli(train + s + " --overwrite")), HasSubstr("holds files besides an SAELens export"));
  EXPECT_EQ(read_file(s + "/sae/mine.txt"), "x\n");
}

TEST(SaeCliSafety, ResumeComparesTheStoreByContentAndConfigsWithDefaultsFilledIn) {
  const std::string dir = fresh_dir("resume");
  auto cache = [&](const std::string& name, int n) {
    ASSERT_EQ(run_cli("dataset make induction -o " + dir + "/" + name + ".ds.h5 --n " + std::to_string(n) +
                      " --set half_len=12 --set d_vocab=256")
                  .rc,
              0);
    mechlab::testing::remove_tree(dir + "/acts.h5");
    const auto c = run_cli("cache " + kInduction + " " + dir + "/" + name + ".ds.h5 --hooks blocks.1.hook_resid_post "
                           "--out " + dir + "/acts.h5 --dtype f32 --overwrite");
    ASSERT_EQ(c.rc, 0) << c.output;
  };
  cache("a", 16);
  const std::string cfg = "sae: {architecture: topk, d_in: 64, d_sae: 128, k: 4}\n"
                          "data: {store: acts.h5, hook: blocks.1.hook_resid_post, buffer_rows: 256}\n"
                          "steps: 6\nbatch_size: 64\nlr: 1e-3\neval_every: 3\neval_rows: 64\ncheckpoint_every: 1\n";
  write_file(dir + "/store.yaml", cfg);
  const std::string run = dir + "/run";
  auto train = [&](const std::string& config, const std::string& extra) {
    return run_cli("sae train " + config + " --no-progress --threads 1 --out " + run + " " + extra);
  };
  ASSERT_EQ(train(dir + "/store.yaml", "--max-steps 2").rc, 0);
  // The same store and config, copied elsewhere: the same run.
  fs::create_directories(dir + "/moved");
  fs::copy_file(dir + "/acts.h5", dir + "/moved/acts.h5");
  write_file(dir + "/moved/store.yaml", cfg);
  const auto moved = train(dir + "/moved/store.yaml", "--resume --max-steps 1");
  EXPECT_EQ(moved.rc, 0) << moved.output;
  // A one-key change inside `sae` is named, not printed as two whole objects.
  const std::string k = error_line(train(dir + "/store.yaml", "--resume --set sae.k=5"));
  EXPECT_THAT(k, HasSubstr("(\"sae.k\" is 4.0 there, 5.0 here)"));
  EXPECT_LT(k.size(), 300u) << k;
  // Different data recached at the same path: refused.
  cache("b", 24);
  EXPECT_THAT(error_line(train(dir + "/store.yaml", "--resume")), HasSubstr("\"data.store_content."));

  // A default written out is no change (toy seed 0).
  write_file(dir + "/toy.yaml", kToy);
  const std::string toy_run = dir + "/toy";
  ASSERT_EQ(run_cli("sae train " + dir + "/toy.yaml --no-progress --threads 1 --max-steps 2 --out " + toy_run).rc, 0);
  const auto seed = run_cli("sae train " + dir + "/toy.yaml --no-progress --threads 1 --resume --out " + toy_run +
                            " --set data.toy.seed=0");
  EXPECT_EQ(seed.rc, 0) << seed.output;
}

TEST(SaeCliSafety, ExportStagingAndOverwriteNeverTakeAUsersFiles) {
  const std::string dir = fresh_dir("staging");
  // A user's folder at the old fixed staging name survives an export.
  fs::create_directories(dir + "/exp5.tmp");
  write_file(dir + "/exp5.tmp/junk", "junk\n");
  ASSERT_EQ(run_cli("sae export " + kTopk + " --out " + dir + "/exp5").rc, 0);
  EXPECT_EQ(read_file(dir + "/exp5.tmp/junk"), "junk\n");
  EXPECT_TRUE(fs::exists(dir + "/exp5/cfg.json"));
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().find("exp5.tmp."), std::string::npos) << "stage left: " << e.path();
  }
  // --overwrite of a folder holding another file: refused, intact.
  write_file(dir + "/exp5/readme.md", "mine\n");
  EXPECT_THAT(error_line(run_cli("sae export " + kTopk + " --out " + dir + "/exp5 --overwrite")),
              HasSubstr("holds files besides cfg.json and sae_weights.safetensors"));
  EXPECT_EQ(read_file(dir + "/exp5/readme.md"), "mine\n");
  // --overwrite of the folder that holds the input: refused, the input intact.
  fs::create_directories(dir + "/par");
  ASSERT_EQ(run_cli("sae export " + kTopk + " --out " + dir + "/par/sub").rc, 0);
  write_file(dir + "/par/cfg.json", "{}\n");
  EXPECT_THAT(error_line(run_cli("sae export " + dir + "/par/sub --out " + dir + "/par --overwrite")),
              HasSubstr("contains the SAE folder being read"));
  EXPECT_TRUE(fs::exists(dir + "/par/sub/sae_weights.safetensors"));
}

TEST(SaeCliSafety, ImportRefusesANonWholeKAMissingKAndAnIntegerDtype) {
  const std::string dir = fresh_dir("import");
  SaeConfig c;
  c.architecture("topk").d_in(8).d_sae(16).k(2).hook_name("blocks.0.hook_resid_post");
  auto s = make_sae(c);
  {
    at::NoGradGuard no_grad;
    for (const auto& [name, t] : s->named_parameters()) s->param(name).fill_(0.1);
  }
  export_saelens(*s, dir + "/sae");
  const nlohmann::json good = nlohmann::json::parse(read_file(dir + "/sae/cfg.json"));
  ASSERT_EQ(run_cli("sae import " + dir + "/sae").rc, 0);
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = good;
    edit(j);
    write_file(dir + "/sae/cfg.json", j.dump());
    return run_cli("sae import " + dir + "/sae");
  };
  EXPECT_THAT(error_line(with([](nlohmann::json& j) { j["k"] = 2.5; })),
              HasSubstr("\"k\" = 2.5 must be a whole number"));
  EXPECT_THAT(error_line(with([](nlohmann::json& j) { j.erase("k"); })),
              HasSubstr("has no \"k\" (SAELens's default, 100, exceeds d_sae); add it"));
  EXPECT_THAT(error_line(with([](nlohmann::json& j) { j["k"] = nullptr; })), HasSubstr("has no \"k\""));
  EXPECT_THAT(error_line(with([](nlohmann::json& j) { j["dtype"] = "int8"; })),
              HasSubstr("\"dtype\" is \"int8\", not a floating-point type"));
  EXPECT_EQ(with([](nlohmann::json& j) { j["dtype"] = "torch.bfloat16"; }).rc, 0);
  write_file(dir + "/sae/cfg.json", good.dump());
  EXPECT_THAT(error_line(run_cli("sae import " + dir + "/sae --hook blocks.0.hook_resid_post")),
              HasSubstr("no --model was given"));
}

TEST(SaeCliSafety, EvalAndDashboardRefuseBadTokenIdsAndDuplicateLatents) {
  const std::string dir = fresh_dir("eval");
  eval_dataset(dir);
  const std::string eval = "sae eval " + kModel + " " + kTopk + " " + dir + "/ds.h5 --threads 1 --ignore-tokens ";
  EXPECT_THAT(error_line(run_cli(eval + "999")), HasSubstr("ignore_tokens holds 999, outside the model's vocabulary"));
  EXPECT_THAT(error_line(run_cli(eval.substr(0, eval.size() - 1) + "=-1")), HasSubstr("ignore_tokens holds -1"));
  EXPECT_EQ(run_cli(eval + "0").rc, 0);
  EXPECT_THAT(error_line(run_cli("sae dashboard " + kModel + " " + kTopk + " " + dir + "/ds.h5 --out " + dir +
                                 "/d.h5 --latents 3 3 5")),
              HasSubstr("--latents lists latent 3 twice"));
  EXPECT_FALSE(fs::exists(dir + "/d.h5"));
  const auto help = run_cli("sae dashboard --help");
  EXPECT_THAT(help.output, HasSubstr("a padded dataset is refused"));
  EXPECT_THAT(help.output, HasSubstr("--batch-size INT"));
  EXPECT_THAT(help.output, Not(HasSubstr("--batch-size TEXT")));
  EXPECT_THAT(help.output, Not(HasSubstr("ACDC")));
}

}  // namespace
}  // namespace mechlab::sae
