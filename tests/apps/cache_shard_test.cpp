// `mechlab cache --shard I/N`: three shard processes, one of them killed
// with SIGKILL mid-write and resumed, make a store set whose rows equal, bit
// for bit, those of one unsharded `mechlab cache` run; the manifest appears
// only once the last shard is complete; bad --shard values are refused in
// one line.
#include "core/data/dataset.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "core/store/activation_store.h"
#include "core/store/store_set.h"
#include "core/util/rng.h"
#include "tests/apps/cache_job_fixture.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace mechlab {
namespace {

using ::testing::HasSubstr;
using testing::run_cli;
using testing::spawn_process;
using testing::wait_exit;

std::string temp_path(const std::string& name) { return testing::temp_path("cache_shard_test", name); }

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void expect_same_rows(const core::ActivationStore& a, const core::ActivationStore& b) {
  const int64_t n = a.num_rows();
  ASSERT_EQ(b.num_rows(), n);
  ASSERT_EQ(a.hooks(), b.hooks());
  for (const auto& h : a.hooks()) EXPECT_TRUE(at::equal(a.rows(h, 0, n), b.rows(h, 0, n))) << h;
  EXPECT_TRUE(at::equal(a.token_ids(0, n), b.token_ids(0, n)));
  EXPECT_TRUE(at::equal(a.row_source(0, n), b.row_source(0, n)));
}

TEST(CacheShard, ThreeShardsOneKilledAndResumedGiveTheUnshardedStore) {
  const std::string model = temp_path("model.h5"), data = temp_path("data.h5");
  testing::write_cache_job_inputs(model, data, 900);

  const std::string ref = temp_path("ref.h5");
  std::filesystem::remove(ref);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(wait_exit(spawn_process(testing::cache_job_args(model, data, ref))), 0);
  const double t_ref = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const std::string set = temp_path("acts.json");
  for (int i = 0; i < 3; ++i) std::filesystem::remove(core::shard_store_path(set, i, 3));
  std::filesystem::remove(set);
  const std::string log = temp_path("shard.log");
  ASSERT_EQ(wait_exit(spawn_process(testing::cache_job_args(model, data, set, "0/3"), log)), 0) << read_file(log);
  EXPECT_THAT(read_file(log), HasSubstr("store set " + set + ": 1 of 3 shards complete"));

  // Shard 1 is killed at random moments; each time what it committed is
  // already right (it equals the reference's rows at the same place).
  const std::string s1 = core::shard_store_path(set, 1, 3);
  const int64_t s1_first = core::ActivationStore::open(core::shard_store_path(set, 0, 3)).num_rows();
  const auto want = core::ActivationStore::open(ref);
  core::Rng rng(7);
  double t_est = t_ref / 3;
  int partial = 0;
  // Bounded: one kill mid-write proves the point; a loaded machine must not
  // push the test past CTest's timeout.
  for (int attempt = 0; attempt < 8 && partial < 1; ++attempt) {
    const pid_t pid = spawn_process(testing::cache_job_args(model, data, set, "1/3"));
    ASSERT_GT(pid, 0);
    std::this_thread::sleep_for(std::chrono::duration<double>(t_est * (0.2 + 0.8 * rng.uniform())));
    kill(pid, SIGKILL);
    wait_exit(pid);
    if (!std::filesystem::exists(s1)) {
      t_est *= 1.5;
      continue;
    }
    const auto store = core::ActivationStore::open(s1);
    const int64_t committed = store.num_rows();
    if (store.header().complete) {  // too late: start again from nothing
      t_est *= 0.6;
      std::filesystem::remove(s1);
      continue;
    }
    if (committed == 0) t_est *= 1.5;
    else ++partial;
    for (const auto& h : want.hooks()) {
      ASSERT_TRUE(at::equal(store.rows(h, 0, committed), want.rows(h, s1_first, committed))) << h;
    }
  }
  EXPECT_GE(partial, 1) << "no kill landed while shard 1 was being written; the test proved less";
  EXPECT_FALSE(std::filesystem::exists(set));

  ASSERT_EQ(wait_exit(spawn_process(testing::cache_job_args(model, data, set, "2/3"), log)), 0) << read_file(log);
  EXPECT_THAT(read_file(log), HasSubstr("2 of 3 shards complete"));  // shard 1 is unfinished
  EXPECT_FALSE(std::filesystem::exists(set));
  ASSERT_EQ(wait_exit(spawn_process(testing::cache_job_args(model, data, set, "1/3"), log)), 0) << read_file(log);
  EXPECT_THAT(read_file(log), HasSubstr("store set " + set + ": all 3 shards complete, " +
                                        std::to_string(want.num_rows()) + " rows"));

  const auto got = core::ActivationStore::open(set);
  EXPECT_EQ(got.shard_count(), 3);
  expect_same_rows(got, want);
  // `mechlab store inspect` reads the set like a store.
  const auto inspect = run_cli("store inspect " + set + " --check");
  EXPECT_EQ(inspect.rc, 0) << inspect.output;
  EXPECT_THAT(inspect.output, HasSubstr("shards       3 (a store set)"));
  EXPECT_THAT(inspect.output, HasSubstr(std::to_string(want.num_rows()) + " committed of " +
                                        std::to_string(want.num_rows()) + " (complete)"));
  EXPECT_THAT(inspect.output, HasSubstr("every committed value is finite"));

  for (int i = 0; i < 3; ++i) std::filesystem::remove(core::shard_store_path(set, i, 3));
  for (const auto& f : {set, ref, model, data, log}) std::filesystem::remove(f);
}

TEST(CacheShard, BadShardsAreRefusedInOneLine) {
  const std::string model = temp_path("m.h5"), data = temp_path("d.h5");
  core::Transformer(core::preset("tiny"), 11).save(model);
  core::Dataset ds;
  ds.d_vocab = core::preset("tiny").d_vocab;
  at::manual_seed(0);
  ds.tokens = at::randint(0, ds.d_vocab, {10, 8}, at::kInt);
  core::save_dataset(data, ds);
  const std::string base = "cache " + model + " " + data +
                           " --hooks blocks.0.hook_resid_post --batch-size 4 --no-progress ";
  const std::string set = temp_path("bad.json");
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {"--out " + set + " --shard 3/3", "--shard 3/3: I must be 0 to N-1 (shards are numbered from 0)"},
      {"--out " + set + " --shard 1", "--shard '1' is not I/N"},
      {"--out " + temp_path("bad.h5") + " --shard 0/2", "with --shard, --out names the store set's manifest "
                                                         "and must end in .json"},
      {"--out " + set + " --shard 0/4", "use at most 3 shards (N of --shard I/N)"},
  };
  for (const auto& c : cases) {
    const auto r = run_cli(base + c.args);
    EXPECT_NE(r.rc, 0) << c.args;
    EXPECT_THAT(r.output, HasSubstr(c.message)) << c.args;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(core::shard_store_path(set, 0, 4)));
  for (const auto& f : {model, data}) std::filesystem::remove(f);
}

}  // namespace
}  // namespace mechlab
