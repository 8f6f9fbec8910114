// TopKSae (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):
// acts keep the k largest pre-activations of each row, ReLU'd, zero elsewhere.
// With rescale_acts_by_decoder_norm, hidden_pre is multiplied by the decoder
// rows' norms before the selection and acts divided by them before decoding
// (selection as if the decoder had unit rows).
//
// Training adds AuxK (SAELens's calculate_topk_aux_loss): the k_aux = d_in / 2
// (at most the number of dead latents) largest pre-activations among the
// dead latents reconstruct the detached residual x - sae_out,
//   auxiliary_reconstruction_loss = aux_loss_coefficient * min(n_dead / (d_in/2), 1)
//                                   * mean_rows(|| aux_recons - residual ||^2),
// and 0 when no latent is dead.
//
// Training runs the sparse path by default (sae/sparse_ops.h): hidden_pre is
// one dense GEMM without gradient, the top k come from kernels::sae_topk,
// and the decoder, AuxK's decoder and every weight gradient go through the
// k selected latents of each row only. The losses and gradients are the
// dense path's up to the order of summation (tests/sae/sparse_ops_test.cpp);
// the dense path (sparse_training(false)) stays as the reference and for
// benchmarks. Inference (encode, reconstruct, forward) is dense. In the
// sparse path the returned hidden_pre carries no gradient (no TopK loss
// differentiates it; feature_acts still does).
#pragma once

#include "sae/sae.h"
#include "sae/sparse_ops.h"

namespace mechlab::sae {

class TopKSae : public Sae {
 public:
  explicit TopKSae(SaeConfig cfg) : Sae(std::move(cfg)) {}

  /// Whether training_forward takes the sparse path (default) or the dense
  /// one (BatchTopK's sparse path lists its latents per row: sparse_ops.h).
  bool sparse_training() const { return sparse_training_; }
  TopKSae& sparse_training(bool on) {
    sparse_training_ = on;
    return *this;
  }

 protected:
  void encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const override;
  at::Tensor times_W_dec(const at::Tensor& acts) const override;
  LossTerms aux_losses(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                       const at::Tensor& dead_mask) const override;
  /// hidden_pre [..., d_sae] with hook_sae_acts_pre fired and the decoder-norm
  /// rescale applied.
  at::Tensor hidden_pre(const Pass& p, hooks::ModuleHooks& hooks) const;
  /// AuxK (above); the BatchTopK SAE shares it.
  at::Tensor auxk_loss(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                       const at::Tensor& dead_mask) const;
  /// Drops the sparse pass's tensors at the end of a training step.
  void after_training_step(const Pass& p) override;

  /// The sparse training pass in flight: Sae's Pass carries only dense
  /// tensors, so the selected latents are kept here from encode_pass to
  /// the decoder and AuxK of the same training_forward call, keyed by the
  /// dense acts they belong to (acts.is_same), and dropped after the step.
  /// TopK keeps k latents per row ([n, k] values and indices); BatchTopK a
  /// varying number (values [nnz] over the entry list `entries`).
  struct SparsePass {
    at::Tensor acts;     ///< [n, d_sae] the dense acts this pass returned
    at::Tensor values;   ///< [n, k] or [nnz] ReLU'd selected activations (differentiable)
    at::Tensor indices;  ///< [n, k] int64 (TopK), undefined for an entry list
    SparseRows entries;  ///< BatchTopK's entries (flat undefined for TopK)
    at::Tensor norm;     ///< [d_sae] decoder row norms (rescale only, differentiable)
  };
  /// Whether this training pass takes the sparse path.
  bool sparse_pass_wanted(const Pass& p, bool training) const;
  /// The encoder's one dense GEMM for the sparse path, without gradient:
  /// hidden_pre [n, d_sae] (hook_sae_acts_pre fired) rounded as hidden_pre()
  /// rounds it, built in place; `norm` gets the decoder norms (differentiable)
  /// with the rescale, and hidden_pre is then scaled by them.
  at::Tensor sparse_hidden_pre(const Pass& p, hooks::ModuleHooks& hooks, at::Tensor& norm) const;
  bool sparse_pass_of(const Pass& p) const { return sparse_.acts.defined() && sparse_.acts.is_same(p.acts); }

  mutable SparsePass sparse_;  // written only by training passes (training_forward is non-const)

 private:
  void sparse_encode_pass(Pass& p, hooks::ModuleHooks& hooks) const;

  bool sparse_training_ = true;
};

}  // namespace mechlab::sae
