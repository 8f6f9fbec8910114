#include "patching/patch_target.h"

#include "core/util/error.h"
#include "hooks/names_filter.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace mechlab::patching {

using core::HookKind;

PatchTarget PatchTarget::at(const std::string& hook_name, const core::ModelConfig& cfg) {
  hooks::require_hook_name(cfg, hook_name);
  PatchTarget t;
  MECHLAB_ASSERT(core::parse_site(hook_name, cfg.n_layers, &t.site));
  return t;
}

std::string PatchTarget::describe() const {
  std::string s = hook_name();
  std::string idx;
  auto add = [&idx](const char* k, int64_t v) {
    if (v >= 0) idx += str_cat(idx.empty() ? "" : ", ", k, "=", v);
  };
  add(is_attention_map(site.kind) ? "dest_pos" : "pos", pos);
  add("head", head);
  add("src_pos", src_pos);
  return idx.empty() ? s : s + "[" + idx + "]";
}

int PatchConfig::first_layer() const {
  int first = 1 << 30;
  for (const auto& t : targets) first = std::min(first, t.site.per_layer() ? t.site.layer : 0);
  return targets.empty() ? 0 : first;
}

// Axis properties come from the site table (core/model/hook_site.h).
bool is_attention_map(HookKind kind) { return core::site_info(kind).attention_map; }

bool has_head_axis(HookKind kind) {
  const core::SiteInfo& info = core::site_info(kind);
  return info.head_axis == 2;
}

int64_t heads_at(const core::ModelConfig& cfg, HookKind kind) {
  const core::SiteInfo& info = core::site_info(kind);
  if (info.head_axis < 0) return cfg.n_heads;
  return core::dim_size(cfg, info.dims[static_cast<size_t>(info.head_axis)], 0, 0);
}

void validate_target(const PatchTarget& t, const core::ModelConfig& cfg, int64_t seq_len) {
  const std::string name = t.hook_name();
  MECHLAB_CHECK(core::site_exists(cfg, t.site), "patch target ", t.describe(),
                ": the model has no hook point \"", name, "\"");
  const bool map = is_attention_map(t.site.kind);
  MECHLAB_CHECK(t.pos >= -1 && t.pos < seq_len, "patch target ", t.describe(), ": ",
                map ? "destination position " : "position ", t.pos,
                " is beyond the sequence (positions 0..", seq_len - 1,
                "); use a position inside the prompts");
  MECHLAB_CHECK(t.src_pos >= -1 && t.src_pos < seq_len, "patch target ", t.describe(),
                ": source position ", t.src_pos, " is beyond the sequence (positions 0..",
                seq_len - 1, "); use a position inside the prompts");
  MECHLAB_CHECK(t.src_pos < 0 || map, "patch target ", t.describe(),
                ": src_pos applies only to attention patterns/scores, not to ", name,
                " ", core::site_shape(cfg, t.site));
  if (t.head >= 0) {
    MECHLAB_CHECK(map || has_head_axis(t.site.kind), "patch target ", t.describe(), ": ", name,
                  " ", core::site_shape(cfg, t.site),
                  " has no head axis; patch a per-head hook (hook_z, hook_q, hook_k, hook_v, "
                  "hook_pattern, hook_result) to select a head");
    const int64_t heads = heads_at(cfg, t.site.kind);
    MECHLAB_CHECK(t.head < heads, "patch target ", t.describe(), ": head ", t.head,
                  " is out of range; ", name, " has ", heads, " heads (0..", heads - 1, ")");
  }
  MECHLAB_CHECK(t.head >= -1, "patch target ", t.describe(), ": head must be >= 0 (or -1 = every)");
}

at::Tensor target_slice(const at::Tensor& act, const PatchTarget& t) {
  using at::indexing::Slice;
  using TI = at::indexing::TensorIndex;
  auto pick = [](int64_t i) { return i >= 0 ? TI(i) : TI(Slice()); };
  if (is_attention_map(t.site.kind)) {  // [batch, head, q_pos, k_pos]
    return act.index({Slice(), pick(t.head), pick(t.pos), pick(t.src_pos)});
  }
  if (t.head >= 0) return act.index({Slice(), pick(t.pos), t.head});  // [batch, pos, head, ...]
  return act.index({Slice(), pick(t.pos)});                            // [batch, pos, ...]
}

bool broadcasts_to(at::IntArrayRef from, at::IntArrayRef to) {
  if (from.size() > to.size()) return false;
  const size_t off = to.size() - from.size();
  for (size_t i = 0; i < from.size(); ++i) {
    if (from[i] != 1 && from[i] != to[off + i]) return false;
  }
  return true;
}

void write_patch(at::Tensor& act, const PatchTarget& t, const at::Tensor& value) {
  MECHLAB_CHECK(broadcasts_to(value.sizes(), act.sizes()), "patch ", t.describe(),
                ": the value's shape ", value.sizes(), " does not broadcast to the activation ",
                act.sizes(), "; pass that hook's activation on the source run [batch, ...]");
  at::Tensor src = value.sizes() == act.sizes() ? value : value.expand_as(act);
  target_slice(act, t).copy_(target_slice(src, t));
}

}  // namespace mechlab::patching
