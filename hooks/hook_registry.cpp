#include "hooks/hook_registry.h"

#include "core/util/error.h"
#include "hooks/names_filter.h"

#include <algorithm>

namespace mechlab::hooks {

HookRegistry::HookRegistry(core::ModelConfig cfg) : cfg_(std::move(cfg)) {
  const size_t n = static_cast<size_t>(core::site_count(cfg_.n_layers));
  by_site_.resize(n);
  active_.assign(n, 0);
}

HookHandle HookRegistry::add(const std::string& name, HookFn fwd, BackwardHookFn bwd,
                             bool permanent) {
  require_hook_name(cfg_, name);
  core::HookSite site;
  core::parse_site(name, cfg_.n_layers, &site);
  const size_t i = static_cast<size_t>(site.index());
  const HookHandle id = next_id_++;
  by_site_[i].push_back({id, std::move(fwd), std::move(bwd), permanent, {site, name}});
  refresh(i);
  return id;
}

HookHandle HookRegistry::add_hook(const std::string& name, HookFn fn, bool permanent) {
  MECHLAB_CHECK(fn, "add_hook(\"", name, "\"): the hook function is empty");
  return add(name, std::move(fn), nullptr, permanent);
}

HookHandle HookRegistry::add_backward_hook(const std::string& name, BackwardHookFn fn,
                                           bool permanent) {
  MECHLAB_CHECK(fn, "add_backward_hook(\"", name, "\"): the hook function is empty");
  return add(name, nullptr, std::move(fn), permanent);
}

void HookRegistry::remove(HookHandle handle) {
  for (size_t i = 0; i < by_site_.size(); ++i) {
    auto& v = by_site_[i];
    const auto before = v.size();
    v.erase(std::remove_if(v.begin(), v.end(), [&](const Entry& e) { return e.id == handle; }),
            v.end());
    if (v.size() != before) return refresh(i);
  }
}

void HookRegistry::reset_hooks(bool including_permanent) {
  for (size_t i = 0; i < by_site_.size(); ++i) {
    auto& v = by_site_[i];
    v.erase(std::remove_if(v.begin(), v.end(),
                           [&](const Entry& e) { return including_permanent || !e.permanent; }),
            v.end());
    refresh(i);
  }
}

size_t HookRegistry::size() const {
  size_t n = 0;
  for (const auto& v : by_site_) n += v.size();
  return n;
}

void HookRegistry::refresh(size_t i) { active_[i] = by_site_[i].empty() ? 0 : 1; }

void HookRegistry::fire(const core::HookSite& site, at::Tensor& act) {
  // Copy: a hook may add or remove hooks while running.
  const std::vector<Entry> entries = by_site_[static_cast<size_t>(site.index())];
  for (const Entry& e : entries) {
    if (e.forward) {
      const auto shape = act.sizes().vec();
      e.forward(act, e.point);
      MECHLAB_CHECK(act.defined() && act.sizes().vec() == shape, "hook on \"", e.point.name,
                    "\" replaced a tensor of shape ", at::IntArrayRef(shape), " by one of shape ",
                    act.defined() ? act.sizes() : at::IntArrayRef{},
                    "; a replacement must keep the shape");
    } else if (act.requires_grad()) {
      act.register_hook([fn = e.backward, point = e.point](at::Tensor grad) {
        const auto shape = grad.sizes().vec();
        fn(grad, point);
        MECHLAB_CHECK(grad.sizes().vec() == shape, "backward hook on \"", point.name,
                      "\" changed the gradient's shape");
        return grad;
      });
    }
  }
}

HookScope::~HookScope() {
  for (HookHandle h : handles_) registry_.remove(h);
}

HookScope& HookScope::add(const std::string& name, HookFn fn) {
  handles_.push_back(registry_.add_hook(name, std::move(fn)));
  return *this;
}

HookScope& HookScope::add_backward(const std::string& name, BackwardHookFn fn) {
  handles_.push_back(registry_.add_backward_hook(name, std::move(fn)));
  return *this;
}

}  // namespace mechlab::hooks
