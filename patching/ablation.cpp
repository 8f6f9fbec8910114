#include "patching/ablation.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <utility>

namespace mechlab::patching {

const char* ablation_name(Ablation kind) {
  switch (kind) {
    case Ablation::zero: return "zero";
    case Ablation::mean: return "mean";
    case Ablation::positional_mean: return "positional_mean";
    case Ablation::resample: return "resample";
  }
  return "?";
}

Ablation parse_ablation(const std::string& text) {
  if (text == "zero") return Ablation::zero;
  if (text == "mean") return Ablation::mean;
  if (text == "positional_mean" || text == "pos_mean") return Ablation::positional_mean;
  if (text == "resample") return Ablation::resample;
  throw Error(str_cat("unknown ablation \"", text,
                      "\"; use zero, mean, positional_mean or resample"));
}

at::Tensor ablation_value(Ablation kind, const at::Tensor& reference, const at::Tensor& mask,
                          bool attention_map) {
  if (kind == Ablation::zero) return at::zeros({}, reference.options());
  MECHLAB_CHECK(reference.defined() && reference.dim() >= 2,
                "ablation_value: the reference activation must be [batch, pos, ...], got ",
                reference.defined() ? c10::str(reference.sizes()) : std::string("(undefined)"));
  if (kind == Ablation::resample) return reference;
  at::Tensor x = reference.to(at::kFloat);
  if (attention_map) return x.mean(0, /*keepdim=*/true).to(reference.scalar_type());
  // Per-token activations: weight real tokens by the mask.
  at::Tensor w;  // [batch, pos, 1, ...]
  if (mask.defined()) {
    MECHLAB_CHECK(mask.dim() == 2 && mask.size(0) == x.size(0) && mask.size(1) == x.size(1),
                  "ablation_value: attention_mask ", mask.sizes(),
                  " does not match the activation's [batch, pos] = [", x.size(0), ", ", x.size(1), "]");
    w = mask.to(x.device()).ne(0).to(at::kFloat);
  } else {
    w = at::ones({x.size(0), x.size(1)}, x.options());
  }
  while (w.dim() < x.dim()) w = w.unsqueeze(-1);
  at::Tensor out;
  if (kind == Ablation::mean) {
    out = (x * w).sum(at::IntArrayRef{0, 1}, true) / w.sum(at::IntArrayRef{0, 1}, true).clamp_min(1);  // [1, 1, ...]
  } else {
    out = (x * w).sum(0, true) / w.sum(0, true).clamp_min(1);  // [1, pos, ...]
  }
  return out.to(reference.scalar_type());
}

at::Tensor ablation_value(hooks::HookedTransformer& model, const std::string& hook, Ablation kind,
                          const at::Tensor& reference_tokens, const at::Tensor& attention_mask) {
  PatchTarget t = PatchTarget::at(hook, model);  // a model site or an attached point
  if (kind == Ablation::zero) {
    return at::zeros({}, at::TensorOptions(model.model().dtype()).device(model.model().device()));
  }
  at::NoGradGuard no_grad;
  hooks::RunOptions ro;
  ro.attention_mask(attention_mask);
  auto [logits, cache] = model.run_with_cache(reference_tokens, hooks::NamesFilter({hook}), ro);
  (void)logits;
  return ablation_value(kind, cache[hook], attention_mask, t.attention_map());
}

hooks::HookFn ablation_hook(PatchTarget target, at::Tensor value) {
  return [target = std::move(target), value = std::move(value)](at::Tensor& act,
                                                                const hooks::HookPoint& hp) {
    MECHLAB_CHECK(hp.name == target.hook_name(), "ablation hook for ", target.describe(),
                  " is attached to ", hp.name, "; attach it to ", target.hook_name());
    const int64_t seq = target.attention_map() ? act.size(2) : act.size(1);
    MECHLAB_CHECK(target.pos < seq && target.src_pos < seq, "ablation target ", target.describe(),
                  ": position beyond the sequence of ", seq, " positions");
    at::Tensor v = value.to(act.device(), act.scalar_type());
    MECHLAB_CHECK(broadcasts_to(v.sizes(), act.sizes()), "ablation value of shape ",
                  v.sizes(), " does not broadcast to ", hp.name, "'s activation ", act.sizes());
    act = act.clone();
    write_patch(act, target, v);
  };
}

}  // namespace mechlab::patching
