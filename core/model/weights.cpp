#include "core/model/weights.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <map>

namespace mechlab::core {

std::vector<ParamSlot> param_slots(const ModelConfig& cfg, TransformerWeights& w) {
  const int64_t V = cfg.d_vocab, D = cfg.d_model, H = cfg.n_heads, K = cfg.kv_heads(),
                Dh = cfg.d_head, M = cfg.d_mlp;
  // Parameters of the norms: gain for layernorm/rmsnorm, bias for layernorm;
  // the _pre norms (folded) and none have none.
  const bool ln = cfg.norm == NormKind::layernorm;
  const bool norm = cfg.norm_has_weights();
  std::vector<ParamSlot> s;
  s.push_back({"embed.W_E", &w.W_E, {V, D}});
  if (cfg.positional == Positional::learned) s.push_back({"pos_embed.W_pos", &w.W_pos, {cfg.n_ctx, D}});
  w.blocks.resize(cfg.n_layers);
  for (int l = 0; l < cfg.n_layers; ++l) {
    LayerWeights& b = w.blocks[l];
    const std::string p = "blocks." + std::to_string(l) + ".";
    if (norm) s.push_back({p + "ln1.w", &b.ln1_w, {D}});
    if (ln) s.push_back({p + "ln1.b", &b.ln1_b, {D}});
    s.push_back({p + "attn.W_Q", &b.W_Q, {H, D, Dh}});
    s.push_back({p + "attn.b_Q", &b.b_Q, {H, Dh}});
    s.push_back({p + "attn.W_K", &b.W_K, {K, D, Dh}});
    s.push_back({p + "attn.b_K", &b.b_K, {K, Dh}});
    s.push_back({p + "attn.W_V", &b.W_V, {K, D, Dh}});
    s.push_back({p + "attn.b_V", &b.b_V, {K, Dh}});
    s.push_back({p + "attn.W_O", &b.W_O, {H, Dh, D}});
    s.push_back({p + "attn.b_O", &b.b_O, {D}});
    if (!cfg.has_mlp()) continue;
    if (norm) s.push_back({p + "ln2.w", &b.ln2_w, {D}});
    if (ln) s.push_back({p + "ln2.b", &b.ln2_b, {D}});
    s.push_back({p + "mlp.W_in", &b.W_in, {D, M}});
    if (cfg.mlp == MlpKind::gated) s.push_back({p + "mlp.W_gate", &b.W_gate, {D, M}});
    s.push_back({p + "mlp.b_in", &b.b_in, {M}});
    s.push_back({p + "mlp.W_out", &b.W_out, {M, D}});
    s.push_back({p + "mlp.b_out", &b.b_out, {D}});
  }
  if (cfg.final_norm && norm) s.push_back({"ln_final.w", &w.ln_final_w, {D}});
  if (cfg.final_norm && ln) s.push_back({"ln_final.b", &w.ln_final_b, {D}});
  if (!cfg.tied_embeddings) s.push_back({"unembed.W_U", &w.W_U, {D, V}});
  s.push_back({"unembed.b_U", &w.b_U, {V}});
  return s;
}

TransformerWeights weights_from_params(const ModelConfig& cfg,
                                       const std::vector<std::pair<std::string, at::Tensor>>& params,
                                       const at::TensorOptions& target) {
  std::map<std::string, at::Tensor> given(params.begin(), params.end());
  TransformerWeights w;
  for (const ParamSlot& slot : param_slots(cfg, w)) {
    auto it = given.find(slot.name);
    MECHLAB_CHECK(it != given.end(), "parameter \"", slot.name,
                  "\" is missing (the config says this model has it)");
    const at::Tensor& t = it->second;
    MECHLAB_CHECK(t.sizes().vec() == slot.shape, "parameter \"", slot.name, "\" has shape ",
                  t.sizes(), " but the config needs ", at::IntArrayRef(slot.shape));
    MECHLAB_CHECK(at::isFloatingType(t.scalar_type()), "parameter \"", slot.name,
                  "\" has dtype ", t.scalar_type(), "; expected a floating dtype");
    *slot.tensor = t.to(target).contiguous();
    given.erase(it);
  }
  if (!given.empty()) {
    throw Error(str_cat("unexpected parameter \"", given.begin()->first,
                        "\": this config has no such parameter (wrong config, or a checkpoint of "
                        "another architecture?)"));
  }
  return w;
}

TransformerWeights init_weights(const ModelConfig& cfg, uint64_t seed, double init_std) {
  cfg.validate();
  TransformerWeights w;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (ParamSlot& slot : param_slots(cfg, w)) {
    const std::string& n = slot.name;
    const bool is_norm = n.find("ln") != std::string::npos && n.find(".w") == n.size() - 2;
    const bool is_bias = n.rfind(".b") != std::string::npos &&
                         (n.compare(n.size() - 2, 2, ".b") == 0 || n.find(".b_") != std::string::npos);
    if (is_norm) {
      *slot.tensor = at::ones(slot.shape, at::kFloat);
    } else if (is_bias) {
      *slot.tensor = at::zeros(slot.shape, at::kFloat);
    } else {
      *slot.tensor = at::normal(0.0, init_std, slot.shape, gen, at::TensorOptions(at::kFloat));
    }
  }
  return w;
}

}  // namespace mechlab::core
