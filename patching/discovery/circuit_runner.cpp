#include "patching/discovery/circuit_runner.h"

#include "core/model/layers/attention.h"
#include "core/model/layers/mlp.h"
#include "core/model/layers/norm.h"
#include "core/util/error.h"
#include "core/util/parallel.h"
#include "hooks/act_name.h"
#include "kernels/edge_patch.h"
#include "patching/bulk_patcher.h"
#include "patching/sender_delta.h"

#include <ATen/ATen.h>


#include <algorithm>
#include <optional>
#include <utility>

namespace mechlab::discovery {

namespace {

using patching::CircuitNode;
using patching::ReceiverChannel;
using patching::ReceiverInput;
using Kind = CircuitNode::Kind;

// Catches hook_z of one layer (the head outputs of a block run by hand).
class CatchZ : public core::HookDispatch {
 public:
  CatchZ(int n_layers, int layer) : site_{core::HookKind::z, layer} {
    active_.assign(static_cast<size_t>(core::site_count(n_layers)), 0);
    active_[static_cast<size_t>(site_.index())] = 1;
  }
  void fire(const core::HookSite&, at::Tensor& act) override { z = act; }
  at::Tensor z;  // [batch, pos, head, d_head]

 private:
  core::HookSite site_;
};

// sum over s of rows[n, s] * shared[b, p, s, :] -> [batch, pos, n, d_model].
// rows [n, S0] on shared's device. The state's deltas are stored sender-major
// ([S, batch, pos, d_model], viewed as [batch, pos, S, d_model]), so this is
// one GEMM over them (also over some of the prompts: each sender's rows stay
// one stretch of memory); a broadcast matmul would run batch * pos GEMVs.
at::Tensor sender_sum(const at::Tensor& rows, const at::Tensor& shared) {
  const at::Tensor t = shared.permute({2, 0, 1, 3});  // [S0, batch, pos, d_model]
  const bool sender_rows = t.stride(3) == 1 && t.stride(2) == t.size(3) && t.stride(1) == t.size(2) * t.size(3);
  if (!sender_rows) return at::matmul(rows, shared);
  return at::mm(rows, t.view({t.size(0), -1}))
      .view({rows.size(0), shared.size(0), shared.size(1), shared.size(3)})
      .permute({1, 2, 0, 3});
}

// Mean over prompts and real positions: [batch, pos, ...] -> [1, 1, ...].
at::Tensor masked_mean(const at::Tensor& x, const at::Tensor& mask) {
  if (!mask.defined()) return x.mean(at::IntArrayRef{0, 1}, true);
  at::Tensor w = mask.to(x.device(), x.scalar_type());  // [batch, pos]
  for (int64_t i = 2; i < x.dim(); ++i) w = w.unsqueeze(-1);
  return (x * w).sum(at::IntArrayRef{0, 1}, true) / w.sum();
}

}  // namespace

std::string ablation_name(Ablation a) {
  switch (a) {
    case Ablation::corrupted: return "corrupted";
    case Ablation::mean: return "mean";
    case Ablation::zero: return "zero";
  }
  return "corrupted";
}

Ablation parse_ablation(const std::string& name) {
  for (Ablation a : {Ablation::corrupted, Ablation::mean, Ablation::zero}) {
    if (name == ablation_name(a)) return a;
  }
  throw Error("unknown ablation \"" + name + "\"; use corrupted, mean or zero");
}

CircuitRunner::CircuitRunner(hooks::HookedTransformer& model, const patching::PatchingData& data,
                             Ablation ablation, const RunnerOptions& options)
    : model_(model), graph_(model.cfg()), ablation_(ablation), options_(options) {
  at::NoGradGuard no_grad;
  const auto& cfg = model_.cfg();
  const at::ScalarType dt = model_.model().dtype();
  tokens_ = model_.model().check_tokens(data.clean_tokens);  // int64 [batch, pos]
  // Bool once here: the runtime checks an integer mask's values (a device
  // sync) on every forward, a bool one not.
  if (data.attention_mask.defined()) mask_ = data.attention_mask.to(model_.model().device()).ne(0);
  hooks::RunOptions ro;
  ro.attention_mask(mask_);

  const std::vector<std::string> senders = patching::sender_hooks(cfg);
  auto [clean_logits, clean] = model_.run_with_cache(tokens_, hooks::NamesFilter(senders), ro);
  clean_logits_ = clean_logits;
  const at::Tensor embed = clean.get("resid_pre", 0);  // [batch, pos, d_model]
  embed_ = embed.to(dt);

  hooks::ActivationCache corrupted;
  if (ablation_ == Ablation::corrupted) {
    at::Tensor ctok = model_.model().check_tokens(data.corrupted_tokens);
    corrupted = model_.run_with_cache(ctok, hooks::NamesFilter(senders), ro).second;
  }
  auto head_out = [&](const at::Tensor& z, int l) {  // [batch, pos, head, d_head] -> [batch, pos, head, d_model]
    return at::einsum("bphe,hem->bphm", {z, model_.model().weights().blocks[static_cast<size_t>(l)].W_O});
  };
  auto ablate = [&](const at::Tensor& clean_out, const std::function<at::Tensor()>& corrupted_out) {
    switch (ablation_) {
      case Ablation::corrupted: return corrupted_out();
      case Ablation::mean: return masked_mean(clean_out, mask_);
      case Ablation::zero: break;
    }
    return at::Tensor();
  };
  {
    at::Tensor a = ablate(embed, [&] { return corrupted.get("resid_pre", 0); });
    input_delta_ = (a.defined() ? embed - a : embed).unsqueeze(2).to(dt);  // [batch, pos, 1, d_model]
  }
  for (int l = 0; l < cfg.n_layers; ++l) {
    ablated_heads_.push_back(
        ablate(head_out(clean.get("z", l), l), [&] { return head_out(corrupted.get("z", l), l); }));
    if (cfg.has_mlp()) {
      ablated_mlp_.push_back(ablate(clean.get("mlp_out", l).unsqueeze(2),
                                    [&] { return corrupted.get("mlp_out", l).unsqueeze(2); }));
    }
  }
  try {
    data.check_same_padding("a position-split circuit");
  } catch (const Error& e) {
    split_refusal_ = e.what();
  }
  budget_ = options_.memory_budget_bytes() > 0 ? options_.memory_budget_bytes()
                                               : patching::default_memory_budget(model_.model().device());
}

int64_t CircuitRunner::senders_before(int layer) const {
  const auto& cfg = model_.cfg();
  if (layer >= cfg.n_layers) return static_cast<int64_t>(graph_.senders().size());
  return 1 + static_cast<int64_t>(layer) * (cfg.n_heads + (cfg.has_mlp() ? 1 : 0));
}

int64_t CircuitRunner::copies_per_forward(const patching::Metric& metric) const {
  // Peak working memory of one copy (a forward over batch x pos tokens, no
  // autograd): residual-sized tensors, the split q/k/v inputs and their
  // norms, q/k/v/z, the MLP hidden layer, the sender deltas (and their
  // concatenation) and the logits.
  const auto& c = model_.cfg();
  const int64_t tokens = tokens_.size(0) * tokens_.size(1);
  const int64_t elem = std::max<int64_t>(4, c10::elementSize(model_.model().dtype()));
  const int64_t S = static_cast<int64_t>(graph_.senders().size());
  const int64_t split = 2 * (c.n_heads + 2 * c.kv_heads()) * c.d_model;
  int64_t per_token = 8 * c.d_model + split + 4 * c.n_heads * c.d_head + (c.has_mlp() ? 3 * c.d_mlp : 0) +
                      3 * S * c.d_model;
  int64_t bytes = tokens * per_token * elem;
  bytes += 3 * tokens_.size(0) * c.n_heads * tokens_.size(1) * tokens_.size(1) * elem;
  const bool all_logits = metric.reads() == patching::Metric::Reads::all_logits;
  bytes += (all_logits ? tokens : tokens_.size(0)) * c.d_vocab * 4 * 2;
  int64_t k = std::max<int64_t>(1, budget_ / std::max<int64_t>(bytes, 1));
  if (options_.max_copies() > 0) k = std::min(k, options_.max_copies());
  return k;
}

bool CircuitRunner::can_restart_at_mlp() const {
  return model_.cfg().has_mlp() && !model_.cfg().parallel_attn_mlp;
}

bool CircuitRunner::answers_are_last(const patching::Metric& metric) const {
  // The answer position of each prompt must be its last real token: the
  // keys after it are padding (or there are none).
  if (metric.reads() != patching::Metric::Reads::answer_logits) return false;
  const at::Tensor pos = metric.answer_pos().to(at::kCPU, at::kLong);  // [batch]
  const int64_t P = tokens_.size(1);
  const at::Tensor after = at::arange(P, at::kLong).unsqueeze(0) > pos.unsqueeze(1);  // [batch, pos]
  if (!mask_.defined()) return !after.any().item<bool>();
  return !(after & mask_.to(at::kCPU).ne(0)).any().item<bool>();
}

at::Tensor CircuitRunner::masked_forward(int start, const at::Tensor& masks_cpu, bool record, RestartAt at,
                                         const at::Tensor& answer_pos) {
  const auto& cfg = model_.cfg();
  const int64_t k = masks_cpu.size(0), b = tokens_.size(0), P = tokens_.size(1), d = cfg.d_model;
  const int64_t H = cfg.n_heads, KV = cfg.kv_heads();
  // Position-split masks carry a position axis: [k, pos, R, S].
  const bool split = masks_cpu.dim() == 4;
  MECHLAB_ASSERT(!split || masks_cpu.size(1) == P);
  const at::Tensor masks = masks_cpu.to(model_.model().device(), model_.model().dtype());  // [k, (pos,) R, S]
  // Per receiver (CPU, [R]): whether any copy removes an edge into it, and
  // whether every copy has the same row (then one mask patches all copies).
  const at::Tensor flat = split ? masks_cpu.transpose(1, 2).reshape({k, masks_cpu.size(2), -1}) : masks_cpu;  // [k, R, (pos *) S]
  const at::Tensor any_removed = flat.ne(0).any(2).any(0).contiguous();
  const at::Tensor uniform = flat.eq(flat.narrow(0, 0, 1)).all(2).all(0).contiguous();
  const bool* any_p = any_removed.data_ptr<bool>();
  const bool* uni_p = uniform.data_ptr<bool>();

  // Senders before `start` come from the state (or are the input); those of
  // layers >= start are computed live, one chunk per layer and kind. From
  // the MLP, the heads of layer `start` are the state's too.
  const bool from_mlp = at == RestartAt::mlp;
  MECHLAB_ASSERT(!from_mlp || (can_restart_at_mlp() && start < cfg.n_layers && !record));
  const int64_t S0 = from_mlp ? senders_before(start) + H : start == 0 ? 1 : senders_before(start);
  // (A restart from layer 0's attention needs no state: the input is the only earlier sender.)
  const at::Tensor shared =
      start == 0 && !from_mlp ? input_delta_ : deltas_.narrow(2, 0, S0);  // [batch, pos, S0, d_model]
  // The last layer at the answer positions only (restart at it with a
  // metric that reads those alone): queries, attention output, MLP and
  // output receiver there, keys and values everywhere.
  const bool answers_only = answer_pos.defined();
  MECHLAB_ASSERT(!answers_only || (start < cfg.n_layers && !record));
  at::Tensor rows, apos;  // int64 [batch]
  auto at_answers = [&](const at::Tensor& x) {  // [batch, pos, ...] -> [batch, 1, ...]; [1, 1, ...] kept
    if (x.size(1) == 1) return x;
    return x.index({rows, apos}).unsqueeze(1);
  };
  if (answers_only) {
    apos = answer_pos.to(model_.model().device(), at::kLong);
    rows = at::arange(b, apos.options());
  }
  std::vector<at::Tensor> live;  // each [k * batch, pos, n, d_model], in sender order
  at::Tensor live_cat;
  int64_t live_n = 0, live_cat_n = 0;

  // act [k * batch, pos, nr, d_model] holds receivers r0..r0+nr, which read
  // senders 0..s_end.
  // memo: shared_src is `shared` (every position), so the shared senders'
  // correction may come from shared_correction's memo.
  auto patch = [&](at::Tensor& act, int64_t r0, int64_t nr, int64_t s_end, const at::Tensor& shared_src,
                   bool memo = true) {
    const int64_t Pc = act.size(1);  // pos, or 1 at the answer positions
    bool any = false, uni = true;
    for (int64_t r = r0; r < r0 + nr; ++r) {
      any = any || any_p[r];
      uni = uni && uni_p[r];
    }
    if (!any) return;
    const int64_t n_live = s_end - S0;
    if (split) {
      // Per position: out[c, b, p, r] = act - sum_s m[c, p, r, s] * delta[b, p, s]
      // (the answers-only restart, which narrows positions, is off for split masks).
      MECHLAB_ASSERT(Pc == P);
      const at::Tensor mp = masks.narrow(2, r0, nr);  // [k, pos, nr, S]
      at::Tensor corr = at::einsum("kprs,bpsd->kbprd", {mp.narrow(3, 0, S0), shared_src});  // [k, batch, pos, nr, d_model]
      if (n_live > 0) {
        if (live_cat_n != live_n) {
          live_cat = at::cat(live, 2);
          live_cat_n = live_n;
        }
        const at::Tensor lv = live_cat.narrow(2, 0, n_live).reshape({k, b, P, n_live, d});
        corr = corr + at::einsum("kprs,kbpsd->kbprd", {mp.narrow(3, S0, n_live), lv});
      }
      act = (act.reshape({k, b, P, nr, d}) - corr).view({k * b, P, nr, d});
      return;
    }
    const at::Tensor m = masks.narrow(1, r0, nr);  // [k, nr, S]
    at::Tensor lv;  // [k * batch, pos, n_live, d_model]
    if (n_live > 0) {
      if (live_cat_n != live_n) {
        live_cat = at::cat(live, 2);
        live_cat_n = live_n;
      }
      lv = live_cat.narrow(2, 0, n_live);
    }
    // Every copy patched with copy 0's rows: the one-mask kernel on the live
    // senders and one contraction over the shared ones, whatever k is.
    const at::Tensor m0 = m[0];  // [nr, S]
    at::Tensor out = act;
    if (n_live > 0) out = kernels::edge_patch(act.contiguous(), lv.contiguous(), m0.narrow(1, S0, n_live).contiguous());
    // [batch, pos, nr, d_model]; at full positions through the memo (ACDC's
    // consecutive trials change one entry of these rows, or none).
    const at::Tensor corr = memo ? shared_correction(r0, nr, masks_cpu[0].narrow(0, r0, nr).narrow(1, 0, S0), shared_src)
                                 : sender_sum(m0.narrow(1, 0, S0), shared_src);
    at::Tensor act5 = out.view({k, b, Pc, nr, d}) - corr.unsqueeze(0);  // [k, batch, pos, nr, d_model], a new tensor
    if (!uni) {
      // Then, per copy, only the rows that differ from copy 0's (trials
      // differ from each other in a few edges, so this is a few rows, not
      // k full contractions). D = m - m[0] on the CPU.
      const at::Tensor D = (masks_cpu.narrow(1, r0, nr) - masks_cpu.narrow(1, r0, nr).narrow(0, 0, 1)).contiguous();  // [k, nr, S]
      const at::Tensor rows_nz = D.ne(0).any(2).nonzero();  // [n, 2]: (copy, receiver) pairs
      const int64_t n = rows_nz.size(0);
      if (n > 0) {
        const at::Tensor c_idx = rows_nz.select(1, 0).contiguous(), r_idx = rows_nz.select(1, 1).contiguous();  // [n]
        const at::Tensor Dn = D.index({c_idx, r_idx}).to(masks.device(), masks.scalar_type());  // [n, S]
        at::Tensor vals = at::einsum("ns,bpsd->nbpd", {Dn.narrow(1, 0, S0), shared_src});  // [n, batch, pos, d_model]
        if (n_live > 0 && D.narrow(2, S0, n_live).ne(0).any().item<bool>()) {
          const at::Tensor c_dev = c_idx.to(masks.device());
          const at::Tensor lv_n = lv.view({k, b, Pc, n_live, d}).index_select(0, c_dev);  // [n, batch, pos, n_live, d_model]
          vals = vals + at::einsum("ns,nbpsd->nbpd", {Dn.narrow(1, S0, n_live), lv_n});
        }
        // act5[c_i, :, :, r_i, :] -= vals[i] (the pairs are distinct)
        c10::List<std::optional<at::Tensor>> where;
        where.push_back(c_idx.to(masks.device()));
        where.push_back(std::nullopt);
        where.push_back(std::nullopt);
        where.push_back(r_idx.to(masks.device()));
        act5.index_put_(where, -vals, /*accumulate=*/true);
      }
    }
    act = act5.view({k * b, Pc, nr, d});
  };

  at::Tensor final_resid;
  // Restarting at the last layer's MLP with answers only: the answers block below does it.
  const int last = cfg.n_layers - 1;
  const bool last_from_mlp = answers_only && from_mlp && start == last;
  // Layer `start`'s resid_mid [k * batch, pos, d_model] when the restart
  // continues from its MLP: the state's.
  at::Tensor mid_in;
  if (from_mlp && !last_from_mlp) mid_in = resid_mid_[static_cast<size_t>(start)].repeat({k, 1, 1});
  // Layer `start`'s MLP alone, as the block runs it (same norm and MLP
  // functions): mlp_in = resid_mid - patch, resid_post = resid_mid + mlp_out.
  at::Tensor after_mlp;  // [k * batch, pos, d_model]: the residual entering layer start + 1
  if (mid_in.defined() && !cfg.has_mlp()) after_mlp = mid_in;
  if (mid_in.defined() && cfg.has_mlp()) {
    const core::ModelConfig& mc = model_.model().config();
    const core::LayerWeights& w = model_.model().weights().blocks[static_cast<size_t>(start)];
    at::Tensor x4 = mid_in.unsqueeze(2);  // [k * batch, pos, 1, d_model]
    patch(x4, graph_.receiver_index({{Kind::mlp, start, -1}, ReceiverChannel::resid}), 1, senders_before(start) + H,
          shared);
    const core::Hooks none;
    const at::Tensor x = core::apply_norm(mc, x4.squeeze(2), w.ln2_w, w.ln2_b, {core::HookKind::ln2_scale, start},
                                          {core::HookKind::ln2_normalized, start}, none);
    const at::Tensor mlp_out = core::mlp_forward(mc, w, start, x, none);  // [k * batch, pos, d_model]
    at::Tensor out = mlp_out.unsqueeze(2);                                // [k * batch, pos, 1, d_model]
    const at::Tensor& abl_m = ablated_mlp_[static_cast<size_t>(start)];
    if (abl_m.defined()) out = (out.view({k, b, P, 1, d}) - abl_m.unsqueeze(0)).view({k * b, P, 1, d});
    live.push_back(out);
    live_n += 1;
    after_mlp = mid_in + mlp_out;
  }
  const int first_block = mid_in.defined() ? start + 1 : start;
  // With answers only, the hooked blocks stop before the last layer.
  const int stop = answers_only ? last : cfg.n_layers;
  at::Tensor into_stop;  // the residual entering layer `stop` [k * batch, pos, d_model]
  if (last_from_mlp) {
    // the answers block starts from the state's resid_mid
  } else if (first_block >= stop) {
    into_stop = after_mlp.defined()     ? after_mlp
        : first_block >= cfg.n_layers   ? resid_final_.repeat({k, 1, 1})
                                        : resid_pre_[static_cast<size_t>(first_block)].repeat({k, 1, 1});
  } else {
    hooks::HookScope scope(model_.hooks());
    if (record) {
      resid_pre_.assign(static_cast<size_t>(cfg.n_layers), at::Tensor());
      resid_mid_.assign(can_restart_at_mlp() ? static_cast<size_t>(cfg.n_layers) : 0, at::Tensor());
    }
    for (int l = first_block; l < stop; ++l) {
      const int64_t r_layer = graph_.receiver_index({{Kind::head, l, 0}, ReceiverChannel::q});
      const int64_t s_layer = senders_before(l);
      if (record) {
        scope.add(hooks::act_name("resid_pre", l),
                  [this, l](at::Tensor& x, const hooks::HookPoint&) { resid_pre_[static_cast<size_t>(l)] = x; });
        if (can_restart_at_mlp()) {
          scope.add(hooks::act_name("resid_mid", l),
                    [this, l](at::Tensor& x, const hooks::HookPoint&) { resid_mid_[static_cast<size_t>(l)] = x; });
        }
      }
      scope.add(hooks::act_name("q_input", l), [&, r_layer, s_layer](at::Tensor& x, const hooks::HookPoint&) {
        patch(x, r_layer, H, s_layer, shared);
      });
      scope.add(hooks::act_name("k_input", l), [&, r_layer, s_layer](at::Tensor& x, const hooks::HookPoint&) {
        patch(x, r_layer + H, KV, s_layer, shared);
      });
      scope.add(hooks::act_name("v_input", l), [&, r_layer, s_layer](at::Tensor& x, const hooks::HookPoint&) {
        patch(x, r_layer + H + KV, KV, s_layer, shared);
      });
      const at::Tensor* W_O = &model_.model().weights().blocks[static_cast<size_t>(l)].W_O;  // [head, d_head, d_model]
      const at::Tensor* abl_h = &ablated_heads_[static_cast<size_t>(l)];
      scope.add(hooks::act_name("z", l), [&, W_O, abl_h](at::Tensor& z, const hooks::HookPoint&) {
        at::Tensor out = at::einsum("bphe,hem->bphm", {z, *W_O});  // [k * batch, pos, head, d_model]
        if (abl_h->defined()) out = (out.view({k, b, P, H, d}) - abl_h->unsqueeze(0)).view({k * b, P, H, d});
        live.push_back(out);
        live_n += H;
      });
      if (cfg.has_mlp()) {
        const int64_t r_mlp = graph_.receiver_index({{Kind::mlp, l, -1}, ReceiverChannel::resid});
        const int64_t s_mlp = cfg.parallel_attn_mlp ? s_layer : s_layer + H;
        scope.add(hooks::act_name("mlp_in", l), [&, r_mlp, s_mlp](at::Tensor& x, const hooks::HookPoint&) {
          at::Tensor x4 = x.unsqueeze(2);  // [k * batch, pos, 1, d_model]
          patch(x4, r_mlp, 1, s_mlp, shared);
          x = x4.squeeze(2);
        });
        const at::Tensor* abl_m = &ablated_mlp_[static_cast<size_t>(l)];
        scope.add(hooks::act_name("mlp_out", l), [&, abl_m](at::Tensor& x, const hooks::HookPoint&) {
          at::Tensor out = x.unsqueeze(2);  // [k * batch, pos, 1, d_model]
          if (abl_m->defined()) out = (out.view({k, b, P, 1, d}) - abl_m->unsqueeze(0)).view({k * b, P, 1, d});
          live.push_back(out);
          live_n += 1;
        });
      }
    }
    hooks::RunOptions ro;
    if (mask_.defined()) ro.attention_mask(mask_.repeat({k, 1}));
    ro.start_at_layer(first_block);
    ro.stop_at_layer(stop);
    at::Tensor input = after_mlp.defined() ? after_mlp
                       : start == 0 ? tokens_.repeat({k, 1})
                                    : resid_pre_[static_cast<size_t>(start)].repeat({k, 1, 1});
    into_stop = model_.forward(input, ro);  // [k * batch, pos, d_model]
  }
  if (answers_only) {
    // The block of the last layer by hand, with the runtime's own norm,
    // attention (queries at the last positions only: the answer is each
    // prompt's last real token, answers_are_last) and MLP.
    const int l = last;
    const core::ModelConfig& mc = model_.model().config();
    const core::LayerWeights& w = model_.model().weights().blocks[static_cast<size_t>(l)];
    const core::Hooks none;
    const at::Tensor shared_a = state_at_answers(answer_pos).narrow(2, 0, S0);  // [batch, 1, S0, d_model]
    // [k * batch, pos, ...] -> [k * batch, 1, ...] at each copy's answer positions
    const at::Tensor rows_k = at::arange(k * b, apos.options()), apos_k = apos.repeat({k});
    auto at_answers_k = [&](const at::Tensor& t) { return t.index({rows_k, apos_k}).unsqueeze(1); };
    const at::Tensor pre_a = last_from_mlp ? at_answers(resid_pre_[static_cast<size_t>(l)]).repeat({k, 1, 1})
                                           : at_answers_k(into_stop);  // [k * batch, 1, d_model]
    at::Tensor mid;  // resid_mid at the answer positions [k * batch, 1, d_model]
    if (last_from_mlp) {
      mid = at_answers(resid_mid_[static_cast<size_t>(l)]).repeat({k, 1, 1});
    } else {
      const int64_t r_layer = graph_.receiver_index({{Kind::head, l, 0}, ReceiverChannel::q});
      auto copies = [&](const at::Tensor& t, int64_t n) {  // [k * batch, p, d_model] -> [k * batch, p, n, d_model]
        return t.unsqueeze(2).expand({-1, -1, n, -1}).contiguous();
      };
      const int64_t s_layer = senders_before(l);
      at::Tensor k_in = copies(into_stop, KV);  // [k * batch, pos, kv_head, d_model]
      at::Tensor v_in = copies(into_stop, KV);
      patch(k_in, r_layer + H, KV, s_layer, shared);
      patch(v_in, r_layer + H + KV, KV, s_layer, shared);
      // From here on every receiver reads the answer positions only: so do the live senders.
      for (at::Tensor& t : live) t = at_answers_k(t);
      live_cat_n = -1;
      at::Tensor q_in = copies(pre_a, H);  // [k * batch, 1, head, d_model]
      patch(q_in, r_layer, H, s_layer, shared_a, false);
      const core::HookSite scale{core::HookKind::ln1_scale, l}, normed{core::HookKind::ln1_normalized, l};
      q_in = core::apply_norm(mc, q_in, w.ln1_w, w.ln1_b, scale, normed, none);
      k_in = core::apply_norm(mc, k_in, w.ln1_w, w.ln1_b, scale, normed, none);
      v_in = core::apply_norm(mc, v_in, w.ln1_w, w.ln1_b, scale, normed, none);
      const core::AttentionContext ctx = attention_context(k);
      CatchZ catch_z(cfg.n_layers, l);
      const at::Tensor attn_out =
          core::attention_forward(mc, w, l, q_in, k_in, v_in, true, ctx, core::Hooks{&catch_z});  // [k * batch, 1, d_model]
      mid = pre_a + attn_out;
      at::Tensor out = at::einsum("bphe,hem->bphm", {catch_z.z, w.W_O});  // [k * batch, 1, head, d_model]
      const at::Tensor& abl_h = ablated_heads_[static_cast<size_t>(l)];
      if (abl_h.defined()) out = (out.view({k, b, 1, H, d}) - at_answers(abl_h).unsqueeze(0)).view({k * b, 1, H, d});
      live.push_back(out);
      live_n += H;
    }
    final_resid = mid;
    if (cfg.has_mlp()) {
      const int64_t r_mlp = graph_.receiver_index({{Kind::mlp, l, -1}, ReceiverChannel::resid});
      const int64_t s_mlp = cfg.parallel_attn_mlp ? senders_before(l) : senders_before(l) + H;
      at::Tensor x4 = (cfg.parallel_attn_mlp ? pre_a : mid).unsqueeze(2);  // [k * batch, 1, 1, d_model]
      patch(x4, r_mlp, 1, s_mlp, shared_a, false);
      const at::Tensor x = core::apply_norm(mc, x4.squeeze(2), w.ln2_w, w.ln2_b, {core::HookKind::ln2_scale, l},
                                            {core::HookKind::ln2_normalized, l}, none);
      const at::Tensor mlp_out = core::mlp_forward(mc, w, l, x, none);  // [k * batch, 1, d_model]
      at::Tensor out = mlp_out.unsqueeze(2);
      const at::Tensor& abl_m = ablated_mlp_[static_cast<size_t>(l)];
      if (abl_m.defined()) out = (out.view({k, b, 1, 1, d}) - at_answers(abl_m).unsqueeze(0)).view({k * b, 1, 1, d});
      live.push_back(out);
      live_n += 1;
      final_resid = final_resid + mlp_out;
    }
  } else {
    final_resid = into_stop;
  }
  if (record) {
    MECHLAB_ASSERT(start == 0 && k == 1);
    resid_final_ = final_resid;
    // [batch, pos, S, d_model], stored sender-major for sender_sum
    deltas_ = at::cat({input_delta_, at::cat(live, 2)}, 2).permute({2, 0, 1, 3}).contiguous().permute({1, 2, 0, 3});
    corrections_.clear();  // they summed the previous state's deltas
    answer_deltas_ = at::Tensor();
  }
  const int64_t R = static_cast<int64_t>(graph_.receivers().size());
  at::Tensor out4 = final_resid.unsqueeze(2);  // [k * batch, pos, 1, d_model]
  patch(out4, R - 1, 1, static_cast<int64_t>(graph_.senders().size()),
        answers_only ? state_at_answers(answer_pos).narrow(2, 0, S0) : shared,
        !answers_only);
  ++forwards_;
  return out4.squeeze(2);
}

at::Tensor CircuitRunner::shared_correction(int64_t r0, int64_t nr, const at::Tensor& rows, const at::Tensor& shared) {
  const int64_t S0 = rows.size(1);
  const at::Tensor rows_c = rows.contiguous();  // float [nr, S0] (CPU)
  auto sum = [&] { return sender_sum(rows_c.to(shared.device(), shared.scalar_type()), shared); };
  for (SharedCorrection& c : corrections_) {
    if (c.r0 != r0 || c.nr != nr || c.S0 != S0) continue;
    // Recomputed whenever a row changed, never updated in place: the result
    // is then a function of the rows alone, so a resumed ACDC computes the
    // same bits as the uninterrupted run (an incremental update would make
    // them depend on the order of earlier trials).
    if (!at::equal(rows_c, c.rows)) {
      c.rows = rows_c.clone();
      c.corr = sum();
    }
    return c.corr;
  }
  corrections_.push_back({r0, nr, S0, rows_c.clone(), sum()});
  return corrections_.back().corr;
}

at::Tensor CircuitRunner::state_at_answers(const at::Tensor& answer_pos) {
  const at::Tensor apos = answer_pos.to(at::kCPU, at::kLong).contiguous();  // [batch]
  if (!answer_deltas_.defined() || !at::equal(apos, answer_deltas_pos_)) {
    const at::Tensor dev = apos.to(deltas_.device());
    const at::Tensor rows = at::arange(tokens_.size(0), dev.options());
    // [batch, S, d_model] -> sender-major [S, batch, 1, d_model], viewed [batch, 1, S, d_model]
    answer_deltas_ = deltas_.index({rows, dev}).permute({1, 0, 2}).contiguous().unsqueeze(2).permute({1, 2, 0, 3});
    answer_deltas_pos_ = apos.clone();
  }
  return answer_deltas_;
}

core::AttentionContext CircuitRunner::attention_context(int64_t k) {
  core::AttentionContext ctx;
  at::Tensor positions;  // as the forward numbers them: real tokens from 0
  if (mask_.defined()) {
    ctx.key_mask = mask_.repeat({k, 1});  // [k * batch, pos] bool
    positions = (ctx.key_mask.to(at::kLong).cumsum(1) - 1).clamp_min(0);
  } else {
    positions = at::arange(seq_len(), at::TensorOptions(at::kLong).device(model_.model().device()));
  }
  const core::ModelConfig& mc = model_.model().config();
  if (mc.positional == core::Positional::rotary) {
    if (!rotary_.cos.defined()) rotary_ = core::make_rotary_tables(mc, model_.model().weights().W_E.options());
    ctx.rotary = &rotary_;
    ctx.positions = positions;
  }
  return ctx;
}

void CircuitRunner::reset_nodes(const at::Tensor& answer_pos) {
  const auto& cfg = model_.cfg();
  const int64_t H = cfg.n_heads, S = static_cast<int64_t>(graph_.senders().size());
  const int64_t b = tokens_.size(0), P = tokens_.size(1), d = cfg.d_model;
  Nodes& ns = nodes_;
  ns = Nodes{};
  ns.answers = answer_pos.defined();
  const at::TensorOptions opts = input_delta_.options();
  // A_L: resid_pre of layer L with every edge removed (each sender's ablated
  // output, plus the biases that belong to no sender); A_mid: resid_mid.
  auto full = [&](const at::Tensor& x) { return x.expand({b, P, d}).contiguous(); };
  at::Tensor a = embed_ - input_delta_.squeeze(2);  // the input's ablated output [batch, pos, d_model]
  for (int l = 0; l < cfg.n_layers; ++l) {
    ns.ablated_resid.push_back(full(a));
    const at::Tensor& abl_h = ablated_heads_[static_cast<size_t>(l)];  // [batch|1, pos|1, head, d_model] or undefined
    at::Tensor mid = a + model_.model().weights().blocks[static_cast<size_t>(l)].b_O;
    if (abl_h.defined()) mid = mid + abl_h.sum(2);
    ns.ablated_mid.push_back(full(mid));
    a = mid;  // resid_post = resid_mid + mlp_out, in parallel models too
    if (cfg.has_mlp() && ablated_mlp_[static_cast<size_t>(l)].defined()) a = a + ablated_mlp_[static_cast<size_t>(l)].squeeze(2);
  }
  ns.ablated_resid.push_back(full(a));
  ns.deltas = at::zeros({S, b, P, d}, opts);
  ns.deltas[0].copy_(input_delta_.squeeze(2));
  if (ns.answers) {
    ns.apos = answer_pos.to(at::kCPU, at::kLong).contiguous();
    ns.apos_dev = ns.apos.to(opts.device());
    ns.rows = at::arange(b, ns.apos_dev.options());
    ns.deltas_a = at::zeros({S, b, 1, d}, opts);
    ns.deltas_a[0].copy_(ns.deltas[0].index({ns.rows, ns.apos_dev}).unsqueeze(1));
  }
  ns.ctx = attention_context(1);
  ns.version.assign(static_cast<size_t>(S), 0);
  ns.version[0] = ns.next++;
  const int64_t KV = cfg.kv_heads();
  ns.inputs.resize(static_cast<size_t>(cfg.n_layers * (H + 2 * KV)));
  ns.groups.resize(static_cast<size_t>(cfg.n_layers * KV));
  ns.mlps.resize(static_cast<size_t>(cfg.n_layers));
}

double CircuitRunner::metric_by_nodes(const patching::Metric& metric, const at::Tensor& mask_cpu) {
  at::NoGradGuard no_grad;
  const auto& cfg = model_.cfg();
  const core::ModelConfig& mc = model_.model().config();
  const int64_t H = cfg.n_heads, KV = cfg.kv_heads(), g = H / KV;
  const int64_t R = static_cast<int64_t>(graph_.receivers().size()), S = static_cast<int64_t>(graph_.senders().size());
  MECHLAB_CHECK(mask_cpu.dim() == 2 && mask_cpu.size(0) == R && mask_cpu.size(1) == S,
                "metric_by_nodes needs an unsplit mask [receivers, senders] = [", R, ", ", S, "]; got ",
                mask_cpu.sizes());
  const at::Tensor mask = mask_cpu.to(at::kCPU, at::kFloat).contiguous();
  const float* m = mask.data_ptr<float>();
  for (int64_t i = 0; i < R * S; ++i) {
    MECHLAB_CHECK(m[i] == 0.f || m[i] == 1.f, "metric_by_nodes needs a removed mask of 0 and 1 (Circuit::removed_mask); "
                  "entry [", i / S, ", ", i % S, "] is ", m[i]);
  }
  const bool answers = answers_are_last(metric);
  const at::Tensor answer_pos = answers ? metric.answer_pos() : at::Tensor();
  if (!nodes_.deltas.defined() || nodes_.answers != answers ||
      (answers && !at::equal(answer_pos.to(at::kCPU, at::kLong), nodes_.apos))) {
    reset_nodes(answer_pos);
  }
  Nodes& ns = nodes_;
  const int last = cfg.n_layers - 1;
  const int64_t b = tokens_.size(0), P = tokens_.size(1);
  // The prompts in two fixed halves, each node computed half by half with a
  // task per half (for_each_task), so that a trial that changes one node
  // still keeps two threads busy. The halves are fixed whatever the thread
  // count or the number of changed nodes, so a node's bits stay a function
  // of its key.
  struct Half {
    int64_t r0, n;
  };
  std::vector<Half> halves;
  halves.push_back({0, b >= 2 ? (b + 1) / 2 : b});
  if (b >= 2) halves.push_back({(b + 1) / 2, b / 2});
  const auto n_halves = static_cast<int64_t>(halves.size());
  // x [batch|1, ...] -> half h's prompts (a [1, ...] broadcasts, kept).
  auto rows_of = [&](const at::Tensor& x, const Half& h) { return x.size(0) == 1 ? x : x.narrow(0, h.r0, h.n); };
  // Half h's rows x [n|1, pos|1, ...] at the answer positions -> [n|1, 1, ...].
  auto at_answers = [&](const at::Tensor& x, const Half& h) {
    if (x.size(1) == 1) return x;
    return x.index({ns.rows.narrow(0, 0, h.n), ns.apos_dev.narrow(0, h.r0, h.n)}).unsqueeze(1);
  };
  // A receiver's key: its mask row over its senders and the versions of the
  // senders it keeps (a removed sender is read as its constant ablation).
  auto key_of = [&](int64_t r, int64_t s_end, NodeKey& key) {
    key.rows.assign(m + r * S, m + r * S + s_end);
    key.versions.clear();
    for (int64_t s = 0; s < s_end; ++s) {
      if (key.rows[static_cast<size_t>(s)] == 0.f) key.versions.push_back(ns.version[static_cast<size_t>(s)]);
    }
  };
  // input_r = A + sum over kept senders s < s_end of delta_s, half h's
  // prompts: [n, p, 1, d_model] (base: A's rows). Few kept senders (late in
  // ACDC): their deltas added in sender order; else one GEMM over the
  // stored deltas (a removed sender's coefficient 0). Either way a function
  // of the key alone.
  auto receiver_input = [&](const NodeKey& key, int64_t s_end, const at::Tensor& base, bool at_ans, const Half& h) {
    const at::Tensor D = (at_ans ? ns.deltas_a : ns.deltas).narrow(1, h.r0, h.n);  // [S, n, p, d_model]
    std::vector<int64_t> kept;
    for (int64_t s = 0; s < s_end; ++s) {
      if (key.rows[static_cast<size_t>(s)] == 0.f) kept.push_back(s);
    }
    if (kept.empty()) return base.unsqueeze(2);
    if (4 * static_cast<int64_t>(kept.size()) <= s_end) {
      at::Tensor x = base + D[kept[0]];
      for (size_t i = 1; i < kept.size(); ++i) x.add_(D[kept[i]]);
      return x.unsqueeze(2);
    }
    std::vector<float> keep(static_cast<size_t>(s_end));
    for (int64_t s = 0; s < s_end; ++s) keep[static_cast<size_t>(s)] = 1.f - key.rows[static_cast<size_t>(s)];
    const at::Tensor c = at::from_blob(keep.data(), {1, s_end}, at::kFloat).to(D.device(), D.scalar_type());
    return base.unsqueeze(2) + sender_sum(c, D.narrow(0, 0, s_end).permute({1, 2, 0, 3}));  // [n, p, 1, d_model]
  };
  // A sender's new delta for half h's prompts, stored where receivers read
  // it (its version is set before the tasks run).
  auto store = [&](int64_t s, const at::Tensor& delta, bool at_ans, const Half& h) {  // delta [n, p, d_model]
    if (at_ans) {
      ns.deltas_a[s].narrow(0, h.r0, h.n).copy_(delta);
    } else {
      ns.deltas[s].narrow(0, h.r0, h.n).copy_(delta);
      if (ns.answers) ns.deltas_a[s].narrow(0, h.r0, h.n).copy_(at_answers(delta, h));
    }
  };
  // The prompts' attention context for half h.
  std::vector<core::AttentionContext> ctxs;
  for (const Half& h : halves) {
    core::AttentionContext ctx = ns.ctx;
    if (ctx.rotary != nullptr) ctx.rotary = &rotary_;  // this runner's tables, also if it was copied
    if (ctx.key_mask.defined()) ctx.key_mask = ctx.key_mask.narrow(0, h.r0, h.n);
    if (ctx.positions.defined() && ctx.positions.dim() == 2) ctx.positions = ctx.positions.narrow(0, h.r0, h.n);
    ctxs.push_back(std::move(ctx));
  }
  const core::Hooks none;
  NodeKey key;
  try {
    for (int l = 0; l < cfg.n_layers; ++l) {
      const core::LayerWeights& w = model_.model().weights().blocks[static_cast<size_t>(l)];
      const int64_t s_layer = senders_before(l);
      const int64_t rq = graph_.receiver_index({{Kind::head, l, 0}, ReceiverChannel::q});
      const bool last_ans = answers && l == last;
      const at::Tensor& A = ns.ablated_resid[static_cast<size_t>(l)];
      const core::HookSite scale{core::HookKind::ln1_scale, l}, normed{core::HookKind::ln1_normalized, l};
      // Receiver i of the layer (q of heads 0..H-1, then k and v of the kv
      // heads); group j reads the queries of heads j*g..j*g+g-1 and the key
      // and value of kv head j, so groups share no receiver.
      auto memo = [&](int64_t i) -> NodeMemo& { return ns.inputs[static_cast<size_t>(l * (H + 2 * KV) + i)]; };
      auto inputs_of = [&](int64_t j) {
        std::vector<int64_t> is;
        for (int64_t h = j * g; h < (j + 1) * g; ++h) is.push_back(h);
        is.push_back(H + j);
        is.push_back(H + KV + j);
        return is;
      };
      // First, in order: which receivers and groups changed, their new
      // versions (numbered as a sequential walk would number them), and
      // room for their new projections.
      struct GroupTask {
        int64_t j = 0;
        std::vector<int64_t> stale;  // its receivers to recompute
      };
      std::vector<GroupTask> tasks;
      for (int64_t j = 0; j < KV; ++j) {
        GroupTask t{j, {}};
        std::vector<int64_t> versions;
        for (const int64_t i : inputs_of(j)) {
          key_of(rq + i, s_layer, key);
          NodeMemo& e = memo(i);
          if (e.version == 0 || e.key.rows != key.rows || e.key.versions != key.versions) {
            e.key = key;
            e.version = ns.next++;
            e.proj = at::empty({b, i < H && last_ans ? 1 : P, 1, mc.d_head}, A.options());
            t.stale.push_back(i);
          }
          versions.push_back(e.version);
        }
        GroupMemo& ge = ns.groups[static_cast<size_t>(l * KV + j)];
        if (ge.done && ge.versions == versions) continue;
        ge.done = true;
        ge.versions = std::move(versions);
        const int64_t version = ns.next++;
        for (int64_t i = 0; i < g; ++i) ns.version[static_cast<size_t>(s_layer + j * g + i)] = version;
        tasks.push_back(std::move(t));
      }
      // Then the changed groups, a task per group and half: a trial early
      // in ACDC recomputes most heads of each later layer, and each is too
      // small for ATen to split. Its receivers normalised and projected by
      // their W_Q/W_K/W_V slice (queries at the answer positions only in
      // the answers' last layer), attention as a model of g query heads
      // sharing one kv head, and the heads' deltas stored where receivers
      // read them.
      auto run_group = [&](const GroupTask& t, const Half& half, const core::AttentionContext& ctx) {
        const int64_t j = t.j;
        for (const int64_t i : t.stale) {
          const bool query = i < H, at_ans = query && last_ans;
          NodeMemo& e = memo(i);
          const at::Tensor base = at_ans ? at_answers(rows_of(A, half), half) : rows_of(A, half);
          at::Tensor x = receiver_input(e.key, s_layer, base, at_ans, half);  // [n, p, 1, d_model]
          x = core::apply_norm(mc, x, w.ln1_w, w.ln1_b, scale, normed, none);
          const int64_t h = query ? i : (i - H) % KV;
          const at::Tensor& W = query ? w.W_Q : i < H + KV ? w.W_K : w.W_V;  // [head|kv_head, d_model, d_head]
          const at::Tensor& bias = query ? w.b_Q : i < H + KV ? w.b_K : w.b_V;
          e.proj.narrow(0, half.r0, half.n).copy_(core::per_head_linear(x, W.narrow(0, h, 1), bias.narrow(0, h, 1)));
        }
        auto proj = [&](int64_t i) { return memo(i).proj.narrow(0, half.r0, half.n); };  // [n, p, 1, d_head]
        std::vector<at::Tensor> qs;
        for (int64_t h = j * g; h < (j + 1) * g; ++h) qs.push_back(proj(h));
        core::ModelConfig gc = mc;
        gc.n_heads = static_cast<int>(g);
        gc.n_kv_heads = 1;
        core::LayerWeights gw = w;
        gw.W_O = w.W_O.narrow(0, j * g, g);
        CatchZ catch_z(cfg.n_layers, l);
        core::attention_from_qkv(gc, gw, l, g == 1 ? qs[0] : at::cat(qs, 2), proj(H + j), proj(H + KV + j), ctx,
                                 core::Hooks{&catch_z});
        const at::Tensor out = at::einsum("bphe,hem->bphm", {catch_z.z, gw.W_O});  // [n, p, g, d_model]
        const at::Tensor& abl = ablated_heads_[static_cast<size_t>(l)];   // [batch|1, pos|1, head, d_model]
        at::Tensor delta = out;
        if (abl.defined()) {
          const at::Tensor a = rows_of(abl, half).narrow(2, j * g, g);
          delta = out - (last_ans ? at_answers(a, half) : a);
        }
        for (int64_t i = 0; i < g; ++i) store(s_layer + j * g + i, delta.select(2, i), last_ans, half);
      };
      for_each_task(static_cast<int64_t>(tasks.size()) * n_halves, [&](int64_t k) {
        const auto hi = static_cast<size_t>(k % n_halves);
        run_group(tasks[static_cast<size_t>(k / n_halves)], halves[hi], ctxs[hi]);
      });
      if (cfg.has_mlp()) {
        const int64_t r_mlp = graph_.receiver_index({{Kind::mlp, l, -1}, ReceiverChannel::resid});
        const int64_t s_end = cfg.parallel_attn_mlp ? s_layer : s_layer + H;
        key_of(r_mlp, s_end, key);
        NodeMemo& e = ns.mlps[static_cast<size_t>(l)];
        if (e.version == 0 || e.key.rows != key.rows || e.key.versions != key.versions) {
          e.key = key;
          e.version = ns.next++;
          ns.version[static_cast<size_t>(s_layer + H)] = e.version;
          const at::Tensor& full_base = cfg.parallel_attn_mlp ? A : ns.ablated_mid[static_cast<size_t>(l)];
          const at::Tensor& abl = ablated_mlp_[static_cast<size_t>(l)];  // [batch|1, pos|1, 1, d_model]
          for_each_task(n_halves, [&](int64_t hi) {
            const Half& half = halves[static_cast<size_t>(hi)];
            const at::Tensor base = last_ans ? at_answers(rows_of(full_base, half), half) : rows_of(full_base, half);
            const at::Tensor x4 = receiver_input(e.key, s_end, base, last_ans, half);
            const at::Tensor x = core::apply_norm(mc, x4.squeeze(2), w.ln2_w, w.ln2_b,
                                                  {core::HookKind::ln2_scale, l}, {core::HookKind::ln2_normalized, l},
                                                  none);
            const at::Tensor out = core::mlp_forward(mc, w, l, x, none);  // [n, p, d_model]
            at::Tensor delta = out;
            if (abl.defined()) {
              const at::Tensor a = rows_of(abl, half);
              delta = out - (last_ans ? at_answers(a, half) : a).squeeze(2);
            }
            store(s_layer + H, delta, last_ans, half);
          });
        }
      }
    }
  } catch (...) {
    nodes_ = Nodes{};  // the memo says computed what was not: start afresh on the next call
    throw;
  }
  key_of(R - 1, S, key);
  const at::Tensor& A = ns.ablated_resid.back();
  // The output's input and its logits half by half, and the metric on this
  // thread alone: then a trial starts no OpenMP team of ATen's or MKL's
  // own, and where task_threads() is 1 (a loaded CPU) no idle worker of
  // theirs spins beside it.
  std::vector<at::Tensor> logits(halves.size());
  for_each_task(n_halves, [&](int64_t hi) {
    const Half& half = halves[static_cast<size_t>(hi)];
    const at::Tensor base = answers ? at_answers(rows_of(A, half), half) : rows_of(A, half);
    const at::Tensor x = receiver_input(key, S, base, answers, half).squeeze(2);  // [n, p, d_model]
    logits[static_cast<size_t>(hi)] = logits_of(metric, x, 1, half.r0, half.n, answers);
  });
  ++forwards_;
  const OneThread alone;
  return metric_of_logits(metric, at::cat(logits), 1).item<double>();
}

void CircuitRunner::check_positions(const Circuit& circuit) const {
  if (!circuit.split()) return;
  MECHLAB_CHECK(circuit.n_positions() == seq_len(), "the circuit is split into ", circuit.n_positions(),
                " positions but the prompts have ", seq_len(),
                " tokens; make it with Circuit::full(graph, runner.seq_len())");
  MECHLAB_CHECK(split_refusal_.empty(), split_refusal_);
}

at::Tensor CircuitRunner::metric_of(const patching::Metric& metric, const at::Tensor& resid, int64_t k,
                                    bool at_answers) {
  return metric_of_logits(metric, logits_of(metric, resid, k, 0, tokens_.size(0), at_answers), k);
}

at::Tensor CircuitRunner::logits_of(const patching::Metric& metric, const at::Tensor& resid, int64_t k, int64_t r0,
                                    int64_t n, bool at_answers) const {
  core::ForwardOptions fo;
  fo.start_at_layer(model_.cfg().n_layers);
  if (at_answers || metric.reads() != patching::Metric::Reads::answer_logits) {
    return model_.model().forward(resid, fo);  // [k * n, 1 | pos, d_vocab]
  }
  at::Tensor pos = metric.answer_pos().narrow(0, r0, n).to(resid.device()).repeat({k});  // [k * n]
  at::Tensor rows = at::arange(k * n, pos.options());
  return model_.model().forward(resid.index({rows, pos}).unsqueeze(1), fo);  // [k * n, 1, d_vocab]
}

at::Tensor CircuitRunner::metric_of_logits(const patching::Metric& metric, const at::Tensor& logits, int64_t k) const {
  const int64_t b = tokens_.size(0);
  const at::Tensor per_copy = metric.reads() == patching::Metric::Reads::answer_logits
                                  ? logits.view({k, b, -1})
                                  : logits.view({k, b, logits.size(1), logits.size(2)});
  return metric.batched(per_copy).to(at::kCPU, at::kDouble);
}

std::vector<double> CircuitRunner::metrics(const patching::Metric& metric, const std::vector<Circuit>& circuits) {
  at::NoGradGuard no_grad;
  std::vector<double> out;
  const int64_t kmax = copies_per_forward(metric);
  for (size_t i = 0; i < circuits.size(); i += static_cast<size_t>(kmax)) {
    const size_t end = std::min(circuits.size(), i + static_cast<size_t>(kmax));
    std::vector<at::Tensor> masks;
    for (size_t j = i; j < end; ++j) {
      MECHLAB_CHECK(circuits[j].graph().cfg().to_json_string() == model_.cfg().to_json_string(),
                    "circuit ", j, " was made for another model (", circuits[j].graph().cfg().name,
                    "); build it from this model's circuit graph");
      check_positions(circuits[j]);
      masks.push_back(circuits[j].removed_mask());
    }
    // One forward stacks masks of one shape: run split and unsplit circuits apart.
    bool mixed = false;
    for (const at::Tensor& m : masks) mixed = mixed || m.dim() != masks[0].dim();
    if (mixed) {
      for (size_t j = i; j < end; ++j) out.push_back(metrics(metric, {circuits[j]}).at(0));
      continue;
    }
    const int64_t k = static_cast<int64_t>(masks.size());
    at::Tensor m = metric_of(metric, masked_forward(0, at::stack(masks), false), k).contiguous();
    for (int64_t j = 0; j < k; ++j) out.push_back(m.data_ptr<double>()[j]);
  }
  return out;
}

at::Tensor CircuitRunner::logits(const Circuit& circuit) {
  at::NoGradGuard no_grad;
  MECHLAB_CHECK(circuit.graph().cfg().to_json_string() == model_.cfg().to_json_string(),
                "the circuit was made for another model (", circuit.graph().cfg().name,
                "); build it from this model's circuit graph");
  check_positions(circuit);
  at::Tensor resid = masked_forward(0, circuit.removed_mask().unsqueeze(0), false);
  core::ForwardOptions fo;
  fo.start_at_layer(model_.cfg().n_layers);
  return model_.model().forward(resid, fo);  // [batch, pos, d_vocab]
}

double CircuitRunner::set_state(const Circuit& circuit, const patching::Metric& metric) {
  at::NoGradGuard no_grad;
  MECHLAB_CHECK(circuit.graph().cfg().to_json_string() == model_.cfg().to_json_string(),
                "the circuit was made for another model (", circuit.graph().cfg().name,
                "); build it from this model's circuit graph");
  check_positions(circuit);
  at::Tensor resid = masked_forward(0, circuit.removed_mask().unsqueeze(0), true);
  return metric_of(metric, resid, 1).item<double>();
}

std::vector<double> CircuitRunner::restart(int layer, const patching::Metric& metric,
                                           const std::vector<at::Tensor>& masks, RestartAt at) {
  at::NoGradGuard no_grad;
  MECHLAB_CHECK(deltas_.defined(), "CircuitRunner::restart needs a state: call set_state first");
  MECHLAB_CHECK(layer >= 0 && layer <= model_.cfg().n_layers, "restart layer ", layer, " is outside [0, ",
                model_.cfg().n_layers, "]");
  MECHLAB_CHECK(at == RestartAt::attention || (can_restart_at_mlp() && layer < model_.cfg().n_layers),
                "a restart at the MLP of layer ", layer, " needs a layer < n_layers = ", model_.cfg().n_layers,
                " of a model with MLPs that are not parallel to attention; restart at the layer's attention");
  if (masks.empty()) return {};
  const int64_t k = static_cast<int64_t>(masks.size());
  const int64_t R = static_cast<int64_t>(graph_.receivers().size()), S = static_cast<int64_t>(graph_.senders().size());
  const bool split = masks[0].dim() == 3;
  for (const at::Tensor& m : masks) {
    MECHLAB_CHECK((m.dim() == 2 && m.size(0) == R && m.size(1) == S) ||
                      (m.dim() == 3 && m.size(0) == seq_len() && m.size(1) == R && m.size(2) == S),
                  "restart masks must be [receivers, senders] = [", R, ", ", S,
                  "] or, split by position, [positions, receivers, senders] = [", seq_len(), ", ", R, ", ", S,
                  "]; got ", m.sizes());
    MECHLAB_CHECK(m.dim() == masks[0].dim(), "restart masks must all be split by position or none");
  }
  MECHLAB_CHECK(!split || split_refusal_.empty(), split_refusal_);
  // A metric of the answer positions needs the last layer there only (not
  // with split masks: their receivers differ by position).
  const bool answers = !split && layer < model_.cfg().n_layers && answers_are_last(metric);
  const at::Tensor answer_pos = answers ? metric.answer_pos() : at::Tensor();
  at::Tensor m =
      metric_of(metric, masked_forward(layer, at::stack(masks), false, at, answer_pos), k, answers).contiguous();
  return std::vector<double>(m.data_ptr<double>(), m.data_ptr<double>() + k);
}

}  // namespace mechlab::discovery
