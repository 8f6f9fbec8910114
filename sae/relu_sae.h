// ReluSae: the standard SAE (SAELens "standard"), acts = ReLU(hidden_pre),
// trained with Anthropic's April 2024 sparsity penalty: the p-norm (p =
// lp_norm, 1 by default) of the latents weighted by their decoder rows' norms,
//   l1_loss = mean_rows(l1_coefficient * || acts * |W_dec rows| ||_p).
#pragma once

#include "sae/sae.h"

namespace mechlab::sae {

class ReluSae : public Sae {
 public:
  explicit ReluSae(SaeConfig cfg) : Sae(std::move(cfg)) {}

 protected:
  void encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const override;
  LossTerms aux_losses(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                       const at::Tensor& dead_mask) const override;
};

}  // namespace mechlab::sae
