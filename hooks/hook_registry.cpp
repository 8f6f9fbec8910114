#include "hooks/hook_registry.h"

#include "core/util/error.h"
#include "hooks/names_filter.h"

#include <algorithm>

namespace mechlab::hooks {

// What an attached module's forward() fires its points through.
class HookRegistry::AttachmentHooks : public ModuleHooks {
 public:
  AttachmentHooks(HookRegistry& registry, const Attachment& a) : registry_(registry), a_(a) {}
  void operator()(const std::string& suffix, at::Tensor& act) override {
    const bool declared = std::any_of(a_.points.begin(), a_.points.end(),
                                      [&](const ModulePoint& p) { return p.suffix == suffix; });
    MECHLAB_CHECK(declared, "module \"", a_.module->name(), "\" fired \"", a_.prefix, suffix,
                  "\", which it did not declare in hook_points(); declare every point it fires");
    auto it = registry_.by_point_.find(a_.prefix + suffix);
    if (it == registry_.by_point_.end() || it->second.empty()) return;
    const std::vector<Entry> entries = it->second;  // a hook may add or remove hooks
    run(entries, act);
  }

 private:
  HookRegistry& registry_;
  const Attachment& a_;
};

HookRegistry::HookRegistry(core::ModelConfig cfg) : cfg_(std::move(cfg)) {
  const size_t n = static_cast<size_t>(core::site_count(cfg_.n_layers));
  by_site_.resize(n);
  attached_.resize(n);
  active_.assign(n, 0);
}

const HookRegistry::Attachment* HookRegistry::point_owner(const std::string& name,
                                                          const ModulePoint** point) const {
  for (const auto& at_site : attached_) {
    for (const Attachment& a : at_site) {
      if (name.compare(0, a.prefix.size(), a.prefix) != 0) continue;
      for (const ModulePoint& p : a.points) {
        if (name.size() == a.prefix.size() + p.suffix.size() &&
            name.compare(a.prefix.size(), std::string::npos, p.suffix) == 0) {
          if (point) *point = &p;
          return &a;
        }
      }
    }
  }
  return nullptr;
}

HookHandle HookRegistry::add(const std::string& name, HookFn fwd, BackwardHookFn bwd,
                             bool permanent) {
  const HookHandle id = next_id_++;
  if (const Attachment* a = point_owner(name)) {
    by_point_[name].push_back({id, std::move(fwd), std::move(bwd), permanent, {a->host, name}});
    return id;
  }
  require_hook_name(cfg_, name, hook_names());
  core::HookSite site;
  core::parse_site(name, cfg_.n_layers, &site);
  const size_t i = static_cast<size_t>(site.index());
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
  auto gone = [&](const Entry& e) { return e.id == handle; };
  for (size_t i = 0; i < by_site_.size(); ++i) {
    auto& v = by_site_[i];
    const auto before = v.size();
    v.erase(std::remove_if(v.begin(), v.end(), gone), v.end());
    if (v.size() != before) return refresh(i);
  }
  for (auto& [name, v] : by_point_) v.erase(std::remove_if(v.begin(), v.end(), gone), v.end());
}

void HookRegistry::reset_hooks(bool including_permanent) {
  auto gone = [&](const Entry& e) { return including_permanent || !e.permanent; };
  for (size_t i = 0; i < by_site_.size(); ++i) {
    auto& v = by_site_[i];
    v.erase(std::remove_if(v.begin(), v.end(), gone), v.end());
    refresh(i);
  }
  for (auto& [name, v] : by_point_) v.erase(std::remove_if(v.begin(), v.end(), gone), v.end());
}

size_t HookRegistry::size() const {
  size_t n = 0;
  for (const auto& v : by_site_) n += v.size();
  for (const auto& [name, v] : by_point_) n += v.size();
  return n;
}

// A host with a module attached listens even without hooks: the module is
// part of its forward. Sites with neither stay one byte and one branch.
void HookRegistry::refresh(size_t i) {
  active_[i] = by_site_[i].empty() && attached_[i].empty() ? 0 : 1;
}

void HookRegistry::attach(const std::string& host, std::shared_ptr<AttachedModule> module) {
  MECHLAB_CHECK(module, "attach(\"", host, "\"): the module is null");
  MECHLAB_CHECK(!point_owner(host), "attach(\"", host, "\"): \"", host,
                "\" is a point of an attached module; attach at one of the model's own hook "
                "points (modules do not nest)");
  require_hook_name(cfg_, host);
  const std::string mname = module->name();
  MECHLAB_CHECK(!mname.empty() && mname.find('.') == std::string::npos &&
                    mname.find_first_of("*?") == std::string::npos,
                "attach(\"", host, "\"): module name \"", mname,
                "\" must be one non-empty word without '.', '*' or '?'");
  core::HookSite site;
  core::parse_site(host, cfg_.n_layers, &site);
  const size_t i = static_cast<size_t>(site.index());
  Attachment a{site, host + "." + mname + ".", module, module->hook_points(cfg_, site)};
  for (const Attachment& other : attached_[i]) {
    MECHLAB_CHECK(other.prefix != a.prefix, "a module named \"", mname, "\" is already attached at \"",
                  host, "\"; detach it first (detach(\"", host, "\", \"", mname, "\"))");
  }
  for (size_t p = 0; p < a.points.size(); ++p) {
    const std::string& s = a.points[p].suffix;
    MECHLAB_CHECK(s.rfind("hook_", 0) == 0 && s.find('.') == std::string::npos,
                  "module \"", mname, "\" declares the point \"", s,
                  "\"; point names start with \"hook_\" and have no '.'");
    for (size_t q = 0; q < p; ++q) {
      MECHLAB_CHECK(a.points[q].suffix != s, "module \"", mname, "\" declares \"", s, "\" twice");
    }
    MECHLAB_CHECK(a.points[p].dims.size() >= 2, "module \"", mname, "\" declares \"", s,
                  "\" without a shape; declare its axes, e.g. {batch, pos, d_model}");
  }
  attached_[i].push_back(std::move(a));
  refresh(i);
}

void HookRegistry::detach(const std::string& host, const std::string& module_name) {
  const std::string prefix = host + "." + module_name + ".";
  for (size_t i = 0; i < attached_.size(); ++i) {
    auto& v = attached_[i];
    auto it = std::find_if(v.begin(), v.end(), [&](const Attachment& a) { return a.prefix == prefix; });
    if (it == v.end()) continue;
    for (const ModulePoint& p : it->points) by_point_.erase(prefix + p.suffix);
    v.erase(it);
    return refresh(i);
  }
  throw Error(str_cat("detach(\"", host, "\", \"", module_name,
                      "\"): no module of that name is attached there"));
}

std::vector<std::string> HookRegistry::hook_names() const {
  std::vector<std::string> out;
  for (const auto& s : core::all_sites(cfg_)) {
    out.push_back(s.name());
    for (const Attachment& a : attached_[static_cast<size_t>(s.index())]) {
      for (const ModulePoint& p : a.points) out.push_back(a.prefix + p.suffix);
    }
  }
  return out;
}

std::vector<core::Dim> HookRegistry::hook_dims(const std::string& name) const {
  const ModulePoint* point = nullptr;
  if (point_owner(name, &point)) return point->dims;
  require_hook_name(cfg_, name, hook_names());
  core::HookSite site;
  core::parse_site(name, cfg_.n_layers, &site);
  return core::site_info(site.kind).dims;
}

bool HookRegistry::attached_host(const std::string& name, core::HookSite* host) const {
  const Attachment* a = point_owner(name);
  if (a && host) *host = a->host;
  return a != nullptr;
}

void HookRegistry::run(const std::vector<Entry>& entries, at::Tensor& act) {
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

void HookRegistry::fire(const core::HookSite& site, at::Tensor& act) {
  const size_t i = static_cast<size_t>(site.index());
  // Copies: a hook may add or remove hooks (or modules) while running.
  const std::vector<Entry> entries = by_site_[i];
  run(entries, act);
  const std::vector<Attachment> modules = attached_[i];
  for (const Attachment& a : modules) {
    AttachmentHooks hooks(*this, a);
    const auto shape = act.sizes().vec();
    at::Tensor out = a.module->forward(act, hooks);
    MECHLAB_CHECK(out.defined() && out.sizes().vec() == shape, "module \"", a.module->name(),
                  "\" at \"", site.name(), "\" returned shape ",
                  out.defined() ? out.sizes() : at::IntArrayRef{}, " for an input of shape ",
                  at::IntArrayRef(shape), "; an attached module must keep the host's shape");
    act = out;
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
