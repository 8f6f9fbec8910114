#include "hooks/act_name.h"

#include "core/util/error.h"

#include <cctype>
#include <map>

namespace mechlab::hooks {

std::string act_name(const std::string& name_in, int layer, const std::string& layer_type_in) {
  // A full name passes through, as TransformerLens's get_act_name does.
  if (layer < 0 && layer_type_in.empty() &&
      (name_in.find('.') != std::string::npos || name_in.rfind("hook_", 0) == 0)) {
    return name_in;
  }
  std::string name = name_in, layer_type = layer_type_in;
  // "k6", "pattern3", "resid_pre5", "scale4ln2": name, layer, optional layer type.
  if (layer < 0) {
    size_t i = 0;
    while (i < name.size() && (std::isalpha(static_cast<unsigned char>(name[i])) || name[i] == '_')) ++i;
    size_t j = i;
    while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
    if (j > i && i > 0) {
      layer = std::stoi(name.substr(i, j - i));
      if (layer_type.empty()) layer_type = name.substr(j);
      name = name.substr(0, i);
    }
  }
  static const std::map<std::string, std::string> name_alias = {
      {"attn", "pattern"}, {"attn_logits", "attn_scores"}, {"key", "k"}, {"query", "q"},
      {"value", "v"},      {"mlp_pre", "pre"},             {"mlp_post", "post"}};
  static const std::map<std::string, std::string> type_alias = {
      {"a", "attn"}, {"m", "mlp"}, {"b", ""}, {"block", ""}, {"blocks", ""}, {"attention", "attn"}};
  if (auto it = name_alias.find(name); it != name_alias.end()) name = it->second;
  if (auto it = type_alias.find(layer_type); it != type_alias.end()) layer_type = it->second;

  if (layer < 0) {
    if (name == "embed" || name == "pos_embed") return "hook_" + name;
    if (name == "scale" || name == "normalized") return "ln_final.hook_" + name;
    throw Error(str_cat("act_name(\"", name_in, "\"): a layer is needed for \"", name,
                        "\" (e.g. act_name(\"", name, "\", 0))"));
  }
  for (const char* n : {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}) {
    if (name == n) layer_type = "attn";
  }
  for (const char* n : {"pre", "post", "pre_linear"}) {
    if (name == n) layer_type = "mlp";
  }
  if ((name == "scale" || name == "normalized") && layer_type.empty()) {
    throw Error(str_cat("act_name(\"", name_in, "\"): say which norm, \"ln1\" or \"ln2\""));
  }
  std::string full = "blocks." + std::to_string(layer) + ".";
  if (!layer_type.empty()) full += layer_type + ".";
  return full + "hook_" + name;
}

}  // namespace mechlab::hooks
