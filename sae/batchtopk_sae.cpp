#include "sae/batchtopk_sae.h"
#include "sae/sparse_ops.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace mechlab::sae {

void BatchTopKSae::sparse_encode_pass(Pass& p, hooks::ModuleHooks& hooks) const {
  at::Tensor norm;  // [d_sae], differentiable (rescale only)
  const at::Tensor h = sparse_hidden_pre(p, hooks, norm);  // [n, d_sae], no gradient
  const int64_t n = h.size(0), d_sae = h.size(1);
  // The dense path's selection: the int(k * n) largest of relu(h) over the
  // whole batch. Taken from h itself: the positive entries rank as in
  // relu(h), and a kept entry <= 0 (fewer positives than kept) gives 0 with
  // zero gradient either way, so it changes nothing but the list's length.
  const auto keep = std::min(static_cast<int64_t>(cfg_.k() * static_cast<double>(n)), n * d_sae);
  const at::Tensor flat = top_entries(h.reshape({-1}), keep);
  SparseRows entries = sparse_rows(flat, n, d_sae);  // [nnz = keep], by row
  const at::Tensor values =
      sparse_rows_encoder_values(p.sae_in, param("W_enc"), param("b_enc"), h, entries, norm);  // [nnz]
  const at::Tensor acts = at::relu(values);  // [nnz]
  p.hidden_pre = h;
  p.acts = at::zeros({n * d_sae}, h.options()).scatter_(0, entries.flat, acts).view({n, d_sae});  // [n, d_sae]
  hooks("hook_sae_acts_post", p.acts);
  sparse_ = SparsePass{p.acts, acts, at::Tensor(), std::move(entries), norm};
}

void BatchTopKSae::encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const {
  if (sparse_pass_wanted(p, training)) {
    sparse_encode_pass(p, hooks);
    return;
  }
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
  at::NoGradGuard no_grad;
  // The kept activations: the sparse pass's list, else the dense acts (the
  // same positive numbers).
  const at::Tensor kept = sparse_pass_of(p) ? sparse_.values.detach() : p.acts;
  TopKSae::after_training_step(p);
  const at::Tensor positive = kept > 0;
  if (!positive.any().item<bool>()) return;
  const double min_positive = kept.masked_select(positive).min().item<double>();
  const double lr = cfg_.topk_threshold_lr();
  cfg_.topk_threshold((1 - lr) * cfg_.topk_threshold() + lr * min_positive);
}

}  // namespace mechlab::sae
