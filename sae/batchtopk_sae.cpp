#include "sae/batchtopk_sae.h"

#include <ATen/ATen.h>

namespace mechlab::sae {

void BatchTopKSae::encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const {
  p.hidden_pre = hidden_pre(p, hooks);  // [..., d_sae]
  if (training) {
    const at::Tensor acts = at::relu(p.hidden_pre);
    const at::Tensor flat = acts.flatten();  // [rows * d_sae]
    const int64_t rows = acts.numel() / acts.size(-1);
    // SAELens: int(k * num_samples), truncated.
    const auto keep = static_cast<int64_t>(cfg_.k() * static_cast<double>(rows));
    auto [values, indices] = at::topk(flat, keep, -1);
    p.acts = at::zeros_like(flat).scatter(-1, indices, values).reshape(acts.sizes());
  } else {
    p.acts = at::relu(p.hidden_pre) * (p.hidden_pre > cfg_.topk_threshold()).to(p.hidden_pre.scalar_type());
  }
  hooks("hook_sae_acts_post", p.acts);
}

void BatchTopKSae::after_training_step(const Pass& p) {
  TopKSae::after_training_step(p);
  at::NoGradGuard no_grad;
  const at::Tensor positive = p.acts > 0;
  if (!positive.any().item<bool>()) return;
  const double min_positive = p.acts.masked_select(positive).min().item<double>();
  const double lr = cfg_.topk_threshold_lr();
  cfg_.topk_threshold((1 - lr) * cfg_.topk_threshold() + lr * min_positive);
}

}  // namespace mechlab::sae
