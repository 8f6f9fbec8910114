#include "core/hf/architecture.h"

#include "core/util/error.h"

namespace mechlab::core::hf {

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> all = {gpt2_architecture(), gpt_neox_architecture(),
                                                llama_architecture(), mistral_architecture(),
                                                qwen2_architecture()};
  return all;
}

std::string supported_architectures() {
  std::string out;
  for (const Architecture& a : architectures()) out += (out.empty() ? "" : ", ") + a.name;
  return out;
}

const Architecture& find_architecture(const HfConfig& config) {
  std::string wanted;
  if (config.has("architectures")) {
    const nlohmann::json& list = config.json().at("architectures");
    if (!list.is_array() || list.empty() || !list[0].is_string()) {
      config.fail("architectures", "must be a non-empty list of names, got " + describe_json(list));
    }
    if (list.size() > 1) {
      config.fail("architectures", "names " + std::to_string(list.size()) +
                                       " architectures; mechlab loads folders with one");
    }
    wanted = list[0].get<std::string>();
    for (const Architecture& a : architectures()) {
      if (a.name == wanted) return a;
    }
  } else {
    // Folders saved from a base model class may lack "architectures".
    wanted = config.get_string("model_type");
    for (const Architecture& a : architectures()) {
      if (a.model_type == wanted) return a;
    }
  }
  throw Error(str_cat("config.json '", config.path(), "': architecture '", wanted,
                      "' is not supported; mechlab loads ", supported_architectures()));
}

}  // namespace mechlab::core::hf
