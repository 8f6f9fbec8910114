// TopKSae (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):
// acts keep the k largest pre-activations of each row, ReLU'd, zero elsewhere.
// With rescale_acts_by_decoder_norm, hidden_pre is multiplied by the decoder
// rows' norms before the selection and acts divided by them before decoding
// (selection as if the decoder had unit rows).
//
// Training adds AuxK (SAELens's calculate_topk_aux_loss): the k_aux = d_in / 2
// (at most the number of dead latents) largest pre-activations among the
// dead latents reconstruct the detached residual x - sae_out,
//   auxiliary_reconstruction_loss = aux_loss_coefficient * min(n_dead / (d_in/2), 1)
//                                   * mean_rows(|| aux_recons - residual ||^2),
// and 0 when no latent is dead.
#pragma once

#include "sae/sae.h"

namespace mechlab::sae {

class TopKSae : public Sae {
 public:
  explicit TopKSae(SaeConfig cfg) : Sae(std::move(cfg)) {}

 protected:
  void encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const override;
  at::Tensor times_W_dec(const at::Tensor& acts) const override;
  LossTerms aux_losses(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                       const at::Tensor& dead_mask) const override;
  /// hidden_pre [..., d_sae] with hook_sae_acts_pre fired and the decoder-norm
  /// rescale applied.
  at::Tensor hidden_pre(const Pass& p, hooks::ModuleHooks& hooks) const;
  /// AuxK (above); the BatchTopK SAE shares it.
  at::Tensor auxk_loss(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                       const at::Tensor& dead_mask) const;
};

}  // namespace mechlab::sae
