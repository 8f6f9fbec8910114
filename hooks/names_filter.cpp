#include "hooks/names_filter.h"

#include "core/util/error.h"
#include "core/model/hook_site.h"

#include <algorithm>

namespace mechlab::hooks {
namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::vector<std::string> model_names(const core::ModelConfig& cfg) {
  std::vector<std::string> out;
  for (const auto& s : core::all_sites(cfg)) out.push_back(s.name());
  return out;
}

// Opt-in points change how their layer runs (split q/k/v inputs, per-head
// results), so "everything" and globs leave them out unless the pattern
// names them, as TransformerLens leaves them out unless its flags are set.
bool opt_in_selected(const std::string& name, const std::string& pattern) {
  core::HookSite site;
  if (!core::parse_site(name, 1 << 20, &site) || !core::is_opt_in(site.kind)) return true;
  const std::string suffix = name.substr(name.rfind('.') + 1);  // e.g. "hook_result"
  return pattern.find(suffix) != std::string::npos;
}

}  // namespace

bool glob_match(const std::string& p, const std::string& t) {
  size_t pi = 0, ti = 0, star = std::string::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == t[ti])) {
      ++pi, ++ti;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++, mark = ti;
    } else if (star != std::string::npos) {
      pi = star + 1, ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

void require_hook_name(const core::ModelConfig& cfg, const std::string& name) {
  core::HookSite site;
  if (core::parse_site(name, cfg.n_layers, &site) && core::site_exists(cfg, site)) return;
  require_hook_name(cfg, name, model_names(cfg));
}

void require_hook_name(const core::ModelConfig& cfg, const std::string& name,
                       const std::vector<std::string>& known) {
  if (std::find(known.begin(), known.end(), name) != known.end()) return;
  std::vector<std::string> names = known;
  std::stable_sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
    return edit_distance(a, name) < edit_distance(b, name);
  });
  std::string near;
  for (size_t i = 0; i < std::min<size_t>(3, names.size()); ++i) near += (i ? ", " : "") + names[i];
  std::string why;
  core::HookSite site;
  if (core::parse_site(name, 1 << 20, &site) && site.per_layer() && site.layer >= cfg.n_layers) {
    why = str_cat(" (the model has ", cfg.n_layers, " layers)");
  } else if (core::parse_site(name, cfg.n_layers, &site)) {
    why = " (this architecture has no such hook point)";
  } else {
    // "<host>.<module>.hook_x": a point of a module that is not attached (or
    // that the module does not declare).
    for (const auto& s : core::all_sites(cfg)) {
      const std::string host = s.name() + ".";
      if (name.compare(0, host.size(), host) == 0) {
        why = str_cat(" (no module attached at \"", s.name(), "\" declares it)");
        break;
      }
    }
  }
  throw Error(str_cat("unknown hook name \"", name, "\"", why, "; nearest valid names: ", near,
                      ". `mechlab info MODEL` lists every hook point"));
}

NamesFilter::NamesFilter() = default;
NamesFilter::NamesFilter(std::vector<std::string> names) : kind_(Kind::exact), names_(std::move(names)) {}
NamesFilter::NamesFilter(std::initializer_list<const char*> names) : kind_(Kind::exact) {
  for (const char* n : names) names_.emplace_back(n);
}

NamesFilter NamesFilter::glob(std::string pattern) {
  NamesFilter f;
  f.kind_ = Kind::glob;
  f.names_ = {std::move(pattern)};
  return f;
}

NamesFilter NamesFilter::predicate(std::function<bool(const std::string&)> fn) {
  NamesFilter f;
  f.kind_ = Kind::predicate;
  f.fn_ = std::move(fn);
  return f;
}

std::vector<std::string> NamesFilter::select(const core::ModelConfig& cfg) const {
  return select(cfg, model_names(cfg));
}

std::vector<std::string> NamesFilter::select(const core::ModelConfig& cfg,
                                             const std::vector<std::string>& all) const {
  std::vector<std::string> out;
  switch (kind_) {
    case Kind::all:
      for (const auto& n : all) {
        if (opt_in_selected(n, "")) out.push_back(n);
      }
      return out;
    case Kind::exact:
      for (const auto& n : names_) require_hook_name(cfg, n, all);
      for (const auto& n : all) {
        if (std::find(names_.begin(), names_.end(), n) != names_.end()) out.push_back(n);
      }
      return out;
    case Kind::glob:
      for (const auto& n : all) {
        if (glob_match(names_[0], n) && opt_in_selected(n, names_[0])) out.push_back(n);
      }
      MECHLAB_CHECK(!out.empty(), "hook pattern \"", names_[0],
                    "\" matches no hook point of this model (e.g. \"blocks.*.hook_resid_post\")");
      return out;
    case Kind::predicate:
      for (const auto& n : all) {
        if (fn_(n)) out.push_back(n);
      }
      return out;
  }
  return out;
}

}  // namespace mechlab::hooks
