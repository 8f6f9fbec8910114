// GPT-NeoX / Pythia (GPTNeoXForCausalLM).
//
// Hyper-parameters: num_hidden_layers, hidden_size, num_attention_heads,
// intermediate_size, vocab_size, max_position_embeddings, layer_norm_eps,
// hidden_act, rotary_pct (= partial_rotary_factor), rotary_emb_base
// (= rope_theta), use_parallel_residual (default true), attention_bias
// (default true), tie_word_embeddings (default false), rope_scaling
// (none/default, linear, llama3; on the rotary dimensions only).
// Tensors ([gpt_neox.] prefix absent in GPTNeoXModel checkpoints), Linear [out, in]:
//   embed_in.weight [d_vocab, d_model]
//   layers.L.input_layernorm / post_attention_layernorm .{weight,bias}
//   layers.L.attention.query_key_value.weight [head * 3 * d_head, d_model]:
//     interleaved per head, rows = (head, q|k|v, d_head); bias [head * 3 * d_head]
//   layers.L.attention.dense.{weight [d_model, d_model], bias}
//   layers.L.mlp.dense_h_to_4h.{weight [d_mlp, d_model], bias}
//   layers.L.mlp.dense_4h_to_h.{weight [d_model, d_mlp], bias}
//   final_layer_norm.{weight,bias}; embed_out.weight [d_vocab, d_model]
//   layers.L.attention.{bias, masked_bias, rotary_emb.inv_freq}: buffers, ignored.
// Rotary: the first int(d_head * rotary_pct) dimensions of each head,
// rotate-half style, as mechlab's.
#include "core/util/error.h"
#include "core/hf/architecture.h"
#include "core/hf/mapping.h"

#include <cmath>

namespace mechlab::core::hf {
namespace {

ModelConfig read_config(const HfConfig& c) {
  ModelConfig m;
  m.n_layers = c.get_positive("num_hidden_layers");
  m.d_model = c.get_positive("hidden_size");
  m.n_heads = c.get_positive("num_attention_heads");
  if (m.d_model % m.n_heads != 0) {
    c.fail("num_attention_heads", "(" + std::to_string(m.n_heads) + ") must divide hidden_size (" +
                                      std::to_string(m.d_model) + ")");
  }
  m.d_head = m.d_model / m.n_heads;
  m.d_mlp = c.get_positive("intermediate_size");
  m.d_vocab = c.get_positive("vocab_size");
  m.n_ctx = c.get_positive("max_position_embeddings");
  m.norm = NormKind::layernorm;
  m.norm_eps = c.get_double("layer_norm_eps", 1e-5);
  m.act = activation_from(c, "hidden_act", "gelu");
  m.mlp = MlpKind::standard;
  m.parallel_attn_mlp = c.get_bool("use_parallel_residual", true);
  m.tied_embeddings = c.get_bool("tie_word_embeddings", false);

  // transformers writes rotary_pct and partial_rotary_factor, rotary_emb_base
  // and rope_theta (older files only the first of each); they must agree.
  const double pct = c.get_double("rotary_pct", c.get_double("partial_rotary_factor", 0.25));
  if (c.has("partial_rotary_factor") && c.get_double("partial_rotary_factor") != pct) {
    c.fail("partial_rotary_factor", "disagrees with rotary_pct");
  }
  const double base = c.get_double("rotary_emb_base", c.get_double("rope_theta", 10000.0));
  if (c.has("rope_theta") && c.get_double("rope_theta") != base) {
    c.fail("rope_theta", "disagrees with rotary_emb_base");
  }
  if (!(pct > 0 && pct <= 1)) c.fail("rotary_pct", "must be in (0, 1], got " + std::to_string(pct));
  m.positional = Positional::rotary;
  m.rotary_dim = static_cast<int>(m.d_head * pct);  // int() as transformers does
  if (m.rotary_dim < 2 || m.rotary_dim % 2 != 0) {
    c.fail("rotary_pct", "gives " + std::to_string(m.rotary_dim) +
                             " rotary dimensions per head; mechlab needs an even number >= 2");
  }
  m.rotary_base = base;
  m.rope_scaling = read_rope_scaling(c);
  return m;
}

TransformerWeights map_tensors(const ModelConfig& m, const HfConfig& c, HfTensors& t) {
  const int64_t D = m.d_model, H = m.n_heads, Dh = m.d_head, M = m.d_mlp, V = m.d_vocab;
  const bool attn_bias = c.get_bool("attention_bias", true);
  const std::string p = detect_prefix(t, "gpt_neox.", "embed_in.weight");
  TransformerWeights w;
  w.W_E = t.take(p + "embed_in.weight", {V, D});
  for (int l = 0; l < m.n_layers; ++l) {
    const std::string h = p + "layers." + std::to_string(l) + ".";
    LayerWeights b;
    b.ln1_w = t.take(h + "input_layernorm.weight", {D});
    b.ln1_b = t.take(h + "input_layernorm.bias", {D});
    // [head * 3 * d_head, d_model] -> [head, 3, d_head, d_model]
    const at::Tensor qkv = t.take(h + "attention.query_key_value.weight", {3 * H * Dh, D})
                               .view({H, 3, Dh, D});
    at::Tensor qkv_b = attn_bias ? t.take(h + "attention.query_key_value.bias", {3 * H * Dh})
                                       .view({H, 3, Dh})
                                 : zeros({H, 3, Dh}, t.dtype());
    at::Tensor* W[3] = {&b.W_Q, &b.W_K, &b.W_V};
    at::Tensor* B[3] = {&b.b_Q, &b.b_K, &b.b_V};
    for (int i = 0; i < 3; ++i) {
      *W[i] = materialise(qkv.select(1, i).transpose(1, 2));  // [head, d_model, d_head]
      *B[i] = materialise(qkv_b.select(1, i));                 // [head, d_head]
    }
    b.W_O = out_proj_to_heads(t.take(h + "attention.dense.weight", {D, H * Dh}), H, Dh);
    b.b_O = attn_bias ? t.take(h + "attention.dense.bias", {D}) : zeros({D}, t.dtype());
    b.ln2_w = t.take(h + "post_attention_layernorm.weight", {D});
    b.ln2_b = t.take(h + "post_attention_layernorm.bias", {D});
    b.W_in = transposed(t.take(h + "mlp.dense_h_to_4h.weight", {M, D}));
    b.b_in = t.take(h + "mlp.dense_h_to_4h.bias", {M});
    b.W_out = transposed(t.take(h + "mlp.dense_4h_to_h.weight", {D, M}));
    b.b_out = t.take(h + "mlp.dense_4h_to_h.bias", {D});
    for (const char* buffer : {"attention.bias", "attention.masked_bias",
                               "attention.rotary_emb.inv_freq"}) {
      t.skip(h + buffer);
    }
    w.blocks.push_back(std::move(b));
  }
  w.ln_final_w = t.take(p + "final_layer_norm.weight", {D});
  w.ln_final_b = t.take(p + "final_layer_norm.bias", {D});
  if (m.tied_embeddings) {
    t.skip("embed_out.weight");
  } else {
    w.W_U = transposed(t.take("embed_out.weight", {V, D}));
  }
  w.b_U = zeros({V}, t.dtype());
  return w;
}

}  // namespace

Architecture gpt_neox_architecture() {
  return {"GPTNeoXForCausalLM", "gpt_neox", read_config, map_tensors};
}

}  // namespace mechlab::core::hf
