#include "core/model/hook_site.h"

#include "core/util/error.h"

#include <cstdlib>

namespace mechlab::core {
namespace {

// Existence rules, one per architectural feature a site depends on.
bool always(const ModelConfig&) { return true; }
bool learned_pos(const ModelConfig& c) { return c.positional == Positional::learned; }
bool rotary(const ModelConfig& c) { return c.positional == Positional::rotary; }
bool norm(const ModelConfig& c) { return c.norm != NormKind::none; }
bool final_norm(const ModelConfig& c) { return c.final_norm && norm(c); }
bool mlp(const ModelConfig& c) { return c.has_mlp(); }
bool mlp_norm(const ModelConfig& c) { return norm(c) && mlp(c); }
// Attention-only and parallel blocks never form resid_pre + attn_out on its own.
bool resid_mid(const ModelConfig& c) { return mlp(c) && !c.parallel_attn_mlp; }
bool gated_mlp(const ModelConfig& c) { return c.mlp == MlpKind::gated; }

using D = Dim;
constexpr SiteStage kIn = SiteStage::input, kBlock = SiteStage::block, kOut = SiteStage::output;
const std::vector<Dim> kResid{D::batch, D::pos, D::d_model};
const std::vector<Dim> kScale{D::batch, D::pos, D::one};
const std::vector<Dim> kMlp{D::batch, D::pos, D::d_mlp};
const std::vector<Dim> kMap{D::batch, D::head, D::q_pos, D::k_pos};
const std::vector<Dim> kHeads{D::batch, D::pos, D::head, D::d_head};
const std::vector<Dim> kKvHeads{D::batch, D::pos, D::kv_head, D::d_head};
const std::vector<Dim> kHeadsModel{D::batch, D::pos, D::head, D::d_model};
const std::vector<Dim> kKvHeadsModel{D::batch, D::pos, D::kv_head, D::d_model};

std::vector<SiteInfo> build_table() {
  using K = HookKind;
  //         kind                    name suffix                   stage   shape          head  map    opt-in exists
  std::vector<SiteInfo> t{
      {K::embed,               "hook_embed",               kIn,    kResid,        -1, false, false, always},
      {K::pos_embed,           "hook_pos_embed",           kIn,    kResid,        -1, false, false, learned_pos},
      {K::ln_final_scale,      "ln_final.hook_scale",      kOut,   kScale,        -1, false, false, final_norm},
      {K::ln_final_normalized, "ln_final.hook_normalized", kOut,   kResid,        -1, false, false, final_norm},
      {K::resid_pre,           "hook_resid_pre",           kBlock, kResid,        -1, false, false, always},
      {K::q_input,             "hook_q_input",             kBlock, kHeadsModel,    2, false, true,  always},
      {K::k_input,             "hook_k_input",             kBlock, kKvHeadsModel,  2, false, true,  always},
      {K::v_input,             "hook_v_input",             kBlock, kKvHeadsModel,  2, false, true,  always},
      {K::ln1_scale,           "ln1.hook_scale",           kBlock, kScale,        -1, false, false, norm},
      {K::ln1_normalized,      "ln1.hook_normalized",      kBlock, kResid,        -1, false, false, norm},
      {K::q,                   "attn.hook_q",              kBlock, kHeads,         2, false, false, always},
      {K::k,                   "attn.hook_k",              kBlock, kKvHeads,       2, false, false, always},
      {K::v,                   "attn.hook_v",              kBlock, kKvHeads,       2, false, false, always},
      {K::rot_q,               "attn.hook_rot_q",          kBlock, kHeads,         2, false, false, rotary},
      {K::rot_k,               "attn.hook_rot_k",          kBlock, kKvHeads,       2, false, false, rotary},
      {K::attn_scores,         "attn.hook_attn_scores",    kBlock, kMap,           1, true,  false, always},
      {K::pattern,             "attn.hook_pattern",        kBlock, kMap,           1, true,  false, always},
      {K::z,                   "attn.hook_z",              kBlock, kHeads,         2, false, false, always},
      {K::result,              "attn.hook_result",         kBlock, kHeadsModel,    2, false, true,  always},
      {K::attn_out,            "hook_attn_out",            kBlock, kResid,        -1, false, false, always},
      {K::resid_mid,           "hook_resid_mid",           kBlock, kResid,        -1, false, false, resid_mid},
      {K::mlp_in,              "hook_mlp_in",              kBlock, kResid,        -1, false, false, mlp},
      {K::ln2_scale,           "ln2.hook_scale",           kBlock, kScale,        -1, false, false, mlp_norm},
      {K::ln2_normalized,      "ln2.hook_normalized",      kBlock, kResid,        -1, false, false, mlp_norm},
      {K::mlp_pre,             "mlp.hook_pre",             kBlock, kMlp,          -1, false, false, mlp},
      {K::mlp_pre_linear,      "mlp.hook_pre_linear",      kBlock, kMlp,          -1, false, false, gated_mlp},
      {K::mlp_post,            "mlp.hook_post",            kBlock, kMlp,          -1, false, false, mlp},
      {K::mlp_out,             "hook_mlp_out",             kBlock, kResid,        -1, false, false, mlp},
      {K::resid_post,          "hook_resid_post",          kBlock, kResid,        -1, false, false, always},
  };
  // The table is indexed by HookKind and HookSite::per_layer() reads the
  // enum's order: both must agree with it.
  MECHLAB_ASSERT(t.size() == static_cast<size_t>(kModelKinds + kLayerKinds));
  for (size_t i = 0; i < t.size(); ++i) {
    MECHLAB_ASSERT(static_cast<size_t>(t[i].kind) == i);
    MECHLAB_ASSERT((t[i].stage == kBlock) == (static_cast<int>(i) >= kFirstLayerKind));
  }
  return t;
}

}  // namespace

const std::vector<SiteInfo>& site_table() {
  static const std::vector<SiteInfo> table = build_table();
  return table;
}

const SiteInfo& site_info(HookKind kind) { return site_table()[static_cast<size_t>(kind)]; }

std::string dim_name(const ModelConfig& cfg, Dim d) {
  switch (d) {
    case Dim::batch: return "batch";
    case Dim::pos: return "pos";
    case Dim::q_pos: return "q_pos";
    case Dim::k_pos: return "k_pos";
    case Dim::head: return "head";
    // Without GQA the k/v heads are the heads; the glossary names them so.
    case Dim::kv_head: return cfg.kv_heads() != cfg.n_heads ? "kv_head" : "head";
    case Dim::d_head: return "d_head";
    case Dim::d_model: return "d_model";
    case Dim::d_mlp: return "d_mlp";
    case Dim::d_sae: return "d_sae";
    case Dim::one: return "1";
  }
  return "?";
}

int64_t dim_size(const ModelConfig& cfg, Dim d, int64_t batch, int64_t pos) {
  switch (d) {
    case Dim::batch: return batch;
    case Dim::pos:
    case Dim::q_pos:
    case Dim::k_pos: return pos;
    case Dim::head: return cfg.n_heads;
    case Dim::kv_head: return cfg.kv_heads();
    case Dim::d_head: return cfg.d_head;
    case Dim::d_model: return cfg.d_model;
    case Dim::d_mlp: return cfg.d_mlp;
    case Dim::d_sae: return 0;  // the SAE's, not the model's
    case Dim::one: return 1;
  }
  return -1;
}

std::string shape_string(const ModelConfig& cfg, const std::vector<Dim>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + dim_name(cfg, dims[i]);
  return s + "]";
}

std::string HookSite::name() const {
  const char* suffix = site_info(kind).suffix;
  if (!per_layer()) return suffix;
  return "blocks." + std::to_string(layer) + "." + suffix;
}

int HookSite::index() const {
  const int k = static_cast<int>(kind);
  if (!per_layer()) return k;
  return kModelKinds + layer * kLayerKinds + (k - kFirstLayerKind);
}

bool site_exists(const ModelConfig& cfg, HookSite s) {
  if (s.per_layer() && (s.layer < 0 || s.layer >= cfg.n_layers)) return false;
  if (!s.per_layer() && s.layer != -1) return false;
  return site_info(s.kind).exists(cfg);
}

std::vector<HookSite> all_sites(const ModelConfig& cfg) {
  std::vector<HookSite> out;
  auto add_stage = [&](SiteStage stage, int layer) {
    for (const SiteInfo& info : site_table()) {
      if (info.stage == stage && site_exists(cfg, {info.kind, layer})) out.push_back({info.kind, layer});
    }
  };
  add_stage(SiteStage::input, -1);
  for (int layer = 0; layer < cfg.n_layers; ++layer) add_stage(SiteStage::block, layer);
  add_stage(SiteStage::output, -1);
  return out;
}

bool parse_site(const std::string& name, int n_layers, HookSite* out) {
  for (const SiteInfo& info : site_table()) {
    if (info.stage != SiteStage::block && name == info.suffix) {
      *out = {info.kind, -1};
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
  for (const SiteInfo& info : site_table()) {
    if (info.stage == SiteStage::block && rest == info.suffix) {
      *out = {info.kind, layer};
      return true;
    }
  }
  return false;
}

std::string site_shape(const ModelConfig& cfg, HookSite s) {
  return shape_string(cfg, site_info(s.kind).dims);
}

std::vector<int64_t> site_sizes(const ModelConfig& cfg, HookSite s, int64_t batch, int64_t pos) {
  std::vector<int64_t> out;
  for (Dim d : site_info(s.kind).dims) out.push_back(dim_size(cfg, d, batch, pos));
  return out;
}

}  // namespace mechlab::core
