// HookRegistry: the hooks attached to one model, by hook point.
//
// Temporary hooks belong in a HookScope, which removes them when it goes out
// of scope (TransformerLens warns that hooks are global state and leak
// otherwise). Permanent hooks stay until reset_hooks(true).
//
// Example:
//   HookScope scope(model.hooks());
//   scope.add("blocks.0.attn.hook_pattern", [&](at::Tensor& p, const HookPoint&) { seen = p; });
//   model.forward(tokens);   // hook fires
//   }                        // scope ends: hook removed
#pragma once

#include "core/model/hook_dispatch.h"
#include "hooks/attached_module.h"
#include "hooks/hook_point.h"

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

namespace mechlab::hooks {

using HookHandle = uint64_t;

class HookRegistry : public core::HookDispatch {
 public:
  explicit HookRegistry(core::ModelConfig cfg);

  /// Adds a forward hook; the name must be a hook point of this model or of
  /// an attached module.
  HookHandle add_hook(const std::string& name, HookFn fn, bool permanent = false);
  /// Adds a backward hook: it sees d(loss)/d(activation) during backward()
  /// and may replace it. Needs a forward with gradients enabled.
  HookHandle add_backward_hook(const std::string& name, BackwardHookFn fn, bool permanent = false);
  void remove(HookHandle handle);
  /// Removes temporary hooks, and permanent ones too if asked.
  void reset_hooks(bool including_permanent = false);
  size_t size() const;

  /// Splices `module` in at the model hook point `host` (hooks/attached_module.h).
  /// One module of a given name() per host. Modules are not hooks:
  /// reset_hooks leaves them attached; detach removes them.
  void attach(const std::string& host, std::shared_ptr<AttachedModule> module);
  /// Removes the module named `module_name` at `host`, and every hook on its points.
  void detach(const std::string& host, const std::string& module_name);

  /// Every hook point, the model's and the attached modules', in forward
  /// order (a module's points follow its host).
  std::vector<std::string> hook_names() const;
  /// The shape of any hook point in the glossary's axes; throws for unknown names.
  std::vector<core::Dim> hook_dims(const std::string& name) const;
  /// Whether `name` is a point of an attached module; if so and `host` is
  /// given, the model hook point the module sits at.
  bool attached_host(const std::string& name, core::HookSite* host = nullptr) const;

  void fire(const core::HookSite& site, at::Tensor& act) override;
  const core::ModelConfig& config() const { return cfg_; }

 private:
  struct Entry {
    HookHandle id;
    HookFn forward;
    BackwardHookFn backward;
    bool permanent;
    HookPoint point;
  };
  // A module at a host, with its points' full names ("<host>.<module>.<suffix>").
  struct Attachment {
    core::HookSite host;
    std::string prefix;  // "<host>.<module>."
    std::shared_ptr<AttachedModule> module;
    std::vector<ModulePoint> points;
  };
  class AttachmentHooks;
  HookHandle add(const std::string& name, HookFn fwd, BackwardHookFn bwd, bool permanent);
  void refresh(size_t site_index);
  static void run(const std::vector<Entry>& entries, at::Tensor& act);
  // The attachment that declares `name`, or null.
  const Attachment* point_owner(const std::string& name, const ModulePoint** point = nullptr) const;

  core::ModelConfig cfg_;
  std::vector<std::vector<Entry>> by_site_;  // [site_count], in the order added
  std::map<std::string, std::vector<Entry>> by_point_;  // attached points' hooks
  std::vector<std::vector<Attachment>> attached_;  // [site_count], in the order attached
  HookHandle next_id_ = 1;
};

/// RAII owner of temporary hooks.
class HookScope {
 public:
  explicit HookScope(HookRegistry& registry) : registry_(registry) {}
  ~HookScope();
  HookScope(const HookScope&) = delete;
  HookScope& operator=(const HookScope&) = delete;

  HookScope& add(const std::string& name, HookFn fn);
  HookScope& add_backward(const std::string& name, BackwardHookFn fn);

 private:
  HookRegistry& registry_;
  std::vector<HookHandle> handles_;
};

}  // namespace mechlab::hooks
