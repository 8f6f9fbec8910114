// Process groups on CUDA tensors (core/dist/process_group.h): NCCL beside
// Gloo in one group, the refusals where CUDA or NCCL is missing, and two
// ranks on one GPU refused in mechlab's words before NCCL's.
//
// What runs where: the CPU tests run everywhere. The ProcessGroupCuda tests
// need one GPU (they skip without one and fail under MECHLAB_REQUIRE_CUDA=1,
// as scripts/gpu/run.sh runs them). With one rank the reductions are
// identities, so the 1-GPU tests check the plumbing (NCCL reached, in place,
// on the tensor's device, CPU and CUDA in one group) and the refusals; the
// sum across ranks on NCCL is checked with two processes on two GPUs in
// tests/sae/sae_data_parallel_test.cpp (SaeDataParallelCuda.*).
#include "core/dist/process_group.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace mechlab::core::dist {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;
using mechlab::testing::free_port;

DistEnv local_env(int64_t rank, int64_t world, int port) {
  DistEnv env;
  env.rank = rank;
  env.world_size = world;
  env.master_addr = "127.0.0.1";
  env.port = port;
  return env;
}

std::shared_ptr<ProcessGroup> one_rank_group() {
  return ProcessGroup::connect(local_env(0, 1, free_port()), GroupOptions().timeout_seconds(30));
}

// Where mechlab is built with CUDA (the development and GPU machines: the
// PyTorch wheel's LibTorch and nccl.h), NCCL must be in. Catches the CMake
// search for nccl.h failing quietly, which would leave CUDA data-parallel
// training refused on the GPU machine.
TEST(ProcessGroup, NcclIsBuiltWhereCudaIs) {
#ifdef MECHLAB_HAVE_CUDA
  EXPECT_TRUE(ProcessGroup::nccl_built())
      << "built with CUDA but without NCCL: CMake did not find nccl.h (see the 'mechlab: NCCL' configure line)";
#else
  EXPECT_FALSE(ProcessGroup::nccl_built());
#endif
}

// Without a GPU (this development machine) a CUDA device is refused in one
// line that says what to do, and the group goes on working on the CPU.
// Catches a refusal lost (c10::cuda::set_device or ProcessGroupNCCL's
// constructor would throw CUDA's or c10d's multi-line error instead), a
// refusal without the way out, and the refusal breaking the Gloo side.
TEST(ProcessGroup, CudaIsRefusedInOneLineWhereNoGpuIsVisible) {
  if (at::hasCUDA()) GTEST_SKIP() << "a GPU is visible: the ProcessGroupCuda tests cover this machine";
  auto group = one_rank_group();
  for (const char* device : {"cuda:0", "cuda"}) {
    const std::string e = error_of([&] { group->set_device(at::Device(device)); });
    if (ProcessGroup::nccl_built()) {
      EXPECT_THAT(e, HasSubstr(std::string("data-parallel training on ") + device +
                               ": no CUDA GPU is visible to rank 0 of 1; check CUDA_VISIBLE_DEVICES"));
      EXPECT_THAT(e, HasSubstr("or train on the CPU (device cpu)"));
    } else {
      EXPECT_THAT(e, HasSubstr("needs NCCL, and this mechlab was built without it"));
      EXPECT_THAT(e, HasSubstr("train on the CPU (device cpu, Gloo) or rebuild with CUDA"));
    }
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
  EXPECT_THAT(error_of([&] { group->set_device(at::Device("meta")); }),
              HasSubstr("data-parallel training runs on the CPU (Gloo) or on CUDA GPUs (NCCL), not on meta"));
  group->set_device(at::Device("cpu"));  // nothing to do
  at::Tensor t = at::arange(4, at::kFloat);
  group->allreduce_sum(t);
  EXPECT_TRUE(at::equal(t, at::arange(4, at::kFloat)));
}

// One rank on the GPU: CUDA tensors go through NCCL and CPU tensors through
// Gloo in the same group, in place, in any order. Catches the CUDA refusal
// not lifted, CUDA tensors handed to Gloo (the wheel's Gloo has a CUDA path
// too, so the values alone would not show it: NCCL's start is seen by the
// blocking-wait setting it makes, which is also what turns a dead peer into
// an error rather than c10d's SIGABRT), a result copied off the device or
// into another tensor (the caller's tensor must hold it), a collective not
// waited for before the values are read, and an out-of-range GPU accepted.
TEST(ProcessGroupCuda, OneRankNcclAllReduceAndBroadcastBesideGloo) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  ASSERT_TRUE(ProcessGroup::nccl_built());
  // The first test in this process to start NCCL (gtest runs a file's
  // tests in order; ctest runs each test in its own process).
  // The user's own setting, if any, is kept by mechlab: unset it here (and
  // restore it after) so that NCCL's start shows in the variable.
  struct UnsetBlockingWait {
    std::string saved;
    bool was_set = false;
    UnsetBlockingWait() {
      if (const char* v = std::getenv("TORCH_NCCL_BLOCKING_WAIT")) saved = v, was_set = true;
      ::unsetenv("TORCH_NCCL_BLOCKING_WAIT");
    }
    ~UnsetBlockingWait() {
      if (was_set) {
        ::setenv("TORCH_NCCL_BLOCKING_WAIT", saved.c_str(), 1);
      } else {
        ::unsetenv("TORCH_NCCL_BLOCKING_WAIT");
      }
    }
  } unset_blocking_wait;
  auto group = one_rank_group();
  at::Tensor c0 = at::ones({2});
  group->allreduce_sum(c0);  // CPU first: Gloo, no NCCL yet
  EXPECT_EQ(std::getenv("TORCH_NCCL_BLOCKING_WAIT"), nullptr) << "a CPU collective must not start NCCL";
  const at::TensorOptions cuda = at::TensorOptions().device(at::kCUDA, 0);
  // Large enough that an unwaited NCCL kernel would still be running when
  // the values are read back.
  at::Tensor x = at::arange(1 << 22, cuda.dtype(at::kFloat)).remainder(977.0);  // [4M]
  const at::Tensor expected = x.clone();
  const void* where = x.data_ptr();
  group->allreduce_sum(x);  // NCCL starts here: the group was not told its device
  const char* after = std::getenv("TORCH_NCCL_BLOCKING_WAIT");
  EXPECT_TRUE(after != nullptr && std::string(after) == "1") << "the CUDA all-reduce did not start NCCL";
  EXPECT_EQ(x.data_ptr(), where) << "in place";
  EXPECT_TRUE(x.device().is_cuda());
  EXPECT_TRUE(at::equal(x, expected));
  at::Tensor c = at::arange(5, at::kDouble);  // CPU, the same group: Gloo
  group->allreduce_max(c);
  EXPECT_TRUE(at::equal(c, at::arange(5, at::kDouble)));
  at::Tensor m = at::tensor({-3.0F, 2.5F, 0.0F}, cuda);
  group->allreduce_max(m);
  EXPECT_TRUE(at::equal(m.cpu(), at::tensor({-3.0F, 2.5F, 0.0F})));
  at::Tensor b = at::full({3, 4}, 7.0, cuda.dtype(at::kDouble));
  group->broadcast(b, 0);
  EXPECT_TRUE(at::equal(b.cpu(), at::full({3, 4}, 7.0, at::kDouble)));
  group->barrier();
  // The group's GPU is cuda:0 now; a GPU past the last is refused in one line.
  group->set_device(at::Device("cuda:0"));  // the same: nothing to do
  const int64_t n = static_cast<int64_t>(at::getNumGPUs());
  const std::string e = error_of([&] { group->set_device(at::Device(at::kCUDA, static_cast<at::DeviceIndex>(n))); });
  EXPECT_THAT(e, HasSubstr("data-parallel rank 0 of 1 was given cuda:" + std::to_string(n) + " but sees " +
                           std::to_string(n) + " CUDA GPU"));
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

// Told its device first (what the SAE trainer does): "cuda" is
// cuda:LOCAL_RANK, cuda:0 for one process. Catches set_device leaving the
// current device or the NCCL device unset (the next CUDA collective would
// then be refused as "another GPU" or start NCCL a second time).
TEST(ProcessGroupCuda, SetDeviceStartsNcclOnTheLocalRanksGpu) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  auto group = one_rank_group();
  group->set_device(at::Device("cuda"));
  at::Tensor x = at::ones({8}, at::TensorOptions().device(at::kCUDA, 0));
  group->allreduce_sum(x);
  EXPECT_TRUE(at::equal(x.cpu(), at::ones({8})));
}

// Two ranks on one GPU (two threads of this process, each its own group):
// both refused in mechlab's one line naming host, GPU and the fix, before
// NCCL (which would fail its first collective with "invalid usage" and no
// hint). Runs on one GPU. Catches the shared-GPU check removed or seen by one
// rank only (the other would block in NCCL's init until the test's timeout).
TEST(ProcessGroupCuda, TwoRanksOnOneGpuAreRefusedInOneLine) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  const int port = free_port();
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto group = ProcessGroup::connect(local_env(r, 2, port), GroupOptions().timeout_seconds(30));
        group->set_device(at::Device("cuda:0"));
        at::Tensor x = at::ones({4}, at::TensorOptions().device(at::kCUDA, 0));
        group->allreduce_sum(x);
        errors[r] = "no error";
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_THAT(errors[r], HasSubstr("data-parallel training: 2 ranks on host "));
    EXPECT_THAT(errors[r], HasSubstr("use one GPU (cuda:0, PCI "));
    EXPECT_THAT(errors[r], HasSubstr("rank " + std::to_string(r) + " of 2 among them; NCCL needs one GPU per process"));
    EXPECT_EQ(errors[r].find('\n'), std::string::npos) << errors[r];
  }
}

}  // namespace
}  // namespace mechlab::core::dist
