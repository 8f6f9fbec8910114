// HookDispatch: how the forward pass reaches hooks without core/ depending on
// hooks/. The forward pass asks `listens(site)` (one byte load and a branch)
// and only then calls `fire`, so a site with nothing attached costs nothing
// else: no copy, no call, and no attention pattern materialised.
// hooks/HookRegistry is the implementation users meet.
#pragma once

#include "core/model/hook_site.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace mechlab::core {

class HookDispatch {
 public:
  virtual ~HookDispatch() = default;

  bool listens(const HookSite& site) const {
    const size_t i = static_cast<size_t>(site.index());
    return i < active_.size() && active_[i] != 0;
  }

  /// Called only when listens(site). `act` may be replaced (same shape).
  virtual void fire(const HookSite& site, at::Tensor& act) = 0;

 protected:
  std::vector<uint8_t> active_;  // [site_count(n_layers)], 1 = something listens
};

/// The forward pass's view of the hooks: a null dispatch means "bypassed".
struct Hooks {
  HookDispatch* dispatch = nullptr;

  bool listens(const HookSite& site) const { return dispatch && dispatch->listens(site); }
  void operator()(const HookSite& site, at::Tensor& act) const {
    if (dispatch && dispatch->listens(site)) dispatch->fire(site, act);
  }
};

}  // namespace mechlab::core
