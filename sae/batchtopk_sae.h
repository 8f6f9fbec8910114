// BatchTopKSae (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"):
// training keeps the k x rows largest ReLU'd pre-activations of the whole
// batch (k on average per row); inference keeps each pre-activation above
// the threshold topk_threshold (a JumpReLU with one threshold), which each
// training step moves towards the batch's smallest kept activation:
//   topk_threshold = (1 - topk_threshold_lr) * topk_threshold + topk_threshold_lr * min_{acts > 0} acts
// (SAELens's update_topk_threshold, in double). Losses as TopK (AuxK).
#pragma once

#include "sae/topk_sae.h"

namespace mechlab::sae {

class BatchTopKSae : public TopKSae {
 public:
  explicit BatchTopKSae(SaeConfig cfg) : TopKSae(std::move(cfg)) {}

 protected:
  void encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const override;
  void after_training_step(const Pass& p) override;
};

}  // namespace mechlab::sae
