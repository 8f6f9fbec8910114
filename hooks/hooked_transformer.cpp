#include "hooks/hooked_transformer.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

namespace mechlab::hooks {

HookedTransformer::HookedTransformer(core::Transformer model)
    : model_(std::make_shared<core::Transformer>(std::move(model))), registry_(model_->config()) {}

HookedTransformer HookedTransformer::load(const std::string& path) {
  return HookedTransformer(core::Transformer::load(path));
}

core::ForwardOptions HookedTransformer::forward_options(const RunOptions& opts) {
  core::ForwardOptions f;
  f.attention_mask = opts.attention_mask;
  f.start_at_layer = opts.start_at_layer;
  f.stop_at_layer = opts.stop_at_layer;
  f.hooks = &registry_;
  f.materialise_attention = opts.materialise_attention;
  f.kv_cache = opts.kv_cache;
  return f;
}

at::Tensor HookedTransformer::forward(const at::Tensor& input, const RunOptions& opts) {
  return model_->forward(input, forward_options(opts));
}

std::pair<at::Tensor, ActivationCache> HookedTransformer::run_with_cache(const at::Tensor& input,
                                                                         const NamesFilter& filter,
                                                                         const RunOptions& opts) {
  std::map<std::string, at::Tensor> acts;
  HookScope scope(registry_);
  const std::optional<at::Device> device = opts.cache_device;
  for (const std::string& name : filter.select(cfg(), hook_names())) {
    scope.add(name, [&acts, device](at::Tensor& act, const HookPoint& hook) {
      at::Tensor kept = act.detach();
      if (device && *device != kept.device()) kept = kept.to(*device);
      acts[hook.name] = kept;  // later calls (split-mode ln1) overwrite, as in TransformerLens
    });
  }
  at::Tensor out = forward(input, opts);
  return {out, ActivationCache(model_, std::move(acts))};
}

at::Tensor HookedTransformer::run_with_hooks(
    const at::Tensor& input, const std::vector<std::pair<std::string, HookFn>>& fwd_hooks,
    const std::vector<std::pair<std::string, BackwardHookFn>>& bwd_hooks, const RunOptions& opts) {
  HookScope scope(registry_);
  for (const auto& [name, fn] : fwd_hooks) scope.add(name, fn);
  for (const auto& [name, fn] : bwd_hooks) scope.add_backward(name, fn);
  return forward(input, opts);
}

}  // namespace mechlab::hooks
