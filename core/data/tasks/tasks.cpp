#include "core/data/tasks/tasks.h"

#include "core/util/error.h"
#include "core/data/tasks/greater_than.h"
#include "core/data/tasks/induction.h"
#include "core/data/tasks/ioi.h"
#include "core/data/tasks/modular_addition.h"
#include "core/data/tasks/probe.h"
#include "core/data/tasks/reversal.h"
#include "core/data/tasks/sorting.h"

#include <functional>

namespace mechlab::core::tasks {
namespace {

struct Entry {
  TaskInfo info;
  std::function<Dataset(const nlohmann::json&)> make;
};

template <typename Options>
Entry entry(const char* name, const char* summary, Dataset (*make)(const Options&)) {
  const std::string task = name;
  return Entry{
      TaskInfo{name, summary, describe_options<Options>()},
      [task, make](const nlohmann::json& j) { return make(options_from_json<Options>(task, j)); }};
}

const std::vector<Entry>& registry() {
  static const std::vector<Entry> entries{
      entry("induction", "repeated random tokens: BOS, L random ids, the same L again",
            &make_induction),
      entry("ioi", "indirect-object identification prompt pairs (Wang et al. 2022)", &make_ioi),
      entry("greater_than",
            "\"The war lasted from the year 17YY to the year 17\" pairs "
            "(Hanna et al. 2023)",
            &make_greater_than),
      entry("modular_addition", "a b = -> (a + b) mod p, all p*p pairs (Nanda et al. 2023)",
            &make_modular_addition),
      entry("reversal", "BOS x_1..x_L SEP x_L..x_1", &make_reversal),
      entry("sorting", "BOS x_1..x_L SEP sorted(x)", &make_sorting),
      entry("probe", "random sequences with per-position probe labels", &make_probe),
  };
  return entries;
}

std::string names_text() {
  std::string out;
  for (const auto& e : registry()) out += (out.empty() ? "" : ", ") + e.info.name;
  return out;
}

const Entry& find(const std::string& name) {
  for (const auto& e : registry()) {
    if (e.info.name == name) return e;
  }
  throw Error(str_cat("unknown task \"", name, "\"; the tasks are: ", names_text()));
}

}  // namespace

std::vector<std::string> task_names() {
  std::vector<std::string> out;
  for (const auto& e : registry()) out.push_back(e.info.name);
  return out;
}

const std::vector<TaskInfo>& task_infos() {
  static const std::vector<TaskInfo> infos = [] {
    std::vector<TaskInfo> out;
    for (const auto& e : registry()) out.push_back(e.info);
    return out;
  }();
  return infos;
}

const TaskInfo& task_info(const std::string& name) {
  for (const auto& info : task_infos()) {
    if (info.name == name) return info;
  }
  throw Error(str_cat("unknown task \"", name, "\"; the tasks are: ", names_text()));
}

Dataset make_task(const std::string& name, const nlohmann::json& options) {
  return find(name).make(options);
}

}  // namespace mechlab::core::tasks
