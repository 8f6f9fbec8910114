// `mechlab bench acdc --busy-neighbour` (apps/bench/bench_acdc.cpp): the
// fast run again beside a process spinning on one core, with the team of
// threads fixed at --threads, fixed at 1 and sized by the load. The bench
// itself refuses (exit 1) when any of those runs decides an edge otherwise
// than the quiet run, so a zero exit is the check that the team size
// changes no decision; the figures must all be there, and the spinning
// process must be gone after.
#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <signal.h>

#include <fstream>
#include <string>

namespace mechlab {
namespace {

TEST(BenchAcdc, BesideABusyNeighbourEveryTeamDecidesAsQuietAndTheNeighbourIsGoneAfter) {
  const std::string json = testing::temp_path("bench_acdc", "busy.json");
  const auto r = testing::run_cli("bench acdc --quick --busy-neighbour --repeats 1 --threads 2 --json " + json);
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("same circuit: yes"), std::string::npos) << r.output;
  for (const char* row : {"team fixed at 2", "team fixed at 1", "team sized by the load"}) {
    EXPECT_NE(r.output.find(row), std::string::npos) << row << "\n" << r.output;
  }
  std::ifstream in(json);
  const nlohmann::json j = nlohmann::json::parse(in);
  for (const char* key : {"busy_neighbour_fixed_team_s", "busy_neighbour_one_thread_team_s",
                          "busy_neighbour_adaptive_team_s"}) {
    ASSERT_TRUE(j.contains(key)) << key;
    EXPECT_GT(j[key].get<double>(), 0) << key;
  }
  // The table names the spinning child: killed and reaped by the end.
  const auto at = r.output.find("spinning on one core (pid ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const int pid = std::stoi(r.output.substr(at + 26));
  EXPECT_GT(pid, 0);
  EXPECT_NE(::kill(pid, 0), 0) << "the spinning child " << pid << " outlived the bench";
}

// On a GPU the flag would measure nothing it names: refused in one line
// before any work, wherever the test runs (no GPU needed).
TEST(BenchAcdc, BusyNeighbourOffTheCpuIsRefusedInOneLine) {
  const auto r = testing::run_cli("bench acdc --quick --busy-neighbour --device cuda");
  EXPECT_EQ(r.rc, 1) << r.output;
  EXPECT_EQ(r.output, "mechlab: error: --busy-neighbour measures CPU threads beside a busy process: run it with "
                      "--device cpu (got --device cuda)\n");
}

}  // namespace
}  // namespace mechlab
