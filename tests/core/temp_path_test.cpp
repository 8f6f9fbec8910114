// temp_path (tests/test_util.h): a folder left by an earlier process with
// this process's id is emptied on first use, and only then.
#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;

// Catches the stale folder kept (a test writing without overwriting then
// fails with "... exists", as SaeLensCase's export did once in CI when a
// process got the id of one from an earlier run) and a folder emptied on
// every call (a test's own files would vanish).
TEST(TempPath, AFolderLeftByAnEarlierProcessWithThisIdIsEmptiedOnFirstUseOnly) {
  const std::string suite = "temp_path_test";  // used by this test alone
  const fs::path dir = ::testing::TempDir() + "mechlab_" + suite + "_" + std::to_string(::getpid());
  fs::create_directories(dir);
  std::ofstream(dir / "stale") << "left by an earlier process";
  ASSERT_TRUE(fs::exists(dir / "stale"));
  const std::string mine = mechlab::testing::temp_path(suite, "mine");
  EXPECT_FALSE(fs::exists(dir / "stale"));
  std::ofstream(mine) << "this test's";
  EXPECT_EQ(mechlab::testing::temp_path(suite, "other"), (dir / "other").string());
  EXPECT_TRUE(fs::exists(mine)) << "the second call emptied the folder";
  mechlab::testing::remove_tree(dir);
}
