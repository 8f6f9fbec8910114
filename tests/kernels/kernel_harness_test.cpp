// Runs every registered kernel case (kernel_harness.h) on the CPU and, where
// a device exists, on CUDA; checks that every listed family has cases; and,
// with MECHLAB_KERNEL_PERF=1, prints the benchmark table.
#include "tests/kernels/kernel_harness.h"

#include "tests/test_util.h"
#include "kernels/dispatch.h"

#include <gtest/gtest.h>

#ifdef MECHLAB_HAVE_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <algorithm>
#include <cctype>
#include <set>

namespace mechlab::testing {
namespace {

// Indices into all_kernel_cases() of the cases checked for correctness.
std::vector<size_t> checked_cases() {
  std::vector<size_t> out;
  const auto& cases = all_kernel_cases();
  for (size_t i = 0; i < cases.size(); ++i) {
    if (!cases[i].perf_only) out.push_back(i);
  }
  return out;
}

void check_output(const KernelCase& c, const at::Tensor& out, const at::Tensor& ref,
                  at::Device device, const std::string& what) {
  SCOPED_TRACE(c.family + "/" + c.name + " on " + device.str() + ", " + what);
  ASSERT_EQ(out.device(), device);
  ASSERT_EQ(out.scalar_type(), c.dtype);
  ASSERT_EQ(out.sizes(), ref.sizes());
  const double err = nmse(out, ref);
  EXPECT_LE(err, nmse_tolerance(c.dtype)) << "NMSE against the float64 reference";
}

// Every implementation that runs on `device` and takes the inputs matches the
// reference; the others refuse with their reason; the entry point picks the
// first that takes them and matches too.
void check_case_on(const KernelCase& c, at::Device device) {
  const Inputs in = c.make_inputs(device);
  const at::Tensor ref = c.reference(in);
  ASSERT_EQ(ref.scalar_type(), at::kDouble);
  std::string first;
  for (const auto& impl : c.impls) {
    const std::string why = c.unsupported(in, impl);
    if (!why.empty()) {
      const std::string msg = error_of([&] { c.run(in, impl); });
      EXPECT_NE(msg.find(why), std::string::npos) << impl << " refused with: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      continue;
    }
    if (first.empty()) first = impl;
    check_output(c, c.run(in, impl), ref, device, "implementation " + impl);
  }
  ASSERT_FALSE(first.empty()) << "no implementation takes " << c.family << "/" << c.name;
  EXPECT_EQ(c.chosen(in), first);
  check_output(c, c.run(in, ""), ref, device, "dispatched");
}

class KernelCaseTest : public ::testing::TestWithParam<size_t> {
 protected:
  const KernelCase& kernel_case() const { return all_kernel_cases()[GetParam()]; }
};

TEST_P(KernelCaseTest, CpuMatchesReference) { check_case_on(kernel_case(), at::Device(at::kCPU)); }

TEST_P(KernelCaseTest, CudaMatchesReference) {
  if (!have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  check_case_on(kernel_case(), at::Device(at::kCUDA, 0));
}

INSTANTIATE_TEST_SUITE_P(Kernels, KernelCaseTest, ::testing::ValuesIn(checked_cases()),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           const KernelCase& c = all_kernel_cases()[info.param];
                           return c.family + "_" + c.name;
                         });

TEST(KernelRegistry, EveryFamilyHasTestCases) {
  ASSERT_FALSE(kernels::kernel_families().empty());
  for (const auto& f : kernels::kernel_families()) {
    size_t n = 0;
    for (const size_t i : checked_cases()) n += all_kernel_cases()[i].family == f.name;
    EXPECT_GT(n, 0u) << "kernel family '" << f.name << "' (" << f.header
                     << ") has no test cases: register them in tests/kernels/";
  }
}

TEST(KernelRegistry, EveryCaseNamesAListedFamilyOnce) {
  std::set<std::string> seen;
  for (const auto& c : all_kernel_cases()) {
    EXPECT_NO_THROW(kernels::kernel_family_info(c.family)) << c.name;
    EXPECT_TRUE(seen.insert(c.family + "/" + c.name).second) << "duplicate case " << c.name;
    EXPECT_FALSE(c.impls.empty()) << c.name;
    EXPECT_GT(c.bytes, 0) << c.name;
    for (const char ch : c.name) EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_') << c.name;
  }
}

// ---------------------------------------------------------------- perf mode

void sync(at::Device device) {
#ifdef MECHLAB_HAVE_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)device;
#endif
}

// Seconds per call: after a warm-up call, one timed call sets the
// batch size n (about 0.05 s of calls, 1 to 1000); then three batches of n
// calls, synchronising only at the end of each so that a GPU's launches
// queue as they would in use. The fastest batch counts, since other work on a
// shared machine only ever adds time.
double seconds_per_call(const std::function<at::Tensor()>& fn, at::Device device) {
  using clock = std::chrono::steady_clock;
  const auto since = [](clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  fn();  // warm-up: allocator, kernel loading, thread pools
  sync(device);
  const auto w0 = clock::now();
  fn();
  sync(device);
  const double one = since(w0);
  const int n = one > 0 ? static_cast<int>(std::clamp(0.05 / one, 1.0, 1000.0)) : 1000;
  double best = one;
  for (int batch = 0; batch < 3; ++batch) {
    const auto t0 = clock::now();
    for (int i = 0; i < n; ++i) fn();
    sync(device);
    best = std::min(best, since(t0) / n);
  }
  return best;
}

/// The benchmark table. It is a program run on request, not a test: it is
/// registered only when MECHLAB_KERNEL_PERF is set (1 = every case; another
/// value = the cases whose "family/name" contains it, e.g. acdc_layer), so
/// CTest never lists it and nothing skips.
void perf_table(const std::string& env) {
  const std::string only = env == "1" ? "" : env;
  std::vector<at::Device> devices = {at::Device(at::kCPU)};
  if (at::hasCUDA()) devices.emplace_back(at::kCUDA, 0);
  std::printf("\n# kernels: time per call and effective bandwidth (bytes a call must move / time)\n\n");
  std::printf("| family | case | dtype | device | impl | us/call | GB/s | reference ms | x reference | NMSE |\n");
  std::printf("| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
  int timed = 0;
  for (const auto& c : all_kernel_cases()) {
    if ((c.family + "/" + c.name).find(only) == std::string::npos) continue;
    ++timed;
    const Inputs cpu_in = c.make_inputs(at::Device(at::kCPU));
    // The naive reference is timed once: on the perf-only shapes it takes seconds.
    const auto t0 = std::chrono::steady_clock::now();
    const at::Tensor ref = c.reference(cpu_in);
    const double ref_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const auto& device : devices) {
      const Inputs in = c.make_inputs(device);
      std::vector<std::string> impls = c.impls;
      impls.push_back("");
      for (const auto& impl : impls) {
        if (!impl.empty() && !c.unsupported(in, impl).empty()) continue;
        at::Tensor out;
        const double s = seconds_per_call([&] { return out = c.run(in, impl); }, device);
        const double err = nmse(out, ref);
        EXPECT_LE(err, nmse_tolerance(c.dtype)) << c.name << " " << impl;
        const std::string label = impl.empty() ? "dispatch (" + c.chosen(in) + ")" : impl;
        std::printf("| %s | %s | %s | %s | %s | %.1f | %.2f | %.2f | %.1f | %.1e |\n", c.family.c_str(),
                    c.name.c_str(), c10::toString(c.dtype), device.str().c_str(), label.c_str(),
                    s * 1e6, static_cast<double>(c.bytes) / s / 1e9, ref_s * 1e3, ref_s / s, err);
      }
    }
  }
  std::fflush(stdout);
  EXPECT_GT(timed, 0) << "no kernel case matches MECHLAB_KERNEL_PERF=" << env;
}

class KernelPerfTable : public ::testing::Test {
 public:
  explicit KernelPerfTable(std::string env) : env_(std::move(env)) {}
  void TestBody() override { perf_table(env_); }

 private:
  std::string env_;
};

const bool kPerfTableRegistered = [] {
  const char* env = std::getenv("MECHLAB_KERNEL_PERF");
  if (env == nullptr || std::string(env).empty() || std::string(env) == "0") return false;
  const std::string value = env;
  ::testing::RegisterTest("KernelPerf", "Table", nullptr, nullptr, __FILE__, __LINE__,
                          [value]() -> ::testing::Test* { return new KernelPerfTable(value); });
  return true;
}();

}  // namespace
}  // namespace mechlab::testing
