// NamesFilter: which hook points to cache, like TransformerLens's
// names_filter: a list of exact names, a glob ("blocks.*.hook_resid_post",
// "*hook_pattern"), or a predicate. Exact names are checked against the
// model, so a typo is an error with suggestions, never an empty cache.
// Opt-in points (hook_result, hook_q/k/v_input) change how their layer runs,
// so "everything" and globs select them only when the pattern names them
// ("*hook_result"); exact names and predicates select whatever they say.
#pragma once

#include "core/model/model_config.h"

#include <functional>
#include <string>
#include <vector>

namespace mechlab::hooks {

class NamesFilter {
 public:
  /// Everything.
  NamesFilter();
  /// Exact names (each must exist in the model).
  NamesFilter(std::vector<std::string> names);  // NOLINT: implicit for {"a", "b"}
  NamesFilter(std::initializer_list<const char*> names);
  /// A glob with * and ? (must match at least one hook of the model).
  static NamesFilter glob(std::string pattern);
  static NamesFilter predicate(std::function<bool(const std::string&)> fn);

  /// Names of the model's hook points this filter selects, in forward order.
  /// Throws mechlab::Error for unknown exact names or a glob matching nothing.
  std::vector<std::string> select(const core::ModelConfig& cfg) const;
  /// The same over `names`: every hook point there is, in forward order (the
  /// model's and attached modules', HookRegistry::hook_names()).
  std::vector<std::string> select(const core::ModelConfig& cfg,
                                  const std::vector<std::string>& names) const;

 private:
  enum class Kind { all, exact, glob, predicate } kind_ = Kind::all;
  std::vector<std::string> names_;
  std::function<bool(const std::string&)> fn_;
};

bool glob_match(const std::string& pattern, const std::string& text);

/// Checks that `name` is a hook point of this model; otherwise throws an error
/// that lists the nearest valid names.
void require_hook_name(const core::ModelConfig& cfg, const std::string& name);
/// The same where `known` (every hook point, attached modules' included) are valid.
void require_hook_name(const core::ModelConfig& cfg, const std::string& name,
                       const std::vector<std::string>& known);

}  // namespace mechlab::hooks
