#include "sae/topk_sae.h"

#include "core/util/error.h"
#include "kernels/sae_topk.h"
#include "sae/sparse_ops.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

namespace mechlab::sae {

at::Tensor TopKSae::hidden_pre(const Pass& p, hooks::ModuleHooks& hooks) const {
  at::Tensor h = at::matmul(p.sae_in, param("W_enc")) + param("b_enc");  // [..., d_sae]
  hooks("hook_sae_acts_pre", h);
  if (cfg_.rescale_acts_by_decoder_norm()) h = h * param("W_dec").norm(2, {-1});
  return h;
}

bool TopKSae::sparse_pass_wanted(const Pass& p, bool training) const {
  const at::ScalarType t = param("W_enc").scalar_type();
  return training && sparse_training_ && p.sae_in.dim() == 2 && (t == at::kFloat || t == at::kDouble);
}

at::Tensor TopKSae::sparse_hidden_pre(const Pass& p, hooks::ModuleHooks& hooks, at::Tensor& norm) const {
  at::Tensor h;  // [n, d_sae]: the one dense GEMM, rounded as hidden_pre() rounds it
  {
    at::NoGradGuard no_grad;
    h = at::matmul(p.sae_in, param("W_enc"));
    h.add_(param("b_enc"));  // in place: the same sum without a second [n, d_sae] buffer
  }
  hooks("hook_sae_acts_pre", h);  // training passes run no hooks (training_forward)
  if (cfg_.rescale_acts_by_decoder_norm()) {
    norm = param("W_dec").norm(2, {-1});  // [d_sae], differentiable
    at::NoGradGuard no_grad;
    h.mul_(norm);  // the dense path's h * norm, in place
  }
  return h;
}

void TopKSae::sparse_encode_pass(Pass& p, hooks::ModuleHooks& hooks) const {
  const auto k = static_cast<int64_t>(cfg_.k());
  const at::Tensor& W_enc = param("W_enc");
  const at::Tensor& b_enc = param("b_enc");
  at::Tensor norm;  // [d_sae], differentiable (rescale only)
  const at::Tensor h = sparse_hidden_pre(p, hooks, norm);  // [n, d_sae]
  const at::Tensor indices = kernels::sae_topk(h, k);  // [n, k]
  // h[idx], which is raw[idx] * norm[idx] as the dense path rounds it.
  const at::Tensor values = sparse_encoder_values(p.sae_in, W_enc, b_enc, h, indices, norm);  // [n, k]
  const at::Tensor acts_k = at::relu(values);  // [n, k]
  p.hidden_pre = h;
  // In place into fresh zeros: the out-of-place scatter copies the whole
  // [n, d_sae] tensor once more.
  p.acts = at::zeros_like(h).scatter_(-1, indices, acts_k);  // [n, d_sae]
  hooks("hook_sae_acts_post", p.acts);
  sparse_ = SparsePass{p.acts, acts_k, indices, SparseRows{}, norm};
}

void TopKSae::after_training_step(const Pass& /*p*/) { sparse_ = SparsePass{}; }

void TopKSae::encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const {
  if (sparse_pass_wanted(p, training)) {
    sparse_encode_pass(p, hooks);
    return;
  }
  p.hidden_pre = hidden_pre(p, hooks);
  auto [values, indices] = at::topk(p.hidden_pre, static_cast<int64_t>(cfg_.k()), -1,
                                    /*largest=*/true, /*sorted=*/false);  // [..., k]
  p.acts = at::zeros_like(p.hidden_pre).scatter(-1, indices, at::relu(values));  // [..., d_sae]
  hooks("hook_sae_acts_post", p.acts);
}

at::Tensor TopKSae::times_W_dec(const at::Tensor& acts) const {
  const at::Tensor& W_dec = param("W_dec");  // [d_sae, d_in]
  if (sparse_.acts.defined() && sparse_.acts.is_same(acts)) {
    const bool listed = !sparse_.indices.defined();  // BatchTopK's entry list
    const at::Tensor& latents = listed ? sparse_.entries.latents : sparse_.indices;
    at::Tensor v = sparse_.values;  // [n, k] or [nnz]
    if (sparse_.norm.defined()) {
      // The encoder's norms, reused: one norm (and one dense backward of it)
      // per step instead of two; the same numbers as a recomputation.
      v = v * sparse_.norm.reciprocal().index_select(0, latents.flatten()).view_as(v);
    }
    return listed ? sparse_rows_decode(v, sparse_.entries, W_dec)  // [n, d_in]
                  : sparse_decode(v, sparse_.indices, W_dec);
  }
  // SAELens multiplies by (1 / norm), not divides: the same rounding.
  if (cfg_.rescale_acts_by_decoder_norm()) return at::matmul(acts * W_dec.norm(2, {-1}).reciprocal(), W_dec);
  return at::matmul(acts, W_dec);
}

at::Tensor TopKSae::auxk_loss(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                              const at::Tensor& dead_mask) const {
  const int64_t n_dead = dead_mask.defined() ? dead_mask.sum().item<int64_t>() : 0;
  if (n_dead == 0) return at::zeros({}, sae_out.options());
  MECHLAB_CHECK(cfg_.normalize_activations() == "none",
                "the AuxK loss does not support normalize_activations = ",
                cfg_.normalize_activations(),
                " (its reconstruction would be in normalised space, the residual not); use none");
  const at::Tensor residual = (x - sae_out).detach();  // [batch, d_in]
  int64_t k_aux = x.size(-1) / 2;
  const double scale = std::min(static_cast<double>(n_dead) / static_cast<double>(k_aux), 1.0);
  k_aux = std::min(k_aux, n_dead);
  const at::Tensor candidates = at::where(dead_mask.unsqueeze(0), p.hidden_pre,
                                          -std::numeric_limits<double>::infinity());  // [batch, d_sae]
  if (sparse_pass_of(p)) {
    // The same selection and values, through the sparse encoder and decoder.
    const at::Tensor indices = kernels::sae_topk(candidates.detach(), k_aux);  // [batch, k_aux]
    at::Tensor v = sparse_encoder_values(p.sae_in, param("W_enc"), param("b_enc"), p.hidden_pre, indices,
                                         sparse_.norm);  // [batch, k_aux]
    if (sparse_.norm.defined()) v = v * sparse_.norm.reciprocal().index_select(0, indices.flatten()).view_as(v);
    const at::Tensor recons = sparse_decode(v, indices, param("W_dec"));  // [batch, d_in]
    const at::Tensor loss = (recons - residual).pow(2).sum(-1).mean();
    return loss * (cfg_.aux_loss_coefficient() * scale);
  }
  auto [values, indices] = at::topk(candidates, k_aux, -1, true, false);  // [batch, k_aux]
  const at::Tensor aux_acts = at::zeros_like(p.hidden_pre).scatter(-1, indices, values);
  const at::Tensor recons = times_W_dec(aux_acts);  // [batch, d_in]
  const at::Tensor loss = (recons - residual).pow(2).sum(-1).mean();
  return loss * (cfg_.aux_loss_coefficient() * scale);
}

LossTerms TopKSae::aux_losses(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                              const at::Tensor& dead_mask) const {
  return {{"auxiliary_reconstruction_loss", auxk_loss(x, p, sae_out, dead_mask)}};
}

}  // namespace mechlab::sae
