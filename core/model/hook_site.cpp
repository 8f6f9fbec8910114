#include "core/model/hook_site.h"

#include <cstdlib>

namespace mechlab::core {
namespace {

// Suffix of each site's name after "blocks.L." (per-layer) or the full name.
const char* suffix(HookKind kind) {
  switch (kind) {
    case HookKind::embed: return "hook_embed";
    case HookKind::pos_embed: return "hook_pos_embed";
    case HookKind::ln_final_scale: return "ln_final.hook_scale";
    case HookKind::ln_final_normalized: return "ln_final.hook_normalized";
    case HookKind::resid_pre: return "hook_resid_pre";
    case HookKind::q_input: return "hook_q_input";
    case HookKind::k_input: return "hook_k_input";
    case HookKind::v_input: return "hook_v_input";
    case HookKind::ln1_scale: return "ln1.hook_scale";
    case HookKind::ln1_normalized: return "ln1.hook_normalized";
    case HookKind::q: return "attn.hook_q";
    case HookKind::k: return "attn.hook_k";
    case HookKind::v: return "attn.hook_v";
    case HookKind::rot_q: return "attn.hook_rot_q";
    case HookKind::rot_k: return "attn.hook_rot_k";
    case HookKind::attn_scores: return "attn.hook_attn_scores";
    case HookKind::pattern: return "attn.hook_pattern";
    case HookKind::z: return "attn.hook_z";
    case HookKind::result: return "attn.hook_result";
    case HookKind::attn_out: return "hook_attn_out";
    case HookKind::resid_mid: return "hook_resid_mid";
    case HookKind::mlp_in: return "hook_mlp_in";
    case HookKind::ln2_scale: return "ln2.hook_scale";
    case HookKind::ln2_normalized: return "ln2.hook_normalized";
    case HookKind::mlp_pre: return "mlp.hook_pre";
    case HookKind::mlp_pre_linear: return "mlp.hook_pre_linear";
    case HookKind::mlp_post: return "mlp.hook_post";
    case HookKind::mlp_out: return "hook_mlp_out";
    case HookKind::resid_post: return "hook_resid_post";
  }
  return "?";
}

}  // namespace

std::string HookSite::name() const {
  if (!per_layer()) return suffix(kind);
  return "blocks." + std::to_string(layer) + "." + suffix(kind);
}

int HookSite::index() const {
  const int k = static_cast<int>(kind);
  if (!per_layer()) return k;
  return kModelKinds + layer * kLayerKinds + (k - kFirstLayerKind);
}

bool is_opt_in(HookKind kind) {
  return kind == HookKind::result || kind == HookKind::q_input || kind == HookKind::k_input ||
         kind == HookKind::v_input;
}

bool site_exists(const ModelConfig& cfg, HookSite s) {
  if (s.per_layer() && (s.layer < 0 || s.layer >= cfg.n_layers)) return false;
  if (!s.per_layer() && s.layer != -1) return false;
  const bool norm = cfg.norm != NormKind::none;
  const bool mlp = cfg.has_mlp();
  switch (s.kind) {
    case HookKind::pos_embed: return cfg.positional == Positional::learned;
    case HookKind::ln_final_scale:
    case HookKind::ln_final_normalized: return cfg.final_norm && norm;
    case HookKind::ln1_scale:
    case HookKind::ln1_normalized: return norm;
    case HookKind::ln2_scale:
    case HookKind::ln2_normalized: return norm && mlp;
    case HookKind::rot_q:
    case HookKind::rot_k: return cfg.positional == Positional::rotary;
    case HookKind::resid_mid: return mlp && !cfg.parallel_attn_mlp;
    case HookKind::mlp_in:
    case HookKind::mlp_pre:
    case HookKind::mlp_post:
    case HookKind::mlp_out: return mlp;
    case HookKind::mlp_pre_linear: return cfg.mlp == MlpKind::gated;
    default: return true;
  }
}

std::vector<HookSite> all_sites(const ModelConfig& cfg) {
  std::vector<HookSite> out;
  for (HookKind k : {HookKind::embed, HookKind::pos_embed}) {
    if (site_exists(cfg, {k, -1})) out.push_back({k, -1});
  }
  for (int layer = 0; layer < cfg.n_layers; ++layer) {
    for (int k = kFirstLayerKind; k < kFirstLayerKind + kLayerKinds; ++k) {
      HookSite s{static_cast<HookKind>(k), layer};
      if (site_exists(cfg, s)) out.push_back(s);
    }
  }
  for (HookKind k : {HookKind::ln_final_scale, HookKind::ln_final_normalized}) {
    if (site_exists(cfg, {k, -1})) out.push_back({k, -1});
  }
  return out;
}

bool parse_site(const std::string& name, int n_layers, HookSite* out) {
  for (int k = 0; k < kModelKinds; ++k) {
    if (name == suffix(static_cast<HookKind>(k))) {
      *out = {static_cast<HookKind>(k), -1};
      return true;
    }
  }
  const std::string prefix = "blocks.";
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return false;
  const std::string digits = name.substr(prefix.size(), dot - prefix.size());
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
  }
  if (digits.size() > 6) return false;
  const int layer = std::atoi(digits.c_str());
  if (layer >= n_layers) return false;
  const std::string rest = name.substr(dot + 1);
  for (int k = kFirstLayerKind; k < kFirstLayerKind + kLayerKinds; ++k) {
    if (rest == suffix(static_cast<HookKind>(k))) {
      *out = {static_cast<HookKind>(k), layer};
      return true;
    }
  }
  return false;
}

}  // namespace mechlab::core

namespace mechlab::core {

std::string site_shape(const ModelConfig& cfg, HookSite s) {
  const bool gqa = cfg.kv_heads() != cfg.n_heads;
  switch (s.kind) {
    case HookKind::ln1_scale:
    case HookKind::ln2_scale:
    case HookKind::ln_final_scale: return "[batch, pos, 1]";
    case HookKind::q:
    case HookKind::rot_q:
    case HookKind::z: return "[batch, pos, head, d_head]";
    case HookKind::k:
    case HookKind::v:
    case HookKind::rot_k: return gqa ? "[batch, pos, kv_head, d_head]" : "[batch, pos, head, d_head]";
    case HookKind::attn_scores:
    case HookKind::pattern: return "[batch, head, q_pos, k_pos]";
    case HookKind::result:
    case HookKind::q_input: return "[batch, pos, head, d_model]";
    case HookKind::k_input:
    case HookKind::v_input: return gqa ? "[batch, pos, kv_head, d_model]" : "[batch, pos, head, d_model]";
    case HookKind::mlp_pre:
    case HookKind::mlp_pre_linear:
    case HookKind::mlp_post: return "[batch, pos, d_mlp]";
    default: return "[batch, pos, d_model]";
  }
}

}  // namespace mechlab::core
