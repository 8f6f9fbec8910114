#include "hooks/hooked_transformer.h"

#include "core/data/tokenizer/tokenizer_json.h"
#include "core/hf/model_loader.h"
#include "core/util/error.h"

#include <ATen/ATen.h>

namespace mechlab::hooks {

HookedTransformer::HookedTransformer(core::Transformer model)
    : model_(std::make_shared<core::Transformer>(std::move(model))), registry_(model_->config()) {}

HookedTransformer HookedTransformer::load(const std::string& path) {
  return HookedTransformer(core::Transformer::load(path));
}

HookedTransformer HookedTransformer::from_pretrained(const std::string& path,
                                                     const PretrainedOptions& options) {
  core::LoadOptions load;
  load.dtype(options.dtype());
  load.process(options.process());
  HookedTransformer model(core::load_model(path, load));
  model.model().to(options.device());
  if (auto tok = core::tokenizer::find_model_tokenizer(path, options.tokenizer())) {
    model.set_tokenizer(std::move(tok));
  }
  return model;
}

void HookedTransformer::set_tokenizer(std::shared_ptr<const core::tokenizer::Tokenizer> tokenizer) {
  MECHLAB_CHECK(tokenizer != nullptr, "set_tokenizer needs a tokenizer, got null");
  MECHLAB_CHECK(tokenizer->vocab_size() <= cfg().d_vocab, "the tokenizer's ids reach ",
                tokenizer->vocab_size() - 1, " but the model's d_vocab is ", cfg().d_vocab,
                "; use the tokenizer the model was trained with");
  tokenizer_ = std::move(tokenizer);
}

const core::tokenizer::Tokenizer& HookedTransformer::require_tokenizer() const {
  MECHLAB_CHECK(tokenizer_ != nullptr,
                "this model has no tokenizer (a mechlab checkpoint, or a folder without "
                "tokenizer.json); give one with PretrainedOptions().tokenizer(path) or set_tokenizer");
  return *tokenizer_;
}

at::Tensor HookedTransformer::to_tokens(const std::string& text, bool prepend_bos) const {
  const std::vector<int64_t> ids = require_tokenizer().to_tokens(text, prepend_bos);
  MECHLAB_CHECK(!ids.empty(), "to_tokens: the text \"", text,
                "\" has no tokens and the tokenizer no BOS to prepend; give a non-empty text");
  return at::tensor(ids, at::kLong).view({1, -1}).to(model_->device());  // [1, pos]
}

namespace {

/// The ids of tokens [pos] or [1, pos].
std::vector<int64_t> ids_of(const at::Tensor& tokens) {
  MECHLAB_CHECK(tokens.dim() == 1 || (tokens.dim() == 2 && tokens.size(0) == 1),
                "tokens must have shape [pos] or [1, pos], got ", tokens.sizes(),
                "; convert one row at a time");
  MECHLAB_CHECK(!at::isFloatingType(tokens.scalar_type()),
                "tokens must be an integer tensor, got ", tokens.scalar_type());
  const at::Tensor flat = tokens.reshape(-1).to(at::kCPU, at::kLong).contiguous();
  return {flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel()};
}

}  // namespace

std::vector<std::string> HookedTransformer::to_str_tokens(const at::Tensor& tokens) const {
  return require_tokenizer().to_str_tokens(ids_of(tokens));
}

std::vector<std::string> HookedTransformer::to_str_tokens(const std::string& text,
                                                          bool prepend_bos) const {
  return require_tokenizer().to_str_tokens(require_tokenizer().to_tokens(text, prepend_bos));
}

std::string HookedTransformer::to_string(const at::Tensor& tokens) const {
  return require_tokenizer().decode(ids_of(tokens));
}

core::ForwardOptions HookedTransformer::forward_options(const RunOptions& opts) {
  core::ForwardOptions f;
  f.attention_mask(opts.attention_mask());
  f.start_at_layer(opts.start_at_layer());
  f.stop_at_layer(opts.stop_at_layer());
  f.hooks(&registry_);
  f.materialise_attention(opts.materialise_attention());
  f.kv_cache(opts.kv_cache());
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
  const std::optional<at::Device> device = opts.cache_device();
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
