// Ablations: knock a component out by overwriting its activation with a
// reference value, at any hook point, head or position (a PatchTarget).
//
//   zero             0 everywhere in the slice
//   mean             the mean over the reference dataset's prompts and (real)
//                    positions: one vector per hook, the same at every position
//   positional_mean  the mean over the reference prompts at each position
//                    (padding excluded): a [pos, ...] profile
//   resample         the activation on another input (e.g. the corrupted
//                    prompt of each pair), prompt by prompt
// Attention maps ([batch, head, q_pos, k_pos]) have no per-token axis to
// average over: mean and positional_mean both average over prompts only.
//
// A value is a tensor that broadcasts to the hook's activation, so the same
// values serve a one-off hook (ablation_hook) and bulk sweeps (BulkPatcher).
//
// Example:
//   at::Tensor mean_z = ablation_value(model, "blocks.1.attn.hook_z", Ablation::mean, ref_tokens);
//   PatchTarget head = PatchTarget::at("blocks.1.attn.hook_z", model.cfg()).with_head(3);
//   at::Tensor logits = model.run_with_hooks(tokens, {{head.hook_name(), ablation_hook(head, mean_z)}});
#pragma once

#include "hooks/hooked_transformer.h"
#include "patching/patch_target.h"

#include <ATen/core/Tensor.h>

#include <string>

namespace mechlab::patching {

enum class Ablation { zero, mean, positional_mean, resample };
const char* ablation_name(Ablation kind);
/// "zero", "mean", "positional_mean" (or "pos_mean"), "resample".
Ablation parse_ablation(const std::string& text);

/// The value an ablation writes, from the hook's activation on the reference
/// prompts. reference: [batch, pos, ...] (or [batch, head, q_pos, k_pos] when
/// attention_map); attention_mask: [batch, pos] or undefined. Returns a tensor
/// broadcasting to the activation: zero -> scalar, mean -> [1, 1, ...],
/// positional_mean -> [1, pos, ...], resample -> reference itself.
at::Tensor ablation_value(Ablation kind, const at::Tensor& reference,
                          const at::Tensor& attention_mask = {}, bool attention_map = false);

/// The same, running the model on reference_tokens [batch, pos] to get the
/// hook's activation (not needed for zero).
at::Tensor ablation_value(hooks::HookedTransformer& model, const std::string& hook, Ablation kind,
                          const at::Tensor& reference_tokens, const at::Tensor& attention_mask = {});

/// A forward hook that writes `value` into `target`'s slice of the activation
/// (for resample values, the batch must be the reference batch).
hooks::HookFn ablation_hook(PatchTarget target, at::Tensor value);

}  // namespace mechlab::patching
