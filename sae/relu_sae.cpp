#include "sae/relu_sae.h"

#include <ATen/ATen.h>

namespace mechlab::sae {

void ReluSae::encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool /*training*/) const {
  p.hidden_pre = at::matmul(p.sae_in, param("W_enc")) + param("b_enc");  // [..., d_sae]
  hooks("hook_sae_acts_pre", p.hidden_pre);
  p.acts = at::relu(p.hidden_pre);  // [..., d_sae]
  hooks("hook_sae_acts_post", p.acts);
}

LossTerms ReluSae::aux_losses(const at::Tensor& /*x*/, const Pass& p, const at::Tensor& /*sae_out*/,
                              const at::Tensor& /*dead_mask*/) const {
  const at::Tensor weighted = p.acts * param("W_dec").norm(2, {1});  // [batch, d_sae]
  const at::Tensor sparsity = weighted.norm(cfg_.lp_norm(), {-1});  // [batch]
  return {{"l1_loss", (sparsity * cfg_.l1_coefficient()).mean()}};
}

}  // namespace mechlab::sae
