#include "tests/kernels/kernel_harness.h"

namespace mechlab::testing {
namespace {

struct Registration {
  std::string family;
  std::function<std::vector<KernelCase>()> make;
};

std::vector<Registration>& registrations() {
  static std::vector<Registration> regs;
  return regs;
}

}  // namespace

bool register_kernel_cases(const std::string& family, std::function<std::vector<KernelCase>()> make) {
  registrations().push_back({family, std::move(make)});
  return true;
}

const std::vector<KernelCase>& all_kernel_cases() {
  static const std::vector<KernelCase> cases = [] {
    std::vector<KernelCase> out;
    for (const auto& reg : registrations()) {
      for (auto& c : reg.make()) {
        MECHLAB_CHECK(c.family == reg.family, "kernel case '", c.name, "' registered for family '",
                      reg.family, "' names family '", c.family, "'");
        out.push_back(std::move(c));
      }
    }
    return out;
  }();
  return cases;
}

}  // namespace mechlab::testing
