// mechlab probe (apps/cli/cmd_probe.cpp, probes/probe_run.h): on the shipped
// induction model a probe for "this token appeared earlier" is more accurate
// after layer 0 than at the embedding (a real signal: the embedding of a
// rotary model holds the token's identity only); a store cached from the
// same model gives the same probes as the model itself; bad input is one
// clear line and writes nothing; the job file's probe step.
#include "apps/jobs/job_file.h"
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "sae/registry.h"
#include "sae/saelens_io.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace mechlab {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::run_cli;

const std::string kModel = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
const std::string kHooks = " --hooks hook_embed blocks.0.hook_resid_post blocks.1.hook_resid_post";

std::string temp_path(const std::string& name) { return testing::temp_path("probe_cli", name); }

class ProbeCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // The induction model's own task: BOS + L random ids + the same L again.
    data_ = temp_path("induction.h5");
    const auto r = run_cli("dataset make induction --n 160 --seed 5 --set d_vocab=256 --overwrite --out " + data_);
    ASSERT_EQ(r.rc, 0) << r.output;
  }
  static std::string data_;
};
std::string ProbeCli::data_;

std::vector<std::string> hooks_of(const core::H5File& f) {
  return nlohmann::json::parse(f.read_attr_string("", "hooks")).get<std::vector<std::string>>();
}

// The one line of a failed command, and that nothing was written in `out`.
void expect_refused(const testing::CliResult& r, const std::string& out, const std::string& words) {
  EXPECT_EQ(r.rc, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("mechlab: error: "));
  EXPECT_THAT(r.output, HasSubstr(words));
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_FALSE(fs::exists(out + "/probes.h5"));
  EXPECT_FALSE(fs::exists(out + "/probes.svg"));
  EXPECT_FALSE(fs::exists(out + "/probes.h5.tmp"));
  EXPECT_FALSE(fs::exists(out + "/probes.svg.new"));
}

TEST_F(ProbeCli, RepeatedTokenIsReadAfterLayerZeroNotAtTheEmbedding) {
  const std::string out = temp_path("model_run");
  const auto r = run_cli("probe " + kModel + " " + data_ + kHooks +
                         " --label repeated --resamples 200 --ablate --ablate-examples 8 --threads 1 --out " + out +
                         " --overwrite");
  ASSERT_EQ(r.rc, 0) << r.output;
  core::H5File f = core::H5File::open_read(out + "/probes.h5");
  EXPECT_EQ(f.read_attr_string("", "mechlab_format"), "probes");
  ASSERT_EQ(hooks_of(f), (std::vector<std::string>{"hook_embed", "blocks.0.hook_resid_post",
                                                   "blocks.1.hook_resid_post"}));
  const at::Tensor acc = f.read_tensor("metrics/accuracy");
  const at::Tensor lo = f.read_tensor("metrics/accuracy_lower"), hi = f.read_tensor("metrics/accuracy_upper");
  const double majority = f.read_tensor("metrics/majority").item<double>();
  // The embedding knows the token, not whether it came before: near the majority rate.
  EXPECT_LT(acc[0].item<double>(), majority + 0.08) << r.output;
  // After layer 0 the probe reads it, beyond the embedding's interval.
  EXPECT_GT(lo[1].item<double>(), hi[0].item<double>()) << r.output;
  EXPECT_GT(acc[1].item<double>(), majority + 0.15) << r.output;
  // Intervals bracket their estimates.
  EXPECT_TRUE(at::all(lo.le(acc)).item<bool>() && at::all(acc.le(hi)).item<bool>());
  // AUROC of the logit, with its interval over the same 200 resamples (both
  // classes are in every resample of these test tokens).
  EXPECT_EQ(f.read_attr_string("", "auroc_average"), "binary");
  const at::Tensor auc = f.read_tensor("metrics/auroc");
  const at::Tensor auc_lo = f.read_tensor("metrics/auroc_lower"), auc_hi = f.read_tensor("metrics/auroc_upper");
  EXPECT_TRUE(at::all(auc_lo.le(auc)).item<bool>() && at::all(auc.le(auc_hi)).item<bool>());
  EXPECT_GT(auc_lo[1].item<double>(), auc_hi[0].item<double>()) << r.output;
  EXPECT_TRUE(at::equal(f.read_tensor("metrics/auroc_resamples"), at::full({3}, 200, at::kLong)));
  EXPECT_THAT(r.output, HasSubstr("AUROC [95% CI]"));
  // Selectivity is accuracy minus the control task's.
  EXPECT_TRUE(at::allclose(f.read_tensor("metrics/selectivity"),
                           acc - f.read_tensor("metrics/control_accuracy")));
  EXPECT_EQ(f.read_tensor("weight").sizes(), (std::vector<int64_t>{3, 64, 1}));
  std::ifstream svg(out + "/probes.svg");
  const std::string text((std::istreambuf_iterator<char>(svg)), std::istreambuf_iterator<char>());
  EXPECT_THAT(text, HasSubstr("<svg"));
  EXPECT_THAT(text, HasSubstr("selectivity"));
  // The intervals are shaded bands around their line (not lines of their
  // own), the points are marked, the control task is dashed.
  EXPECT_THAT(text, HasSubstr("<polygon fill=\"#0072B2\" fill-opacity"));
  EXPECT_THAT(text, HasSubstr("<circle"));
  EXPECT_THAT(text, HasSubstr("stroke-dasharray"));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("CI low")));
  // The split is by prompt: 160 prompts, 32 held out; BOS has no label.
  EXPECT_EQ(f.read_attr_string("", "split_by"), "example");
  EXPECT_EQ(f.read_attr_int("", "test_examples"), 32);
  const at::Tensor held_out = f.read_tensor("test_prompts");
  EXPECT_EQ(held_out.size(0), 32);
  EXPECT_TRUE(held_out.lt(160).all().item<bool>() && at::equal(held_out, std::get<0>(held_out.sort())));
  EXPECT_EQ(f.read_attr_int("", "train_examples"), 128);
  const int64_t T = core::load_dataset(data_).seq_len();
  EXPECT_EQ(f.read_attr_int("", "rows"), 160 * (T - 1));
  EXPECT_EQ(f.read_attr_int("", "test_rows"), 32 * (T - 1));
  EXPECT_THAT(r.output, HasSubstr("blocks.0.hook_resid_post"));
  // --ablate: one loss per probe, beside the loss without ablation.
  EXPECT_EQ(f.read_tensor("metrics/ablated_loss").size(0), 3);
  EXPECT_GT(f.read_attr_double("", "clean_loss"), 0);
  EXPECT_THAT(r.output, HasSubstr("without ablation"));

  // Again without --overwrite: refused, the results left as they were.
  const auto again = run_cli("probe " + kModel + " " + data_ + kHooks + " --label repeated --out " + out);
  EXPECT_EQ(again.rc, 1);
  EXPECT_THAT(again.output, HasSubstr("--overwrite"));
}

// --split-heads: a probe per layer and head, their heads in probes.h5, and
// the picture a grid of hooks by heads (a cell per probe, its tooltip with
// the interval) instead of lines.
TEST_F(ProbeCli, SplitHeadsDrawsAGridOfHooksByHeads) {
  const std::string out = temp_path("split_heads");
  const auto r = run_cli("probe " + kModel + " " + data_ + " --hooks 'blocks.*.attn.hook_z' --split-heads --label "
                         "repeated --resamples 50 --ablate --ablate-examples 4 --threads 1 --overwrite --out " + out);
  ASSERT_EQ(r.rc, 0) << r.output;
  core::H5File f = core::H5File::open_read(out + "/probes.h5");
  const std::vector<std::string> names = hooks_of(f);
  const at::Tensor heads = f.read_tensor("head");
  ASSERT_EQ(static_cast<int64_t>(names.size()), heads.size(0));
  const int64_t H = heads.max().item<int64_t>() + 1;
  ASSERT_EQ(static_cast<int64_t>(names.size()), 2 * H);  // two layers
  EXPECT_EQ(names[1], "blocks.0.attn.hook_z head 1");
  EXPECT_EQ(names[static_cast<size_t>(H)], "blocks.1.attn.hook_z head 0");
  EXPECT_EQ(heads[H + 1].item<int64_t>(), 1);
  EXPECT_THAT(r.output, HasSubstr("blocks.1.attn.hook_z head 1"));
  const std::string svg = testing::read_file(out + "/probes.svg");
  for (const char* words : {">blocks.0.attn.hook_z<", ">blocks.1.attn.hook_z<", ">head<", ">selectivity<",
                            "control accuracy", "next-token loss change, ablated", "blocks.1.attn.hook_z head 1: "
                            "accuracy "}) {
    EXPECT_THAT(svg, HasSubstr(words));
  }
  int64_t rects = 0;
  for (size_t at = svg.find("<rect x="); at != std::string::npos; at = svg.find("<rect x=", at + 1)) ++rects;
  EXPECT_EQ(rects, 4 * (2 * H) + 4 * 33) << "a cell per probe in each of 4 panels, and a colour bar (32 + 1) each";
  EXPECT_THAT(svg, ::testing::Not(HasSubstr("<polyline")));
}

// --position -1 (a negative number as the flag's value): one row per prompt,
// its last token; said in the picture's title and the config.
TEST_F(ProbeCli, APositionOfMinusOneProbesEachPromptsLastToken) {
  const std::string data = temp_path("probe_task.h5"), out = temp_path("last_token");
  const auto made =
      run_cli("dataset make probe --n 100 --seed 3 --set d_vocab=256 --set seq_len=24 --overwrite --out " + data);
  ASSERT_EQ(made.rc, 0) << made.output;
  const auto r = run_cli("probe " + kModel + " " + data + " --hooks blocks.1.hook_resid_post --label labels "
                         "--position -1 --resamples 20 --threads 1 --overwrite --out " + out);
  ASSERT_EQ(r.rc, 0) << r.output;
  core::H5File f = core::H5File::open_read(out + "/probes.h5");
  EXPECT_EQ(f.read_attr_int("", "rows"), 100);
  EXPECT_EQ(nlohmann::json::parse(f.read_attr_string("", "config")).at("position").get<int64_t>(), -1);
  EXPECT_THAT(testing::read_file(out + "/probes.svg"), HasSubstr("probes for 'labels' at position -1"));
}

// --sae: an SAELens folder attached at its hook_name makes its latents a
// hook; the folder is in the config; a folder naming no hook and a store
// source are refused in one line.
TEST_F(ProbeCli, AnSaeFolderMakesItsLatentsAHook) {
  const std::string dir = temp_path("sae"), out = temp_path("sae_probes");
  fs::remove_all(dir);
  fs::create_directories(dir);
  sae::SaeConfig c;
  c.architecture("relu").d_in(64).d_sae(128).hook_name("blocks.0.hook_resid_post");
  auto s = sae::make_sae(c);
  {
    at::NoGradGuard no_grad;
    at::manual_seed(2);
    for (const auto& [name, t] : s->named_parameters()) s->param(name).copy_(at::randn(t.sizes()) * 0.2);
  }
  sae::export_saelens(*s, dir + "/sae");
  const std::string latents = "blocks.0.hook_resid_post.sae.hook_sae_acts_post";
  const auto r = run_cli("probe " + kModel + " " + data_ + " --sae " + dir + "/sae --hooks " + latents +
                         " --label repeated --resamples 20 --threads 1 --overwrite --out " + out);
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(latents));
  core::H5File f = core::H5File::open_read(out + "/probes.h5");
  EXPECT_EQ(f.read_tensor("weight").sizes(), (std::vector<int64_t>{1, 128, 1}));
  const nlohmann::json attach = nlohmann::json::parse(f.read_attr_string("", "config")).at("attach");
  EXPECT_EQ(attach[0].at("source").get<std::string>(), dir + "/sae");
  EXPECT_EQ(attach[0].at("host").get<std::string>(), "blocks.0.hook_resid_post");
  expect_refused(run_cli("probe " + kModel + " " + data_ + " --sae " + dir + "/sae --sae " + dir + "/sae --hooks " +
                         latents + " --label repeated --out " + dir + "/x"),
                 dir + "/x", "both attach at blocks.0.hook_resid_post; give one SAE per hook");
  c.hook_name("");
  sae::export_saelens(*sae::make_sae(c), dir + "/nameless");
  expect_refused(run_cli("probe " + kModel + " " + data_ + " --sae " + dir + "/nameless --hooks " + latents +
                         " --label repeated --out " + dir + "/x"),
                 dir + "/x", "records no hook_name");
}

// What a run cannot tell is said: prompts without the --position (IOI's
// prompts have 14 to 19 tokens), a control task of one label (the last
// token of every IOI prompt is " to"), intervals over 2 test prompts; and
// the classes are the labels present.
TEST_F(ProbeCli, WarningsSayWhatTheScoresCannotTell) {
  const std::string ioi = temp_path("ioi.h5"), out = temp_path("warnings");
  ASSERT_EQ(run_cli("dataset make ioi --n 60 --seed 1 --overwrite --out " + ioi).rc, 0);
  const std::string head = "probe " + kModel + " " + ioi + " --hooks blocks.1.hook_resid_post --resamples 20 "
                           "--threads 1 --overwrite --out " + out;
  // From the dataset: the prompts of 15 tokens or fewer, and the labels
  // (template indices) of the others.
  const core::Dataset ds = core::load_dataset(ioi);
  const at::Tensor long_enough = ds.attention_mask.sum(1).gt(15);  // [N]
  const int64_t short_prompts = ds.size() - long_enough.sum().item<int64_t>();
  const at::Tensor present = std::get<0>(at::_unique(ds.labels.masked_select(long_enough)));
  ASSERT_GT(short_prompts, 0);
  ASSERT_GE(present.numel(), 2);
  std::string labels_text;
  for (int64_t k = 0; k < present.numel(); ++k) {
    labels_text += (k ? ", " : "") + std::to_string(present[k].item<int64_t>());
  }
  const auto at15 = run_cli(head + " --position 15");
  ASSERT_EQ(at15.rc, 0) << at15.output;
  EXPECT_THAT(at15.output,
              HasSubstr(std::to_string(short_prompts) + " prompts have no token at --position 15 and are left out"));
  EXPECT_THAT(at15.output, HasSubstr(std::to_string(present.numel()) + " classes (labels " + labels_text + ")"));
  EXPECT_TRUE(at::equal(core::H5File::open_read(out + "/probes.h5").read_tensor("classes"), present.to(at::kLong)));
  EXPECT_THAT(at15.output, HasSubstr("mechlab: warning: the probed tokens are all of one type, so the control task "
                                     "has one label: control accuracy is 1 and selectivity says nothing here"));
  // The model cuts its rows to the position in its forwards, a store after
  // reading them (rows_at_position): on these right-padded prompts both
  // take the same token per prompt, from the end (-3) and from the start.
  const std::string store = temp_path("ioi_acts.h5"), from_store = temp_path("ioi_store_probes");
  ASSERT_EQ(run_cli("cache " + kModel + " " + ioi + " --hooks blocks.1.hook_resid_post --dtype f32 --no-progress "
                    "--overwrite --out " + store).rc, 0);
  for (const char* p : {"-3", "15"}) {
    ASSERT_EQ(run_cli(head + " --position " + p).rc, 0);
    const auto s = run_cli("probe " + store + " " + ioi + " --hooks blocks.1.hook_resid_post --resamples 20 "
                           "--threads 1 --overwrite --out " + from_store + " --position " + p);
    ASSERT_EQ(s.rc, 0) << s.output;
    core::H5File fa = core::H5File::open_read(out + "/probes.h5");
    core::H5File fb = core::H5File::open_read(from_store + "/probes.h5");
    EXPECT_EQ(fa.read_attr_int("", "rows"), fb.read_attr_int("", "rows")) << p;
    EXPECT_TRUE(at::equal(fa.read_tensor("test_prompts"), fb.read_tensor("test_prompts"))) << p;
    EXPECT_TRUE(at::allclose(fa.read_tensor("weight"), fb.read_tensor("weight"), 1e-4, 1e-5)) << p;
  }
  const auto few = run_cli(head + " --max-examples 6");
  ASSERT_EQ(few.rc, 0) << few.output;
  EXPECT_THAT(few.output, HasSubstr("mechlab: warning: only 2 test prompts: the intervals resample them and say "
                                    "little"));
  EXPECT_THAT(few.output, ::testing::Not(HasSubstr("one type")));
}

TEST_F(ProbeCli, AStoreOfTheModelGivesTheSameProbesAsTheModel) {
  const std::string store = temp_path("acts.h5");
  const auto c = run_cli("cache " + kModel + " " + data_ +
                         " --hooks hook_embed blocks.0.hook_resid_post --dtype f32 --no-progress --overwrite --out " +
                         store);
  ASSERT_EQ(c.rc, 0) << c.output;
  const std::string a = temp_path("from_model"), b = temp_path("from_store");
  const std::string rest = " --hooks hook_embed blocks.0.hook_resid_post --label repeated --resamples 50 "
                           "--threads 1 --overwrite --out ";
  ASSERT_EQ(run_cli("probe " + kModel + " " + data_ + rest + a).rc, 0);
  const auto s = run_cli("probe " + store + " " + data_ + rest + b);
  ASSERT_EQ(s.rc, 0) << s.output;
  core::H5File fa = core::H5File::open_read(a + "/probes.h5"), fb = core::H5File::open_read(b + "/probes.h5");
  EXPECT_EQ(fb.read_attr_int("", "from_store"), 1);
  EXPECT_EQ(fa.read_attr_int("", "rows"), fb.read_attr_int("", "rows"));
  EXPECT_TRUE(at::allclose(fa.read_tensor("weight"), fb.read_tensor("weight"), 1e-4, 1e-5));
  EXPECT_TRUE(at::equal(fa.read_tensor("metrics/accuracy"), fb.read_tensor("metrics/accuracy")));
  EXPECT_TRUE(at::equal(fa.read_tensor("metrics/control_accuracy"), fb.read_tensor("metrics/control_accuracy")));
  EXPECT_TRUE(at::allclose(fa.read_tensor("metrics/auroc"), fb.read_tensor("metrics/auroc"), 0, 1e-3));

  // A hook the store does not hold: named, with what it holds.
  const std::string out = temp_path("absent_hook");
  expect_refused(run_cli("probe " + store + " " + data_ + " --hooks blocks.1.hook_resid_post --label repeated --out " + out),
                 out, "hook 'blocks.1.hook_resid_post' is not in the activation store");
  // --ablate needs the model, which a store is not.
  expect_refused(run_cli("probe " + store + " " + data_ + " --hooks hook_embed --label repeated --ablate --out " + out), out,
                 "--ablate needs a model to run, but " + store + " is an activation store");
  // NaN activations in the store: refused with the row.
  const std::string bad = temp_path("nan_acts.h5");
  fs::copy_file(store, bad, fs::copy_options::overwrite_existing);
  {
    core::H5File f = core::H5File::open_readwrite(bad);
    at::Tensor row = f.read_rows("acts/blocks.0.hook_resid_post", 7, 1);
    row[0][3] = std::nan("");
    f.write_rows("acts/blocks.0.hook_resid_post", 7, row);
    f.close();
  }
  expect_refused(run_cli("probe " + bad + " " + data_ + " --hooks blocks.0.hook_resid_post --label repeated --out " + out),
                 out, "NaN");
}

// A store with a dataset it was not cached from: one line, naming both.
TEST_F(ProbeCli, AStoreWithAnotherDatasetIsRefused) {
  const std::string store = temp_path("own_acts.h5"), other = temp_path("other.h5"), out = temp_path("other_out");
  ASSERT_EQ(run_cli("cache " + kModel + " " + data_ +
                    " --hooks blocks.0.hook_resid_post --dtype f32 --no-progress --overwrite --out " + store)
                .rc,
            0);
  ASSERT_EQ(run_cli("dataset make probe --n 100 --overwrite --out " + other).rc, 0);
  expect_refused(run_cli("probe " + store + " " + other + " --hooks blocks.0.hook_resid_post --label repeated --out " + out),
                 out, "activation store " + store + " was cached from " + data_ + " (dataset fingerprint ");
}

// Each out-of-range option: exit 1, one line naming the flag, nothing written;
// --help shows integers as INT and the open intervals as open.
TEST_F(ProbeCli, EachBadOptionIsOneLineNamingTheFlag) {
  const std::string out = temp_path("bad_options");
  const std::string head = "probe " + kModel + " " + data_ + " --hooks hook_embed --label repeated --out " + out;
  const std::pair<const char*, const char*> cases[] = {
      {" --C 0", "--C must be > 0, got 0"},
      {" --resamples 1", "--resamples must be >= 2 (a percentile interval needs resamples), got 1"},
      {" --seed -1", "--seed must be >= 0, got -1"},
      {" --test-fraction 0", "--test-fraction must be in (0, 1), exclusive, got 0"},
      {" --test-fraction 1", "--test-fraction must be in (0, 1), exclusive, got 1"},
      {" --confidence 1", "--confidence must be in (0, 1), exclusive, got 1"},
      {" --split-by prompt", "--split-by must be example or token, got 'prompt'"},
      {" --split-heads", "hook 'hook_embed' has per-token shape [64], no head axis, so --split-heads cannot split "
                         "it; probe it in a run without --split-heads"},
      {" --position 500", "has a token at --position 500 ("},
      {" --tol -1", "--tol must be >= 0, got -1"},
      {" --epochs 0", "--epochs must be > 0, got 0"},
      {" --solver exact", "unknown --solver 'exact'; use auto, lbfgs, fista or adam"},
      {" --solver lbfgs --penalty l1", "--solver lbfgs cannot minimise the l1 --penalty"},
      {" --solver sgd", "unknown --solver 'sgd'; use auto, lbfgs, fista or adam"},
      {" --sae /nonexistent/sae", "/nonexistent/sae"},
  };
  for (const auto& [flag, words] : cases) expect_refused(run_cli(head + flag), out, words);
  expect_refused(run_cli(head + " --device gpu"), out, "unknown device \"gpu\"; use cpu, cuda, cuda:N or auto");
  if (!at::hasCUDA()) {
    expect_refused(run_cli(head + " --device cuda"), out,
                   "device \"cuda\" asked for, but no CUDA GPU is available here; use --device cpu");
  }
  const std::string help = run_cli("probe --help").output;
  for (const char* flag : {"--max-iter INT", "--resamples INT", "--batch-size INT", "--max-examples INT",
                           "--ablate-examples INT", "--seed INT"}) {
    EXPECT_THAT(help, HasSubstr(flag)) << help;
  }
  EXPECT_THAT(help, ::testing::Not(HasSubstr("[0 - 1]")));
  EXPECT_THAT(help, HasSubstr("in (0, 1), exclusive"));
  EXPECT_THAT(help, ::testing::Not(HasSubstr("ACDC")));
  EXPECT_THAT(help, HasSubstr("the probes' fits"));
}

// A probe stopped by --max-iter is said, one warning line per probe (task
// and control), and both kinds' convergence is in probes.h5.
TEST_F(ProbeCli, ProbesThatStopAtMaxIterAreWarnedAbout) {
  const std::string out = temp_path("max_iter");
  const auto r = run_cli("probe " + kModel + " " + data_ +
                         " --hooks blocks.0.ln1.hook_normalized --label repeated --max-iter 3 --resamples 20 "
                         "--threads 1 --overwrite --out " + out);
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("mechlab: warning: the probe of blocks.0.ln1.hook_normalized did not converge "
                                  "(stopped by --max-iter after 3 iterations); raise --max-iter"));
  EXPECT_THAT(r.output, HasSubstr("mechlab: warning: the control probe of blocks.0.ln1.hook_normalized did not "
                                  "converge (stopped by --max-iter after 3 iterations); raise --max-iter"));
  core::H5File f = core::H5File::open_read(out + "/probes.h5");
  EXPECT_EQ(f.read_tensor("converged")[0].item<int64_t>(), 0);
  EXPECT_EQ(f.read_tensor("control_converged")[0].item<int64_t>(), 0);
  EXPECT_EQ(f.read_tensor("control_iterations")[0].item<int64_t>(), 3);
  // Converged probes: no warning.
  const auto ok = run_cli("probe " + kModel + " " + data_ +
                          " --hooks blocks.0.hook_resid_post --label repeated --max-iter 1000 --resamples 20 "
                          "--threads 1 --overwrite --out " + out);
  ASSERT_EQ(ok.rc, 0) << ok.output;
  EXPECT_THAT(ok.output, ::testing::Not(HasSubstr("warning")));
  core::H5File g = core::H5File::open_read(out + "/probes.h5");
  EXPECT_EQ(g.read_tensor("control_converged")[0].item<int64_t>(), 1);
  // Adam stops on its validation rows; one stopped by --epochs while still
  // improving is told to raise --epochs (not --max-iter, which it ignores).
  const auto adam = run_cli("probe " + kModel + " " + data_ +
                            " --hooks blocks.0.hook_resid_post --label repeated --solver adam --epochs 2 "
                            "--tol 0.5 --resamples 20 --threads 1 --overwrite --out " + out);
  ASSERT_EQ(adam.rc, 0) << adam.output;
  EXPECT_THAT(adam.output, HasSubstr("was still improving on its validation rows after 2 epochs (best at epoch 2); "
                                     "raise --epochs"));
  EXPECT_THAT(adam.output, ::testing::Not(HasSubstr("--max-iter")));
  EXPECT_THAT(adam.output, HasSubstr("mechlab: warning: --tol is not read by --solver adam"));
  const nlohmann::json config =
      nlohmann::json::parse(core::H5File::open_read(out + "/probes.h5").read_attr_string("", "config"));
  EXPECT_EQ(config.at("solver").get<std::string>(), "adam");
  EXPECT_EQ(config.at("epochs").get<int64_t>(), 2);
}

TEST_F(ProbeCli, BadLabelsAreOneLineAndWriteNothing) {
  const std::string out = temp_path("bad_labels");
  core::Dataset ds = core::load_dataset(data_);
  // One class only.
  ds.labels = at::zeros(ds.tokens.sizes(), at::kLong);
  const std::string one = temp_path("one_class.h5");
  core::save_dataset(one, ds);
  expect_refused(run_cli("probe " + kModel + " " + one + kHooks + " --label labels --out " + out), out,
                 "label 'labels' has one class only");
  // Labels of the wrong length: the dataset is refused naming /labels.
  const std::string wrong = temp_path("wrong_length.h5");
  core::H5File::write_atomically(wrong, [&](core::H5File& f) {  // as save_dataset writes, /labels too short
    f.write_attr("", "mechlab_format", "dataset");
    f.write_attr("", "mechlab_version", int64_t{1});
    f.write_attr("", "task", "custom");
    f.write_attr("", "tokenizer", "");
    f.write_attr("", "d_vocab", ds.d_vocab);
    f.write_attr("", "seed", int64_t{-1});
    f.write_attr("", "config", "{}");
    f.write_tensor("tokens", ds.tokens);
    f.write_tensor("labels", at::zeros({ds.size() - 3}, at::kLong));
  });
  expect_refused(run_cli("probe " + kModel + " " + wrong + kHooks + " --label labels --out " + out), out, "labels");
  // No /labels at all (the induction generator writes some: drop them).
  ds.labels = at::Tensor();
  const std::string none = temp_path("no_labels.h5");
  core::save_dataset(none, ds);
  expect_refused(run_cli("probe " + kModel + " " + none + kHooks + " --label labels --out " + out), out,
                 "has no /labels; give a dataset with labels per token or per example, or use --label repeated");
  // An unknown label name.
  expect_refused(run_cli("probe " + kModel + " " + data_ + kHooks + " --label seen --out " + out), out,
                 "unknown probe label 'seen'; use one of: labels, repeated");
}

TEST_F(ProbeCli, JobFileProbeStepRunsTheCommandAndIsDoneOnceProbesH5Exists) {
  const std::string dir = temp_path("job");
  fs::create_directories(dir);
  std::ofstream(dir + "/m.h5") << "";  // the discovery job's inputs need only exist to parse
  std::ofstream(dir + "/d.h5") << "";
  const nlohmann::json doc = nlohmann::json::parse(R"({"steps": [{"probe": {"source": ")" + kModel +
                                                   R"(", "dataset": ")" + data_ + R"(",
      "hooks": ["hook_embed", "blocks.0.hook_resid_post"], "label": "repeated", "resamples": 20, "threads": 1,
      "split-by": "token", "device": "cpu", "out": "runs/probes"}},
      {"probe": {"source": "m.h5", "dataset": "d.h5", "out": "p2", "hooks": "x", "sae": ["saes/a", "/abs/b"]}}],
      "jobs": [{"name": "j", "model": "m.h5", "dataset": "d.h5", "method": "eap", "metric": "logit_diff", "threshold": 0.1}]})");
  const jobs::JobFile file = jobs::parse_job_document(doc, dir + "/job.json", dir);
  ASSERT_EQ(file.steps.size(), 2u);
  // Paths in a step, also in a list, are relative to the job file's folder.
  const std::vector<std::string>& second = file.steps[1].argv;
  EXPECT_NE(std::find(second.begin(), second.end(), dir + "/saes/a"), second.end());
  EXPECT_NE(std::find(second.begin(), second.end(), "/abs/b"), second.end());
  const jobs::Step& s = file.steps[0];
  const std::string out = dir + "/runs/probes";
  EXPECT_EQ(s.argv, (std::vector<std::string>{"probe", kModel, data_, "--out", out, "--hooks", "hook_embed",
                                              "--hooks", "blocks.0.hook_resid_post", "--label", "repeated",
                                              "--split-by", "token", "--resamples", "20", "--device", "cpu",
                                              "--threads", "1"}));
  EXPECT_EQ(s.done, out + "/probes.h5");
  EXPECT_FALSE(jobs::step_done(s));
  std::string line;
  for (const auto& w : jobs::step_command(s)) line += " " + w;
  const auto r = run_cli(line.substr(1));
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_TRUE(jobs::step_done(s));
  EXPECT_TRUE(fs::exists(out + "/probes.svg"));
  EXPECT_EQ(core::H5File::open_read(out + "/probes.h5").read_attr_string("", "split_by"), "token");
  // A field `mechlab probe` does not take is refused by name.
  const nlohmann::json bad = nlohmann::json::parse(R"({"steps": [{"probe": {"source": "m.h5", "dataset": "d.h5",
      "hooks": "x", "out": "p", "layer": 3}}],
      "jobs": [{"name": "j", "model": "m.h5", "dataset": "d.h5", "method": "eap", "metric": "logit_diff", "threshold": 0.1}]})");
  EXPECT_THAT(testing::error_of([&] { jobs::parse_job_document(bad, dir + "/job.json", dir); }),
              HasSubstr("step 1 (probe): unknown field 'layer'"));
}

}  // namespace
}  // namespace mechlab
