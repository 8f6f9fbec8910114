// An ACDC job of `mechlab discover` survives SIGKILL and Ctrl-C: the child is
// stopped once its journal (journal.jsonl: the run's config, then a line per decided edge)
// holds some decisions, the rerun resumes after them without trying them
// again, and the circuit equals that of an uninterrupted run.
//
// The model (4 attention-only layers of 8 heads, 1,377 edges; random, so
// single edges move KL by about 1e-6, hence τ = 1e-7, which keeps about 200
// and tries about 550) with one trial per forward (max_batch: 1) runs for a
// few seconds, so the signals land mid-run.
#include "core/data/dataset.h"
#include "core/data/tasks/tasks.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "apps/jobs/journal.h"
#include "patching/discovery/circuit_output.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace mechlab {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::spawn_process;
using testing::wait_exit;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A folder with the model, an IOI dataset and a job file whose one ACDC job
// writes to OUT (given per run).
std::string make_dir(const std::string& name) {
  const std::string dir = testing::temp_path("discover_resume", name);
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  const core::Dataset ds = core::tasks::make_task("ioi", {{"n", 8}, {"seed", 3}});
  core::save_dataset(dir + "/data.h5", ds);
  core::ModelConfig cfg = core::preset("attn-only-2l");
  cfg.n_layers = 4;
  cfg.n_heads = 8;
  cfg.d_head = 8;
  cfg.d_vocab = static_cast<int>(ds.d_vocab);
  core::Transformer(cfg, 5).save(dir + "/model.h5");
  return dir;
}

void write_job(const std::string& dir, const std::string& out) {
  std::ofstream(dir + "/" + out + ".yaml") << "jobs:\n  - {name: acdc, model: model.h5, dataset: data.h5, "
                                              "method: acdc, threshold: 0.0000001, max_batch: 1, out: "
                                           << out << "}\n";
}

std::vector<std::string> discover_args(const std::string& dir, const std::string& out) {
  return {MECHLAB_BINARY, "discover", dir + "/" + out + ".yaml", "--threads", "1", "--no-svg"};
}

// Waits until `journal` holds at least `lines` whole lines (or the child ended).
int64_t wait_for_lines(pid_t pid, const std::string& journal, int64_t lines) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120)) {
    if (fs::exists(journal)) {
      const int64_t n = static_cast<int64_t>(jobs::read_journal(journal).entries.size());
      if (n >= lines) return n;
    }
    if (waitpid(pid, nullptr, WNOHANG) == pid) return -1;  // finished (or died) before
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return -1;
}

// The decided steps of a journal: its lines after the first, which records
// the config of the run it resumes.
std::vector<json> decided(const jobs::JournalContents& c) {
  EXPECT_FALSE(c.entries.empty());
  if (c.entries.empty()) return {};
  EXPECT_TRUE(c.entries[0].contains("config")) << c.entries[0];
  return std::vector<json>(c.entries.begin() + 1, c.entries.end());
}

// The uninterrupted run's circuit.json, made once.
const json& uninterrupted() {
  static const json doc = [] {
    const std::string dir = make_dir("whole");
    write_job(dir, "whole");
    const std::string log = dir + "/log";
    const int rc = wait_exit(spawn_process(discover_args(dir, "whole"), log));
    EXPECT_EQ(rc, 0) << read_text(log);
    return discovery::read_circuit_document(dir + "/whole/circuit.json");
  }();
  return doc;
}

// Compares the resumed circuit with the uninterrupted one (kept flags and
// scores of every edge) and checks that the rerun tried none of the
// `journaled` steps again: with one trial per forward, its trials are the
// uninterrupted run's less the journaled steps that were tried.
void expect_resumed_equals_whole(const json& doc, const std::vector<json>& journaled, const std::string& log) {
  const json& whole = uninterrupted();
  ASSERT_EQ(doc["circuit"]["edges"].size(), whole["circuit"]["edges"].size());
  for (size_t i = 0; i < whole["circuit"]["edges"].size(); ++i) {
    const json& a = doc["circuit"]["edges"][i];
    const json& b = whole["circuit"]["edges"][i];
    ASSERT_EQ(a["edge"], b["edge"]);
    EXPECT_EQ(a["kept"], b["kept"]) << a["edge"];
    if (b["score"].is_number()) {
      ASSERT_TRUE(a["score"].is_number()) << a["edge"];
      EXPECT_DOUBLE_EQ(a["score"].get<double>(), b["score"].get<double>()) << a["edge"];
    } else {
      EXPECT_TRUE(a["score"].is_null()) << a["edge"];
    }
  }
  ASSERT_EQ(doc["trace"].size(), whole["trace"].size());
  for (size_t i = 0; i < whole["trace"].size(); ++i) {
    EXPECT_EQ(doc["trace"][i]["edge"], whole["trace"][i]["edge"]) << "step " << i + 1;
    EXPECT_EQ(doc["trace"][i]["kept"], whole["trace"][i]["kept"]) << "step " << i + 1;
  }
  int64_t tried = 0;
  for (const json& e : journaled) tried += e["tried"].get<bool>() ? 1 : 0;
  const json& acdc = doc["results"]["details"]["acdc"];
  const json& acdc_whole = whole["results"]["details"]["acdc"];
  EXPECT_EQ(acdc["resumed_steps"].get<int64_t>(), static_cast<int64_t>(journaled.size()));
  EXPECT_EQ(acdc["first_new_step"].get<int64_t>(), static_cast<int64_t>(journaled.size()) + 1);
  EXPECT_EQ(acdc["trials"].get<int64_t>(), acdc_whole["trials"].get<int64_t>() - tried);
  EXPECT_GT(tried, 0);
  EXPECT_NE(read_text(log).find("resuming after the " + std::to_string(journaled.size()) + " decided edges"),
            std::string::npos)
      << read_text(log);
}

TEST(DiscoverResume, AfterSigkillTheRerunResumesFromTheJournal) {
  const json& whole = uninterrupted();
  ASSERT_FALSE(whole.is_null());
  const int64_t total = whole["results"]["details"]["acdc"]["trials"].get<int64_t>();
  ASSERT_GT(total, 200) << "the job is too short to be killed mid-run";

  const std::string dir = make_dir("kill");
  write_job(dir, "out");
  const std::string journal = dir + "/out/journal.jsonl", log = dir + "/log";
  const pid_t pid = spawn_process(discover_args(dir, "out"), log);
  ASSERT_GT(wait_for_lines(pid, journal, 20), 0) << "the job ended before 20 decisions: " << read_text(log);
  kill(pid, SIGKILL);
  ASSERT_EQ(wait_exit(pid), -SIGKILL);
  ASSERT_FALSE(fs::exists(dir + "/out/circuit.json"));
  const jobs::JournalContents kept = jobs::read_journal(journal);
  ASSERT_GE(kept.entries.size(), 20u);

  ASSERT_EQ(wait_exit(spawn_process(discover_args(dir, "out"), log)), 0) << read_text(log);
  EXPECT_FALSE(fs::exists(journal));  // removed once the outputs are whole
  expect_resumed_equals_whole(discovery::read_circuit_document(dir + "/out/circuit.json"), decided(kept), log);
}

TEST(DiscoverResume, CtrlCStopsBetweenTrialsSayingWhatTheJournalKeeps) {
  const std::string dir = make_dir("sigint");
  write_job(dir, "out");
  const std::string journal = dir + "/out/journal.jsonl", log = dir + "/log";
  const pid_t pid = spawn_process(discover_args(dir, "out"), log);
  ASSERT_GT(wait_for_lines(pid, journal, 20), 0) << "the job ended before 20 decisions: " << read_text(log);
  kill(pid, SIGINT);
  const int rc = wait_exit(pid);
  const std::string text = read_text(log);
  ASSERT_EQ(rc, 130) << text;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(text, m, std::regex("mechlab: job 'acdc': interrupted; the journal .*journal\\.jsonl "
                                                    "keeps (\\d+) decided edges of (\\d+); rerun the same command "
                                                    "to resume from there\n")))
      << text;
  // Stopped at a safe point: the journal holds exactly the decisions it names, every line whole.
  const jobs::JournalContents kept = jobs::read_journal(journal);
  EXPECT_FALSE(kept.truncated_tail);
  EXPECT_EQ(static_cast<int64_t>(decided(kept).size()), std::stoll(m[1]));
  EXPECT_FALSE(fs::exists(dir + "/out/circuit.json"));

  ASSERT_EQ(wait_exit(spawn_process(discover_args(dir, "out"), log)), 0) << read_text(log);
  expect_resumed_equals_whole(discovery::read_circuit_document(dir + "/out/circuit.json"), decided(kept), log);
}

}  // namespace
}  // namespace mechlab
