// Llama 2 / Llama 3 (LlamaForCausalLM), and the layout Mistral and Qwen2
// share (core/hf/llama_family.h).
//
// Hyper-parameters: num_hidden_layers, hidden_size, num_attention_heads,
// num_key_value_heads (default = heads), head_dim (default hidden_size /
// heads), intermediate_size, vocab_size, max_position_embeddings,
// rms_norm_eps, hidden_act, rope_theta, partial_rotary_factor,
// tie_word_embeddings (default false), attention_bias (q, k, v and o
// biases), mlp_bias (refused), rope_scaling (none/default, linear, llama3).
// Tensors ([model.] prefix absent in LlamaModel checkpoints), Linear [out, in]:
//   embed_tokens.weight [d_vocab, d_model]
//   layers.L.input_layernorm.weight, layers.L.post_attention_layernorm.weight [d_model]
//   layers.L.self_attn.q_proj.weight [head * d_head, d_model] (+ .bias [head * d_head])
//   layers.L.self_attn.k_proj / v_proj.weight [kv_head * d_head, d_model] (+ .bias)
//   layers.L.self_attn.o_proj.weight [d_model, head * d_head] (+ .bias [d_model])
//   layers.L.mlp.gate_proj / up_proj.weight [d_mlp, d_model], down_proj.weight [d_model, d_mlp]
//   norm.weight [d_model]; lm_head.weight [d_vocab, d_model] (absent when tied)
//
// Rotary: Hugging Face's Llama checkpoints are already permuted (by the
// conversion from Meta's interleaved layout) for rotate_half rotary, which is
// what mechlab (and TransformerLens, whose convert_llama_weights copies q/k
// unchanged) applies. So q_proj/k_proj are copied unpermuted; the fixtures'
// logits check it.
#include "core/util/error.h"
#include "core/hf/architecture.h"
#include "core/hf/llama_family.h"
#include "core/hf/mapping.h"

#include <algorithm>

namespace mechlab::core::hf {

LlamaBiases llama_biases(const HfConfig& c, LlamaVariant variant) {
  switch (variant) {
    case LlamaVariant::llama: {
      const bool b = c.get_bool("attention_bias", false);
      return {b, b};
    }
    case LlamaVariant::qwen2: return {true, false};
    case LlamaVariant::mistral: return {false, false};
  }
  return {};
}

ModelConfig read_llama_family_config(const HfConfig& c, LlamaVariant variant) {
  ModelConfig m;
  m.n_layers = c.get_positive("num_hidden_layers");
  m.d_model = c.get_positive("hidden_size");
  m.n_heads = c.get_positive("num_attention_heads");
  m.n_kv_heads = c.has("num_key_value_heads") ? c.get_positive("num_key_value_heads") : m.n_heads;
  if (m.n_heads % m.n_kv_heads != 0) {
    c.fail("num_key_value_heads", "(" + std::to_string(m.n_kv_heads) +
                                      ") must divide num_attention_heads (" +
                                      std::to_string(m.n_heads) + ")");
  }
  if (c.has("head_dim")) {
    m.d_head = c.get_positive("head_dim");
  } else {
    if (m.d_model % m.n_heads != 0) {
      c.fail("num_attention_heads", "must divide hidden_size when head_dim is not given");
    }
    m.d_head = m.d_model / m.n_heads;
  }
  m.d_mlp = c.get_positive("intermediate_size");
  m.d_vocab = c.get_positive("vocab_size");
  m.n_ctx = c.get_positive("max_position_embeddings");
  m.norm = NormKind::rmsnorm;
  m.norm_eps = c.get_double("rms_norm_eps", 1e-6);
  m.act = activation_from(c, "hidden_act", "silu");
  m.mlp = MlpKind::gated;
  m.tied_embeddings = c.get_bool("tie_word_embeddings", false);
  m.positional = Positional::rotary;
  m.rotary_base = c.get_double("rope_theta", 10000.0);
  const double partial = c.get_double("partial_rotary_factor", 1.0);
  if (!(partial > 0 && partial <= 1)) c.fail("partial_rotary_factor", "must be in (0, 1]");
  m.rotary_dim = static_cast<int>(m.d_head * partial);
  m.rope_scaling = read_rope_scaling(c);
  if (c.get_bool("mlp_bias", false)) {
    c.fail("mlp_bias", "is true; mechlab's gated MLP has one bias after the product "
                       "(TransformerLens's), not biases on gate_proj/up_proj");
  }
  // Sliding-window attention equals full attention on sequences no longer
  // than the window, so the window caps n_ctx: exact by construction. As in
  // transformers' MistralConfig and Qwen2Config, a config without the key has
  // a window of 4096 and an explicit null has none. Qwen2 windows only the
  // layers from max_window_layers (default 28) on, so a model with no such
  // layer has no window at all.
  const bool windowed =
      variant == LlamaVariant::mistral ||
      (variant == LlamaVariant::qwen2 && c.get_bool("use_sliding_window", false) &&
       c.get_int("max_window_layers", 28) < m.n_layers);
  if (windowed) {
    constexpr int kTransformersDefaultWindow = 4096;
    const bool present = c.json().contains("sliding_window");
    const int window = !present ? kTransformersDefaultWindow
                       : c.has("sliding_window") ? c.get_positive("sliding_window")
                                                 : 0;  // null: no window
    if (window > 0 && window < m.n_ctx) {
      m.n_ctx = window;
      m.sliding_window = window;
    }
  }
  return m;
}

TransformerWeights map_llama_family_tensors(const ModelConfig& m, const LlamaBiases& biases,
                                            HfTensors& t) {
  const int64_t D = m.d_model, H = m.n_heads, K = m.kv_heads(), Dh = m.d_head, M = m.d_mlp,
                V = m.d_vocab;
  const std::string p = detect_prefix(t, "model.", "embed_tokens.weight");
  TransformerWeights w;
  w.W_E = t.take(p + "embed_tokens.weight", {V, D});
  for (int l = 0; l < m.n_layers; ++l) {
    const std::string h = p + "layers." + std::to_string(l) + ".";
    const std::string a = h + "self_attn.";
    LayerWeights b;
    b.ln1_w = t.take(h + "input_layernorm.weight", {D});
    b.W_Q = linear_to_heads(t.take(a + "q_proj.weight", {H * Dh, D}), H, Dh);
    b.W_K = linear_to_heads(t.take(a + "k_proj.weight", {K * Dh, D}), K, Dh);
    b.W_V = linear_to_heads(t.take(a + "v_proj.weight", {K * Dh, D}), K, Dh);
    if (biases.qkv) {
      b.b_Q = bias_to_heads(t.take(a + "q_proj.bias", {H * Dh}), H, Dh);
      b.b_K = bias_to_heads(t.take(a + "k_proj.bias", {K * Dh}), K, Dh);
      b.b_V = bias_to_heads(t.take(a + "v_proj.bias", {K * Dh}), K, Dh);
    } else {
      b.b_Q = zeros({H, Dh}, t.dtype());
      b.b_K = zeros({K, Dh}, t.dtype());
      b.b_V = zeros({K, Dh}, t.dtype());
    }
    b.W_O = out_proj_to_heads(t.take(a + "o_proj.weight", {D, H * Dh}), H, Dh);
    b.b_O = biases.o ? t.take(a + "o_proj.bias", {D}) : zeros({D}, t.dtype());
    t.skip(a + "rotary_emb.inv_freq");
    b.ln2_w = t.take(h + "post_attention_layernorm.weight", {D});
    b.W_gate = transposed(t.take(h + "mlp.gate_proj.weight", {M, D}));
    b.W_in = transposed(t.take(h + "mlp.up_proj.weight", {M, D}));
    b.b_in = zeros({M}, t.dtype());
    b.W_out = transposed(t.take(h + "mlp.down_proj.weight", {D, M}));
    b.b_out = zeros({D}, t.dtype());
    w.blocks.push_back(std::move(b));
  }
  w.ln_final_w = t.take(p + "norm.weight", {D});
  if (m.tied_embeddings) {
    t.skip("lm_head.weight");
  } else {
    w.W_U = transposed(t.take("lm_head.weight", {V, D}));
  }
  w.b_U = zeros({V}, t.dtype());
  return w;
}

namespace {

ModelConfig read_config(const HfConfig& c) { return read_llama_family_config(c, LlamaVariant::llama); }

TransformerWeights map_tensors(const ModelConfig& m, const HfConfig& c, HfTensors& t) {
  return map_llama_family_tensors(m, llama_biases(c, LlamaVariant::llama), t);
}

}  // namespace

Architecture llama_architecture() { return {"LlamaForCausalLM", "llama", read_config, map_tensors}; }

}  // namespace mechlab::core::hf
