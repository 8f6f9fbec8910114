#include "core/data/tasks/task_options.h"

#include "core/util/error.h"

#include <cmath>
#include <limits>

namespace mechlab::core::tasks {
namespace detail {
namespace {

[[noreturn]] void wrong_type(const std::string& task, const std::string& key,
                             const nlohmann::json& v, const char* expected) {
  throw Error(str_cat(task, ": option \"", key, "\" must be ", expected, ", got ", v.dump()));
}

}  // namespace

void read_option(const std::string& task, const std::string& key, const nlohmann::json& v,
                 int64_t& out) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      wrong_type(task, key, v, "an integer that fits in int64");
    }
    out = v.get<int64_t>();
    return;
  }
  // 1e3 is a whole number; accept it as JSON writers may.
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.0e15) {
      out = static_cast<int64_t>(d);
      return;
    }
  }
  wrong_type(task, key, v, "an integer");
}

void read_option(const std::string& task, const std::string& key, const nlohmann::json& v,
                 double& out) {
  if (!v.is_number()) wrong_type(task, key, v, "a number");
  out = v.get<double>();
}

void read_option(const std::string& task, const std::string& key, const nlohmann::json& v,
                 bool& out) {
  if (!v.is_boolean()) wrong_type(task, key, v, "true or false");
  out = v.get<bool>();
}

void read_option(const std::string& task, const std::string& key, const nlohmann::json& v,
                 std::string& out) {
  if (!v.is_string()) wrong_type(task, key, v, "a string");
  out = v.get<std::string>();
}

void read_option(const std::string&, const std::string&, const nlohmann::json& v,
                 nlohmann::json& out) {
  out = v;
}

void check_option_keys(const std::string& task, const nlohmann::json& j,
                       const std::vector<std::string>& known) {
  MECHLAB_CHECK(j.is_object() || j.is_null(), task,
                ": options must be a JSON object of option: value, got ", j.type_name());
  if (j.is_null()) return;
  std::string unknown;
  for (const auto& item : j.items()) {
    bool found = false;
    for (const auto& k : known) found = found || k == item.key();
    if (!found) unknown += (unknown.empty() ? "\"" : ", \"") + item.key() + "\"";
  }
  if (unknown.empty()) return;
  std::string valid;
  for (const auto& k : known) valid += (valid.empty() ? "" : ", ") + k;
  throw Error(
      str_cat(task, ": unknown option ", unknown, "; the options of ", task, " are: ", valid));
}

}  // namespace detail

void require_option(bool cond, const std::string& task, const std::string& key,
                    const std::string& problem) {
  MECHLAB_CHECK(cond, task, ": option \"", key, "\" ", problem);
}

}  // namespace mechlab::core::tasks
