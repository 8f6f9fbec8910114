// SaeConfig: what defines an SAE (architecture, sizes, input processing) and
// the coefficients of its training losses, named as SAELens 6.x names them
// (TrainingSAEConfig fields) so that cfg.json maps onto it key by key.
#pragma once

#include "core/util/options.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::sae {

struct SaeConfig {
  /// "relu" (SAELens "standard"), "topk", "batchtopk", "jumprelu", "gated".
  MECHLAB_OPTION(SaeConfig, std::string, architecture, "relu")
  MECHLAB_OPTION(SaeConfig, int64_t, d_in, 0)
  MECHLAB_OPTION(SaeConfig, int64_t, d_sae, 0)
  /// Pre-encoder bias: subtract b_dec from the input before encoding.
  MECHLAB_OPTION(SaeConfig, bool, apply_b_dec_to_input, true)
  /// "none" or "constant_norm_rescale" (each input row scaled to norm
  /// sqrt(d_in) before encoding, the scale undone after decoding).
  MECHLAB_OPTION(SaeConfig, std::string, normalize_activations, "none")
  /// The hook the SAE was trained on (metadata; "" when unknown).
  MECHLAB_OPTION(SaeConfig, std::string, hook_name, "")
  /// "none", or "hook_z" (SAELens's reshape_activations; Kissane et al. 2024):
  /// the SAE reads an attention output [..., head, d_head] flattened head-major
  /// to [..., head * d_head] (= d_in) and, spliced in, gives its output back
  /// as [..., head, d_head]. Rows of an activation store at hook_z are
  /// already flat (core/store/activation_store.h), so training needs nothing more.
  MECHLAB_OPTION(SaeConfig, std::string, reshape_activations, "none")

  /// TopK: latents kept per row (a whole number); BatchTopK: the mean number
  /// kept per row, k x rows kept over the batch.
  MECHLAB_OPTION(SaeConfig, double, k, 100)
  /// TopK/BatchTopK: select and decode as if the decoder rows had unit norm
  /// (hidden_pre scaled by |W_dec row|, acts divided by it before decoding).
  MECHLAB_OPTION(SaeConfig, bool, rescale_acts_by_decoder_norm, false)
  /// BatchTopK: the inference threshold (SAELens's topk_threshold buffer), an
  /// exponential moving average of the smallest positive training activation.
  MECHLAB_OPTION(SaeConfig, double, topk_threshold, 0.0)
  MECHLAB_OPTION(SaeConfig, double, topk_threshold_lr, 0.01)
  /// TopK/BatchTopK: weight of the AuxK dead-latent loss.
  MECHLAB_OPTION(SaeConfig, double, aux_loss_coefficient, 1.0)

  /// ReLU and Gated: the sparsity penalty's coefficient.
  MECHLAB_OPTION(SaeConfig, double, l1_coefficient, 1.0)
  /// ReLU: the p of the decoder-norm-weighted p-norm penalty.
  MECHLAB_OPTION(SaeConfig, double, lp_norm, 1.0)
  /// JumpReLU: the L0 penalty's coefficient, the STE's rectangle bandwidth,
  /// and whether the STE also passes gradient to the pre-activations.
  MECHLAB_OPTION(SaeConfig, double, l0_coefficient, 1.0)
  MECHLAB_OPTION(SaeConfig, double, jumprelu_bandwidth, 0.05)
  MECHLAB_OPTION(SaeConfig, bool, jumprelu_ste_to_input, false)
  /// JumpReLU's sparsity loss: "step" (DeepMind's L0), "tanh" (Anthropic's
  /// sum of tanh(jumprelu_tanh_scale * acts * |W_dec rows|)) or "quadratic"
  /// (GemmaScope 2: 2 / target_l0 * (L0 - target_l0)^2 per row).
  MECHLAB_OPTION(SaeConfig, std::string, jumprelu_sparsity_loss_mode, "step")
  MECHLAB_OPTION(SaeConfig, double, jumprelu_tanh_scale, 4.0)
  MECHLAB_OPTION(SaeConfig, std::optional<double>, target_l0, std::nullopt)
  /// JumpReLU: Anthropic's pre-activation loss on dead latents,
  /// coefficient * mean_rows(sum(ReLU(threshold - h) * dead * |W_dec rows|));
  /// unset = no such term (SAELens's None).
  MECHLAB_OPTION(SaeConfig, std::optional<double>, pre_act_loss_coefficient, std::nullopt)
};

/// Refuses, one line naming the option, a configuration no SAE can have:
/// an unknown architecture or normalisation, d_in or d_sae < 1, k outside
/// [1, d_sae] (TopK: also not whole), a bandwidth <= 0, an unknown JumpReLU
/// sparsity mode, a quadratic mode without target_l0 in (0, d_sae], an
/// unknown reshape_activations, hook_z reshaping with a hook_name that is not
/// an attention output ("..._z", as SAELens requires).
void validate(const SaeConfig& cfg);

/// The registry's architecture names, in order.
const std::vector<std::string>& architectures();

}  // namespace mechlab::sae
