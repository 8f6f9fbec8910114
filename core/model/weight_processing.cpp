#include "core/model/weight_processing.h"

#include "core/util/error.h"
#include "core/log/log.h"

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace mechlab::core {
namespace {

// Why a step cannot be applied to this config; nullopt when it can.
std::optional<std::string> why_not(const ModelConfig& cfg, const TransformerWeights& w,
                                   ProcessingStep step) {
  switch (step) {
    case ProcessingStep::fold_ln:
      if (cfg.norm == NormKind::none) return "the model has no norm (norm is \"none\")";
      if (!cfg.norm_has_weights()) {
        return str_cat("norm is \"", to_string(cfg.norm),
                       "\", which has no weights to fold (was it folded by another tool?)");
      }
      if (cfg.norm == NormKind::layernorm && cfg.mlp == MlpKind::gated) {
        for (const LayerWeights& b : w.blocks) {
          if (at::any(b.ln2_b != 0).item<bool>()) {
            return std::string(
                "a gated MLP adds b_in after act(x W_gate) * (x W_in), so a non-zero ln2 "
                "bias (LayerNorm) cannot be folded into it");
          }
        }
      }
      return std::nullopt;
    case ProcessingStep::center_writing_weights:
      if (!cfg.norm_centres()) {
        return str_cat("it is exact only when LayerNorm reads the residual stream, and norm is \"",
                       to_string(cfg.norm), "\"");
      }
      if (!cfg.final_norm) {
        return std::string(
            "it is exact only when LayerNorm reads the residual stream, and this model "
            "unembeds without a final norm");
      }
      return std::nullopt;
    case ProcessingStep::center_unembed:
    case ProcessingStep::fold_value_biases:
      return std::nullopt;
  }
  return std::nullopt;
}

// Half-precision weights are processed in float32 and rounded once at the end.
at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Runs `fn` on `tensors` converted to the compute dtype, then converts the
// results back to `dtype`. Undefined tensors stay undefined.
template <typename Fn>
void in_compute_dtype(std::vector<at::Tensor*> tensors, at::ScalarType dtype, Fn&& fn) {
  for (at::Tensor* t : tensors) {
    if (t->defined()) *t = t->to(compute_dtype(dtype));
  }
  fn();
  for (at::Tensor* t : tensors) {
    if (t->defined()) *t = t->to(dtype);
  }
}

at::Tensor centred(const at::Tensor& t, int64_t dim) { return t - t.mean(dim, /*keepdim=*/true); }

// fold_ln for one block. ln1 feeds W_Q, W_K, W_V; ln2 feeds W_in, W_gate.
// Biases first (they use the unscaled weights), then gains, then (LayerNorm)
// centring of the reading weights, as TransformerLens's fold_layer_norm.
void fold_ln_block(const ModelConfig& cfg, LayerWeights& b) {
  const bool ln = cfg.norm == NormKind::layernorm;
  if (ln) {
    // b @ W: [d_model] @ [head, d_model, d_head] -> [head, d_head]
    b.b_Q = b.b_Q + at::matmul(b.ln1_b, b.W_Q);
    b.b_K = b.b_K + at::matmul(b.ln1_b, b.W_K);
    b.b_V = b.b_V + at::matmul(b.ln1_b, b.W_V);
  }
  const at::Tensor g1 = b.ln1_w.view({1, -1, 1});  // [1, d_model, 1]
  b.W_Q = b.W_Q * g1;
  b.W_K = b.W_K * g1;
  b.W_V = b.W_V * g1;
  if (ln) {
    b.W_Q = centred(b.W_Q, 1);
    b.W_K = centred(b.W_K, 1);
    b.W_V = centred(b.W_V, 1);
  }
  b.ln1_w = at::Tensor();
  b.ln1_b = at::Tensor();
  if (!cfg.has_mlp()) return;
  // Gated + LayerNorm reaches here only with ln2_b == 0 (checked in why_not),
  // where this bias term is zero.
  if (ln) b.b_in = b.b_in + at::matmul(b.ln2_b, b.W_in);  // [d_model] @ [d_model, d_mlp]
  const at::Tensor g2 = b.ln2_w.view({-1, 1});            // [d_model, 1]
  b.W_in = b.W_in * g2;
  if (cfg.mlp == MlpKind::gated) b.W_gate = b.W_gate * g2;
  // TransformerLens centres W_in but not W_gate (both read a zero-mean input,
  // so either way is exact); mirrored so the processed weights compare equal.
  if (ln) b.W_in = centred(b.W_in, 0);
  b.ln2_w = at::Tensor();
  b.ln2_b = at::Tensor();
}

// fold_ln for ln_final into the unembedding (W_U [d_model, d_vocab]).
void fold_ln_unembed(const ModelConfig& cfg, TransformerWeights& w) {
  const bool ln = cfg.norm == NormKind::layernorm;
  if (ln) w.b_U = w.b_U + at::matmul(w.ln_final_b, w.W_U);  // [d_model] @ [d_model, d_vocab]
  w.W_U = w.W_U * w.ln_final_w.view({-1, 1});
  if (ln) w.W_U = centred(w.W_U, 0);
  w.ln_final_w = at::Tensor();
  w.ln_final_b = at::Tensor();
}

// Writers of the residual stream lose their mean over d_model (the last axis).
void center_writing_block(const ModelConfig& cfg, LayerWeights& b) {
  b.W_O = centred(b.W_O, -1);  // [head, d_head, d_model]
  b.b_O = centred(b.b_O, -1);  // [d_model]
  if (!cfg.has_mlp()) return;
  b.W_out = centred(b.W_out, -1);  // [d_mlp, d_model]
  b.b_out = centred(b.b_out, -1);  // [d_model]
}

void fold_value_biases_block(const ModelConfig& cfg, LayerWeights& b) {
  // [kv_head, d_head] -> [head, d_head]: query head h reads kv head h / group.
  const at::Tensor b_V = b.b_V.repeat_interleave(cfg.n_heads / cfg.kv_heads(), 0);
  // [head * d_head] @ [head * d_head, d_model] -> [d_model]
  b.b_O = b.b_O + at::matmul(b_V.reshape({-1}), b.W_O.reshape({-1, cfg.d_model}));
  b.b_V = at::zeros_like(b.b_V);
}

}  // namespace

ProcessOptions ProcessOptions::all() {
  return ProcessOptions()
      .fold_ln(true)
      .center_writing_weights(true)
      .center_unembed(true)
      .fold_value_biases(true)
      .skip_inapplicable(true);
}

bool ProcessOptions::any() const {
  return fold_ln_ || center_writing_weights_ || center_unembed_ || fold_value_biases_;
}

std::string ProcessOptions::describe() const {
  std::string s;
  auto add = [&s](bool on, const char* name) {
    if (on) s += std::string(s.empty() ? "" : ", ") + name;
  };
  add(fold_ln_, "fold_ln");
  add(center_writing_weights_, "center_writing_weights");
  add(center_unembed_, "center_unembed");
  add(fold_value_biases_, "fold_value_biases");
  return s.empty() ? "none" : s;
}

void process_weights(ModelConfig& cfg, TransformerWeights& w, const ProcessOptions& options) {
  at::NoGradGuard no_grad;
  const std::pair<ProcessingStep, bool> asked[] = {
      {ProcessingStep::fold_ln, options.fold_ln()},
      {ProcessingStep::center_writing_weights, options.center_writing_weights()},
      {ProcessingStep::center_unembed, options.center_unembed()},
      {ProcessingStep::fold_value_biases, options.fold_value_biases()},
  };
  // Decide every step before touching a tensor. center_writing_weights is
  // judged on the config fold_ln leaves (layernorm -> layernorm_pre: both centre).
  std::vector<ProcessingStep> steps;
  for (const auto& [step, on] : asked) {
    if (!on) continue;
    MECHLAB_CHECK(!cfg.was_processed(step), "weight processing: ", to_string(step),
                  " was already applied to this model (its config lists \"processed\": ",
                  to_string(step), "); applying it twice is refused. Load the model without it");
    if (auto reason = why_not(cfg, w, step)) {
      if (!options.skip_inapplicable()) {
        throw Error(str_cat("weight processing: cannot apply ", to_string(step), " to model '",
                            cfg.name, "': ", *reason,
                            ". Leave it out, or use `ProcessOptions::all()`, which "
                            "skip what a model cannot take as TransformerLens does"));
      }
      log::warn(str_cat("weight processing: skipping ", to_string(step), " for model '", cfg.name,
                        "': ", *reason));
      continue;
    }
    steps.push_back(step);
  }
  if (steps.empty()) return;
  auto takes = [&steps](ProcessingStep s) {
    for (ProcessingStep t : steps) {
      if (t == s) return true;
    }
    return false;
  };
  const bool fold_ln = takes(ProcessingStep::fold_ln);
  const bool center_writing = takes(ProcessingStep::center_writing_weights);
  const bool center_unembed = takes(ProcessingStep::center_unembed);
  const bool fold_value_biases = takes(ProcessingStep::fold_value_biases);
  const bool fold_final = fold_ln && cfg.final_norm;
  const at::ScalarType dtype = w.W_E.scalar_type();

  // W_U = W_E^T is stored once; untie before either side changes.
  if (cfg.tied_embeddings && (fold_final || center_writing || center_unembed)) {
    w.W_U = w.W_E.t().contiguous();  // [d_model, d_vocab], a copy
    cfg.tied_embeddings = false;
  }

  // Block by block, so at most one block is held in float32 at a time. The
  // order within a block is TransformerLens's step order.
  for (LayerWeights& b : w.blocks) {
    in_compute_dtype({&b.ln1_w, &b.ln1_b, &b.W_Q, &b.b_Q, &b.W_K, &b.b_K, &b.W_V, &b.b_V, &b.W_O,
                      &b.b_O, &b.ln2_w, &b.ln2_b, &b.W_in, &b.W_gate, &b.b_in, &b.W_out, &b.b_out},
                     dtype, [&] {
                       if (fold_ln) fold_ln_block(cfg, b);
                       if (center_writing) center_writing_block(cfg, b);
                       if (fold_value_biases) fold_value_biases_block(cfg, b);
                     });
  }
  in_compute_dtype({&w.W_E, &w.W_pos, &w.ln_final_w, &w.ln_final_b, &w.W_U, &w.b_U}, dtype, [&] {
    if (fold_final) fold_ln_unembed(cfg, w);
    if (center_writing) {
      w.W_E = centred(w.W_E, -1);                             // [d_vocab, d_model]
      if (w.W_pos.defined()) w.W_pos = centred(w.W_pos, -1);  // [n_ctx, d_model]
    }
    if (center_unembed) {
      w.W_U = centred(w.W_U, -1);  // [d_model, d_vocab]: mean over the vocabulary
      w.b_U = centred(w.b_U, -1);  // [d_vocab]
    }
  });

  if (fold_ln) {
    cfg.norm = cfg.norm == NormKind::layernorm ? NormKind::layernorm_pre : NormKind::rmsnorm_pre;
  }
  for (ProcessingStep s : steps) cfg.processed.push_back(s);
  cfg.validate();
}

Transformer process_weights(const Transformer& model, const ProcessOptions& options) {
  ModelConfig cfg = model.config();
  TransformerWeights w = model.weights();  // tensor handles; processing replaces, never writes
  process_weights(cfg, w, options);
  return Transformer(std::move(cfg), std::move(w));
}

}  // namespace mechlab::core
