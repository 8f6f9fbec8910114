// CircuitRunner: the masked forward of a circuit (ACDC's forward, Conmy et
// al. 2023), batched and restartable.
//
// A circuit's forward runs the clean prompts; every receiver input (head q/k/v
// input, MLP input, the final residual = output) reads
//
//   input_r = resid (this run) - sum over removed edges s -> r of (out_s - ablated_s)
//
// where out_s is sender s's output in THIS forward (a head's output depends on
// its own masked inputs) and ablated_s its ablated output: from the corrupted
// prompts' run, the mean over prompts and real positions of the clean run's
// output, or zero. Sender outputs: input = blocks.0.hook_resid_pre; head H of
// layer L = hook_z[:, :, H] @ W_O[H] (b_O belongs to no head and stays); MLP =
// hook_mlp_out. The residual stream itself is never patched, only the
// receivers' copies of it (split q/k/v inputs).
//
// Position-split circuits (Circuit::full(graph, seq_len())) patch each
// receiver input at position p by the removed edges at p (the mask has a
// position axis); the prompts must share one padding. Their forwards run
// every layer at every position (no answers-only last layer) and patch by a
// per-copy contraction; unsplit circuits run exactly as before.
//
// Speed:
//  - k circuits run as k stacked copies along the batch axis (k from a
//    memory budget); where the copies' masks agree on a receiver the one-mask
//    kernel (kernels::edge_patch) patches it, else a batched matmul.
//  - set_state(c) runs c once and keeps the residual stream entering every
//    layer, the final residual and every sender's (out - ablated). A circuit
//    that differs from c only in receivers at layers >= L has the same state
//    below L, so restart(L, ...) runs only layers L.. from it (L = n_layers:
//    only the output receiver changes, no block runs at all).
//  - a circuit that differs from c only at MLP input m{L} and at receivers
//    of layers > L restarts at layer L's MLP (RestartAt::mlp): the residual
//    the MLP reads (resid_mid) and layer L's head outputs are the state's.
//  - metric_by_nodes(metric, mask): one unsplit circuit evaluated node by
//    node (head groups, MLPs, the output), each node's output kept with
//    what it was computed from: its receivers' mask rows and the versions
//    of the senders it keeps. A circuit that differs from the last one in
//    one receiver recomputes only that receiver's node and the nodes that
//    read a changed node through a kept edge (ACDC's trials on the CPU).
//    Every kept value is a function of the mask alone, so a trial's bits do
//    not depend on the calls before it (a resumed ACDC scores as the
//    uninterrupted run).
//  - the state's deltas are stored sender-major, so a receiver's correction
//    from the state's senders is one GEMM over them.
//  - metrics that read only the answer positions unembed only those, and a
//    restart computes the last layer's queries, attention output, MLP and
//    output receiver at those positions only (keys and values everywhere),
//    when each answer is its prompt's last real token.
//
// Example:
//   CircuitRunner runner(model, data, Ablation::corrupted);
//   Metric kl = kl_to_clean(data.answers(), runner.clean_logits());
//   std::vector<double> m = runner.metrics(kl, {Circuit::full(runner.graph()), my_circuit});
#pragma once

#include "core/model/layers/attention.h"
#include "core/model/layers/rotary.h"
#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "patching/discovery/circuit.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::discovery {

/// What a removed edge's receiver reads from its sender instead of its output in this run.
enum class Ablation {
  corrupted,  ///< the sender's output on the corrupted prompts (ACDC's default)
  mean,       ///< the mean of its clean output over prompts and real positions
  zero,       ///< nothing (the sender's output is 0)
};
/// "corrupted", "mean", "zero".
std::string ablation_name(Ablation a);
/// Inverse of ablation_name; anything else is an error listing the names.
Ablation parse_ablation(const std::string& name);

/// Where a restart begins inside its layer.
enum class RestartAt {
  attention,  ///< the whole layer (the masks may differ from the state at any receiver of the layer)
  mlp,        ///< the layer's MLP only (they may differ at its MLP input only); models with sequential MLPs
};

struct RunnerOptions {
  /// Bytes the stacked copies of one forward may use (estimated); 0 = as
  /// patching::BulkOptions: half the free GPU memory, or up to 1 GiB on the CPU.
  MECHLAB_OPTION(RunnerOptions, int64_t, memory_budget_bytes, 0)
  /// Upper bound on circuits per forward; 0 = only the budget decides.
  MECHLAB_OPTION(RunnerOptions, int64_t, max_copies, 0)
};

class CircuitRunner {
 public:
  /// Runs the clean prompts once (clean logits) and computes the ablated
  /// sender outputs (one corrupted run for Ablation::corrupted). `data` must
  /// be valid for the model (PatchingData::validate).
  CircuitRunner(hooks::HookedTransformer& model, const patching::PatchingData& data, Ablation ablation,
                const RunnerOptions& options = {});

  const patching::CircuitGraph& graph() const { return graph_; }
  hooks::HookedTransformer& model() const { return model_; }
  Ablation ablation() const { return ablation_; }
  int64_t n_prompts() const { return tokens_.size(0); }
  int64_t seq_len() const { return tokens_.size(1); }
  /// Logits of the unpatched clean run [batch, pos, d_vocab] (the reference of kl_to_clean).
  const at::Tensor& clean_logits() const { return clean_logits_; }

  /// The metric of each circuit's masked forward, k circuits per forward.
  std::vector<double> metrics(const patching::Metric& metric, const std::vector<Circuit>& circuits);
  /// Logits of one circuit's masked forward [batch, pos, d_vocab].
  at::Tensor logits(const Circuit& circuit);

  /// Runs `circuit` once and keeps its state for restart(); returns its metric.
  double set_state(const Circuit& circuit, const patching::Metric& metric);
  /// The metric of each circuit given by its removed mask (float32 [receivers,
  /// senders], Circuit::removed_mask's form; [positions, receivers, senders]
  /// for position-split circuits, all masks alike), all in one forward of
  /// masks.size() stacked copies that starts at `layer` (0..n_layers) from
  /// the state of set_state(). Exact only for masks that equal the state's
  /// circuit's at every receiver below `layer` (RestartAt::mlp: also at the
  /// layer's head receivers); the caller guarantees that. RestartAt::mlp
  /// needs a model with MLPs that are not parallel to attention, and layer <
  /// n_layers.
  std::vector<double> restart(int layer, const patching::Metric& metric, const std::vector<at::Tensor>& masks,
                              RestartAt at = RestartAt::attention);
  /// The metric of one unsplit circuit (removed mask [receivers, senders]),
  /// node by node: each head group (the query heads of one kv head), MLP
  /// and the output computed from its receivers' inputs, input_r = (every
  /// edge removed) + the sum of the deltas of the senders r keeps. A node
  /// is recomputed only when its mask rows or a kept sender changed since
  /// the last call, so ACDC's trial, which changes one receiver, costs the
  /// nodes downstream of it through kept edges. Each node runs in two fixed
  /// halves of the prompts, and a layer's changed head groups at once, one
  /// task per group and half on the intra-op threads (for_each_task: as
  /// many as other processes leave cores free, each task computing as a
  /// one-thread run). Needs no state; the result does not depend on earlier
  /// calls, nor on the load. The last layer at the answer positions only
  /// when answers_are_last(metric). A mask entry other than 0 and 1 is
  /// refused.
  double metric_by_nodes(const patching::Metric& metric, const at::Tensor& mask);
  /// Whether RestartAt::mlp is available for this model.
  bool can_restart_at_mlp() const;

  /// Whether `metric` reads only the answer positions and each is its
  /// prompt's last real token: then a restart runs the last layer's query
  /// side and MLP at the answer positions only.
  bool answers_are_last(const patching::Metric& metric) const;
  /// Circuits one forward may stack (memory budget, max_copies).
  int64_t copies_per_forward(const patching::Metric& metric) const;
  /// Batched forwards run so far (restarts included; the constructor's runs not).
  int64_t forwards() const { return forwards_; }

 private:
  // k stacked copies from layer `start` with masks [k, receivers, senders];
  // returns the output receiver's input [k * batch, pos, d_model].
  // answer_pos defined (restarts at start < n_layers only): the last layer
  // at those positions only; returns [k * batch, 1, d_model].
  at::Tensor masked_forward(int start, const at::Tensor& masks, bool record, RestartAt at = RestartAt::attention,
                            const at::Tensor& answer_pos = {});
  // at_answers: final_resid holds the answer positions only.
  at::Tensor metric_of(const patching::Metric& metric, const at::Tensor& final_resid, int64_t k,
                       bool at_answers = false);
  // The logits `metric` reads of final_resid [k * n, pos, d_model], k
  // copies of prompts r0..r0+n-1: at their answer positions [k * n, 1,
  // d_vocab] when it reads answer logits (final_resid already there when
  // at_answers), else [k * n, pos, d_vocab].
  at::Tensor logits_of(const patching::Metric& metric, const at::Tensor& final_resid, int64_t k, int64_t r0,
                       int64_t n, bool at_answers) const;
  // metric.batched of k copies' logits of every prompt, as logits_of gives
  // them: [k] double on the CPU.
  at::Tensor metric_of_logits(const patching::Metric& metric, const at::Tensor& logits, int64_t k) const;

  int64_t senders_before(int layer) const;
  // sum over s < S0 of rows[r, s] * shared[:, :, s, :] for the receivers
  // r0..r0+nr: [batch, pos, nr, d_model]. rows: float [nr, S0] on the CPU;
  // shared: the state's deltas of senders < S0 at every position. Memoised
  // per (r0, nr, S0) with the rows it was made from: ACDC's trials change
  // the rows of one receiver group, so the other groups of the layer reuse
  // theirs. The result is read-only for the caller.
  at::Tensor shared_correction(int64_t r0, int64_t nr, const at::Tensor& rows, const at::Tensor& shared);
  // The state's deltas at the answer positions [batch, 1, S, d_model]
  // (stored sender-major), made once per state and answer positions.
  at::Tensor state_at_answers(const at::Tensor& answer_pos);
  // metric_by_nodes' state for these answer positions (undefined: every position).
  void reset_nodes(const at::Tensor& answer_pos);
  // The attention context of k stacked copies of the prompts (key mask,
  // positions as the forward numbers them, rotary tables).
  core::AttentionContext attention_context(int64_t k);
  // A split circuit must have seq_len() positions and the prompts one padding.
  void check_positions(const Circuit& circuit) const;

  hooks::HookedTransformer& model_;
  patching::CircuitGraph graph_;
  Ablation ablation_;
  RunnerOptions options_;
  at::Tensor tokens_;        // int64 [batch, pos], the clean prompts
  at::Tensor mask_;          // [batch, pos] or undefined
  at::Tensor clean_logits_;  // [batch, pos, d_vocab]
  at::Tensor input_delta_;   // [batch, pos, 1, d_model]: embedding - its ablation
  std::vector<at::Tensor> ablated_heads_;  // [n_layers] of [batch|1, pos|1, head, d_model]; undefined = zero
  std::vector<at::Tensor> ablated_mlp_;    // [n_layers] of [batch|1, pos|1, 1, d_model]; undefined = zero
  // State of set_state's circuit.
  std::vector<at::Tensor> resid_pre_;  // [n_layers] of [batch, pos, d_model]
  std::vector<at::Tensor> resid_mid_;  // [n_layers] of [batch, pos, d_model]; empty without sequential MLPs
  at::Tensor resid_final_;             // [batch, pos, d_model], before the output receiver's patch
  at::Tensor deltas_;                  // [batch, pos, senders, d_model]: out - ablated (stored sender-major)
  struct SharedCorrection {
    int64_t r0 = 0, nr = 0, S0 = 0;
    at::Tensor rows;  // float [nr, S0] (CPU), the rows `corr` sums
    at::Tensor corr;  // [batch, pos, nr, d_model]
  };
  std::vector<SharedCorrection> corrections_;  // shared_correction's memo; cleared with each new state
  // metric_by_nodes' memo. A receiver's key: its mask row over its senders
  // and the versions of the senders it keeps.
  struct NodeKey {
    std::vector<float> rows;
    std::vector<int64_t> versions;
  };
  struct NodeMemo {
    NodeKey key;
    int64_t version = 0;  // 0 = never computed
    at::Tensor proj;      // head receivers: the normalised, projected input [batch, p, 1, d_head]
  };
  struct GroupMemo {
    std::vector<int64_t> versions;  // its inputs' versions [q of its heads, k, v]
    bool done = false;
  };
  struct Nodes {
    bool answers = false;                     // the last layer at the answer positions only
    at::Tensor apos, apos_dev, rows;          // int64 [batch]: answer positions (CPU, device), row index
    std::vector<at::Tensor> ablated_resid;    // [n_layers + 1] of [batch, pos, d_model]: resid_pre with every edge removed
    std::vector<at::Tensor> ablated_mid;      // [n_layers] of [batch, pos, d_model]: resid_mid likewise
    at::Tensor deltas;                        // [S, batch, pos, d_model]: each sender's last out - ablated
    at::Tensor deltas_a;                      // [S, batch, 1, d_model]: the same at the answer positions
    std::vector<int64_t> version;             // [S]: the version of each stored delta
    std::vector<NodeMemo> inputs;             // [n_layers * (head + 2 kv_head)]: head receivers
    std::vector<GroupMemo> groups;            // [n_layers * kv_head]
    std::vector<NodeMemo> mlps;               // [n_layers]
    int64_t next = 1;                         // the next version
    core::AttentionContext ctx;               // the prompts' (made once)
  };
  Nodes nodes_;
  at::Tensor embed_;                                 // [batch, pos, d_model]: the clean run's embedding
  core::RotaryTables rotary_;                        // rotary models: made on first use
  at::Tensor answer_deltas_, answer_deltas_pos_;     // state_at_answers' memo and its positions (CPU); cleared with each new state
  std::string split_refusal_;          // why position-split circuits cannot run here ("" = they can)
  int64_t budget_ = 0;
  int64_t forwards_ = 0;
};

}  // namespace mechlab::discovery
