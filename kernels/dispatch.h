// The seam between callers and kernels. A kernel family (one operation, e.g.
// edge_patch) declares one C++ entry point in its own header; behind it a
// KernelFamily holds the implementations, most specialised first (a CUDA
// kernel), and ends with the ATen path, which runs on any device. A call
// takes the first implementation whose device matches the inputs' and which
// supports their dtype, shape and layout; the ATen path always does.
//
// Every family is listed in kernel_families() (dispatch.cpp): a KernelFamily
// whose name is missing there refuses to be built, and the test harness in
// tests/kernels/ fails for a listed family without test cases. How to add a
// family: docs/ARCHITECTURE.md, "Kernels".
#pragma once

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::kernels {

struct FamilyInfo {
  std::string name;     // the entry point's name, e.g. "edge_patch"
  std::string header;   // where it is declared, e.g. "kernels/edge_patch.h"
  std::string summary;  // one line: what it computes
};

/// Every kernel family, in the order they were added.
const std::vector<FamilyInfo>& kernel_families();
/// The entry of kernel_families() named `name`; throws mechlab::Error if none.
const FamilyInfo& kernel_family_info(const std::string& name);

/// Where an implementation runs.
enum class Runs { anywhere, cuda };

/// One implementation of a family. `Args` is the family's argument struct; it
/// has `at::Device device() const`.
template <typename Args>
struct KernelImpl {
  std::string name;  // "cuda", "aten", ...
  Runs runs = Runs::anywhere;
  // Why this implementation cannot take `args` (dtype, layout, size), or ""
  // when it can. Called only for inputs on a device where it runs.
  std::function<std::string(const Args&)> unsupported;
  std::function<at::Tensor(const Args&)> run;
};

template <typename Args>
class KernelFamily {
 public:
  /// `validate` throws mechlab::Error for arguments no implementation may
  /// take (shapes that do not fit together, unsupported dtypes, mixed
  /// devices). `impls`: most specialised first, the last one runs anywhere.
  KernelFamily(std::string name, std::function<void(const Args&)> validate,
               std::vector<KernelImpl<Args>> impls)
      : info_(kernel_family_info(name)), validate_(std::move(validate)), impls_(std::move(impls)) {
    MECHLAB_ASSERT(!impls_.empty() && impls_.back().runs == Runs::anywhere);
  }

  const FamilyInfo& info() const { return info_; }

  /// The implementations' names, in dispatch order.
  std::vector<std::string> impl_names() const {
    std::vector<std::string> out;
    for (const auto& i : impls_) out.push_back(i.name);
    return out;
  }

  /// The implementation a call with `args` uses (after validation).
  const KernelImpl<Args>& choose(const Args& args) const {
    validate_(args);
    for (const auto& impl : impls_) {
      if (runs_on(impl, args) && impl.unsupported(args).empty()) return impl;
    }
    MECHLAB_ASSERT(false);  // the last implementation runs anywhere
    return impls_.back();
  }

  /// The dispatched call: what a family's entry point does.
  at::Tensor operator()(const Args& args) const { return choose(args).run(args); }

  /// One implementation by name (tests and benchmarks). Throws
  /// mechlab::Error if it does not exist or cannot take these arguments.
  at::Tensor run(const std::string& impl_name, const Args& args) const {
    validate_(args);
    const std::string why = unsupported(impl_name, args);
    MECHLAB_CHECK(why.empty(), info_.name, ": implementation '", impl_name,
                  "' cannot take these inputs: ", why, "; call ", info_.name, "() to dispatch");
    return find(impl_name).run(args);
  }

  /// Whether `impl_name` runs on `args`' device and supports them (the reason if not).
  std::string unsupported(const std::string& impl_name, const Args& args) const {
    const KernelImpl<Args>& impl = find(impl_name);
    if (!runs_on(impl, args)) return str_cat("it runs only on CUDA tensors, these are on ", args.device());
    return impl.unsupported(args);
  }

 private:
  static bool runs_on(const KernelImpl<Args>& impl, const Args& args) {
    return impl.runs == Runs::anywhere || (impl.runs == Runs::cuda && args.device().is_cuda());
  }
  const KernelImpl<Args>& find(const std::string& impl_name) const {
    for (const auto& impl : impls_) {
      if (impl.name == impl_name) return impl;
    }
    std::string names;
    for (const auto& impl : impls_) names += (names.empty() ? "" : ", ") + impl.name;
    throw Error(str_cat(info_.name, ": no implementation named '", impl_name, "' in this build (",
                        names, ")"));
  }

  const FamilyInfo& info_;
  std::function<void(const Args&)> validate_;
  std::vector<KernelImpl<Args>> impls_;
};

}  // namespace mechlab::kernels
