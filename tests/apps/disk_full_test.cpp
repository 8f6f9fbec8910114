// Nothing lost, nothing silent: every command that writes (new, dataset
// make, cache, train, sae train, patch, discover, probe) is run against a full disk (a small tmpfs), a
// read-only folder (a read-only tmpfs: root ignores permission bits) and a
// file size limit (RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail with
// EFBIG); also sae eval --out, sae dashboard --out / --html and sae export.
// Each must exit 1 (not crash) with one line naming the problem,
// leave the file that was there byte for byte, and leave no temporary.
// Also: outputs that are inputs, and outputs that would replace a file
// without --overwrite or a file of another mechlab kind, are refused.
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "tests/test_util.h"
#include "tests/tmpfs.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace mechlab {
namespace {

namespace fs = std::filesystem;
using testing::CliResult;
using testing::Tmpfs;

std::string temp_path(const std::string& name) {
  return testing::temp_path("disk_full_test", name);
}

std::vector<std::string> split(const std::string& args) {
  std::istringstream in(args);
  return {std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
}

// Runs `mechlab ARGS` (split on spaces: no quoting) with a file size limit
// of `fsize` bytes (0 = none), collecting stdout and stderr.
CliResult run(const std::string& args, rlim_t fsize = 0) {
  std::vector<std::string> words = split(args);
  words.insert(words.begin(), MECHLAB_BINARY);
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  int fds[2];
  if (pipe(fds) != 0) return {-1, "pipe failed"};
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    if (fsize > 0) {
      struct rlimit lim {fsize, fsize};
      setrlimit(RLIMIT_FSIZE, &lim);
      signal(SIGXFSZ, SIG_IGN);  // ignored dispositions survive exec
    }
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  // A crash (signal) reads as -1, never as an ordinary failure.
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// The CLI's error: exit 1, exactly one "mechlab: error:" line that is the
// last line, no HDF5 diagnostics, and containing every one of `words`
// (case-insensitive).
void expect_one_line_error(const CliResult& r, const std::vector<std::string>& words) {
  EXPECT_EQ(r.rc, 1) << r.output;
  const auto at = r.output.find("mechlab: error: ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string line = r.output.substr(at);
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "the error is not one line:\n" << r.output;
  EXPECT_EQ(r.output.find("HDF5-DIAG"), std::string::npos) << r.output;
  for (const auto& w : words) {
    EXPECT_NE(lower(line).find(lower(w)), std::string::npos) << "no '" << w << "' in: " << line;
  }
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Every regular file under `dir`. (Walked by hand: some recursive
// std::filesystem calls bind to LibTorch's copies and crash, see
// docs/ARCHITECTURE.md, Build.)
void files_under(const std::string& dir, std::vector<std::string>& out) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_directory()) {
      files_under(e.path().string(), out);
    } else if (e.is_regular_file()) {
      out.push_back(e.path().string());
    }
  }
}

// Files under `dir` whose names say they are temporaries.
std::vector<std::string> temporaries(const std::string& dir) {
  std::vector<std::string> all, out;
  files_under(dir, all);
  for (const auto& f : all) {
    if (fs::path(f).filename().string().find(".tmp") != std::string::npos) out.push_back(f);
  }
  return out;
}

// The three ways a write can fail, each run on the same command.
enum class Failure { disk_full, read_only, size_limit };

// Runs `args_for(dir)` where dir is a folder in which `prepare(dir)` has put
// the pre-existing files and writing then fails as `how`; checks the error
// names `target` and the reason, and that the pre-existing files are intact
// and no temporary is left.
void check_failure(const std::string& name, Failure how, const std::string& target_name,
                   const std::function<void(const std::string&)>& prepare,
                   const std::function<std::string(const std::string&)>& args_for,
                   size_t leave = 16 << 10) {
  SCOPED_TRACE(name);
  const std::string dir = temp_path(name);
  std::unique_ptr<Tmpfs> m;
  if (how != Failure::size_limit) {
    m = std::make_unique<Tmpfs>(dir, size_t(64) << 20);
    MECHLAB_MOUNT_OR_SKIP(*m);
  } else {
    fs::create_directories(dir);
  }
  prepare(dir);
  std::map<std::string, std::string> before;
  std::vector<std::string> files;
  files_under(dir, files);
  for (const auto& f : files) before[f] = slurp(f);
  rlim_t fsize = 0;
  std::string reason;
  switch (how) {
    case Failure::disk_full:
      m->fill_leaving(leave);
      reason = "no space left on device";
      break;
    case Failure::read_only:
      ASSERT_TRUE(m->make_read_only()) << std::strerror(errno);
      reason = "read-only file system";
      break;
    case Failure::size_limit:
      fsize = leave;
      reason = "file too large";
      break;
  }
  const CliResult r = run(args_for(dir), fsize);
  expect_one_line_error(r, {reason, dir + "/" + target_name});
  for (const auto& [path, bytes] : before) {
    EXPECT_TRUE(slurp(path) == bytes) << path << " changed";
  }
  EXPECT_EQ(temporaries(dir), std::vector<std::string>{});
}

class DiskFull : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = temp_path("model.h5");
    data_ = temp_path("ioi.h5");
    ASSERT_EQ(run("new " + model_ + " --preset tiny --seed 3 --overwrite").rc, 0);
    ASSERT_EQ(run("dataset make ioi --out " + data_ + " --n 6 --seed 1 --overwrite").rc, 0);
  }
  static std::string model_, data_;
};
std::string DiskFull::model_, DiskFull::data_;

const Failure kAll[] = {Failure::disk_full, Failure::read_only, Failure::size_limit};
const char* kNames[] = {"full", "ro", "fsize"};

TEST_F(DiskFull, NewKeepsTheOldCheckpoint) {
  for (int i = 0; i < 3; ++i) {
    check_failure(
        std::string("new_") + kNames[i], kAll[i], "m.h5",
        [](const std::string& d) { fs::copy_file(model_, d + "/m.h5"); },
        [](const std::string& d) { return "new " + d + "/m.h5 --preset tiny --seed 9 --overwrite"; });
  }
}

TEST_F(DiskFull, DatasetMakeKeepsTheOldDataset) {
  for (int i = 0; i < 3; ++i) {
    check_failure(
        std::string("dataset_") + kNames[i], kAll[i], "d.h5",
        [](const std::string& d) { fs::copy_file(data_, d + "/d.h5"); },
        [](const std::string& d) {
          return "dataset make induction --n 2000 --seed 2 --overwrite --out " + d + "/d.h5";
        });
  }
}

std::string cache_args(const std::string& model, const std::string& data, const std::string& out) {
  return "cache " + model + " " + data + " --hooks blocks.*.hook_resid_post --dtype f32 " +
         "--chunk-rows 16 --batch-size 2 --no-progress --out " + out;
}

TEST_F(DiskFull, CacheKeepsTheOldStore) {
  const std::string old_store = temp_path("old_store.h5");
  ASSERT_EQ(run(cache_args(model_, data_, old_store) + " --overwrite").rc, 0);
  for (int i = 0; i < 3; ++i) {
    check_failure(
        std::string("cache_") + kNames[i], kAll[i], "s.h5",
        [&](const std::string& d) { fs::copy_file(old_store, d + "/s.h5"); },
        [](const std::string& d) { return cache_args(model_, data_, d + "/s.h5") + " --overwrite"; },
        /*leave=*/4 << 10);
  }
}

// The case of the bug report: a new store on a disk that fills up while
// rows are written. The run must fail, and the store left behind must say
// it is unfinished and hold, as committed, only rows that reached the disk.
TEST_F(DiskFull, CacheNeverCommitsRowsThatDidNotReachTheDisk) {
  const std::string ref = temp_path("ref_store.h5");
  ASSERT_EQ(run(cache_args(model_, data_, ref) + " --overwrite").rc, 0);
  const std::string dir = temp_path("cache_rows");
  Tmpfs m(dir, size_t(64) << 20);
  MECHLAB_MOUNT_OR_SKIP(m);
  const int64_t ref_bytes = static_cast<int64_t>(fs::file_size(ref));
  m.fill_leaving(static_cast<size_t>(ref_bytes * 3 / 4));
  const std::string out = dir + "/s.h5";
  const CliResult r = run(cache_args(model_, data_, out));
  expect_one_line_error(r, {"no space left on device", out});
  EXPECT_EQ(temporaries(dir), std::vector<std::string>{});
  ASSERT_TRUE(fs::exists(out)) << "the store should have been created before the disk filled";
  core::H5File have = core::H5File::open_read(out), want = core::H5File::open_read(ref);
  EXPECT_EQ(have.read_attr_int("", "complete"), 0);
  const int64_t committed = have.read_attr_int("", "rows_committed");
  const int64_t total = want.read_attr_int("", "rows_total");
  EXPECT_LT(committed, total);
  for (const auto& hook : want.list("acts")) {
    const std::string ds = "acts/" + hook;
    EXPECT_TRUE(at::equal(have.read_rows(ds, 0, committed), want.read_rows(ds, 0, committed)))
        << ds << " differs within the " << committed << " committed rows";
  }
  const CliResult check = run("store inspect " + out + " --check");
  EXPECT_EQ(check.output.find("(complete)"), std::string::npos) << check.output;
}

TEST_F(DiskFull, TrainFailsCleanly) {
  const std::string cfg = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.json";
  const std::string sets =
      " --set steps=4 --set warmup_steps=1 --set batch_size=4 --set eval_every=2 --set eval_examples=8"
      " --set checkpoint_every=2 --set data.options.n=64 --no-progress";
  for (int i = 0; i < 3; ++i) {
    check_failure(
        std::string("train_") + kNames[i], kAll[i], "run",
        [](const std::string&) {},
        [&](const std::string& d) { return "train " + cfg + " --out " + d + "/run" + sets; },
        /*leave=*/8 << 10);
  }
}

TEST_F(DiskFull, SaeTrainFailsCleanly) {
  // A small TopK SAE on the toy generator, checkpointing every 2 steps.
  const std::string cfg = temp_path("sae_toy.json");
  {
    std::ofstream out(cfg);
    out << R"({"sae": {"architecture": "topk", "d_in": 16, "d_sae": 32, "k": 4},
              "data": {"toy": {"n_features": 24, "d": 16, "p_active": 0.1}},
              "steps": 4, "batch_size": 32, "eval_every": 2, "eval_rows": 32, "checkpoint_every": 2})";
    ASSERT_TRUE(out.good());
  }
  for (int i = 0; i < 3; ++i) {
    check_failure(
        std::string("sae_train_") + kNames[i], kAll[i], "run",
        [](const std::string&) {},
        [&](const std::string& d) { return "sae train " + cfg + " --out " + d + "/run --no-progress"; },
        /*leave=*/8 << 10);
  }
}

TEST_F(DiskFull, PatchKeepsTheOldResults) {
  const std::string old_out = temp_path("old_patch");
  const std::string patch = "patch " + model_ + " " + data_ + " --sweep resid_pre --overwrite --out ";
  ASSERT_EQ(run(patch + old_out).rc, 0);
  for (int i = 0; i < 3; ++i) {
    check_failure(
        std::string("patch_") + kNames[i], kAll[i], "p/",
        [&](const std::string& d) {
          fs::create_directories(d + "/p");
          for (const auto& e : fs::directory_iterator(old_out)) {
            fs::copy_file(e.path(), d + "/p/" + e.path().filename().string());
          }
        },
        [&](const std::string& d) { return patch + d + "/p"; }, /*leave=*/4 << 10);
  }
}

// mechlab probe's outputs (probes.h5 and probes.svg, both or neither): an
// existing result folder stays as it was when writing its replacement fails.
TEST_F(DiskFull, ProbeKeepsTheOldResults) {
  const std::string old_out = temp_path("old_probe");
  const std::string probe = "probe " + model_ + " " + data_ +
                            " --hooks hook_embed blocks.0.hook_resid_post --label repeated --resamples 20"
                            " --threads 1 --overwrite --out ";
  const CliResult first = run(probe + old_out);
  ASSERT_EQ(first.rc, 0) << first.output;
  for (int i = 0; i < 3; ++i) {
    check_failure(
        std::string("probe_") + kNames[i], kAll[i], "p/",
        [&](const std::string& d) {
          fs::create_directories(d + "/p");
          for (const auto& e : fs::directory_iterator(old_out)) {
            fs::copy_file(e.path(), d + "/p/" + e.path().filename().string());
          }
        },
        [&](const std::string& d) { return probe + d + "/p"; }, /*leave=*/4 << 10);
  }
}

// Circuit discovery's outputs (circuit.json/.h5/.dot/.svg): an existing
// circuit stays as it was when writing its replacement fails.
TEST_F(DiskFull, DiscoverKeepsTheOldCircuit) {
  auto job_file = [](const std::string& dir) {
    std::ofstream(dir + "/jobs.json")
        << "{\"jobs\": [{\"name\": \"c\", \"model\": \"" << model_ << "\", \"dataset\": \"" << data_
        << "\", \"method\": \"eap\", \"metric\": \"logit_diff\", \"top_n\": 20, \"out\": \"c\"}]}\n";
  };
  const std::string old_dir = temp_path("old_discover");
  fs::create_directories(old_dir);
  job_file(old_dir);
  ASSERT_EQ(run("discover " + old_dir + "/jobs.json --no-svg").rc, 0);
  for (int i = 0; i < 3; ++i) {
    check_failure(
        std::string("discover_") + kNames[i], kAll[i], "c/",
        [&](const std::string& d) {
          job_file(d);
          fs::create_directories(d + "/c");
          for (const auto& e : fs::directory_iterator(old_dir + "/c")) {
            fs::copy_file(e.path(), d + "/c/" + e.path().filename().string());
          }
        },
        [](const std::string& d) { return "discover " + d + "/jobs.json --force --no-svg"; },
        /*leave=*/4 << 10);
  }
}

// ------------------------------------------------------------ inputs as outputs

TEST_F(DiskFull, CacheRefusesToWriteOverItsInputs) {
  const std::string dir = temp_path("same");
  fs::create_directories(dir + "/sub");
  const std::string model = dir + "/model.h5", data = dir + "/data.h5";
  fs::copy_file(model_, model, fs::copy_options::overwrite_existing);
  fs::copy_file(data_, data, fs::copy_options::overwrite_existing);
  fs::remove(dir + "/link.h5");
  fs::create_symlink(model, dir + "/link.h5");
  const std::string model_bytes = slurp(model), data_bytes = slurp(data);
  for (const std::string& out :
       {model, dir + "/link.h5", dir + "/sub/../model.h5", data, dir + "/./data.h5"}) {
    for (const char* flag : {" --overwrite", " --resume"}) {
      SCOPED_TRACE(out + flag);
      const CliResult r = run(cache_args(model, data, out) + flag);
      expect_one_line_error(r, {"is the same file as", "choose another output path"});
      EXPECT_TRUE(slurp(model) == model_bytes);
      EXPECT_TRUE(slurp(data) == data_bytes);
    }
  }
}

TEST_F(DiskFull, PatchRefusesToWriteOverItsInputs) {
  const std::string dir = temp_path("patch_same");
  fs::create_directories(dir);
  const std::string model = dir + "/patching.h5";  // where patch would write its results
  fs::copy_file(model_, model, fs::copy_options::overwrite_existing);
  const std::string bytes = slurp(model);
  // A checkpoint is another kind of file: refused as such even before the
  // same-file check.
  const CliResult r = run("patch " + model + " " + data_ + " --sweep resid_pre --overwrite --out " + dir);
  expect_one_line_error(r, {model, "is a mechlab 'checkpoint' file"});
  EXPECT_TRUE(slurp(model) == bytes);
}

TEST_F(DiskFull, TrainRefusesARunFolderHoldingItsDataset) {
  const std::string run_dir = temp_path("train_same");
  fs::create_directories(run_dir);
  const std::string data = run_dir + "/model.h5";  // where the run writes its model
  ASSERT_EQ(run("dataset make induction --n 64 --set d_vocab=256 --overwrite --out " + data).rc, 0);
  const std::string bytes = slurp(data);
  const std::string cfg = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.json";
  const CliResult r = run("train " + cfg + " --out " + run_dir + " --overwrite --set steps=2" +
                          " --set warmup_steps=1 --set data={\"path\":\"" + data + "\"}");
  expect_one_line_error(r, {"is the same file as the dataset (data.path)", data});
  EXPECT_TRUE(slurp(data) == bytes);
}

// ------------------------------------------------------------ replacing files

TEST_F(DiskFull, TrainRefusesToReplaceAModelOrAnotherKind) {
  const std::string cfg = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.json";
  const std::string train = "train " + cfg + " --set steps=2 --set warmup_steps=1 --out ";
  const std::string run_dir = temp_path("train_model");
  fs::create_directories(run_dir);
  const std::string model = run_dir + "/model.h5";
  fs::copy_file(model_, model, fs::copy_options::overwrite_existing);
  const std::string bytes = slurp(model);
  expect_one_line_error(run(train + run_dir), {model, "already exists", "--overwrite"});
  EXPECT_TRUE(slurp(model) == bytes);

  const std::string other = temp_path("train_other");
  fs::create_directories(other);
  fs::copy_file(data_, other + "/model.h5", fs::copy_options::overwrite_existing);
  const std::string data_bytes = slurp(other + "/model.h5");
  expect_one_line_error(run(train + other + " --overwrite"),
                        {other + "/model.h5", "is a mechlab 'dataset' file"});
  EXPECT_TRUE(slurp(other + "/model.h5") == data_bytes);
}

TEST_F(DiskFull, WritersRefuseToReplaceWithoutOverwrite) {
  const std::string ckpt = temp_path("keep_model.h5"), data = temp_path("keep_data.h5");
  fs::copy_file(model_, ckpt, fs::copy_options::overwrite_existing);
  fs::copy_file(data_, data, fs::copy_options::overwrite_existing);
  const std::string ckpt_bytes = slurp(ckpt), data_bytes = slurp(data);

  expect_one_line_error(run("new " + ckpt + " --preset tiny"),
                        {ckpt, "already exists", "--overwrite"});
  expect_one_line_error(run("dataset make induction --n 4 --out " + data),
                        {data, "already exists", "--overwrite"});
  // Another kind of mechlab file is never replaced, --overwrite or not.
  expect_one_line_error(run("dataset make induction --n 4 --overwrite --out " + ckpt),
                        {ckpt, "is a mechlab 'checkpoint' file", "with a 'dataset' file"});
  expect_one_line_error(run("new " + data + " --preset tiny --overwrite"),
                        {data, "is a mechlab 'dataset' file", "with a 'checkpoint' file"});
  expect_one_line_error(run(cache_args(model_, data_, ckpt) + " --overwrite"),
                        {ckpt, "is a mechlab 'checkpoint' file", "with a 'activations' file"});
  EXPECT_TRUE(slurp(ckpt) == ckpt_bytes);
  EXPECT_TRUE(slurp(data) == data_bytes);

  // With --overwrite, the same kind is replaced.
  EXPECT_EQ(run("new " + ckpt + " --preset tiny --seed 5 --overwrite").rc, 0);
  EXPECT_FALSE(slurp(ckpt) == ckpt_bytes);
}

TEST_F(DiskFull, PatchRefusesToReplaceResultsWithoutOverwrite) {
  const std::string out = temp_path("patch_twice");
  const std::string patch = "patch " + model_ + " " + data_ + " --sweep resid_pre --out " + out;
  ASSERT_EQ(run(patch).rc, 0);
  const std::string h5 = out + "/patching.h5";
  const std::string bytes = slurp(h5);
  expect_one_line_error(run(patch), {h5, "already exists", "--overwrite"});
  EXPECT_TRUE(slurp(h5) == bytes);
  EXPECT_EQ(run(patch + " --overwrite").rc, 0);
}

// The SAE commands' writers: eval's JSON, the dashboard file and page, an
// exported SAELens folder (the shipped gpt2_like model and SAELens's topk SAE).
const std::string kSaeModel = std::string(MECHLAB_TEST_DATA) + "/runtime/gpt2_like.h5";
const std::string kSae = std::string(MECHLAB_TEST_DATA) + "/sae/saved/topk";

std::string sae_dataset() {
  const std::string path = temp_path("sae_tokens.h5");
  if (!fs::exists(path)) {
    core::Dataset ds;
    ds.d_vocab = 61;
    ds.tokens = core::H5File::open_read(std::string(MECHLAB_TEST_DATA) + "/sae/sae_eval.h5").read_tensor("tokens")
                    .to(at::kInt);
    core::save_dataset(path, ds);
  }
  return path;
}

TEST_F(DiskFull, SaeWritersKeepTheOldFiles) {
  const std::string inputs = kSaeModel + " " + kSae + " " + sae_dataset();
  const std::string old_json = temp_path("old_eval.json"), old_dash = temp_path("old_dash.h5"),
                    old_html = temp_path("old_dash.html"), old_sae = temp_path("old_sae");
  mechlab::testing::remove_tree(old_sae);
  ASSERT_EQ(run("sae eval " + inputs + " --out " + old_json + " --overwrite").rc, 0);
  ASSERT_EQ(run("sae dashboard " + inputs + " --latents 0 1 --out " + old_dash + " --html " + old_html +
                " --overwrite").rc, 0);
  ASSERT_EQ(run("sae export " + kSae + " --out " + old_sae).rc, 0);
  for (int i = 0; i < 3; ++i) {
    check_failure(
        std::string("sae_eval_") + kNames[i], kAll[i], "e.json",
        [&](const std::string& d) { fs::copy_file(old_json, d + "/e.json"); },
        [&](const std::string& d) { return "sae eval " + inputs + " --overwrite --out " + d + "/e.json"; },
        /*leave=*/1 << 10);
    check_failure(
        std::string("sae_dash_") + kNames[i], kAll[i], "d.h5",
        [&](const std::string& d) { fs::copy_file(old_dash, d + "/d.h5"); },
        [&](const std::string& d) {
          return "sae dashboard " + inputs + " --latents 0 1 --overwrite --out " + d + "/d.h5";
        },
        /*leave=*/2 << 10);
    check_failure(
        std::string("sae_html_") + kNames[i], kAll[i], "d.html",
        [&](const std::string& d) { fs::copy_file(old_html, d + "/d.html"); },
        [&](const std::string& d) {
          // 32 latents: the page (~200 KB) outgrows the limit, the HDF5 file
          // (~70 KB, written first, outside `d`) does not.
          return "sae dashboard " + inputs + " --first 32 --overwrite --out " + temp_path("sae_html_" +
                 std::to_string(i) + ".h5") + " --html " + d + "/d.html";
        },
        /*leave=*/96 << 10);
    check_failure(
        std::string("sae_export_") + kNames[i], kAll[i], "x",
        [&](const std::string& d) {
          fs::create_directories(d + "/x");
          for (const char* f : {"cfg.json", "sae_weights.safetensors"}) fs::copy_file(old_sae + "/" + f, d + "/x/" + f);
        },
        [&](const std::string& d) { return "sae export " + kSae + " --overwrite --out " + d + "/x"; },
        /*leave=*/4 << 10);
  }
}

}  // namespace
}  // namespace mechlab
