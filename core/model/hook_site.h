// Hook sites: the named places in the forward pass where a hook may look at,
// or replace, an activation. Names and shapes are TransformerLens's
// (HookedTransformer 2.x), so results compare number for number.
//
// Dimension glossary used in shape comments throughout mechlab:
//   batch    prompts in a batch          pos      token positions (q_pos/k_pos in attention)
//   d_model  residual stream width       head     attention head (kv_head: GQA key/value head)
//   d_head   width of one head           d_mlp    MLP hidden width
//   d_vocab  vocabulary size             d_sae    SAE latent width
//
//   hook_embed, hook_pos_embed                         [batch, pos, d_model]
//   blocks.L.hook_resid_pre / _mid / _post              [batch, pos, d_model]
//   blocks.L.ln1.hook_scale                             [batch, pos, 1]
//   blocks.L.ln1.hook_normalized                        [batch, pos, d_model]  (ln2 likewise)
//   blocks.L.attn.hook_q / hook_rot_q / hook_z          [batch, pos, head, d_head]
//   blocks.L.attn.hook_k / hook_v / hook_rot_k          [batch, pos, kv_head, d_head]
//   blocks.L.attn.hook_attn_scores / hook_pattern       [batch, head, q_pos, k_pos]
//   blocks.L.attn.hook_result                           [batch, pos, head, d_model]   (opt-in)
//   blocks.L.hook_q_input                               [batch, pos, head, d_model]   (opt-in)
//   blocks.L.hook_k_input / hook_v_input                [batch, pos, kv_head, d_model](opt-in)
//   blocks.L.hook_attn_out, hook_mlp_in, hook_mlp_out   [batch, pos, d_model]
//   blocks.L.mlp.hook_pre / hook_pre_linear / hook_post [batch, pos, d_mlp]
//   ln_final.hook_scale / ln_final.hook_normalized
//
// The list above is for reading; the properties every part of mechlab uses
// (names, shapes, head axis, existence per architecture, opt-in) live in ONE
// table, site_table() in hook_site.cpp.
//
// "Opt-in" sites cost extra memory or compute; mechlab computes them only in
// the layers where something is hooked (TransformerLens needs global flags).
#pragma once

#include "core/model/model_config.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::core {

enum class HookKind : uint8_t {
  // model-level sites
  embed,
  pos_embed,
  ln_final_scale,
  ln_final_normalized,
  // per-layer sites, in forward order
  resid_pre,
  q_input,
  k_input,
  v_input,
  ln1_scale,
  ln1_normalized,
  q,
  k,
  v,
  rot_q,
  rot_k,
  attn_scores,
  pattern,
  z,
  result,
  attn_out,
  resid_mid,
  mlp_in,
  ln2_scale,
  ln2_normalized,
  mlp_pre,
  mlp_pre_linear,
  mlp_post,
  mlp_out,
  resid_post,
};

constexpr int kFirstLayerKind = static_cast<int>(HookKind::resid_pre);
constexpr int kLayerKinds = static_cast<int>(HookKind::resid_post) - kFirstLayerKind + 1;
constexpr int kModelKinds = kFirstLayerKind;

/// A named axis of an activation, in the glossary's terms. `d_sae` is the
/// latent width of an attached SAE (sae/): modules declare it, no model site has it.
enum class Dim : uint8_t { batch, pos, q_pos, k_pos, head, kv_head, d_head, d_model, d_mlp, d_sae, one };

/// Where a site sits: before the blocks (embeddings), in a block, or after them
/// (the final norm, which feeds the unembedding).
enum class SiteStage : uint8_t { input, block, output };

/// The properties of one site kind. site_table() holds one per HookKind; every
/// consumer (names, parser, shapes, existence, patching axes, stores) asks it.
struct SiteInfo {
  HookKind kind;
  /// TransformerLens name after "blocks.L." (block sites) or the full name.
  const char* suffix;
  SiteStage stage;
  /// Axes in order; Dim::kv_head where GQA models have kv_heads heads there.
  std::vector<Dim> dims;
  /// The head axis (1 in attention maps, 2 in per-head per-token sites), -1 = none.
  int head_axis;
  /// [batch, head, q_pos, k_pos] (hook_attn_scores, hook_pattern).
  bool attention_map;
  /// Computed only when hooked (hook_result, hook_q/k/v_input).
  bool opt_in;
  /// Whether a model with this config has the site (in every layer for block sites).
  bool (*exists)(const ModelConfig& cfg);
};

/// Every site kind, indexed by HookKind.
const std::vector<SiteInfo>& site_table();
const SiteInfo& site_info(HookKind kind);

/// Glossary name of an axis ("kv_head" only when the model has GQA).
std::string dim_name(const ModelConfig& cfg, Dim d);
/// Size of an axis; batch/pos (q_pos, k_pos) are the run's. d_sae belongs to
/// the SAE that declares it, which the model's config cannot know: 0 (unknown).
int64_t dim_size(const ModelConfig& cfg, Dim d, int64_t batch, int64_t pos);
/// "[batch, pos, d_model]" for a list of axes.
std::string shape_string(const ModelConfig& cfg, const std::vector<Dim>& dims);

struct HookSite {
  HookKind kind = HookKind::embed;
  int layer = -1;  ///< -1 for model-level sites

  bool per_layer() const { return static_cast<int>(kind) >= kFirstLayerKind; }
  /// TransformerLens name, e.g. "blocks.3.attn.hook_pattern".
  std::string name() const;
  /// Dense index in [0, site_count(n_layers)); the hook table is indexed by it.
  int index() const;
  bool operator==(const HookSite& o) const { return kind == o.kind && layer == o.layer; }
};

inline int site_count(int n_layers) { return kModelKinds + kLayerKinds * n_layers; }

/// Whether a site exists in this model (e.g. no hook_rot_q without rotary,
/// no hook_resid_mid in attention-only or parallel models).
bool site_exists(const ModelConfig& cfg, HookSite site);

/// Every site of the model, in the order the forward pass reaches them.
std::vector<HookSite> all_sites(const ModelConfig& cfg);

/// Opt-in sites are computed only when hooked (hook_result, hook_q/k/v_input).
inline bool is_opt_in(HookKind kind) { return site_info(kind).opt_in; }

/// Parses a TransformerLens hook name. Returns false if it is not a
/// well-formed name for any model with at least `n_layers` layers.
bool parse_site(const std::string& name, int n_layers, HookSite* out);

}  // namespace mechlab::core

namespace mechlab::core {
/// The shape of a site's activation in the dimension names of the glossary,
/// e.g. "[batch, head, q_pos, k_pos]".
std::string site_shape(const ModelConfig& cfg, HookSite site);
/// The concrete shape of a site's activation in a run over [batch, pos] tokens
/// (outside TransformerLens's split q/k/v mode, where ln1 gains a head axis).
std::vector<int64_t> site_sizes(const ModelConfig& cfg, HookSite site, int64_t batch, int64_t pos);
}  // namespace mechlab::core
