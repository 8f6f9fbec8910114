// The task registry: every generator by name, for the CLI and for code that
// reads a task name from a config.
//
// Example:
//   Dataset ds = make_task("ioi", {{"n", 200}, {"order", "ABBA"}, {"seed", 3}});
//   save_dataset("ioi.h5", ds);
#pragma once

#include "core/data/dataset.h"
#include "core/data/tasks/task_options.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace mechlab::core::tasks {

/// A generator's name, one-line summary and options (with defaults and help).
struct TaskInfo {
  std::string name;
  std::string summary;
  std::vector<OptionInfo> options;
};

/// The task names, in the order `mechlab dataset make --help` lists them.
std::vector<std::string> task_names();
/// Every task with its options.
const std::vector<TaskInfo>& task_infos();
/// The task called `name`; refuses unknown names, listing the valid ones.
const TaskInfo& task_info(const std::string& name);

/// Generates task `name` from a JSON object of options (missing ones keep
/// their defaults). Refuses unknown task names (listing the valid ones),
/// unknown option keys and values of the wrong type (naming them).
///
/// Example: make_task("modular_addition", {{"p", 7}}).size() == 49
Dataset make_task(const std::string& name,
                  const nlohmann::json& options = nlohmann::json::object());

}  // namespace mechlab::core::tasks
