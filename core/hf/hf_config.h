// HfConfig: typed access to a Hugging Face `config.json`, where every
// mistake (missing key, wrong type, unsupported value) is a mechlab::Error
// naming the file and the key.
//
// JSON null counts as absent (transformers writes `"head_dim": null` etc.).
// Integers must be JSON integers; floating keys accept integers too.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace mechlab::core::hf {

class HfConfig {
 public:
  /// Reads `folder/config.json`; refuses a missing file, invalid JSON or a
  /// top level that is not an object.
  static HfConfig load(const std::string& folder);
  HfConfig(nlohmann::json json, std::string path);

  const std::string& path() const { return path_; }
  const nlohmann::json& json() const { return json_; }

  /// Present and not null.
  bool has(const std::string& key) const;

  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_double(const std::string& key) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;

  /// A positive integer (sizes, counts).
  int get_positive(const std::string& key) const;

  /// Throws "config.json '<path>': key '<key>' <what>".
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;

 private:
  const nlohmann::json& require(const std::string& key) const;

  nlohmann::json json_;
  std::string path_;
};

/// "a string \"32\"", "a float 3.5", ...: how a JSON value reads in a message.
std::string describe_json(const nlohmann::json& v);

}  // namespace mechlab::core::hf
