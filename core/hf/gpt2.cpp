// GPT-2 (GPT2LMHeadModel).
//
// Hyper-parameters: n_layer, n_embd, n_head, n_inner (null = 4 n_embd),
// vocab_size, n_positions, layer_norm_epsilon, activation_function,
// tie_word_embeddings (default true), scale_attn_weights.
// Tensors ([transformer.] prefix absent in GPT2Model checkpoints and in the
// original hub files), Conv1D weights stored [in, out]:
//   wte.weight [d_vocab, d_model], wpe.weight [n_ctx, d_model]
//   h.L.ln_1.{weight,bias}, h.L.ln_2.{weight,bias}        [d_model]
//   h.L.attn.c_attn.weight [d_model, 3 d_model] = q | k | v, heads contiguous
//   h.L.attn.c_attn.bias [3 d_model]
//   h.L.attn.c_proj.{weight [d_model, d_model], bias}
//   h.L.mlp.c_fc.{weight [d_model, d_mlp], bias}, h.L.mlp.c_proj.{weight [d_mlp, d_model], bias}
//   ln_f.{weight,bias}; lm_head.weight only when untied
//   h.L.attn.bias / masked_bias: causal-mask buffers in older files, ignored.
#include "core/util/error.h"
#include "core/hf/architecture.h"
#include "core/hf/mapping.h"

namespace mechlab::core::hf {
namespace {

ModelConfig read_config(const HfConfig& c) {
  ModelConfig m;
  m.n_layers = c.get_positive("n_layer");
  m.d_model = c.get_positive("n_embd");
  m.n_heads = c.get_positive("n_head");
  if (m.d_model % m.n_heads != 0) {
    c.fail("n_head", "(" + std::to_string(m.n_heads) + ") must divide n_embd (" +
                         std::to_string(m.d_model) + ")");
  }
  m.d_head = m.d_model / m.n_heads;
  m.d_mlp = c.has("n_inner") ? c.get_positive("n_inner") : 4 * m.d_model;
  m.d_vocab = c.get_positive("vocab_size");
  m.n_ctx = c.get_positive("n_positions");
  m.positional = Positional::learned;
  m.norm = NormKind::layernorm;
  m.norm_eps = c.get_double("layer_norm_epsilon", 1e-5);
  m.act = activation_from(c, "activation_function", "gelu_new");
  m.mlp = MlpKind::standard;
  m.tied_embeddings = c.get_bool("tie_word_embeddings", true);
  if (!c.get_bool("scale_attn_weights", true)) m.attn_scale = 1.0;
  if (c.get_bool("scale_attn_by_inverse_layer_idx", false)) {
    c.fail("scale_attn_by_inverse_layer_idx", "is true; mechlab scales attention by sqrt(d_head) "
                                              "in every layer");
  }
  if (c.get_bool("add_cross_attention", false)) {
    c.fail("add_cross_attention", "is true; mechlab loads decoder-only models");
  }
  return m;
}

TransformerWeights map_tensors(const ModelConfig& m, const HfConfig&, HfTensors& t) {
  const int64_t D = m.d_model, H = m.n_heads, Dh = m.d_head, M = m.d_mlp, V = m.d_vocab;
  const std::string p = detect_prefix(t, "transformer.", "wte.weight");
  TransformerWeights w;
  w.W_E = t.take(p + "wte.weight", {V, D});
  w.W_pos = t.take(p + "wpe.weight", {m.n_ctx, D});
  for (int l = 0; l < m.n_layers; ++l) {
    const std::string h = p + "h." + std::to_string(l) + ".";
    LayerWeights b;
    b.ln1_w = t.take(h + "ln_1.weight", {D});
    b.ln1_b = t.take(h + "ln_1.bias", {D});
    const at::Tensor qkv = t.take(h + "attn.c_attn.weight", {D, 3 * D});  // [d_model, 3 head d_head]
    const at::Tensor qkv_b = t.take(h + "attn.c_attn.bias", {3 * D});
    at::Tensor* W[3] = {&b.W_Q, &b.W_K, &b.W_V};
    at::Tensor* B[3] = {&b.b_Q, &b.b_K, &b.b_V};
    for (int i = 0; i < 3; ++i) {
      // [d_model, head d_head] -> [head, d_model, d_head]
      *W[i] = materialise(qkv.narrow(1, i * D, D).view({D, H, Dh}).permute({1, 0, 2}));
      *B[i] = qkv_b.narrow(0, i * D, D).view({H, Dh});
    }
    b.W_O = t.take(h + "attn.c_proj.weight", {D, D}).view({H, Dh, D});  // rows are (head, d_head)
    b.b_O = t.take(h + "attn.c_proj.bias", {D});
    b.ln2_w = t.take(h + "ln_2.weight", {D});
    b.ln2_b = t.take(h + "ln_2.bias", {D});
    b.W_in = t.take(h + "mlp.c_fc.weight", {D, M});
    b.b_in = t.take(h + "mlp.c_fc.bias", {M});
    b.W_out = t.take(h + "mlp.c_proj.weight", {M, D});
    b.b_out = t.take(h + "mlp.c_proj.bias", {D});
    t.skip(h + "attn.bias");
    t.skip(h + "attn.masked_bias");
    w.blocks.push_back(std::move(b));
  }
  w.ln_final_w = t.take(p + "ln_f.weight", {D});
  w.ln_final_b = t.take(p + "ln_f.bias", {D});
  if (m.tied_embeddings) {
    t.skip("lm_head.weight");  // a copy of wte when present; HF ties it too
  } else {
    w.W_U = transposed(t.take("lm_head.weight", {V, D}));
  }
  w.b_U = zeros({V}, t.dtype());
  return w;
}

}  // namespace

Architecture gpt2_architecture() { return {"GPT2LMHeadModel", "gpt2", read_config, map_tensors}; }

}  // namespace mechlab::core::hf
