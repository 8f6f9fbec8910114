// Data-parallel environment parsing (core/dist/process_group.h): which
// launcher's variables are read, the rendezvous address, the local rank and
// the GPU it names, and one-line refusals naming the variable and its value.
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

// The local rank is the launcher's own: torchrun inside an srun step sets
// LOCAL_RANK per process while SLURM_LOCALID is the srun task's. Catches
// reading the local rank from another launcher's variable (or from the
// first one set), and a default of 0 where a multi-process launcher gave
// none (every rank would then take cuda:0).
TEST(DistEnv, LocalRankComesFromTheSameLaunchersVariable) {
  DistEnv e = parse({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "h"},
                     {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}});
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_rank_source, "LOCAL_RANK");
  e = parse({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "3"}, {"LOCAL_RANK", "0"},
             {"MASTER_ADDR", "h"}});
  EXPECT_EQ(e.local_rank, 3);
  EXPECT_EQ(e.local_rank_source, "SLURM_LOCALID");
  e = parse({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
             {"MASTER_ADDR", "h"}});
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_rank_source, "OMPI_COMM_WORLD_LOCAL_RANK");
  e = parse({{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}, {"MPI_LOCALRANKID", "1"}, {"MASTER_ADDR", "h"}});
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_rank_source, "MPI_LOCALRANKID");
  // Not set by a multi-process launcher: unknown (-1), not 0.
  e = parse({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}});
  EXPECT_EQ(e.local_rank, -1);
  EXPECT_EQ(e.local_rank_source, "LOCAL_RANK");
  // One process: local rank 0, with or without a launcher.
  EXPECT_EQ(parse({{"RANK", "0"}, {"WORLD_SIZE", "1"}}).local_rank, 0);
  e = parse({});
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_EQ(e.local_rank_source, "");
}

// Catches a local rank taken unchecked (a negative or too large one would
// index a GPU that does not exist, far from its cause).
TEST(DistEnv, LocalRankRefusalsNameTheVariable) {
  EXPECT_THAT(error_of([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"LOCAL_RANK", "x"}}); }),
              HasSubstr("environment variable LOCAL_RANK=\"x\" is not a whole number"));
  EXPECT_THAT(error_of([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"LOCAL_RANK", "-1"}}); }),
              HasSubstr("environment variable LOCAL_RANK=-1 is out of range"));
  EXPECT_THAT(error_of([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"LOCAL_RANK", "2"}}); }),
              HasSubstr("environment variable LOCAL_RANK=2 is out of range: it must be below WORLD_SIZE=2"));
  EXPECT_THAT(error_of([] {
                parse({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"MASTER_ADDR", "h"}, {"SLURM_LOCALID", "1.5"}});
              }),
              HasSubstr("environment variable SLURM_LOCALID=\"1.5\" is not a whole number"));
}

// "cuda" in a data-parallel run is cuda:LOCAL_RANK; "cuda:N" is honoured.
// Catches every rank taking cuda:0 (or the current device), an explicit
// index being overridden, and a local rank past the node's GPUs reaching
// NCCL (which then refuses two ranks on one GPU in its own words).
TEST(DataParallelDevice, CudaMeansTheLocalRanksGpu) {
  const DistEnv env = parse({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "h"}});
  EXPECT_EQ(data_parallel_device(at::Device("cuda"), env, 2), at::Device("cuda:1"));
  EXPECT_EQ(data_parallel_device(at::Device("cuda:0"), env, 2), at::Device("cuda:0"));  // honoured as named
  EXPECT_EQ(data_parallel_device(at::Device("cpu"), env, 0), at::Device("cpu"));
  EXPECT_EQ(data_parallel_device(at::Device("cuda"), DistEnv{}, 1), at::Device("cuda:0"));  // one process
}

TEST(DataParallelDevice, RefusesInOneLineNamingTheVariable) {
  const DistEnv slurm = parse({{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "2"}, {"MASTER_ADDR", "h"}});
  std::string e = error_of([&] { data_parallel_device(at::Device("cuda"), slurm, 2); });
  EXPECT_THAT(e, HasSubstr("data-parallel rank 6 of 8 is process 2 on its node (SLURM_LOCALID=2) but this node "
                           "shows 2 CUDA GPUs; device cuda means cuda:SLURM_LOCALID and NCCL needs one GPU per "
                           "process: start at most 2 processes per node"));
  EXPECT_EQ(e.find('\n'), std::string::npos);
  const DistEnv unknown = parse({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}});
  e = error_of([&] { data_parallel_device(at::Device("cuda"), unknown, 4); });
  EXPECT_THAT(e, HasSubstr("data-parallel rank 1 of 2 on device cuda: the launcher did not say which GPU is this "
                           "process's (environment variable LOCAL_RANK is not set)"));
  EXPECT_EQ(e.find('\n'), std::string::npos);
  // An explicit GPU needs no local rank.
  EXPECT_EQ(data_parallel_device(at::Device("cuda:0"), unknown, 4), at::Device("cuda:0"));
}

}  // namespace
}  // namespace mechlab::core::dist
