// BatchTopKSae (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"):
// training keeps the k x rows largest ReLU'd pre-activations of the whole
// batch (k on average per row); inference keeps each pre-activation above
// the threshold topk_threshold (a JumpReLU with one threshold), which each
// training step moves towards the batch's smallest kept activation:
//   topk_threshold = (1 - topk_threshold_lr) * topk_threshold + topk_threshold_lr * min_{acts > 0} acts
// (SAELens's update_topk_threshold, in double). Losses as TopK (AuxK).
//
// Training runs sparse by default (TopKSae::sparse_training): the one dense
// GEMM without gradient, the batch's top k x n taken from it, and the kept
// (row, latent) entries, a varying number per row, listed by row
// (sae/sparse_ops.h's SparseRows) for the encoder's gradients and the
// decoder. The dense path stays as reference (sparse_training(false)).
#pragma once

#include "sae/topk_sae.h"

namespace mechlab::sae {

class BatchTopKSae : public TopKSae {
 public:
  explicit BatchTopKSae(SaeConfig cfg) : TopKSae(std::move(cfg)) {}

 protected:
  void encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const override;
  void after_training_step(const Pass& p) override;

 private:
  void sparse_encode_pass(Pass& p, hooks::ModuleHooks& hooks) const;
};

}  // namespace mechlab::sae
