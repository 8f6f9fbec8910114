// ModelConfig: the hyper-parameters of a decoder-only transformer.
//
// One struct spans GPT-2, GPT-NeoX/Pythia, Llama/Mistral/Qwen2-style models,
// attention-only toy models and compiled models. It round-trips through JSON
// (the `config` attribute of a checkpoint); the JSON keys are the member names.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <optional>
#include <string>
#include <vector>

namespace mechlab::core {

enum class Positional { learned, rotary, none };
/// layernorm_pre / rmsnorm_pre are TransformerLens's LNPre / RMSPre: the
/// normalisation without its gain (and bias), what a norm becomes once
/// weight processing folds its parameters into the layers that read it.
enum class NormKind { layernorm, rmsnorm, layernorm_pre, rmsnorm_pre, none };
enum class Activation { gelu_new, gelu, relu, silu };
enum class MlpKind { standard, gated, none };
/// A weight-processing step (core/model/weight_processing.h), named as
/// TransformerLens's load_and_process_state_dict arguments.
enum class ProcessingStep { fold_ln, center_writing_weights, center_unembed, fold_value_biases };

/// How a long-context checkpoint rescales its rotary inverse frequencies
/// inv_freq(i) = base^(-i / (rotary_dim/2)) (Hugging Face `rope_scaling`;
/// transformers' modeling_rope_utils.py):
///  - linear (Position Interpolation, Chen et al. 2023): inv_freq / factor,
///    i.e. positions divided by factor.
///  - llama3 (Llama 3.1; TransformerLens's use_NTK_by_parts_rope): with
///    wavelen = 2 pi / inv_freq and L = original_max_position_embeddings,
///    wavelen < L / high_freq_factor keeps inv_freq, wavelen > L / low_freq_factor
///    divides it by factor, and in between it blends the two with
///    s = (L / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor):
///    (1 - s) inv_freq / factor + s inv_freq.
/// Neither scales the attention logits (transformers' attention_factor is 1).
enum class RopeScalingKind { linear, llama3 };

struct RopeScaling {
  RopeScalingKind kind = RopeScalingKind::linear;
  double factor = 1.0;                       ///< > 0 (1 = no scaling)
  double low_freq_factor = 1.0;              ///< llama3 only; > 0
  double high_freq_factor = 4.0;             ///< llama3 only; > low_freq_factor
  int original_max_position_embeddings = 0;  ///< llama3 only: pre-training context, > 0

  /// Why these values are unusable ("" when they are fine), e.g. "factor must
  /// be positive, got -1"; ModelConfig::validate and the Hugging Face reader
  /// word it for their callers.
  std::string problem() const;
};

struct ModelConfig {
  std::string name = "model";  ///< free text, shown by `mechlab info`
  int n_layers = 0;
  int d_model = 0;
  int n_heads = 0;
  int n_kv_heads = 0;  ///< grouped-query attention; 0 = n_heads (plain MHA)
  int d_head = 0;
  int d_mlp = 0;  ///< unused when mlp == none
  int d_vocab = 0;
  int n_ctx = 0;  ///< longest sequence the model accepts
  /// Sliding-window attention (Mistral, Qwen2): each query sees the last
  /// `sliding_window` keys; 0 = none. mechlab has no windowed kernel: a
  /// Hugging Face loader caps n_ctx at the window, where windowed attention is
  /// exactly full causal attention, and records the window here so that the
  /// refusal of a longer sequence can say why (JSON key written only when set).
  int sliding_window = 0;

  Positional positional = Positional::learned;
  int rotary_dim = 0;  ///< rotary only; 0 = d_head. GPT-NeoX rotates part of each head.
  double rotary_base = 10000.0;
  /// rotary only; unset = plain RoPE (JSON key "rope_scaling", written only
  /// when set, so configs without it keep their hash).
  std::optional<RopeScaling> rope_scaling;

  NormKind norm = NormKind::layernorm;
  double norm_eps = 1e-5;
  bool final_norm = true;  ///< ln_final before the unembedding

  Activation act = Activation::gelu_new;
  MlpKind mlp = MlpKind::standard;
  bool parallel_attn_mlp = false;  ///< GPT-NeoX: resid_post = resid_pre + attn + mlp
  bool tied_embeddings = false;    ///< W_U = W_E^T, no W_U parameter stored

  /// Divisor of q·k. Unset = sqrt(d_head), as in GPT-2, Llama and TransformerLens.
  std::optional<double> attn_scale;

  /// Weight processing applied to the parameters, in the order applied
  /// (JSON key "processed", written only when non-empty). Processed weights
  /// give other activations (e.g. hook_resid_pre after centring), so the
  /// config hash must tell processed from unprocessed models apart; and a
  /// step is never applied twice.
  std::vector<ProcessingStep> processed;

  int kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int rotary_dims() const { return rotary_dim > 0 ? rotary_dim : d_head; }
  double scale() const;
  bool has_mlp() const { return mlp != MlpKind::none; }
  /// LayerNorm-style norms subtract the mean (layernorm, layernorm_pre).
  bool norm_centres() const { return norm == NormKind::layernorm || norm == NormKind::layernorm_pre; }
  /// The norm carries a gain w (and, for layernorm, a bias b).
  bool norm_has_weights() const { return norm == NormKind::layernorm || norm == NormKind::rmsnorm; }
  bool was_processed(ProcessingStep step) const;
  /// "n_ctx = 16", plus the reason when n_ctx is the sliding window; for
  /// messages that refuse a sequence that is too long.
  std::string describe_n_ctx() const;

  /// Refuses an inconsistent config with a mechlab::Error naming the field.
  void validate() const;
  /// A short fingerprint of the JSON form; activation stores record it.
  std::string hash() const;
  /// Number of trainable parameters (tied embeddings counted once).
  int64_t parameter_count() const;

  nlohmann::json to_json() const;
  static ModelConfig from_json(const nlohmann::json& j);
  std::string to_json_string(int indent = -1) const;
  static ModelConfig from_json_string(const std::string& text);
};

const char* to_string(Positional p);
const char* to_string(NormKind n);
const char* to_string(Activation a);
const char* to_string(MlpKind m);
const char* to_string(ProcessingStep s);
const char* to_string(RopeScalingKind k);
/// "fold_ln" -> ProcessingStep::fold_ln; an unknown name is a mechlab::Error
/// listing the valid ones (`what` says where the name came from).
ProcessingStep parse_processing_step(const std::string& name, const std::string& what);

}  // namespace mechlab::core
