#include "patching/patch_target.h"

#include "core/util/error.h"
#include "hooks/hook_registry.h"
#include "hooks/hooked_transformer.h"
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

PatchTarget PatchTarget::at(const std::string& hook_name, const hooks::HookedTransformer& model) {
  return at(hook_name, model.hooks());
}

PatchTarget PatchTarget::at(const std::string& hook_name, const hooks::HookRegistry& hooks) {
  const core::ModelConfig& cfg = hooks.config();
  core::HookSite host;
  if (!hooks.attached_host(hook_name, &host)) {
    // Unknown names list the nearest points, the modules' included.
    hooks::require_hook_name(cfg, hook_name, hooks.hook_names());
    return at(hook_name, cfg);
  }
  PatchTarget t;
  t.site = host;
  t.point = hook_name;
  t.point_dims = hooks.hook_dims(hook_name);
  MECHLAB_CHECK(!t.point_dims.empty() && t.point_dims.front() == core::Dim::batch,
                "cannot patch \"", hook_name, "\" ", core::shape_string(cfg, t.point_dims),
                ": its module declares no batch axis first; patch a point shaped [batch, ...]");
  return t;
}

std::vector<core::Dim> PatchTarget::dims() const {
  return attached() ? point_dims : core::site_info(site.kind).dims;
}

bool PatchTarget::attention_map() const {
  if (!attached()) return is_attention_map(site.kind);
  using core::Dim;
  const auto& d = point_dims;
  return d.size() == 4 && d[1] == Dim::head && d[2] == Dim::q_pos && d[3] == Dim::k_pos;
}

bool PatchTarget::has_head_axis() const {
  if (!attached()) return patching::has_head_axis(site.kind);
  return point_dims.size() > 2 &&
         (point_dims[2] == core::Dim::head || point_dims[2] == core::Dim::kv_head);
}

bool PatchTarget::has_pos_axis() const {
  if (!attached()) return !is_attention_map(site.kind);
  return point_dims.size() > 1 && point_dims[1] == core::Dim::pos;
}

std::string PatchTarget::describe() const {
  std::string s = hook_name();
  std::string idx;
  auto add = [&idx](const char* k, int64_t v) {
    if (v >= 0) idx += str_cat(idx.empty() ? "" : ", ", k, "=", v);
  };
  add(attention_map() ? "dest_pos" : "pos", pos);
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
                ": the model has no hook point \"", t.site.name(), "\"");
  const std::string shape = core::shape_string(cfg, t.dims());
  const bool map = t.attention_map();
  MECHLAB_CHECK(t.pos >= -1 && t.pos < seq_len, "patch target ", t.describe(), ": ",
                map ? "destination position " : "position ", t.pos,
                " is beyond the sequence (positions 0..", seq_len - 1,
                "); use a position inside the prompts");
  MECHLAB_CHECK(t.pos < 0 || map || t.has_pos_axis(), "patch target ", t.describe(), ": ", name,
                " ", shape, " has no position axis after the batch; patch it at every position (pos -1)");
  MECHLAB_CHECK(t.src_pos >= -1 && t.src_pos < seq_len, "patch target ", t.describe(),
                ": source position ", t.src_pos, " is beyond the sequence (positions 0..",
                seq_len - 1, "); use a position inside the prompts");
  MECHLAB_CHECK(t.src_pos < 0 || map, "patch target ", t.describe(),
                ": src_pos applies only to attention patterns/scores, not to ", name, " ", shape);
  if (t.head >= 0) {
    MECHLAB_CHECK(map || t.has_head_axis(), "patch target ", t.describe(), ": ", name, " ", shape,
                  " has no head axis; patch a per-head hook (hook_z, hook_q, hook_k, hook_v, "
                  "hook_pattern, hook_result) to select a head");
    const int64_t heads = t.attached()
                              ? core::dim_size(cfg, t.point_dims[map ? 1 : 2], 0, 0)
                              : heads_at(cfg, t.site.kind);
    MECHLAB_CHECK(t.head < heads, "patch target ", t.describe(), ": head ", t.head,
                  " is out of range; ", name, " has ", heads, " heads (0..", heads - 1, ")");
  }
  MECHLAB_CHECK(t.head >= -1, "patch target ", t.describe(), ": head must be >= 0 (or -1 = every)");
}

at::Tensor target_slice(const at::Tensor& act, const PatchTarget& t) {
  using at::indexing::Slice;
  using TI = at::indexing::TensorIndex;
  auto pick = [](int64_t i) { return i >= 0 ? TI(i) : TI(Slice()); };
  if (t.attention_map()) {  // [batch, head, q_pos, k_pos]
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
