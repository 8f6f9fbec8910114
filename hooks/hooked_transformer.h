// HookedTransformer: the C++ counterpart of TransformerLens's class of the
// same name: a Transformer plus its hooks and its tokenizer, with
// from_pretrained, to_tokens, run_with_cache and run_with_hooks.
//
// Example:
//   auto model = mechlab::hooks::HookedTransformer::from_pretrained("gpt2/");
//   at::Tensor tokens = model.to_tokens("When Mary and John went to the store");  // [1, pos]
//   auto [logits, cache] = model.run_with_cache(tokens, NamesFilter::glob("*hook_pattern"));
//   at::Tensor pattern = cache.get("pattern", 1);        // [batch, head, q_pos, k_pos]
//
//   // Zero-ablate head 1.4 for one run; the hook is gone afterwards.
//   at::Tensor ablated = model.run_with_hooks(tokens, {{"blocks.1.attn.hook_z",
//       [](at::Tensor& z, const HookPoint&) { z = z.clone(); z.select(2, 4).zero_(); }}});
#pragma once

#include "core/data/tokenizer/tokenizer.h"
#include "core/model/generate.h"
#include "core/model/transformer.h"
#include "core/model/weight_processing.h"
#include "core/util/options.h"
#include "hooks/activation_cache.h"
#include "hooks/hook_registry.h"
#include "hooks/names_filter.h"

#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace mechlab::hooks {

struct RunOptions {
  /// [batch, pos], 0 = padding
  MECHLAB_OPTION(RunOptions, at::Tensor, attention_mask, {})
  /// input is the residual entering this layer
  MECHLAB_OPTION(RunOptions, int, start_at_layer, 0)
  /// return the residual entering this layer
  MECHLAB_OPTION(RunOptions, std::optional<int>, stop_at_layer, std::nullopt)
  /// where cached tensors go (default: model's)
  MECHLAB_OPTION(RunOptions, std::optional<at::Device>, cache_device, std::nullopt)
  /// force the unfused attention path
  MECHLAB_OPTION(RunOptions, bool, materialise_attention, false)
  /// past keys/values: input follows them (core/model/kv_cache.h)
  MECHLAB_OPTION(RunOptions, core::KVCache*, kv_cache, nullptr)
};

/// How HookedTransformer::from_pretrained loads a model.
///
/// Example: PretrainedOptions().process(core::ProcessOptions::all()).device(at::kCUDA).dtype(at::kBFloat16)
struct PretrainedOptions {
  /// TransformerLens's from_pretrained weight processing (fold_ln, centring,
  /// value-bias folding: core::ProcessOptions::all() for all four). Default:
  /// none, the weights as stored.
  MECHLAB_OPTION(PretrainedOptions, core::ProcessOptions, process, {})
  /// float32, bfloat16 or float16; unset = as stored.
  MECHLAB_OPTION(PretrainedOptions, std::optional<at::ScalarType>, dtype, std::nullopt)
  MECHLAB_OPTION(PretrainedOptions, at::Device, device, at::kCPU)
  /// tokenizer.json, or a folder with tokenizer.json or vocab.json +
  /// merges.txt. Default: the model folder's own, if it has one.
  MECHLAB_OPTION(PretrainedOptions, std::string, tokenizer, "")
};

class HookedTransformer {
 public:
  explicit HookedTransformer(core::Transformer model);
  /// A mechlab checkpoint (.h5) or a Hugging Face model folder (GPT-2,
  /// GPT-NeoX/Pythia, Llama, Mistral, Qwen2), with the folder's tokenizer
  /// (or the word vocabulary the checkpoint stores) attached. Nothing is downloaded: `path` is a local file or folder.
  static HookedTransformer from_pretrained(const std::string& path,
                                           const PretrainedOptions& options = {});
  /// A mechlab checkpoint as stored, without a tokenizer.
  static HookedTransformer load(const std::string& path);

  /// The attached tokenizer; null when there is none.
  const core::tokenizer::Tokenizer* tokenizer() const { return tokenizer_.get(); }
  /// Attaches a tokenizer; refuses one whose ids do not fit the model's d_vocab.
  void set_tokenizer(std::shared_ptr<const core::tokenizer::Tokenizer> tokenizer);
  /// The ids of `text` as [1, pos] int64 on the model's device, with exactly
  /// one BOS first when prepend_bos (TransformerLens's default) and the
  /// tokenizer has one (core/data/tokenizer/tokenizer.h).
  at::Tensor to_tokens(const std::string& text, bool prepend_bos = true) const;
  /// One string per token of `tokens` ([pos] or [1, pos]), each decoded alone.
  std::vector<std::string> to_str_tokens(const at::Tensor& tokens) const;
  std::vector<std::string> to_str_tokens(const std::string& text, bool prepend_bos = true) const;
  /// The text of `tokens` ([pos] or [1, pos]), special tokens included.
  std::string to_string(const at::Tensor& tokens) const;

  const core::ModelConfig& cfg() const { return model_->config(); }
  core::Transformer& model() { return *model_; }
  const core::Transformer& model() const { return *model_; }
  std::shared_ptr<const core::Transformer> shared_model() const { return model_; }
  HookRegistry& hooks() { return registry_; }
  const HookRegistry& hooks() const { return registry_; }

  /// Every hook point, in forward order: the model's, and after each host the
  /// points of the modules attached there.
  std::vector<std::string> hook_names() const { return registry_.hook_names(); }

  /// Splices a module (a steering vector, later an SAE) in at the hook point
  /// `host`; its points "<host>.<name>.hook_*" become hook points
  /// (hooks/attached_module.h).
  void attach(const std::string& host, std::shared_ptr<AttachedModule> module) {
    registry_.attach(host, std::move(module));
  }
  /// Removes the module `module_name` at `host` and the hooks on its points.
  void detach(const std::string& host, const std::string& module_name) {
    registry_.detach(host, module_name);
  }

  /// Forward with the attached (permanent) hooks.
  at::Tensor forward(const at::Tensor& input, const RunOptions& opts = {});

  /// Forward that records the activations the filter selects (detached).
  std::pair<at::Tensor, ActivationCache> run_with_cache(const at::Tensor& input,
                                                        const NamesFilter& filter = {},
                                                        const RunOptions& opts = {});

  /// Forward with temporary hooks, removed when it returns (even by exception).
  at::Tensor run_with_hooks(const at::Tensor& input,
                            const std::vector<std::pair<std::string, HookFn>>& fwd_hooks,
                            const std::vector<std::pair<std::string, BackwardHookFn>>& bwd_hooks = {},
                            const RunOptions& opts = {});

  /// Text generation with a KV cache (core/model/generate.h) through the attached
  /// hooks: add temporary ones with a HookScope around the call, as
  /// TransformerLens's `with model.hooks(...): model.generate(...)`.
  ///   auto out = model.generate(tokens, core::GenerateOptions().max_new_tokens(20).top_k(5));
  core::GenerateResult generate(const at::Tensor& tokens, const core::GenerateOptions& opts = {}) {
    return core::generate(*model_, tokens, opts, &registry_);
  }
  core::GenerateResult generate(const std::vector<std::vector<int64_t>>& prompts,
                                const core::GenerateOptions& opts = {}) {
    return core::generate(*model_, prompts, opts, &registry_);
  }

  HookHandle add_hook(const std::string& name, HookFn fn, bool permanent = false) {
    return registry_.add_hook(name, std::move(fn), permanent);
  }
  HookHandle add_perma_hook(const std::string& name, HookFn fn) {
    return registry_.add_hook(name, std::move(fn), true);
  }
  HookHandle add_backward_hook(const std::string& name, BackwardHookFn fn, bool permanent = false) {
    return registry_.add_backward_hook(name, std::move(fn), permanent);
  }
  void reset_hooks(bool including_permanent = false) { registry_.reset_hooks(including_permanent); }

 private:
  core::ForwardOptions forward_options(const RunOptions& opts);

  const core::tokenizer::Tokenizer& require_tokenizer() const;

  std::shared_ptr<core::Transformer> model_;
  HookRegistry registry_;
  std::shared_ptr<const core::tokenizer::Tokenizer> tokenizer_;
};

}  // namespace mechlab::hooks
