#include "sae/jumprelu_sae.h"

#include <ATen/ATen.h>

namespace mechlab::sae {

namespace {

// rect((x - threshold) / bandwidth) as x's dtype, no gradient.
at::Tensor rectangle(const at::Tensor& x, const at::Tensor& threshold, double bandwidth) {
  const at::Tensor u = ((x - threshold) / bandwidth).detach();
  return ((u > -0.5) & (u < 0.5)).to(x.scalar_type());
}

// A term whose value is exactly 0 and whose gradient with respect to `t` is
// `coeff` (elementwise; broadcasting sums it over the batch): the way a
// custom backward is written with plain autograd. (s - s.detach()) is 0 for
// every finite s.
at::Tensor zero_with_grad(const at::Tensor& coeff, const at::Tensor& t) {
  const at::Tensor s = coeff.detach() * t;
  return s - s.detach();
}

}  // namespace

at::Tensor jumprelu_ste(const at::Tensor& x, const at::Tensor& threshold, double bandwidth,
                        bool ste_to_input) {
  const at::Tensor mask = (x > threshold).to(x.scalar_type()).detach();  // [..., d_sae]
  // SAELens's JumpReLU.backward: ste = (threshold / bandwidth) * rect * grad,
  // threshold grad = sum(-ste, 0); x grad = mask * grad (+ ste).
  const at::Tensor rect_scaled = (threshold.detach() / bandwidth) * rectangle(x, threshold, bandwidth);
  at::Tensor out = x * mask + zero_with_grad(-rect_scaled, threshold);
  if (ste_to_input) out = out + zero_with_grad(rect_scaled, x);
  return out;
}

at::Tensor step_ste(const at::Tensor& x, const at::Tensor& threshold, double bandwidth,
                    bool ste_to_input) {
  const at::Tensor mask = (x > threshold).to(x.scalar_type()).detach();
  // SAELens's Step.backward: ste = (1 / bandwidth) * rect * grad.
  const at::Tensor rect_scaled = rectangle(x, threshold, bandwidth) * (1.0 / bandwidth);
  at::Tensor out = mask + zero_with_grad(-rect_scaled, threshold);
  if (ste_to_input) out = out + zero_with_grad(rect_scaled, x);
  return out;
}

JumpReluSae::JumpReluSae(SaeConfig cfg) : Sae(std::move(cfg)) {
  add_param("threshold", {cfg_.d_sae()});
}

void JumpReluSae::encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const {
  p.hidden_pre = at::matmul(p.sae_in, param("W_enc")) + param("b_enc");  // [..., d_sae]
  hooks("hook_sae_acts_pre", p.hidden_pre);
  const at::Tensor& threshold = param("threshold");  // [d_sae]
  if (training) {
    p.acts = jumprelu_ste(p.hidden_pre, threshold, cfg_.jumprelu_bandwidth(),
                          cfg_.jumprelu_ste_to_input());
  } else {
    // SAELens's JumpReLUSAE.encode: relu(h) * (h > threshold).
    p.acts = at::relu(p.hidden_pre) * (p.hidden_pre > threshold).to(p.hidden_pre.scalar_type());
  }
  hooks("hook_sae_acts_post", p.acts);
}

LossTerms JumpReluSae::aux_losses(const at::Tensor& /*x*/, const Pass& p,
                                  const at::Tensor& /*sae_out*/, const at::Tensor& dead_mask) const {
  const at::Tensor& threshold = param("threshold");                // [d_sae]
  const at::Tensor W_dec_norm = param("W_dec").norm(2, {1});       // [d_sae]
  const std::string& mode = cfg_.jumprelu_sparsity_loss_mode();
  at::Tensor per_row;                                               // [batch]
  if (mode == "tanh") {
    per_row = at::tanh(p.acts * cfg_.jumprelu_tanh_scale() * W_dec_norm).sum(-1);
  } else {
    const at::Tensor l0 = step_ste(p.hidden_pre, threshold, cfg_.jumprelu_bandwidth(),
                                   cfg_.jumprelu_ste_to_input())
                              .sum(-1);  // [batch]
    if (mode == "quadratic") {
      const double t = *cfg_.target_l0();
      per_row = (l0 - t).pow(2) * (2 / t);
    } else {
      per_row = l0;
    }
  }
  LossTerms out{{"l0_loss", (per_row * cfg_.l0_coefficient()).mean()}};
  if (cfg_.pre_act_loss_coefficient().has_value()) {
    at::Tensor pre_act;
    if (!dead_mask.defined() || !dead_mask.any().item<bool>()) {
      pre_act = at::zeros({}, p.hidden_pre.options());
    } else {
      // SAELens's calculate_pre_act_loss: only the dead latents are pushed up.
      const at::Tensor per = (at::relu(threshold - p.hidden_pre) * dead_mask * W_dec_norm).sum(-1);
      pre_act = per.mean() * *cfg_.pre_act_loss_coefficient();
    }
    out.emplace_back("pre_act_loss", pre_act);
  }
  return out;
}

void JumpReluSae::before_training_step() {
  at::NoGradGuard no_grad;
  param("threshold").clamp_min_(0.0);
}

}  // namespace mechlab::sae
