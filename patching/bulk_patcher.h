// BulkPatcher: runs many patch configurations with few forwards.
//
// Activation patching asks the same question many times: "run the model on
// this input, replace one slice of one activation, what does the metric say?"
// TransformerLens runs one full forward per configuration. BulkPatcher
//  1. runs the input once, caching the residual stream entering every layer;
//  2. groups configurations by the first layer they patch and restarts each
//     group's forwards there from the cached residual (RunOptions::
//     start_at_layer): the layers before it are the same for every config;
//  3. stacks k configurations along the batch: the input is repeated k times
//     and configuration i is patched into rows [i*batch, (i+1)*batch) only;
//     k follows from a memory budget (by default half the free GPU memory,
//     or 1 GiB on the CPU);
//  4. for metrics that read only each prompt's answer position, stops before
//     the unembedding and unembeds just those positions (ln_final and W_U
//     act per position, so this is exact);
//  5. restarts a configuration whose targets all lie at positions >= p
//     (p > 0) at position p as well (prefix reuse): in a causal model a
//     patch at (layer L, position p) leaves every position before p as the
//     run had it at every layer >= L, so the restarted forward runs only
//     positions [p, pos) as queries and attends to the run's own keys and
//     values (cached once, per layer) for the positions before
//     (ForwardOptions::prefix, core::KVPrefix). Configurations are grouped by
//     (first layer, p); the logits of positions before p are the run's. With
//     an answer-position metric p is at most the first answer position;
//     with hooks of the caller's on the model (which may index positions),
//     or a module attached at a key or value hook (hooks, which capture the
//     keys and values, run before modules), there is no prefix reuse;
//  6. skips configurations that provably change nothing: when every patched
//     slice already holds, bit for bit, the value it would receive (in a causal
//     model, clean and corrupted activations agree at every position before
//     the first token where the prompts differ), the patched forward is the
//     unpatched one, and the config gets the unpatched metric.
// The numbers are TransformerLens's: each copy sees exactly the computation a
// single patched forward would do (tests/patching compares against TL).
//
// Example:
//   BulkPatcher patcher(model, data.corrupted_tokens, data.attention_mask, logit_diff(answers));
//   auto [_, clean] = model.run_with_cache(data.clean_tokens, NamesFilter({"blocks.0.attn.hook_z"}));
//   std::vector<PatchConfig> configs = ...;   // e.g. one per (pos, head)
//   at::Tensor values = patcher.run(configs, clean.items());   // [configs]
#pragma once

#include "core/model/kv_cache.h"
#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "patching/metrics.h"
#include "patching/patch_target.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mechlab::patching {

/// The automatic memory budget of batched forwards (BulkOptions and the
/// circuit runner): half the free memory of `device`'s GPU, or min(1 GiB, a
/// quarter of the free RAM) on the CPU, at least 64 MiB.
int64_t default_memory_budget(const at::Device& device);

struct BulkOptions {
  /// Bytes the stacked copies of one forward may use (activations and logits,
  /// estimated); 0 = automatic: half the free memory of the model's GPU, or
  /// 1 GiB on the CPU.
  /// Example: BulkOptions{}.memory_budget_bytes(int64_t(4) << 30)
  MECHLAB_OPTION(BulkOptions, int64_t, memory_budget_bytes, 0)
  /// Upper bound on configurations per forward; 0 = only the budget decides.
  MECHLAB_OPTION(BulkOptions, int64_t, max_copies, 0)
  /// Give configurations whose patch is a bit-exact no-op the unpatched
  /// metric instead of running them (see the top of this file).
  MECHLAB_OPTION(BulkOptions, bool, skip_identical, true)
  /// Prefix reuse (5. at the top of this file): a configuration that patches
  /// only positions >= p runs positions [p, pos) only. Off = every restart
  /// runs every position (the reference the tests compare against).
  MECHLAB_OPTION(BulkOptions, bool, reuse_prefix, true)
  /// Progress bar on stderr (rate and ETA).
  MECHLAB_OPTION(BulkOptions, bool, show_progress, false)
};

struct BulkStats {
  int64_t configs = 0;    ///< configurations evaluated
  int64_t skipped = 0;    ///< of which no-ops (unpatched metric)
  int64_t forwards = 0;   ///< batched forwards run
  int64_t max_copies = 0; ///< most configurations stacked in one forward
  int64_t prefix_forwards = 0;  ///< of the forwards, those that reused a key/value prefix
  int64_t reused_positions = 0; ///< positions per prompt not recomputed, summed over configs
};

class BulkPatcher {
 public:
  /// run_tokens: [batch, pos] the input every patched forward runs on (the
  /// corrupted prompts when denoising, the clean ones when noising);
  /// attention_mask: [batch, pos] or undefined.
  BulkPatcher(hooks::HookedTransformer& model, at::Tensor run_tokens, at::Tensor attention_mask,
              Metric metric, BulkOptions options = {});

  /// The metric of the unpatched run.
  double baseline() const { return baseline_; }
  /// Logits of the unpatched run [batch, pos, d_vocab].
  const at::Tensor& run_logits() const { return logits_; }
  int64_t batch() const { return tokens_.size(0); }
  int64_t seq_len() const { return tokens_.size(1); }

  /// One metric value per configuration, float32 [configs] on the CPU.
  /// `values` maps every hook the configurations patch (or a target's
  /// value_key) to the value written there: an activation of that hook
  /// [batch, ...] (e.g. from the other run's cache) or a tensor that
  /// broadcasts to it (zero, mean ablation).
  at::Tensor run(const std::vector<PatchConfig>& configs,
                 const std::map<std::string, at::Tensor>& values);

  /// Configurations per forward for a group starting at `first_layer` and,
  /// with prefix reuse, at position `first_pos` (0 = every position).
  int64_t copies_per_forward(int first_layer, bool attention_maps, int64_t first_pos = 0) const;
  const BulkStats& stats() const { return stats_; }

 private:
  const at::Tensor& run_activation(const std::string& hook);
  bool is_noop(const PatchConfig& config, const std::map<std::string, at::Tensor>& values);
  at::Tensor forward_chunk(int first_layer, int64_t first_pos,
                           const std::vector<const PatchConfig*>& chunk,
                           const std::map<std::string, at::Tensor>& values);
  // The first position a config's forward must run (0 = all): its first
  // patched position, at most the first answer position.
  int64_t first_pos_of(const PatchConfig& config) const;

  hooks::HookedTransformer& model_;
  at::Tensor tokens_;          // int64 [batch, pos] on the model's device
  at::Tensor mask_;            // [batch, pos] or undefined
  Metric metric_;
  BulkOptions options_;
  std::vector<at::Tensor> resid_pre_;           // [n_layers] of [batch, pos, d_model]
  core::KVPrefix run_kv_;  // the run's keys (after rotary) and values, every position and layer
  int64_t first_answer_pos_ = 0;  // answer-position metrics: the smallest answer position
  bool reuse_prefix_ = false;     // options_.reuse_prefix() and no module at a key/value hook
  std::map<std::string, at::Tensor> run_acts_;  // the run's own activations, by hook
  at::Tensor logits_;                           // [batch, pos, d_vocab]
  double baseline_ = 0;
  int64_t budget_ = 0;
  BulkStats stats_;
};

}  // namespace mechlab::patching
