// JumpReLUSae (Rajamanoharan et al. 2024, "Jumping Ahead: Improving
// Reconstruction Fidelity with JumpReLU Sparse Autoencoders"): acts =
// hidden_pre * (hidden_pre > threshold), threshold [d_sae] a parameter.
//
// Training (SAELens's JumpReLUTrainingSAE): the threshold is clamped at 0
// before each step, and l0_loss = mean_rows(l0_coefficient * per_row) with
// per_row by jumprelu_sparsity_loss_mode:
//   step       L0 = sum_latents step(hidden_pre - threshold)
//   quadratic  2 / target_l0 * (L0 - target_l0)^2
//   tanh       sum_latents tanh(jumprelu_tanh_scale * acts * |W_dec rows|)
// plus, when pre_act_loss_coefficient is set, pre_act_loss (sae_config.h).
// Both the jump and the step take their threshold gradient from a
// straight-through estimator with the rectangle kernel of width
// jumprelu_bandwidth (eps):
//   d jumprelu / d threshold = -(threshold / eps) * rect((h - threshold) / eps)
//   d step     / d threshold = -(1 / eps) * rect((h - threshold) / eps)
// rect(u) = 1 for |u| < 1/2; with jumprelu_ste_to_input the same estimates
// (sign flipped) also reach h. jumprelu's own gradient to h is the mask.
#pragma once

#include "sae/sae.h"

namespace mechlab::sae {

class JumpReluSae : public Sae {
 public:
  explicit JumpReluSae(SaeConfig cfg);

 protected:
  void encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const override;
  LossTerms aux_losses(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                       const at::Tensor& dead_mask) const override;
  void before_training_step() override;
};

/// x * (x > threshold) with the STE gradients above (x [..., d_sae],
/// threshold [d_sae]); exact ATen autograd.
at::Tensor jumprelu_ste(const at::Tensor& x, const at::Tensor& threshold, double bandwidth,
                        bool ste_to_input);
/// (x > threshold) as floats with the step's STE gradients.
at::Tensor step_ste(const at::Tensor& x, const at::Tensor& threshold, double bandwidth,
                    bool ste_to_input);

}  // namespace mechlab::sae
