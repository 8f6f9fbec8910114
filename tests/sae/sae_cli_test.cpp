// mechlab sae eval / import / export / dashboard on the shipped gpt2_like
// model, SAELens's saved SAEs and the eval fixture's tokens as a dataset:
// the numbers the CLI prints and writes are SAELens's (the same fixture as
// sae_eval_test.cpp), the files it writes read back, and every refusal is one
// line: a wrong hook for the model, a d_in mismatch, missing or mis-shaped
// SAELens tensors, an output that is an input.
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "core/formats/safetensors.h"
#include "core/formats/safetensors_writer.h"
#include "core/formats/text_file.h"
#include "sae/dashboard.h"
#include "sae/saelens_io.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using mechlab::testing::error_line;
using mechlab::testing::run_cli;
using mechlab::testing::temp_path;

const std::string kData = std::string(MECHLAB_TEST_DATA);
const std::string kModel = kData + "/runtime/gpt2_like.h5";
const std::string kTopk = kData + "/sae/saved/topk";

/// The eval fixture's tokens [8, 12] as a mechlab dataset.
std::string dataset() {
  const std::string path = temp_path("sae_cli", "tokens.h5");
  if (!fs::exists(path)) {
    core::Dataset ds;
    ds.d_vocab = 61;
    ds.tokens = core::H5File::open_read(kData + "/sae/sae_eval.h5").read_tensor("tokens").to(at::kInt);
    core::save_dataset(path, ds);
  }
  return path;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

TEST(SaeCli, EvalPrintsAndWritesSaeLensNumbers) {
  const std::string out = temp_path("sae_cli", "eval.json");
  fs::remove(out);
  const auto r = run_cli("sae eval " + kModel + " " + kTopk + " " + dataset() +
                         " --batch-size 4 --ignore-tokens 0 --out " + out + " --threads 1");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("topk SAE (d_in 32, d_sae 128) at blocks.0.hook_resid_post"));
  EXPECT_THAT(r.output, HasSubstr("ce_loss_score (CE loss recovered)"));
  const nlohmann::json j = read_json(out);
  const core::H5File f = core::H5File::open_read(kData + "/sae/sae_eval.h5");
  for (const char* k : {"ce_loss_score", "ce_loss_with_sae", "kl_div_with_sae", "kl_div_score", "l0",
                        "explained_variance", "relative_reconstruction_bias"}) {
    const double want = f.read_tensor(std::string("topk/ignore0/") + k).item<double>();
    EXPECT_LE(std::abs(j["metrics"][k].get<double>() - want), 1e-5 * std::max(1.0, std::abs(want))) << k;
  }
  const at::Tensor hist = f.read_tensor("topk/ignore0/density_hist");
  ASSERT_EQ(j["density_histogram"]["counts"].size(), 20u);
  for (int64_t b = 0; b < 20; ++b) EXPECT_EQ(j["density_histogram"]["counts"][b].get<int64_t>(), hist[b].item<int64_t>());
  EXPECT_EQ(j["feature_density"].size(), 128u);
  // An existing --out needs --overwrite.
  EXPECT_THAT(error_line(run_cli("sae eval " + kModel + " " + kTopk + " " + dataset() + " --out " + out)),
              HasSubstr("already exists; pass --overwrite"));
}

TEST(SaeCli, EvalRefusesAWrongHookAWidthMismatchAndAnOutputThatIsAnInput) {
  const std::string base = "sae eval " + kModel + " " + kTopk + " " + dataset();
  EXPECT_THAT(error_line(run_cli(base + " --hook blocks.5.hook_resid_post")), HasSubstr("blocks.5.hook_resid_post"));
  EXPECT_THAT(error_line(run_cli(base + " --hook blocks.0.mlp.hook_post")),
              HasSubstr("an SAE with d_in 32 does not fit blocks.0.mlp.hook_post"));
  EXPECT_THAT(error_line(run_cli(base + " --out " + dataset() + " --overwrite")),
              HasSubstr("the dataset"));
  EXPECT_THAT(error_line(run_cli(base + " --out " + kTopk + "/cfg.json --overwrite")),
              HasSubstr("the SAE's cfg.json"));
}

/// A copy of SAELens's saved topk folder with one tensor dropped or replaced.
std::string broken_sae(const std::string& name, const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  const std::string dir = temp_path("sae_cli", name);
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  fs::copy_file(kTopk + "/cfg.json", dir + "/cfg.json");
  auto file = core::SafetensorsFile::open(kTopk + "/sae_weights.safetensors");
  std::map<std::string, at::Tensor> t;
  for (const auto& n : file.names()) t[n] = file.tensor(n).clone();
  edit(t);
  core::write_safetensors(dir + "/sae_weights.safetensors", {t.begin(), t.end()});
  return dir;
}

TEST(SaeCli, ImportChecksAndDescribesAFolderAndRefusesMissingOrMisShapedTensors) {
  const auto ok = run_cli("sae import " + kTopk + " --model " + kModel);
  ASSERT_EQ(ok.rc, 0) << ok.output;
  EXPECT_THAT(ok.output, HasSubstr("topk SAE, d_in 32, d_sae 128, hook blocks.0.hook_resid_post"));
  EXPECT_THAT(ok.output, HasSubstr("W_enc      [32, 128]"));
  EXPECT_THAT(ok.output, HasSubstr("splices into " + kModel + " at blocks.0.hook_resid_post"));
  const std::string missing = broken_sae("no_b_dec", [](auto& t) { t.erase("b_dec"); });
  EXPECT_THAT(error_line(run_cli("sae import " + missing)), HasSubstr("have no tensor b_dec, which a topk SAE needs"));
  const std::string shaped = broken_sae("bad_w_dec", [](auto& t) { t["W_dec"] = at::zeros({128, 31}); });
  EXPECT_THAT(error_line(run_cli("sae eval " + kModel + " " + shaped + " " + dataset())),
              HasSubstr("tensor W_dec has shape [128, 31], expected [128, 32]"));
  EXPECT_THAT(error_line(run_cli("sae import " + kTopk + " --model " + kModel + " --hook blocks.0.attn.hook_z")),
              HasSubstr("does not fit blocks.0.attn.hook_z"));
}

TEST(SaeCli, ExportUpgradesAPre6FolderRenamesTheHookAndRefusesItsInput) {
  const std::string out = temp_path("sae_cli", "exported");
  mechlab::testing::remove_tree(out);
  const auto r = run_cli("sae export " + kData + "/sae/saved/pre6_standard --out " + out +
                         " --hook blocks.1.hook_resid_post --fold-w-dec-norm");
  ASSERT_EQ(r.rc, 0) << r.output;
  const nlohmann::json j = read_json(out + "/cfg.json");
  EXPECT_EQ(j["metadata"]["hook_name"], "blocks.1.hook_resid_post");
  EXPECT_GE(std::stoi(j["metadata"]["sae_lens_version"].get<std::string>()), 6);
  // Same reconstruction as SAELens's load of the pre-6 folder.
  auto back = import_saelens(out);
  const core::H5File f = core::H5File::open_read(kData + "/sae/sae_lens.h5");
  const at::Tensor x = f.read_tensor("pre6_standard/x");
  const at::Tensor want = f.read_tensor("pre6_standard/inference/out");
  EXPECT_LE((back->reconstruct(x) - want).abs().max().item<double>(), 1e-5 * want.abs().max().item<double>());
  EXPECT_NEAR(back->param("W_dec").norm(2, {1}).max().item<double>(), 1.0, 1e-5);  // folded
  EXPECT_THAT(error_line(run_cli("sae export " + out + " --out " + out + " --overwrite")),
              HasSubstr("is the SAE folder being read; choose another folder"));
  EXPECT_THAT(error_line(run_cli("sae export " + kTopk + " --out " + out)), HasSubstr("exists"));
}

TEST(SaeCli, DashboardWritesTheFileAndThePage) {
  const std::string dir = temp_path("sae_cli", "dash");
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  const auto r = run_cli("sae dashboard " + kModel + " " + kTopk + " " + dataset() + " --out " + dir +
                         "/d.h5 --html " + dir + "/d.html --latents 1 2 99 --top-k 3 --threads 1");
  ASSERT_EQ(r.rc, 0) << r.output;
  const Dashboard d = read_dashboard(dir + "/d.h5");
  EXPECT_EQ(d.latents.size(0), 3);
  EXPECT_EQ(d.latents[2].item<int64_t>(), 99);
  EXPECT_EQ(d.top_acts.size(1), 3);
  std::ifstream in(dir + "/d.html");
  const std::string html((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* id : {"latent-1\"", "latent-2\"", "latent-99\""}) EXPECT_THAT(html, HasSubstr(id));
  // Outputs that are inputs, or each other, and files of another kind.
  const std::string base = "sae dashboard " + kModel + " " + kTopk + " " + dataset();
  EXPECT_THAT(error_line(run_cli(base + " --out " + kModel + " --overwrite")), HasSubstr("the model"));
  EXPECT_THAT(error_line(run_cli(base + " --out " + dir + "/e.h5 --html " + dir + "/e.h5")), HasSubstr("--out"));
  EXPECT_THAT(error_line(run_cli(base + " --out " + dataset() + "x --html " + dataset())), HasSubstr("the dataset"));
  EXPECT_THAT(error_line(run_cli(base + " --out " + dir + "/d.h5")), HasSubstr("already exists; pass --overwrite"));
  EXPECT_THAT(error_line(run_cli(base + " --out " + dir + "/d.h5 --latents 128 --overwrite")),
              HasSubstr("latent 128 is outside [0, d_sae = 128)"));
}

}  // namespace
}  // namespace mechlab::sae
