#include "hooks/activation_cache.h"

#include "core/util/error.h"
#include "core/model/layers/norm.h"
#include "hooks/act_name.h"
#include "hooks/names_filter.h"

#include <ATen/ATen.h>

namespace mechlab::hooks {

at::Tensor PosSlice::apply(const at::Tensor& t, int64_t dim) const {
  if (!index) return t;
  const int64_t d = dim < 0 ? dim + t.dim() : dim;
  const int64_t n = t.size(d);
  MECHLAB_CHECK(*index >= -n && *index < n, "position ", *index, " is outside a sequence of ", n,
                " positions");
  return t.select(d, *index);
}

namespace {

/// Refuses options that `helper` does not take, naming them: TransformerLens
/// would raise on an unexpected keyword, and ignoring one would be silent.
void refuse_unused(const ResidOptions& o, const char* helper,
                   std::initializer_list<const char*> takes) {
  const ResidOptions d;
  const std::pair<const char*, bool> set[] = {
      {"layer", o.layer() != d.layer()},
      {"mlp_input", o.mlp_input() != d.mlp_input()},
      {"apply_ln", o.apply_ln() != d.apply_ln()},
      {"pos", o.pos().index.has_value()},
      {"incl_mid", o.incl_mid() != d.incl_mid()},
      {"mode", o.mode() != d.mode()},
      {"incl_embeds", o.incl_embeds() != d.incl_embeds()},
      {"incl_remainder", o.incl_remainder() != d.incl_remainder()},
      {"recompute_ln", o.recompute_ln() != d.recompute_ln()}};
  for (const auto& [name, is_set] : set) {
    if (!is_set) continue;
    bool taken = false;
    for (const char* t : takes) taken = taken || std::string(t) == name;
    MECHLAB_CHECK(taken, helper, " does not take the option ", name, "; it takes: ",
                  c10::Join(", ", std::vector<std::string>(takes.begin(), takes.end())));
  }
}

}  // namespace

ActivationCache::ActivationCache(std::shared_ptr<const core::Transformer> model,
                                 std::map<std::string, at::Tensor> acts)
    : model_(std::move(model)), acts_(std::move(acts)) {}

const at::Tensor& ActivationCache::operator[](const std::string& name) const {
  auto it = acts_.find(name);
  if (it != acts_.end()) return it->second;
  MECHLAB_CHECK(model_, "the activation cache is empty");
  require_hook_name(config(), name);
  throw Error(str_cat("\"", name, "\" is a hook point of this model but is not in the cache; "
                      "include it in the names filter of run_with_cache"));
}

const at::Tensor& ActivationCache::get(const std::string& name, int layer,
                                       const std::string& layer_type) const {
  return (*this)[act_name(name, layer, layer_type)];
}

std::vector<std::string> ActivationCache::keys() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : acts_) out.push_back(k);
  return out;
}

int64_t ActivationCache::bytes() const {
  int64_t n = 0;
  for (const auto& [k, v] : acts_) n += v.numel() * static_cast<int64_t>(v.element_size());
  return n;
}

Stack ActivationCache::accumulated_resid(const ResidOptions& opts) const {
  refuse_unused(opts, "accumulated_resid", {"layer", "mlp_input", "apply_ln", "pos", "incl_mid"});
  int layer = opts.layer();
  const bool incl_mid = opts.incl_mid(), apply_ln = opts.apply_ln(), mlp_input = opts.mlp_input();
  const PosSlice pos = opts.pos();
  const int n = config().n_layers;
  if (layer < 0) layer = n;
  Stack s;
  std::vector<at::Tensor> parts;
  for (int l = 0; l <= layer; ++l) {
    if (l == n) {
      parts.push_back(get("resid_post", n - 1));
      s.labels.push_back("final_post");
      continue;
    }
    parts.push_back(get("resid_pre", l));
    s.labels.push_back(std::to_string(l) + "_pre");
    if ((incl_mid && l < layer) || (mlp_input && l == layer)) {
      parts.push_back(get("resid_mid", l));
      s.labels.push_back(std::to_string(l) + "_mid");
    }
  }
  for (auto& p : parts) p = pos.apply(p, -2);
  s.tensor = at::stack(parts, 0);
  if (apply_ln) {
    s.tensor = apply_ln_to_stack(
        s.tensor, ResidOptions().layer(layer).mlp_input(mlp_input).pos(pos).recompute_ln(layer == n));
  }
  return s;
}

Stack ActivationCache::decompose_resid(const ResidOptions& opts) const {
  refuse_unused(opts, "decompose_resid",
                {"layer", "mlp_input", "mode", "apply_ln", "pos", "incl_embeds"});
  int layer = opts.layer();
  const bool mlp_input = opts.mlp_input(), apply_ln = opts.apply_ln(), incl_embeds = opts.incl_embeds();
  const std::string& mode = opts.mode();
  const PosSlice pos = opts.pos();
  MECHLAB_CHECK(mode == "all" || mode == "attn" || mode == "mlp", "decompose_resid: mode \"",
                mode, "\" must be \"all\", \"attn\" or \"mlp\"");
  const auto& cfg = config();
  if (layer < 0) layer = cfg.n_layers;
  const bool incl_attn = mode != "mlp";
  const bool incl_mlp = mode != "attn" && cfg.has_mlp();
  Stack s;
  std::vector<at::Tensor> parts;
  if (incl_embeds) {
    parts.push_back((*this)["hook_embed"]);
    s.labels.push_back("embed");
    if (cfg.positional == core::Positional::learned) {
      parts.push_back((*this)["hook_pos_embed"]);
      s.labels.push_back("pos_embed");
    }
  }
  for (int l = 0; l < layer; ++l) {
    if (incl_attn) {
      parts.push_back(get("attn_out", l));
      s.labels.push_back(std::to_string(l) + "_attn_out");
    }
    if (incl_mlp) {
      parts.push_back(get("mlp_out", l));
      s.labels.push_back(std::to_string(l) + "_mlp_out");
    }
  }
  if (mlp_input && incl_attn) {
    parts.push_back(get("attn_out", layer));
    s.labels.push_back(std::to_string(layer) + "_attn_out");
  }
  MECHLAB_CHECK(!parts.empty(), "decompose_resid: nothing to stack");
  for (auto& p : parts) p = pos.apply(p, -2);
  s.tensor = at::stack(parts, 0);
  if (apply_ln) {
    s.tensor = apply_ln_to_stack(s.tensor, ResidOptions().layer(layer).mlp_input(mlp_input).pos(pos));
  }
  return s;
}

at::Tensor ActivationCache::head_result(int layer) const {
  const std::string name = act_name("result", layer);
  if (contains(name)) return acts_.at(name);
  // z [batch, pos, head, d_head] · W_O [head, d_head, d_model]
  const at::Tensor& z = get("z", layer);
  return at::einsum("bphd,hdm->bphm", {z, model_->weights().blocks[layer].W_O.to(z.device(), z.scalar_type())});
}

Stack ActivationCache::stack_head_results(const ResidOptions& opts) const {
  refuse_unused(opts, "stack_head_results", {"layer", "incl_remainder", "pos", "apply_ln"});
  int layer = opts.layer();
  const bool incl_remainder = opts.incl_remainder(), apply_ln = opts.apply_ln();
  const PosSlice pos = opts.pos();
  const auto& cfg = config();
  if (layer < 0) layer = cfg.n_layers;
  Stack s;
  std::vector<at::Tensor> parts;
  for (int l = 0; l < layer; ++l) {
    parts.push_back(pos.apply(head_result(l), -3));  // [batch, (pos,) head, d_model]
    for (int h = 0; h < cfg.n_heads; ++h) s.labels.push_back(str_cat("L", l, "H", h));
  }
  if (!parts.empty()) {
    s.tensor = at::cat(parts, -2).movedim(-2, 0);  // [layer*head, batch, (pos,) d_model]
    if (incl_remainder) {
      at::Tensor remainder = pos.apply(get("resid_post", layer - 1), -2) - s.tensor.sum(0);
      s.tensor = at::cat({s.tensor, remainder.unsqueeze(0)}, 0);
      s.labels.push_back("remainder");
    }
  } else {
    at::Tensor e = pos.apply((*this)["hook_embed"], -2);
    s.tensor = incl_remainder ? pos.apply(get("resid_post", layer - 1), -2).unsqueeze(0)
                              : at::zeros_like(e).unsqueeze(0).narrow(0, 0, 0);
    if (incl_remainder) s.labels.push_back("remainder");
  }
  if (apply_ln) s.tensor = apply_ln_to_stack(s.tensor, ResidOptions().layer(layer).pos(pos));
  return s;
}

at::Tensor ActivationCache::apply_ln_to_stack(const at::Tensor& stack, const ResidOptions& opts) const {
  refuse_unused(opts, "apply_ln_to_stack", {"layer", "mlp_input", "pos", "recompute_ln"});
  int layer = opts.layer();
  const bool mlp_input = opts.mlp_input(), recompute_ln = opts.recompute_ln();
  const PosSlice pos = opts.pos();
  const auto& cfg = config();
  if (cfg.norm == core::NormKind::none) return stack;
  if (layer < 0) layer = cfg.n_layers;
  if (recompute_ln && layer == cfg.n_layers && cfg.final_norm) {
    // The final norm applied to each component in full (weight and bias too).
    const auto& w = model_->weights();
    return core::apply_norm(cfg, stack,
                            w.ln_final_w.defined() ? w.ln_final_w.to(stack.device()) : at::Tensor(),
                            w.ln_final_b.defined() ? w.ln_final_b.to(stack.device()) : at::Tensor(),
                            {core::HookKind::ln_final_scale, -1},
                            {core::HookKind::ln_final_normalized, -1}, core::Hooks{});
  }
  at::Tensor x = stack;
  if (cfg.norm_centres()) x = x - x.mean(-1, /*keepdim=*/true);
  const at::Tensor& scale = layer == cfg.n_layers
                                ? (*this)["ln_final.hook_scale"]
                                : get("scale", layer, mlp_input ? "ln2" : "ln1");
  return x / pos.apply(scale, -2);
}

at::Tensor ActivationCache::logit_attrs(const at::Tensor& stack, const at::Tensor& tokens,
                                        const at::Tensor& incorrect_tokens, PosSlice pos) const {
  const auto& cfg = config();
  const auto& w = model_->weights();
  const at::Tensor W_U = (cfg.tied_embeddings ? w.W_E.t() : w.W_U).to(stack.device(), stack.scalar_type());
  auto directions = [&](const at::Tensor& t) {  // [*tokens.shape, d_model]
    MECHLAB_CHECK(!at::isFloatingType(t.scalar_type()), "logit_attrs: token ids must be integers");
    at::Tensor ids = t.to(stack.device(), at::kLong);
    auto shape = ids.sizes().vec();
    shape.push_back(cfg.d_model);
    return W_U.index_select(1, ids.reshape(-1)).t().reshape(shape);
  };
  at::Tensor dir = directions(tokens);
  if (incorrect_tokens.defined()) {
    MECHLAB_CHECK(incorrect_tokens.sizes() == tokens.sizes(), "logit_attrs: tokens ", tokens.sizes(),
                  " and incorrect_tokens ", incorrect_tokens.sizes(), " must have the same shape");
    dir = dir - directions(incorrect_tokens);
  }
  at::Tensor scaled = apply_ln_to_stack(stack, ResidOptions().pos(pos));
  return (scaled * dir).sum(-1);
}

}  // namespace mechlab::hooks
