// Data-parallel environment parsing (core/dist/process_group.h): which
// launcher's variables are read, the rendezvous address, and one-line
// refusals naming the variable and its value.
#include "core/dist/process_group.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

namespace mechlab::core::dist {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

DistEnv parse(const std::map<std::string, std::string>& vars) {
  return dist_env_from([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(DistEnv, NothingSetIsOneProcess) {
  const DistEnv e = parse({});
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.source, "");
  // World size 1 needs no rendezvous.
  EXPECT_EQ(parse({{"RANK", "0"}, {"WORLD_SIZE", "1"}}).world_size, 1);
}

TEST(DistEnv, EachLauncherIsReadAndTorchrunWins) {
  DistEnv e = parse({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "10.0.0.5"}, {"MASTER_PORT", "1234"},
                     {"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "8"}});
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.master_addr, "10.0.0.5");
  EXPECT_EQ(e.port, 1234);
  EXPECT_EQ(e.source, "RANK/WORLD_SIZE");
  e = parse({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "8"}, {"MASTER_ADDR", "n1"}});
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.port, 29500);  // torchrun's default
  e = parse({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "3"}, {"MASTER_ADDR", "h"}});
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.source, "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE");
  e = parse({{"PMI_RANK", "0"}, {"PMI_SIZE", "2"}, {"MASTER_ADDR", "h"}});
  EXPECT_EQ(e.world_size, 2);
  EXPECT_EQ(e.source, "PMI_RANK/PMI_SIZE");
}

TEST(DistEnv, SlurmWithoutMasterAddrUsesTheFirstNodeOfTheJob) {
  const DistEnv e = parse({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "gpu[003-005,007],cpu1"}});
  EXPECT_EQ(e.master_addr, "gpu003");
  EXPECT_EQ(first_slurm_host("node7"), "node7");
  EXPECT_EQ(first_slurm_host("a1,b[1-2]"), "a1");
  EXPECT_EQ(first_slurm_host("rack[2,5]-n[01-04]"), "rack2-n01");
  EXPECT_EQ(first_slurm_host("n[09-12]"), "n09");
}

TEST(DistEnv, RefusesNamingTheVariable) {
  EXPECT_THAT(error_of([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}}); }),
              HasSubstr("environment variable MASTER_ADDR is not set"));
  EXPECT_THAT(error_of([] { parse({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}); }),
              HasSubstr("environment variable RANK=2 is out of range: it must be below WORLD_SIZE=2"));
  EXPECT_THAT(error_of([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "two"}, {"MASTER_ADDR", "h"}}); }),
              HasSubstr("environment variable WORLD_SIZE=\"two\" is not a whole number"));
  EXPECT_THAT(error_of([] { parse({{"RANK", "-1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}); }),
              HasSubstr("environment variable RANK=-1 is out of range"));
  EXPECT_THAT(error_of([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "0"}}); }),
              HasSubstr("environment variable WORLD_SIZE=0 is out of range"));
  EXPECT_THAT(error_of([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "99999"}}); }),
              HasSubstr("environment variable MASTER_PORT=99999 is out of range"));
  EXPECT_THAT(error_of([] { parse({{"RANK", "0"}}); }),
              HasSubstr("environment variable RANK is set but WORLD_SIZE is not"));
  EXPECT_THAT(error_of([] { parse({{"SLURM_NTASKS", "2"}}); }),
              HasSubstr("environment variable SLURM_NTASKS is set but SLURM_PROCID is not"));
}

}  // namespace
}  // namespace mechlab::core::dist
