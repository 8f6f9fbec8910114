// `mechlab discover` runs every step kind of a job file through its own
// in-process command table (apps/cli/cmd_discover.cpp): a sae_train step
// and a probe step each leave their `done` file, and a rerun skips them.
// (The sae_train step used to fail there with "A subcommand is required":
// the table lacked `sae`.)
#include "tests/test_util.h"

#include <gmock/gmock.h>

#include <filesystem>
#include <fstream>

namespace mechlab {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::run_cli;

TEST(DiscoverSteps, SaeTrainAndProbeStepsRunInsideDiscover) {
  const std::string dir = testing::temp_path("discover_steps", "job");
  fs::create_directories(dir);
  const std::string models = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/";
  ASSERT_EQ(run_cli("dataset make ioi --n 8 --seed 1 --overwrite --out " + dir + "/ioi.h5").rc, 0);
  ASSERT_EQ(run_cli("dataset make induction --n 40 --seed 2 --set d_vocab=256 --overwrite --out " + dir + "/ind.h5").rc,
            0);
  std::ofstream(dir + "/sae.json")
      << R"({"sae": {"architecture": "topk", "d_in": 16, "d_sae": 32, "k": 4},
             "data": {"toy": {"n_features": 24, "d": 16, "p_active": 0.1}},
             "steps": 4, "batch_size": 32, "eval_every": 2, "eval_rows": 32, "checkpoint_every": 2})";
  std::ofstream(dir + "/job.json")
      << R"({"steps": [{"sae_train": {"config": "sae.json", "out": "runs/sae", "no-progress": true}},
                      {"probe": {"source": ")" << models << R"(induction.h5", "dataset": "ind.h5",
                                 "hooks": "blocks.0.hook_resid_post", "label": "repeated", "resamples": 20,
                                 "out": "runs/probes"}}],
             "jobs": [{"name": "j", "model": ")" << models << R"(ioi.h5", "dataset": "ioi.h5", "method": "eap",
                       "metric": "logit_diff", "top_n": 10}]})";
  const auto r = run_cli("discover " + dir + "/job.json --no-svg --threads 1");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/runs/sae/sae"));
  EXPECT_TRUE(fs::exists(dir + "/runs/probes/probes.h5"));
  const auto again = run_cli("discover " + dir + "/job.json --no-svg --threads 1");
  ASSERT_EQ(again.rc, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("step 1 (sae_train): skipped"));
  EXPECT_THAT(again.output, HasSubstr("step 2 (probe): skipped"));
}

}  // namespace
}  // namespace mechlab
