#include "core/hf/hf_config.h"

#include "core/util/error.h"

#include <fstream>
#include <limits>
#include <sstream>

namespace mechlab::core::hf {

std::string describe_json(const nlohmann::json& v) {
  std::string text = v.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  switch (v.type()) {
    case nlohmann::json::value_t::string: return "a string " + text;
    case nlohmann::json::value_t::boolean: return "a boolean " + text;
    case nlohmann::json::value_t::number_float: return "a float " + text;
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return "an integer " + text;
    case nlohmann::json::value_t::array: return "an array " + text;
    case nlohmann::json::value_t::object: return "an object " + text;
    case nlohmann::json::value_t::null: return "null";
    default: return text;
  }
}

HfConfig::HfConfig(nlohmann::json json, std::string path)
    : json_(std::move(json)), path_(std::move(path)) {}

HfConfig HfConfig::load(const std::string& folder) {
  const std::string path = folder + "/config.json";
  std::ifstream in(path, std::ios::binary);
  MECHLAB_CHECK(in.good(), "'", folder, "' has no readable config.json (a Hugging Face model "
                "folder holds config.json and model*.safetensors)");
  std::ostringstream text;
  text << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat("config.json '", path, "' is not valid JSON: ", e.what()));
  }
  MECHLAB_CHECK(j.is_object(), "config.json '", path, "' is not a JSON object");
  return HfConfig(std::move(j), path);
}

void HfConfig::fail(const std::string& key, const std::string& what) const {
  throw Error(str_cat("config.json '", path_, "': key '", key, "' ", what));
}

bool HfConfig::has(const std::string& key) const {
  auto it = json_.find(key);
  return it != json_.end() && !it->is_null();
}

const nlohmann::json& HfConfig::require(const std::string& key) const {
  if (!has(key)) fail(key, "is missing (this architecture needs it)");
  return json_.at(key);
}

int64_t HfConfig::get_int(const std::string& key) const {
  const nlohmann::json& v = require(key);
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(key, "is too large: " + v.dump());
    }
    return static_cast<int64_t>(v.get<uint64_t>());
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  fail(key, "must be an integer, got " + describe_json(v));
}

int64_t HfConfig::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

double HfConfig::get_double(const std::string& key) const {
  const nlohmann::json& v = require(key);
  if (!v.is_number()) fail(key, "must be a number, got " + describe_json(v));
  return v.get<double>();
}

double HfConfig::get_double(const std::string& key, double fallback) const {
  return has(key) ? get_double(key) : fallback;
}

bool HfConfig::get_bool(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  const nlohmann::json& v = json_.at(key);
  if (!v.is_boolean()) fail(key, "must be true or false, got " + describe_json(v));
  return v.get<bool>();
}

std::string HfConfig::get_string(const std::string& key) const {
  const nlohmann::json& v = require(key);
  if (!v.is_string()) fail(key, "must be a string, got " + describe_json(v));
  return v.get<std::string>();
}

std::string HfConfig::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

int HfConfig::get_positive(const std::string& key) const {
  const int64_t v = get_int(key);
  if (v <= 0 || v > std::numeric_limits<int>::max()) {
    fail(key, "must be a positive integer below 2^31, got " + std::to_string(v));
  }
  return static_cast<int>(v);
}

}  // namespace mechlab::core::hf
