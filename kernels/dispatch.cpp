#include "kernels/dispatch.h"

namespace mechlab::kernels {

const std::vector<FamilyInfo>& kernel_families() {
  // One line per family. tests/kernels/ fails for a family here without
  // test cases; a KernelFamily not listed here cannot be built.
  static const std::vector<FamilyInfo> families = {
      {"edge_patch", "kernels/edge_patch.h",
       "out[b,p,r,:] = base[b,p,r,:] - sum_s mask[r,s] * delta[b,p,s,:] (patching edges by masks)"},
  };
  return families;
}

const FamilyInfo& kernel_family_info(const std::string& name) {
  for (const auto& f : kernel_families()) {
    if (f.name == name) return f;
  }
  throw Error(str_cat("kernel family '", name,
                      "' is not listed in kernel_families() (kernels/dispatch.cpp); add it there"));
}

}  // namespace mechlab::kernels
