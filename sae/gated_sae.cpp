#include "sae/gated_sae.h"

#include <ATen/ATen.h>

namespace mechlab::sae {

GatedSae::GatedSae(SaeConfig cfg) : Sae(std::move(cfg), /*has_b_enc=*/false) {
  add_param("b_gate", {cfg_.d_sae()});
  add_param("r_mag", {cfg_.d_sae()});
  add_param("b_mag", {cfg_.d_sae()});
}

void GatedSae::encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool /*training*/) const {
  const at::Tensor& W_enc = param("W_enc");  // [d_in, d_sae]
  const at::Tensor gate_pre = at::matmul(p.sae_in, W_enc) + param("b_gate");  // [..., d_sae]
  const at::Tensor active = (gate_pre > 0).to(gate_pre.scalar_type());
  p.hidden_pre = at::matmul(p.sae_in, W_enc * param("r_mag").exp()) + param("b_mag");  // [..., d_sae]
  hooks("hook_sae_acts_pre", p.hidden_pre);
  p.acts = active * at::relu(p.hidden_pre);
  hooks("hook_sae_acts_post", p.acts);
}

LossTerms GatedSae::aux_losses(const at::Tensor& x, const Pass& /*p*/, const at::Tensor& /*sae_out*/,
                               const at::Tensor& /*dead_mask*/) const {
  const at::Tensor& W_dec = param("W_dec");  // [d_sae, d_in]
  const at::Tensor& b_dec = param("b_dec");  // [d_in]
  // SAELens centres the raw input here (no normalisation), as written.
  const at::Tensor centered = cfg_.apply_b_dec_to_input() ? x - b_dec : x;  // [batch, d_in]
  const at::Tensor pi_gate_act = at::relu(at::matmul(centered, param("W_enc")) + param("b_gate"));
  const at::Tensor l1 = (pi_gate_act * W_dec.norm(2, {1})).sum(-1).mean() * cfg_.l1_coefficient();
  const at::Tensor via_gate = at::matmul(pi_gate_act, W_dec) + b_dec;  // [batch, d_in]
  const at::Tensor aux = (via_gate - x).pow(2).sum(-1).mean();
  return {{"l1_loss", l1}, {"auxiliary_reconstruction_loss", aux}};
}

}  // namespace mechlab::sae
