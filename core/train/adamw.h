// AdamW (Loshchilov & Hutter 2019) with PyTorch's torch.optim.AdamW semantics
// (amsgrad off), and global-norm gradient clipping as
// torch.nn.utils.clip_grad_norm_. The state is plain tensors so that a
// training checkpoint stores it and a resumed run continues bit for bit.
//
// One step, for each parameter p with gradient g (t counts from 1):
//   p   <- p * (1 - lr * weight_decay)              decoupled weight decay
//   m   <- beta1 * m + (1 - beta1) * g
//   v   <- beta2 * v + (1 - beta2) * g^2
//   p   <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// It runs through ATen's fused AdamW kernel (CPU and CUDA), which computes
// the same update in one pass over the parameters.
//
// Example:
//   AdamW opt(params, AdamWOptions().weight_decay(1.0).beta2(0.98));
//   loss.backward();
//   double norm = clip_grad_norm(params, 1.0);
//   opt.step(lr);
#pragma once

#include "core/util/options.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace mechlab::core::train {

struct AdamWOptions {
  MECHLAB_OPTION(AdamWOptions, double, beta1, 0.9)
  MECHLAB_OPTION(AdamWOptions, double, beta2, 0.999)
  MECHLAB_OPTION(AdamWOptions, double, eps, 1e-8)
  MECHLAB_OPTION(AdamWOptions, double, weight_decay, 0.01)
};

class AdamW {
 public:
  /// `params` are leaf tensors with requires_grad; their gradients are read
  /// from .grad() at each step. State starts at zero (step 0).
  AdamW(std::vector<at::Tensor> params, AdamWOptions options);

  /// One update with learning rate `lr`. Parameters without a gradient are
  /// skipped, as PyTorch does.
  void step(double lr);
  /// Sets every gradient to None (PyTorch's zero_grad(set_to_none=True)).
  void zero_grad();

  const AdamWOptions& options() const { return options_; }
  int64_t steps_taken() const { return step_; }
  /// First and second moment estimates, one per parameter, same shapes.
  const std::vector<at::Tensor>& exp_avg() const { return exp_avg_; }
  const std::vector<at::Tensor>& exp_avg_sq() const { return exp_avg_sq_; }
  /// Restores a saved state (shapes must match the parameters).
  void load_state(int64_t steps, const std::vector<at::Tensor>& exp_avg,
                  const std::vector<at::Tensor>& exp_avg_sq);

 private:
  std::vector<at::Tensor> params_;
  AdamWOptions options_;
  int64_t step_ = 0;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;  // like params_
  std::vector<at::Tensor> state_steps_;           // float32 scalars, one per param (ATen's fused API)
};

/// Scales all gradients so that their joint L2 norm is at most `max_norm`
/// (coefficient max_norm / (norm + 1e-6), capped at 1, as PyTorch). Returns the
/// norm before clipping. max_norm <= 0 only measures.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace mechlab::core::train
