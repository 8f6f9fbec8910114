#include "patching/bulk_patcher.h"

#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "core/util/progress.h"
#include "kernels/device_info.h"

#include <ATen/ATen.h>

#include <unistd.h>

#include <algorithm>
#include <set>
#include <utility>

namespace mechlab::patching {

namespace {

constexpr int kFromTokens = -1;  // group key: configs that patch hook_embed / hook_pos_embed

bool is_embedding(const core::HookSite& s) {
  return core::site_info(s.kind).stage == core::SiteStage::input;
}
bool is_final_norm(const core::HookSite& s) {
  return core::site_info(s.kind).stage == core::SiteStage::output;
}

// The layer a config's forwards restart at: its first patched layer; configs
// that patch only ln_final rerun the last block (cheap, and keeps one path).
int group_of(const PatchConfig& c, int n_layers) {
  int first = n_layers - 1;
  for (const auto& t : c.targets) {
    if (is_embedding(t.site)) return kFromTokens;
    if (t.site.per_layer()) first = std::min(first, t.site.layer);
  }
  return first;
}


// write_patch on an activation that holds only positions [first_pos, seq) on
// its position axis (queries: dim 2 of attention maps, else dim 1), as a
// forward after a key/value prefix gives it: the target's position and the
// value's positions shift by first_pos. Keys over every position (hook_rot_k
// after a prefix) keep theirs.
void write_patch_after(at::Tensor& act, const PatchTarget& t, const at::Tensor& value,
                       int64_t first_pos, int64_t seq) {
  const int64_t axis = is_attention_map(t.site.kind) ? 2 : 1;
  if (first_pos == 0 || act.size(axis) == seq) {
    write_patch(act, t, value);
    return;
  }
  std::vector<int64_t> full = act.sizes().vec();  // the activation over every position
  full[static_cast<size_t>(axis)] = seq;
  MECHLAB_CHECK(broadcasts_to(value.sizes(), full), "patch ", t.describe(), ": the value's shape ",
                value.sizes(), " does not broadcast to the activation ", at::IntArrayRef(full),
                "; pass that hook's activation on the source run [batch, ...]");
  MECHLAB_ASSERT(t.pos >= first_pos);  // BulkPatcher::first_pos_of
  PatchTarget shifted = t;
  shifted.pos -= first_pos;
  write_patch(act, shifted, value.expand(full).narrow(axis, first_pos, act.size(axis)));
}

}  // namespace

int64_t default_memory_budget(const at::Device& device) {
  if (device.is_cuda()) {
    for (const auto& g : kernels::list_gpus()) {
      if (g.index == device.index() || (device.index() < 0 && g.index == 0)) return g.free_bytes / 2;
    }
  }
  int64_t budget = int64_t(1) << 30;
  const long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) budget = std::min(budget, int64_t(pages) * page / 4);
  return std::max<int64_t>(budget, int64_t(64) << 20);
}

BulkPatcher::BulkPatcher(hooks::HookedTransformer& model, at::Tensor run_tokens,
                         at::Tensor attention_mask, Metric metric, BulkOptions options)
    : model_(model), metric_(std::move(metric)), options_(options) {
  at::NoGradGuard no_grad;
  tokens_ = model_.model().check_tokens(run_tokens);  // int64 [batch, pos]
  if (attention_mask.defined()) mask_ = attention_mask.to(model_.model().device());
  const auto& cfg = model_.cfg();
  hooks::RunOptions ro;
  ro.attention_mask(mask_);
  // Prefix reuse needs every layer's keys as attention reads them (after
  // rotary) and values.
  const core::HookKind key_kind =
      cfg.positional == core::Positional::rotary ? core::HookKind::rot_k : core::HookKind::k;
  // A module attached at a key or value hook would change them after the
  // hooks that capture them (hooks run before modules): no prefix reuse then.
  reuse_prefix_ = options_.reuse_prefix();
  for (const std::string& name : model_.hook_names()) {
    for (int l = 0; l < cfg.n_layers && reuse_prefix_; ++l) {
      for (core::HookKind kind : {key_kind, core::HookKind::v}) {
        const std::string host = core::HookSite{kind, l}.name() + ".";
        if (name.compare(0, host.size(), host) == 0) reuse_prefix_ = false;
      }
    }
  }
  std::vector<std::string> names;
  for (int l = 0; l < cfg.n_layers; ++l) {
    names.push_back(core::HookSite{core::HookKind::resid_pre, l}.name());
    if (!reuse_prefix_) continue;
    names.push_back(core::HookSite{key_kind, l}.name());
    names.push_back(core::HookSite{core::HookKind::v, l}.name());
  }
  auto [logits, cache] = model_.run_with_cache(tokens_, hooks::NamesFilter(names), ro);
  logits_ = logits;
  for (int l = 0; l < cfg.n_layers; ++l) {
    resid_pre_.push_back(cache.get("resid_pre", l));
    if (!reuse_prefix_) continue;
    // hook_k/hook_v are views of the packed q/k/v projection: keep only k, v.
    run_kv_.keys.push_back(cache[core::HookSite{key_kind, l}.name()].contiguous());
    run_kv_.values.push_back(cache[core::HookSite{core::HookKind::v, l}.name()].contiguous());
  }
  if (mask_.defined()) run_kv_.key_mask = mask_.ne(0);  // [batch, pos]
  if (metric_.reads() == Metric::Reads::answer_logits) {
    first_answer_pos_ = metric_.answer_pos().min().item<int64_t>();
  }
  baseline_ = metric_(logits_).item<double>();
  budget_ = options_.memory_budget_bytes() > 0 ? options_.memory_budget_bytes()
                                             : default_memory_budget(model_.model().device());
}

int64_t BulkPatcher::copies_per_forward(int /*first_layer*/, bool attention_maps,
                                        int64_t first_pos) const {
  // Peak working memory of one copy (a forward over batch x q_pos tokens, no
  // autograd): a few residual-sized tensors, q/k/v/z, the MLP hidden layer,
  // the attention map when it is materialised, and the logits. With prefix
  // reuse q_pos = pos - first_pos, and each layer also holds its keys and
  // values over all positions (prefix and new).
  const auto& c = model_.cfg();
  const int64_t q_pos = seq_len() - first_pos;
  const int64_t tokens = batch() * q_pos;
  const int64_t elem = std::max<int64_t>(4, c10::elementSize(model_.model().dtype()));
  int64_t per_token = 8 * c.d_model + 4 * c.n_heads * c.d_head + (c.has_mlp() ? 3 * c.d_mlp : 0);
  int64_t bytes = tokens * per_token * elem;
  if (first_pos > 0) bytes += 2 * batch() * seq_len() * c.kv_heads() * c.d_head * elem;
  if (attention_maps) bytes += 3 * batch() * c.n_heads * q_pos * seq_len() * elem;
  const bool all_logits = metric_.reads() == Metric::Reads::all_logits;
  // logits + log-softmax (all positions: the prefix's are the run's, copied in)
  bytes += (all_logits ? batch() * seq_len() : batch()) * c.d_vocab * 4 * 2;
  int64_t k = std::max<int64_t>(1, budget_ / std::max<int64_t>(bytes, 1));
  if (options_.max_copies() > 0) k = std::min(k, options_.max_copies());
  return k;
}

int64_t BulkPatcher::first_pos_of(const PatchConfig& config) const {
  int64_t first = seq_len();
  for (const auto& t : config.targets) first = std::min(first, t.pos >= 0 ? t.pos : 0);
  // The restarted forward yields the residual of positions >= p only; an
  // answer-position metric must find its positions there.
  if (metric_.reads() == Metric::Reads::answer_logits) first = std::min(first, first_answer_pos_);
  return first;
}

const at::Tensor& BulkPatcher::run_activation(const std::string& hook) {
  auto it = run_acts_.find(hook);
  MECHLAB_ASSERT(it != run_acts_.end());
  return it->second;
}

bool BulkPatcher::is_noop(const PatchConfig& config,
                          const std::map<std::string, at::Tensor>& values) {
  for (const auto& t : config.targets) {
    const at::Tensor& own = run_activation(t.hook_name());
    const at::Tensor& v = values.at(t.value_name());
    at::Tensor wanted = v.sizes() == own.sizes() ? v : v.expand_as(own);
    if (!at::equal(target_slice(own, t), target_slice(wanted, t))) return false;
  }
  return true;
}

at::Tensor BulkPatcher::run(const std::vector<PatchConfig>& configs,
                            const std::map<std::string, at::Tensor>& values_in) {
  at::NoGradGuard no_grad;
  const auto& cfg = model_.cfg();
  const at::Device device = model_.model().device();

  // Check every target and bring each value to the model's device once.
  std::map<std::string, at::Tensor> values;  // by value key
  std::set<std::string> hooks_used;
  for (const auto& c : configs) {
    MECHLAB_CHECK(!c.targets.empty(), "a patch configuration has no targets");
    for (const auto& t : c.targets) {
      validate_target(t, cfg, seq_len());
      core::HookSite host;
      MECHLAB_CHECK(!t.attached() || (model_.hooks().attached_host(t.point, &host) && host == t.site),
                    "patch target ", t.describe(), ": no module attached to the model declares "
                    "this point any more; attach the module again before patching it");
      const std::string key = t.value_name();
      hooks_used.insert(t.hook_name());
      if (values.count(key)) continue;
      auto it = values_in.find(key);
      MECHLAB_CHECK(it != values_in.end() && it->second.defined(), "no value given for ",
                    t.value_key.empty() ? "hook " : "value key ", key, " (patch target ",
                    t.describe(), "); cache that hook on the source run, or pass an ablation value");
      values[key] = it->second.to(device, model_.model().dtype());
    }
  }
  // The run's own activations at the patched hooks, for the no-op test.
  if (options_.skip_identical()) {
    std::vector<std::string> missing;
    for (const auto& name : hooks_used) {
      if (!run_acts_.count(name)) missing.push_back(name);
    }
    if (!missing.empty()) {
      hooks::RunOptions ro;
      ro.attention_mask(mask_);
      auto [unused, cache] = model_.run_with_cache(tokens_, hooks::NamesFilter(missing), ro);
      for (const auto& name : missing) run_acts_[name] = cache[name];
    }
    for (const auto& c : configs) {
      for (const auto& t : c.targets) {
        const at::Tensor& own = run_activation(t.hook_name());
        const at::Tensor& v = values.at(t.value_name());
        MECHLAB_CHECK(broadcasts_to(v.sizes(), own.sizes()), "the value for ", t.describe(),
                      " has shape ", v.sizes(), ", which does not broadcast to the activation ",
                      own.sizes());
      }
    }
  }

  at::Tensor out = at::empty({static_cast<int64_t>(configs.size())}, at::kFloat);  // [configs]
  float* out_ptr = out.data_ptr<float>();
  // Hooks of the caller's would see only the positions after a prefix (they
  // may index positions): no prefix reuse then.
  const bool reuse = reuse_prefix_ && model_.hooks().size() == 0;
  std::map<std::pair<int, int64_t>, std::vector<size_t>> groups;  // (layer, position) -> configs
  for (size_t i = 0; i < configs.size(); ++i) {
    if (options_.skip_identical() && is_noop(configs[i], values)) {
      out_ptr[i] = static_cast<float>(baseline_);
      ++stats_.skipped;
      continue;
    }
    const int64_t p = reuse ? first_pos_of(configs[i]) : 0;
    groups[{group_of(configs[i], cfg.n_layers), p}].push_back(i);
  }
  stats_.configs += static_cast<int64_t>(configs.size());

  int64_t todo = 0;
  for (const auto& [g, idx] : groups) todo += static_cast<int64_t>(idx.size());
  std::unique_ptr<core::ProgressBar> bar;
  if (options_.show_progress() && todo > 0) {
    bar = std::make_unique<core::ProgressBar>("patch", todo, "configs");
  }
  int64_t done = 0;
  for (const auto& [key, idx] : groups) {
    const auto [group, first_pos] = key;
    bool maps = false;
    for (size_t i : idx) {
      for (const auto& t : configs[i].targets) maps = maps || t.attention_map();
    }
    const int64_t k = copies_per_forward(group, maps, first_pos);
    for (size_t start = 0; start < idx.size(); start += static_cast<size_t>(k)) {
      // Safe point (Ctrl-C): between batched forwards nothing is half done;
      // the caller says what was complete and that nothing was written.
      if (core::interrupt_requested()) {
        if (bar) bar->finish();
        throw Interrupted(str_cat("interrupted after ", done, " of ", todo, " patch configurations"));
      }
      const size_t end = std::min(idx.size(), start + static_cast<size_t>(k));
      std::vector<const PatchConfig*> chunk;
      for (size_t j = start; j < end; ++j) chunk.push_back(&configs[idx[j]]);
      at::Tensor m =
          forward_chunk(group, first_pos, chunk, values).to(at::kCPU, at::kFloat).contiguous();
      const float* m_ptr = m.data_ptr<float>();  // [copies]
      for (size_t j = start; j < end; ++j) out_ptr[idx[j]] = m_ptr[j - start];
      stats_.forwards += 1;
      if (first_pos > 0) {
        stats_.prefix_forwards += 1;
        stats_.reused_positions += first_pos * static_cast<int64_t>(chunk.size());
      }
      stats_.max_copies = std::max<int64_t>(stats_.max_copies, static_cast<int64_t>(chunk.size()));
      done += static_cast<int64_t>(chunk.size());
      if (bar) bar->advance(static_cast<int64_t>(chunk.size()));
    }
  }
  if (bar) bar->finish();
  return out;
}

at::Tensor BulkPatcher::forward_chunk(int group, int64_t first_pos,
                                      const std::vector<const PatchConfig*>& chunk,
                                      const std::map<std::string, at::Tensor>& values) {
  const auto& cfg = model_.cfg();
  const int64_t k = static_cast<int64_t>(chunk.size()), b = batch(), seq = seq_len();
  const int64_t q_pos = seq - first_pos;  // positions this forward runs: [first_pos, seq)

  // Which copy patches what, by hook.
  struct Patch {
    int64_t copy;
    const PatchTarget* target;
    const at::Tensor* value;  // [batch, ...] or broadcastable
  };
  std::map<std::string, std::vector<Patch>> by_hook;
  bool final_norm = false;
  for (int64_t c = 0; c < k; ++c) {
    for (const auto& t : chunk[c]->targets) {
      by_hook[t.hook_name()].push_back({c, &t, &values.at(t.value_name())});
      final_norm = final_norm || is_final_norm(t.site);
    }
  }

  hooks::HookScope scope(model_.hooks());
  for (const auto& [name, patches] : by_hook) {
    scope.add(name, [&patches, b, first_pos, seq](at::Tensor& act, const hooks::HookPoint&) {
      act = act.clone();  // [copies * batch, ...]
      for (const Patch& p : patches) {
        at::Tensor rows = act.narrow(0, p.copy * b, b);  // this copy's prompts
        write_patch_after(rows, *p.target, *p.value, first_pos, seq);
      }
    });
  }

  core::ForwardOptions fo;
  fo.hooks(&model_.hooks());
  if (mask_.defined()) fo.attention_mask(mask_.narrow(1, first_pos, q_pos).repeat({k, 1}));
  core::KVPrefix prefix;
  if (first_pos > 0) {
    prefix = run_kv_.first(first_pos);
    fo.prefix(&prefix);
  }
  at::Tensor input;
  if (group == kFromTokens) {
    input = tokens_.narrow(1, first_pos, q_pos).repeat({k, 1});  // [copies * batch, q_pos]
  } else {
    fo.start_at_layer(group);
    // [copies * batch, q_pos, d_model]
    input = resid_pre_[group].narrow(1, first_pos, q_pos).repeat({k, 1, 1});
  }

  if (metric_.reads() == Metric::Reads::answer_logits && !final_norm) {
    fo.stop_at_layer(cfg.n_layers);
    at::Tensor resid = model_.model().forward(input, fo);  // [copies * batch, q_pos, d_model]
    // [copies * batch]; every answer position is >= first_pos (first_pos_of)
    at::Tensor pos = (metric_.answer_pos().to(resid.device()) - first_pos).repeat({k});
    at::Tensor rows = at::arange(k * b, pos.options());
    at::Tensor last = resid.index({rows, pos}).unsqueeze(1);  // [copies * batch, 1, d_model]
    at::Tensor logits = model_.model().forward(last, [&] {
      core::ForwardOptions un;
      un.start_at_layer(cfg.n_layers);
      return un;
    }());  // [copies * batch, 1, d_vocab]
    return metric_.batched(logits.view({k, b, -1}));
  }
  at::Tensor logits = model_.model().forward(input, fo);  // [copies * batch, q_pos, d_vocab]
  // Positions before first_pos have the run's logits.
  if (first_pos > 0) logits = core::concat_prefix(logits_.narrow(1, 0, first_pos), logits);
  at::Tensor stacked = logits.view({k, b, logits.size(1), logits.size(2)});
  if (metric_.reads() == Metric::Reads::answer_logits) {
    at::Tensor pos = metric_.answer_pos().to(logits.device());
    at::Tensor rows = at::arange(b, pos.options());
    stacked = stacked.index({at::indexing::Slice(), rows, pos});  // [copies, batch, d_vocab]
  }
  return metric_.batched(stacked);
}

}  // namespace mechlab::patching
