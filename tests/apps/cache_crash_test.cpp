// Crash safety of `mechlab cache`: a child process writing a store is killed
// with SIGKILL at random moments, resumed each time with --resume, and the
// finished store must equal an uninterrupted run's byte for byte in every
// dataset. After every kill the file, if there is one, must open and its
// committed rows must already equal the uninterrupted run's.
#include "core/store/activation_store.h"
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "core/model/presets.h"
#include "core/util/rng.h"
#include "core/model/transformer.h"
#include "tests/apps/cache_job_fixture.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

namespace mechlab {
namespace {

std::string temp_path(const std::string& name) {
  return mechlab::testing::temp_path("cache_crash_test", name);
}

using testing::spawn_process;
using testing::wait_exit;

// Every dataset of the store, rows [0, rows) (all rows when rows < 0).
std::vector<std::pair<std::string, at::Tensor>> contents(const std::string& path, int64_t rows = -1) {
  core::H5File f = core::H5File::open_read(path);
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::vector<std::string> names;
  for (const auto& h : f.list("acts")) names.push_back("acts/" + h);
  names.push_back("token_ids");
  names.push_back("row_source");
  for (const auto& n : names) {
    out.emplace_back(n, rows < 0 ? f.read_tensor(n) : f.read_rows(n, 0, rows));
  }
  return out;
}

TEST(CacheCrash, KilledRunsResumeToTheSameStore) {
  const std::string model = temp_path("model.h5"), data = temp_path("data.h5");
  testing::write_cache_job_inputs(model, data, 1500);

  const std::string ref = temp_path("ref.h5");
  std::filesystem::remove(ref);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(wait_exit(spawn_process(testing::cache_job_args(model, data, ref))), 0);
  const double t_ref = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto want = contents(ref);
  const int64_t total = core::ActivationStore::open(ref).num_rows();

  const std::string out = temp_path("crashed.h5");
  std::filesystem::remove(out);
  std::filesystem::remove(out + ".tmp");
  core::Rng rng(2024);
  int partial = 0;
  // The kill time adapts to the load: a run can be slower or faster than the
  // reference run was (other tests share the cores), so a kill that came too
  // early (no rows yet) waits longer next time, and one that came too late (a
  // complete store) shorter, and that store is removed so the next run writes
  // from the start.
  double t_est = t_ref;
  // Enough kills to land a few mid-write, bounded in time: on a loaded
  // machine t_ref grows, and 12 full attempts could outlast CTest's timeout.
  const auto kills_start = std::chrono::steady_clock::now();
  auto kill_seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - kills_start).count();
  };
  for (int attempt = 0; attempt < 12 && partial < 3 && !(partial >= 1 && kill_seconds() > 6 * t_ref);
       ++attempt) {
    const pid_t pid = spawn_process(testing::cache_job_args(model, data, out));
    ASSERT_GT(pid, 0);
    const double delay = t_est * (0.1 + 0.9 * rng.uniform());
    std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    kill(pid, SIGKILL);
    wait_exit(pid);
    if (!std::filesystem::exists(out)) {  // killed before the store was created
      t_est *= 1.5;
      continue;
    }
    // Readable, and what it calls committed is already right.
    auto store = core::ActivationStore::open(out);
    const int64_t committed = store.num_rows();
    if (committed > 0 && committed < total) ++partial;
    const auto have = contents(out, committed);
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_TRUE(at::equal(have[i].second, want[i].second.narrow(0, 0, committed)))
          << have[i].first << " differs within the " << committed << " committed rows";
    }
    if (committed == 0) t_est *= 1.5;
    if (committed >= total) {
      t_est *= 0.6;
      std::filesystem::remove(out);
    }
  }
  std::cout << "uninterrupted run " << t_ref << " s; kills that left a partial store: " << partial
            << "\n";
  EXPECT_GE(partial, 1) << "no kill landed while rows were being written (uninterrupted run: "
                        << t_ref << " s); the test proved less than it should";

  ASSERT_EQ(wait_exit(spawn_process(testing::cache_job_args(model, data, out))), 0);
  const auto have = contents(out);
  ASSERT_EQ(have.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(have[i].first, want[i].first);
    EXPECT_TRUE(at::equal(have[i].second, want[i].second)) << have[i].first;
  }
  EXPECT_TRUE(core::ActivationStore::open(out).header().complete);
  // ~30 MB. Not std::filesystem::remove_all: the dynamic linker binds it to
  // libtorch.so's own exported copy, which crashes (docs/ARCHITECTURE.md, Build).
  for (const auto& f : {out, ref, model, data}) std::filesystem::remove(f);
  std::filesystem::remove(std::filesystem::path(out).parent_path());
}

}  // namespace
}  // namespace mechlab
