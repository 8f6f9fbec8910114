// The job field split_positions (apps/jobs/job_file.h) end to end: ACDC and
// EAP jobs write position-split circuits (circuit.json with positions and
// their labels, circuit.h5 with a position axis, circuit.dot with one column
// per position), and prompts of unequal length are refused before any work.
#include "apps/jobs/job_file.h"
#include "apps/jobs/job_runner.h"
#include "core/data/dataset.h"
#include "core/data/tasks/tasks.h"
#include "core/formats/hdf5_file.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "patching/discovery/circuit.h"
#include "patching/discovery/circuit_output.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

using mechlab::testing::error_of;
using mechlab::testing::temp_path;
namespace fs = std::filesystem;
namespace jobs = mechlab::jobs;

namespace {

class SplitJob : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = temp_path("split_job", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    // Induction pairs: every prompt has one length, no padding.
    const mechlab::core::Dataset ind = mechlab::core::tasks::make_task(
        "induction", {{"n", 4}, {"half_len", 4}, {"pairs", true}, {"d_vocab", 20}, {"seed", 2}});
    mechlab::core::save_dataset(dir_ + "/ind.h5", ind);
    seq_len_ = ind.clean_tokens.size(1);
    // IOI: its templates differ in length, so prompts are padded differently.
    const mechlab::core::Dataset ioi = mechlab::core::tasks::make_task("ioi", {{"n", 8}, {"seed", 1}});
    mechlab::core::save_dataset(dir_ + "/ioi.h5", ioi);
    mechlab::core::ModelConfig cfg = mechlab::core::preset("tiny");
    cfg.d_vocab = static_cast<int>(std::max<int64_t>(ioi.d_vocab, 20));
    mechlab::core::Transformer(cfg, 3).save(dir_ + "/model.h5");
  }

  std::string write(const std::string& name, const std::string& text) const {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }

  static std::string read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::string dir_;
  int64_t seq_len_ = 0;
};

}  // namespace

TEST_F(SplitJob, AcdcAndEapJobsWritePositionSplitCircuits) {
  const std::string path = write("jobs.yaml",
                                 "jobs:\n"
                                 "  - {name: acdc, model: model.h5, dataset: ind.h5, method: acdc, threshold: 0.00002,"
                                 " split_positions: true}\n"
                                 "  - {name: eap, model: model.h5, dataset: ind.h5, method: eap, metric: logit_diff,"
                                 " top_n: 12, split_positions: true}\n");
  const jobs::JobFile f = jobs::parse_job_file(path);
  ASSERT_EQ(f.jobs.size(), 2u);
  EXPECT_TRUE(f.jobs[0].split_positions);
  EXPECT_EQ(f.runs().at(0).config.at("split_positions"), true);
  const jobs::RunReport report = jobs::run_job_file(
      f, jobs::RunOptions(), [](const std::vector<std::string>&) {});
  ASSERT_EQ(report.first_error, "");
  for (const char* name : {"acdc", "eap"}) {
    const std::string out = dir_ + "/" + name;
    const nlohmann::json doc = mechlab::discovery::read_circuit_document(out + "/circuit.json");
    const nlohmann::json& c = doc.at("circuit");
    EXPECT_EQ(c.at("n_positions"), seq_len_) << name;
    EXPECT_EQ(c.at("position_labels").size(), static_cast<size_t>(seq_len_)) << name;
    int64_t kept = 0;
    for (const auto& e : c.at("edges")) {
      ASSERT_NE(e.at("edge").get<std::string>().find(" @" + std::to_string(e.at("position").get<int64_t>())),
                std::string::npos)
          << name << " " << e.dump();
      kept += e.at("kept").get<bool>() ? 1 : 0;
    }
    EXPECT_GT(kept, 0) << name;
    EXPECT_EQ(c.at("n_kept"), kept) << name;
    // The circuit reads back, and the HDF5 arrays carry the position axis.
    const mechlab::discovery::Circuit back = mechlab::discovery::Circuit::from_json(
        mechlab::patching::CircuitGraph(mechlab::core::Transformer::load(dir_ + "/model.h5").config()), c);
    EXPECT_EQ(back.n_positions(), seq_len_) << name;
    const auto h = mechlab::core::H5File::open_read(out + "/circuit.h5");
    const at::Tensor kr = h.read_tensor("circuit/kept_residual");
    ASSERT_EQ(kr.dim(), 3) << name;
    EXPECT_EQ(kr.size(0), seq_len_) << name;
    // The picture: a header row of positions and nodes named with theirs.
    const std::string dot = read(out + "/circuit.dot");
    EXPECT_NE(dot.find("(edge, position) pairs kept; columns: token positions"), std::string::npos) << name;
    EXPECT_NE(dot.find("\"col "), std::string::npos) << name;
    EXPECT_NE(dot.find(" @"), std::string::npos) << name;
  }
  // The trace of ACDC names (edge, position) pairs.
  const nlohmann::json acdc = mechlab::discovery::read_circuit_document(dir_ + "/acdc/circuit.json");
  ASSERT_FALSE(acdc.at("trace").empty());
  EXPECT_NE(acdc.at("trace")[0].at("edge").get<std::string>().find(" @" + std::to_string(seq_len_ - 1)),
            std::string::npos);
}

TEST_F(SplitJob, RefusesPromptsOfUnequalLengthBeforeAnyWork) {
  const std::string path = write("jobs.yaml",
                                 "jobs:\n"
                                 "  - {name: a, model: model.h5, dataset: ioi.h5, method: acdc, threshold: 0.01,"
                                 " split_positions: true}\n");
  const std::string m = error_of([&] {
    jobs::run_job_file(jobs::parse_job_file(path), jobs::RunOptions(), [](const std::vector<std::string>&) {});
  });
  EXPECT_NE(m.find("job 'a': field 'split_positions' needs prompts of one length"), std::string::npos) << m;
  EXPECT_NE(m.find("attention mask differs from prompt 0's"), std::string::npos) << m;
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(dir_ + "/a"));
  const std::string bad = write("bad.yaml",
                                "jobs:\n"
                                "  - {name: a, model: model.h5, dataset: ind.h5, method: acdc, threshold: 0.01,"
                                " split_positions: 3}\n");
  EXPECT_NE(error_of([&] { jobs::parse_job_file(bad); }).find("field 'split_positions' must be true or false"),
            std::string::npos);
}
