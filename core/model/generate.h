// generate: autoregressive text generation with a KV cache (core/model/kv_cache.h),
// as TransformerLens's HookedTransformer.generate(use_past_kv_cache=True) and
// Hugging Face's generate(): greedy decoding or sampling with temperature,
// top-k and top-p (core/model/sampling.h), stop tokens, a batch of prompts.
//
// Padding. Prompts of different lengths are LEFT-padded, so that every row's
// next token goes in the same column and one [batch, 1] forward per step serves
// the whole batch; right-padded input (tokens + attention_mask) is moved to the
// left first, so both give the same continuation. Each row's real tokens count
// positions from 0 (learned and rotary positions alike) and padding is never
// attended to, so a padded prompt continues exactly as it does alone
// (tests/core/generate_test.cpp checks this against transformers).
//
// Stopping. A row stops after drawing one of `stop_tokens` (kept in its
// continuation, as transformers keeps EOS); its later columns hold pad_token_id
// with attention_mask 0. Generation ends when every row has stopped or after
// max_new_tokens. Nothing is added implicitly: pass the tokenizer's EOS in
// stop_tokens for TransformerLens's stop_at_eos.
//
// Hooks (the `hooks` argument; HookedTransformer::generate passes its
// registry) run on every forward: with the cache, the first sees the whole
// prompt [batch, P, ...] and each later one the new position only
// [batch, 1, ...]; attention scores and patterns are [batch, head, 1, k_pos],
// hook_rot_k [batch, k_pos, kv_head, d_head] (k_pos = every position so far),
// as in TransformerLens.
//
// Example:
//   auto out = core::generate(model, tokens,
//                             GenerateOptions().max_new_tokens(20).top_k(5).seed(1));
//   out.tokens;         // [batch, P + steps] int64: left-padded prompts, then new tokens
//   out.new_tokens[0];  // the ids generated for the first prompt
#pragma once

#include "core/model/hook_dispatch.h"
#include "core/util/options.h"
#include "core/model/transformer.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace mechlab::core {

struct GenerateOptions {
  /// The most tokens added to each prompt. The longest prompt plus this must
  /// fit in the model's n_ctx.
  /// Example: GenerateOptions().max_new_tokens(20)
  MECHLAB_OPTION(GenerateOptions, int64_t, max_new_tokens, 10)
  /// Take the most likely token each step (TransformerLens's do_sample=False,
  /// transformers' default). Temperature 0 does the same.
  /// Example: GenerateOptions().greedy(true)
  MECHLAB_OPTION(GenerateOptions, bool, greedy, false)
  /// Sampling temperature, >= 0; logits are divided by it (0 = greedy).
  /// Example: GenerateOptions().temperature(0.7)
  MECHLAB_OPTION(GenerateOptions, double, temperature, 1.0)
  /// Sample among the k most likely tokens only; 0 = no top-k filtering.
  /// Example: GenerateOptions().top_k(50)
  MECHLAB_OPTION(GenerateOptions, int64_t, top_k, 0)
  /// Nucleus sampling: among the most likely tokens holding probability >= p;
  /// p in (0, 1], 1 = no filtering.
  /// Example: GenerateOptions().top_p(0.9)
  MECHLAB_OPTION(GenerateOptions, double, top_p, 1.0)
  /// A row stops after drawing any of these ids (e.g. the tokenizer's EOS).
  /// Example: GenerateOptions().stop_tokens({tok->eos_id().value()})
  MECHLAB_OPTION(GenerateOptions, std::vector<int64_t>, stop_tokens, {})
  /// Seed of the sampling draws (core::Rng): the same seed, the same tokens.
  /// Example: GenerateOptions().seed(42)
  MECHLAB_OPTION(GenerateOptions, uint64_t, seed, 0)
  /// [batch, pos] 1 = real token, 0 = padding, left or right (not in between).
  /// Example: GenerateOptions().attention_mask(mask)
  MECHLAB_OPTION(GenerateOptions, at::Tensor, attention_mask, {})
  /// The id written in padding: left of short prompts and after a row stops.
  /// Example: GenerateOptions().pad_token_id(tok->eos_id().value())
  MECHLAB_OPTION(GenerateOptions, int64_t, pad_token_id, 0)
  /// Reuse keys and values (one new position per forward); false reruns the
  /// whole sequence every step (slower; the same tokens and logits).
  /// Example: GenerateOptions().use_kv_cache(false)
  MECHLAB_OPTION(GenerateOptions, bool, use_kv_cache, true)
  /// Keep the logits each new token was chosen from (GenerateResult::logits).
  /// Example: GenerateOptions().return_logits(true)
  MECHLAB_OPTION(GenerateOptions, bool, return_logits, false)
};

struct GenerateResult {
  at::Tensor tokens;          ///< [batch, prompt_length + steps] int64, CPU: prompts, new tokens
  at::Tensor attention_mask;  ///< [batch, prompt_length + steps] int64, CPU: 1 = real token
  int64_t prompt_length = 0;  ///< columns of `tokens` that are the (left-padded) prompts
  std::vector<std::vector<int64_t>> new_tokens;  ///< per row, the generated ids (stop id included)
  std::vector<bool> stopped;                     ///< per row, whether it ended on a stop token
  /// [steps, batch, d_vocab] float32, CPU: the model's logits each step's token
  /// was chosen from, before temperature/top-k/top-p (with return_logits).
  at::Tensor logits;
};

/// Left-padded prompts: tokens [batch, max_len] int64 (pad_id in padding) and
/// attention_mask [batch, max_len] int64.
std::pair<at::Tensor, at::Tensor> left_pad(const std::vector<std::vector<int64_t>>& prompts,
                                           int64_t pad_id);

/// Generates after `tokens` ([batch, pos] or [pos], int32/int64; padding given
/// by opts.attention_mask). Bad options or prompts throw mechlab::Error before
/// any forward.
GenerateResult generate(const Transformer& model, const at::Tensor& tokens,
                        const GenerateOptions& opts = {}, HookDispatch* hooks = nullptr);

/// Prompts of any lengths (left-padded with opts.pad_token_id).
GenerateResult generate(const Transformer& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& opts = {}, HookDispatch* hooks = nullptr);

}  // namespace mechlab::core
