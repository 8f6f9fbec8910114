// Sampling the next token: Hugging Face's logits warpers (TemperatureLogitsWarper,
// TopKLogitsWarper, TopPLogitsWarper with min_tokens_to_keep = 1, number for
// number; tests/data/generate/warpers.ref.h5) and a draw from the resulting
// distribution with core::Rng.
//
// generate() applies them in transformers' order: temperature, then top-k, then
// top-p. TransformerLens's sample_logits differs at the top-p boundary (it keeps
// the token that crosses p, transformers removes tokens whose cumulative mass
// from the bottom stays within 1 - p); mechlab follows transformers.
//
// Example:
//   at::Tensor l = top_p_filter(top_k_filter(apply_temperature(logits, 0.7), 50), 0.9);
//   core::Rng rng(seed);
//   at::Tensor next = sample_from_logits(l, rng);   // [batch] int64, CPU
#pragma once

#include "core/util/rng.h"

#include <ATen/core/Tensor.h>

namespace mechlab::core {

/// logits / temperature; temperature > 0. logits: [batch, d_vocab].
at::Tensor apply_temperature(const at::Tensor& logits, double temperature);

/// Keeps each row's k largest logits (and any equal to the k-th), sets the rest
/// to -inf. k >= 1; k >= d_vocab keeps everything. logits: [batch, d_vocab].
at::Tensor top_k_filter(const at::Tensor& logits, int64_t k);

/// Nucleus filtering (Holtzman et al. 2020): keeps the most likely tokens whose
/// probabilities sum to at least p, sets the rest to -inf; the most likely token
/// always stays. p in (0, 1]; 1 keeps everything. logits: [batch, d_vocab].
at::Tensor top_p_filter(const at::Tensor& logits, double p);

/// One token per row drawn from softmax(logits) ([batch, d_vocab], -inf = never):
/// [batch] int64 on the CPU. The draw is inverse-CDF sampling with rng.uniform()
/// over probabilities summed in float64 on the CPU, so a seed names the same
/// tokens on every machine and device (up to float differences in the logits),
/// which at::multinomial does not promise.
at::Tensor sample_from_logits(const at::Tensor& logits, Rng& rng);

}  // namespace mechlab::core
