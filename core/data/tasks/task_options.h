// Task options: one description of each generator's options gives its JSON
// form (the dataset's `config` attribute), its reader (which refuses unknown
// keys and wrong types, naming them) and the help text of `mechlab dataset`.
//
// An options struct lists its members once, in a `visit` template:
//
//   struct InductionOptions {
//     int64_t n = 1000;  ///< number of sequences
//     template <typename V> void visit(V&& v) {
//       v("n", n, "number of sequences");
//     }
//   };
//
// Supported member types: int64_t, double, bool, std::string and
// nlohmann::json (any JSON value, for structured options).
//
// Example:
//   auto opts = options_from_json<InductionOptions>("induction", {{"n", 10}});
//   nlohmann::json config = options_to_json(opts);   // {"n": 10, ...}
#pragma once

#include "core/data/dataset.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::core::tasks {

/// One option of a task, for help texts.
struct OptionInfo {
  std::string key;
  nlohmann::json default_value;
  std::string help;
};

namespace detail {

void read_option(const std::string& task, const std::string& key, const nlohmann::json& v,
                 int64_t& out);
void read_option(const std::string& task, const std::string& key, const nlohmann::json& v,
                 double& out);
void read_option(const std::string& task, const std::string& key, const nlohmann::json& v,
                 bool& out);
void read_option(const std::string& task, const std::string& key, const nlohmann::json& v,
                 std::string& out);
void read_option(const std::string& task, const std::string& key, const nlohmann::json& v,
                 nlohmann::json& out);
/// Refuses a non-object and keys outside `known`, naming them and the valid keys.
void check_option_keys(const std::string& task, const nlohmann::json& j,
                       const std::vector<std::string>& known);

}  // namespace detail

/// The options as a JSON object (keys = option names).
template <typename Options>
nlohmann::json options_to_json(Options opts) {
  nlohmann::json j = nlohmann::json::object();
  opts.visit([&j](const char* key, const auto& value, const char*) { j[key] = value; });
  return j;
}

/// A dataset carrying what every generator records: the task name, the
/// vocabulary, the seed and the options as JSON (so make_task(task, config)
/// regenerates it). The generator fills in the tensors.
template <typename Options>
Dataset generated_dataset(const std::string& task, const Options& opts, int64_t d_vocab,
                          std::string tokenizer = "") {
  Dataset ds;
  ds.task = task;
  ds.tokenizer = std::move(tokenizer);
  ds.d_vocab = d_vocab;
  ds.seed = opts.seed();
  ds.config = options_to_json(opts).dump();
  return ds;
}

/// Reads options from a JSON object; missing keys keep their defaults. Refuses
/// unknown keys and wrong types with a message naming `task` and the key.
template <typename Options>
Options options_from_json(const std::string& task, const nlohmann::json& j) {
  Options opts;
  std::vector<std::string> known;
  opts.visit([&known](const char* key, const auto&, const char*) { known.emplace_back(key); });
  detail::check_option_keys(task, j, known);
  opts.visit([&](const char* key, auto& value, const char*) {
    if (j.contains(key)) detail::read_option(task, key, j.at(key), value);
  });
  return opts;
}

/// Every option with its default and help text, in declaration order.
template <typename Options>
std::vector<OptionInfo> describe_options() {
  std::vector<OptionInfo> out;
  Options opts;
  opts.visit([&out](const char* key, const auto& value, const char* help) {
    out.push_back({key, nlohmann::json(value), help});
  });
  return out;
}

/// Throws mechlab::Error "<task>: option \"<key>\" <problem>" unless `cond`.
void require_option(bool cond, const std::string& task, const std::string& key,
                    const std::string& problem);

}  // namespace mechlab::core::tasks
