#include "core/train/adamw.h"

#include "core/util/error.h"

#include <cmath>

namespace mechlab::core::train {

AdamW::AdamW(std::vector<at::Tensor> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  MECHLAB_CHECK(options_.beta1() >= 0 && options_.beta1() < 1, "AdamW: beta1 must be in [0, 1), got ",
                options_.beta1());
  MECHLAB_CHECK(options_.beta2() >= 0 && options_.beta2() < 1, "AdamW: beta2 must be in [0, 1), got ",
                options_.beta2());
  MECHLAB_CHECK(options_.eps() > 0, "AdamW: eps must be positive, got ", options_.eps());
  MECHLAB_CHECK(options_.weight_decay() >= 0, "AdamW: weight_decay must be >= 0, got ",
                options_.weight_decay());
  for (const at::Tensor& p : params_) {
    MECHLAB_ASSERT(p.requires_grad());
    exp_avg_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    state_steps_.push_back(at::zeros({}, p.options().dtype(at::kFloat)));
  }
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> p, g, m, v, s;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;
    p.push_back(params_[i]);
    g.push_back(params_[i].grad());
    m.push_back(exp_avg_[i]);
    v.push_back(exp_avg_sq_[i]);
    s.push_back(state_steps_[i]);
  }
  ++step_;
  if (p.empty()) return;
  // As in torch.optim.AdamW(fused=True): the caller advances the step
  // counters, the kernel reads them for the bias corrections. The kernel
  // wants every list on one device and dtype, which a Transformer's are.
  at::_foreach_add_(s, 1.0);
  at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, options_.beta1(), options_.beta2(),
                    options_.weight_decay(), options_.eps(), /*amsgrad=*/false, /*maximize=*/false);
}

void AdamW::zero_grad() {
  for (at::Tensor& p : params_) p.mutable_grad() = at::Tensor();
}

void AdamW::load_state(int64_t steps, const std::vector<at::Tensor>& exp_avg,
                       const std::vector<at::Tensor>& exp_avg_sq) {
  MECHLAB_CHECK(steps >= 0, "AdamW state: negative step count ", steps);
  MECHLAB_CHECK(exp_avg.size() == params_.size() && exp_avg_sq.size() == params_.size(),
                "AdamW state holds ", exp_avg.size(), " moment tensors but the model has ",
                params_.size(), " parameters");
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    MECHLAB_CHECK(exp_avg[i].sizes() == params_[i].sizes() &&
                      exp_avg_sq[i].sizes() == params_[i].sizes(),
                  "AdamW state: moment ", i, " has shape ", exp_avg[i].sizes(), " / ",
                  exp_avg_sq[i].sizes(), " but the parameter has ", params_[i].sizes());
    exp_avg_[i].copy_(exp_avg[i]);
    exp_avg_sq_[i].copy_(exp_avg_sq[i]);
    state_steps_[i].fill_(static_cast<double>(steps));
  }
  step_ = steps;
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return 0.0;
  // Norm of the per-tensor norms = the L2 norm of all gradients together.
  at::Tensor total = at::stack(at::_foreach_norm(grads, 2)).norm(2);
  const double norm = total.item<double>();
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) at::_foreach_mul_(grads, coef);
  }
  return norm;
}

}  // namespace mechlab::core::train
