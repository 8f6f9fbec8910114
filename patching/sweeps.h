// Node-patching sweeps with the semantics of TransformerLens 2.x
// `transformer_lens.patching`: the same activations, the same index order,
// the same output shapes, the same numbers (tests/patching checks each kind
// against TL on the runtime fixture models).
//
//   name                          TL function (get_act_patch_...)  hook     axes -> shape
//   resid_pre / resid_mid         resid_pre / resid_mid            resid_*  [layer, pos]
//   resid_post                    (generic_activation_patch)       resid_post [layer, pos]
//   attn_out / mlp_out            attn_out / mlp_out               *_out    [layer, pos]
//   attn_head_{out,q,k,v}_by_pos  attn_head_*_by_pos               z/q/k/v  [layer, pos, head]
//   attn_head_pattern_by_pos      attn_head_pattern_by_pos         pattern  [layer, head_index, dest_pos]
//   attn_head_pattern_dest_src_pos  ..._dest_src_pos               pattern  [layer, head_index, dest_pos, src_pos]
//   attn_head_{out,q,k,v}_all_pos attn_head_*_all_pos              z/q/k/v  [layer, head]
//   attn_head_pattern_all_pos     attn_head_pattern_all_pos        pattern  [layer, head_index]
//   block_every                   block_every            [3, layer, pos]  resid_pre, attn_out, mlp_out
//   attn_head_all_pos_every       attn_head_all_pos_every   [5, layer, head]  out, q, k, v, pattern
//   attn_head_by_pos_every        attn_head_by_pos_every [5, layer, pos, head]  (pattern transposed)
//   point:HOOK                    (none)                  HOOK      [pos]
//   point_all_pos:HOOK            (none)                  HOOK      [point] (one entry)
// "point" sweeps patch one named hook point, a model site or an attached
// module's point ("point:blocks.1.hook_resid_post.sae.hook_sae_acts_post"),
// at each position alone or at every position at once.
// "out" is hook_z (TL patches z, which W_O maps to the head's output). Every
// index patches the whole batch. GQA models have kv_heads on the k/v head
// axis; the "every" stacks pad k/v with zeros to n_heads, as TL does.
//
// Directions: denoising (TL's default) runs the corrupted prompts and patches
// in clean activations; noising runs the clean prompts and patches in
// corrupted activations. The metric is evaluated on the patched run.
//
// Example:
//   PatchingData data = PatchingData::from_dataset(core::load_dataset("ioi.h5"));
//   SweepResult r = run_sweep(model, data, "attn_head_out_by_pos", logit_diff(data.answers()));
//   r.values;   // [layer, pos, head]
#pragma once

#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "patching/bulk_patcher.h"
#include "patching/metrics.h"
#include "patching/patch_target.h"
#include "patching/patching_data.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace mechlab::patching {

enum class Direction {
  denoising,  ///< run corrupted, patch in clean (TransformerLens's patching)
  noising,    ///< run clean, patch in corrupted
};
const char* direction_name(Direction d);
Direction parse_direction(const std::string& text);

struct SweepSpec {
  std::string name;               ///< "attn_head_out_by_pos"
  std::string tl_function;        ///< "get_act_patch_attn_head_out_by_pos"
  std::string act;                ///< act_name short name: "z"; empty for "every" stacks
  std::vector<std::string> axes;  ///< TL's index_axis_names, e.g. {"layer", "pos", "head"}
  std::vector<std::string> parts; ///< "every" stacks: the sweeps stacked along patch_type
  std::vector<std::string> part_labels;  ///< their labels ("output", "query", ...)
  std::string description;
};

/// Every sweep, in the order of the table above.
const std::vector<SweepSpec>& sweep_specs();
/// The sweep of that name; an unknown name is an error listing them all.
const SweepSpec& find_sweep(const std::string& name);

/// Whether `name` is a point sweep ("point:HOOK" or "point_all_pos:HOOK");
/// if so, its hook and whether it patches each position alone. A point sweep
/// with no hook is an error.
bool parse_point_sweep(const std::string& name, std::string* hook = nullptr, bool* by_pos = nullptr);
/// The configurations of a point sweep on `model` ([pos] or [1]); an unknown
/// hook is an error naming it, as is a by-position sweep of a point that has
/// no position axis.
std::vector<PatchConfig> point_sweep_configs(const std::string& name,
                                             const hooks::HookedTransformer& model, int64_t seq_len,
                                             std::vector<int64_t>* shape);

/// The configurations of a single-hook sweep in TL's order (the last axis
/// varies fastest) and the sweep's shape. Throws if the model lacks the hook.
std::vector<PatchConfig> sweep_configs(const SweepSpec& spec, const core::ModelConfig& cfg,
                                       int64_t seq_len, std::vector<int64_t>* shape);

/// The values of an "every" stack from its parts' values, in spec.parts order:
/// [parts, ...]. As TransformerLens: the pattern part of attn_head_by_pos_every
/// is transposed to [layer, pos, head], GQA k/v parts are zero-padded to n_heads.
at::Tensor stack_every(const SweepSpec& spec, const std::vector<at::Tensor>& part_values);

/// One label list per axis of a sweep's values: part labels for patch_type,
/// `position_labels` (when there is one per position) for position axes,
/// indices otherwise.
std::vector<std::vector<std::string>> sweep_labels(const SweepSpec& spec, const at::Tensor& values,
                                                   const std::vector<std::string>& position_labels);

struct SweepResult {
  std::string sweep;                             ///< SweepSpec::name
  at::Tensor values;                             ///< float32, one axis per name in `axes`
  std::vector<std::string> axes;                 ///< "patch_type", "layer", "pos", "head", ...
  std::vector<std::vector<std::string>> labels;  ///< one label per index of each axis
  nlohmann::json config;                         ///< what produced it (stored as JSON)
};

struct SweepOptions {
  MECHLAB_OPTION(SweepOptions, Direction, direction, Direction::denoising)
  MECHLAB_OPTION(SweepOptions, BulkOptions, bulk, {})
  /// One label per position for pictures and files ("3: Mary"); default: the index.
  MECHLAB_OPTION(SweepOptions, std::vector<std::string>, position_labels, {})
  /// Extra fields copied into each result's config (model path, dataset, ...).
  MECHLAB_OPTION(SweepOptions, nlohmann::json, extra_config, nlohmann::json::object())
};

/// Runs several sweeps sharing one source cache and one BulkPatcher.
std::vector<SweepResult> run_sweeps(hooks::HookedTransformer& model, const PatchingData& data,
                                    const std::vector<std::string>& sweeps, const Metric& metric,
                                    const SweepOptions& options = {});
SweepResult run_sweep(hooks::HookedTransformer& model, const PatchingData& data,
                      const std::string& sweep, const Metric& metric,
                      const SweepOptions& options = {});

}  // namespace mechlab::patching
