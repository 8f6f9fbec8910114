// GatedSae (Rajamanoharan et al. 2024, "Improving Dictionary Learning with
// Gated Sparse Autoencoders"): a gate path decides which latents fire, a
// magnitude path (the encoder rows rescaled by exp(r_mag)) how strongly:
//   pi_gate = sae_in @ W_enc + b_gate                       [..., d_sae]
//   pi_mag  = sae_in @ (W_enc * exp(r_mag)) + b_mag          [..., d_sae]
//   acts    = (pi_gate > 0) * ReLU(pi_mag)
// Parameters W_enc, b_gate, r_mag, b_mag, W_dec, b_dec (no b_enc).
// Training (SAELens's GatedTrainingSAE), with x_c = x - b_dec:
//   l1_loss = l1_coefficient * mean_rows(sum(ReLU(x_c @ W_enc + b_gate) * |W_dec rows|))
//   auxiliary_reconstruction_loss = mean_rows(|| ReLU(...) @ W_dec + b_dec - x ||^2)
#pragma once

#include "sae/sae.h"

namespace mechlab::sae {

class GatedSae : public Sae {
 public:
  explicit GatedSae(SaeConfig cfg);

 protected:
  void encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const override;
  LossTerms aux_losses(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                       const at::Tensor& dead_mask) const override;
};

}  // namespace mechlab::sae
