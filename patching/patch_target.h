// PatchTarget and PatchConfig: the plan of an intervention, independent of
// where the replacement values come from.
//
// A PatchTarget names one slice of one hook point's activation: the hook, and
// optionally a position and a head (and, for attention patterns, a source
// position). A PatchConfig is the set of targets patched together in one
// forward; a sweep is a list of configs. The same targets serve activation
// patching (values from the other run), ablations (zero / mean values) and,
// later, path patching (several targets frozen at once).
//
// Axis conventions (TransformerLens's patch setters):
//   per-token hooks  [batch, pos, ...]             pos on dim 1, head on dim 2
//                    ([batch, pos, head, d_head], [batch, pos, head, d_model])
//   attention maps   [batch, head, q_pos, k_pos]   head on dim 1, pos = destination
//                    (hook_pattern, hook_attn_scores)        on dim 2, src_pos on dim 3
// Every index is taken for the whole batch, as TransformerLens does.
//
// Attached modules' points (hooks/attached_module.h: an SAE's
// "blocks.3.hook_resid_post.sae.hook_sae_acts_post", a steering vector's
// "...steer.hook_steer_out") are targets too: PatchTarget::at(name, model)
// records the point's full name and the axes its module declares
// (HookRegistry::hook_dims); `site` is then the module's host, which decides
// where the bulk patcher restarts the forward. Their axes follow the same
// conventions: [batch, pos, ...] has a position on dim 1, a head axis on dim
// 2 only when the module declares one there.
//
// Example:
//   PatchTarget t = PatchTarget::at("blocks.1.attn.hook_z", cfg).with_pos(5).with_head(3);
//   write_patch(z, t, clean_z);   // z[:, 5, 3] = clean_z[:, 5, 3]
//   PatchTarget s = PatchTarget::at("blocks.1.hook_resid_post.sae.hook_sae_acts_post", model);
//   s.with_pos(2);                // acts[:, 2] (acts: [batch, pos, d_sae])
#pragma once

#include "core/model/hook_site.h"
#include "core/model/model_config.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::hooks {
class HookRegistry;
class HookedTransformer;
}  // namespace mechlab::hooks

namespace mechlab::patching {

struct PatchTarget {
  core::HookSite site;   ///< the hook point (an attached point's host)
  int64_t pos = -1;      ///< position (destination position for attention maps); -1 = every
  int64_t head = -1;     ///< head (kv_head for GQA k/v); -1 = every
  int64_t src_pos = -1;  ///< source position, attention maps only; -1 = every
  /// Which entry of the values map supplies this target's value; empty = the
  /// hook name. Lets one forward patch two slices of one hook from different
  /// sources (path patching: senders from the corrupted run, the rest frozen clean).
  std::string value_key;
  /// An attached module's point, by full name ("<host>.<module>.<suffix>");
  /// empty = the model's own site `site`.
  std::string point;
  /// The attached point's axes as its module declares them; empty for model sites.
  std::vector<core::Dim> point_dims;

  /// The target at a hook point named as TransformerLens does; an unknown
  /// name is a mechlab::Error listing the nearest valid names.
  static PatchTarget at(const std::string& hook_name, const core::ModelConfig& cfg);
  /// The same, where the name may also be a point of a module attached to
  /// `model` (or to the registry `hooks`). Such a point must have a batch
  /// axis first (the bulk patcher stacks copies along it).
  static PatchTarget at(const std::string& hook_name, const hooks::HookedTransformer& model);
  static PatchTarget at(const std::string& hook_name, const hooks::HookRegistry& hooks);

  // clang-format off
  PatchTarget& with_pos(int64_t v) { pos = v; return *this; }
  PatchTarget& with_head(int64_t v) { head = v; return *this; }
  PatchTarget& with_src_pos(int64_t v) { src_pos = v; return *this; }
  PatchTarget& with_value_key(std::string v) { value_key = std::move(v); return *this; }
  // clang-format on

  std::string hook_name() const { return point.empty() ? site.name() : point; }
  bool attached() const { return !point.empty(); }
  /// The activation's axes: the site table's, or the attached point's.
  std::vector<core::Dim> dims() const;
  /// Whether the activation is an attention map [batch, head, q_pos, k_pos].
  bool attention_map() const;
  /// Whether the activation has a head axis at dim 2 ([batch, pos, head, ...]).
  bool has_head_axis() const;
  /// Whether the activation has a position axis at dim 1 ([batch, pos, ...]).
  bool has_pos_axis() const;
  /// The key of the values map this target reads (value_key or the hook name).
  std::string value_name() const { return value_key.empty() ? hook_name() : value_key; }
  /// "blocks.1.attn.hook_z[pos=5, head=3]".
  std::string describe() const;
};

/// Targets patched together in one forward.
struct PatchConfig {
  std::vector<PatchTarget> targets;
  /// The first layer any target is in (0 for model-level hooks).
  int first_layer() const;
};

/// Whether a hook's activation is an attention map [batch, head, q_pos, k_pos].
bool is_attention_map(core::HookKind kind);
/// Whether a hook's activation has a head axis at dim 2 ([batch, pos, head, ...]).
bool has_head_axis(core::HookKind kind);
/// Heads on the hook's head axis (kv_heads for GQA k/v and their inputs).
int64_t heads_at(const core::ModelConfig& cfg, core::HookKind kind);

/// Checks a target against a model and a sequence length: the hook exists,
/// head/pos/src_pos are in range and only used where the hook has that axis.
/// Throws mechlab::Error naming the target and what to do.
void validate_target(const PatchTarget& target, const core::ModelConfig& cfg, int64_t seq_len);

/// The slice of `act` [batch, ...] a target selects (a view).
at::Tensor target_slice(const at::Tensor& act, const PatchTarget& target);
/// Whether a tensor of shape `from` broadcasts to `to` (numpy rules, no growth of `to`).
bool broadcasts_to(at::IntArrayRef from, at::IntArrayRef to);

/// act[slice] = value[slice]; `value` has act's shape, or broadcasts to it
/// (e.g. a [1, pos, ...] mean or a scalar zero). Writes in place.
void write_patch(at::Tensor& act, const PatchTarget& target, const at::Tensor& value);

}  // namespace mechlab::patching
