#include "sae/sae.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <cmath>

namespace mechlab::sae {

Sae::Sae(SaeConfig cfg, bool has_b_enc) : cfg_(std::move(cfg)) {
  validate(cfg_);
  const int64_t d_in = cfg_.d_in(), d_sae = cfg_.d_sae();
  add_param("W_enc", {d_in, d_sae});
  if (has_b_enc) add_param("b_enc", {d_sae});
  add_param("W_dec", {d_sae, d_in});
  add_param("b_dec", {d_in});
}

void Sae::add_param(const std::string& name, std::vector<int64_t> shape) {
  params_.emplace_back(name, at::zeros(shape, at::kFloat));
}

at::Tensor& Sae::param(const std::string& name) {
  return const_cast<at::Tensor&>(static_cast<const Sae&>(*this).param(name));
}

const at::Tensor& Sae::param(const std::string& name) const {
  std::string known;
  for (const auto& [n, t] : params_) {
    if (n == name) return t;
    known += (known.empty() ? "" : ", ") + n;
  }
  throw Error(str_cat("a ", cfg_.architecture(), " SAE has no parameter \"", name, "\"; it has ",
                      known));
}

void Sae::requires_grad(bool on) {
  for (auto& [n, t] : params_) t.requires_grad_(on);
}

void Sae::check_finite() const {
  for (const auto& [n, t] : params_) {
    MECHLAB_CHECK(at::isfinite(t).all().item<bool>(), "SAE parameter ", n,
                  " has NaN or inf entries; the SAE cannot be used");
  }
}

Sae& Sae::to(at::Device device, at::ScalarType dtype) {
  MECHLAB_CHECK(at::isFloatingType(dtype), "an SAE's parameters must be floating point, not ", dtype,
                "; use float32, float64, bfloat16 or float16");
  for (auto& [n, t] : params_) {
    if (t.device() == device && t.scalar_type() == dtype) continue;
    const bool grad = t.requires_grad();
    at::Tensor moved = t.detach().to(device, dtype);  // a new leaf
    moved.requires_grad_(grad);
    t = moved;
  }
  return *this;
}

at::Device Sae::device() const { return param("W_enc").device(); }
at::ScalarType Sae::dtype() const { return param("W_enc").scalar_type(); }

void Sae::fold_activation_norm_scaling_factor(double f) {
  MECHLAB_CHECK(std::isfinite(f) && f > 0, "the activation scaling factor must be finite and > 0, got ", f);
  at::NoGradGuard no_grad;
  param("W_enc").mul_(f);
  param("W_dec").div_(f);
  param("b_dec").div_(f);
  if (cfg_.architecture() == "batchtopk" && cfg_.rescale_acts_by_decoder_norm()) {
    cfg_.topk_threshold(cfg_.topk_threshold() / f);
  }
}

void Sae::fold_W_dec_norm() {
  const bool topk = cfg_.architecture() == "topk" || cfg_.architecture() == "batchtopk";
  MECHLAB_CHECK(!topk || cfg_.rescale_acts_by_decoder_norm(), "folding the decoder norms of a ",
                cfg_.architecture(),
                " SAE without rescale_acts_by_decoder_norm would change which latents it keeps; "
                "it is refused");
  at::NoGradGuard no_grad;
  const at::Tensor norm = param("W_dec").norm(2, {-1}).clamp_min(1e-8);  // [d_sae]
  param("W_dec").div_(norm.unsqueeze(1));
  param("W_enc").mul_(norm.unsqueeze(0));
  for (const char* n : {"b_enc", "threshold", "b_gate", "b_mag"}) {
    for (auto& [name, t] : params_) {
      if (name == n) t.mul_(norm);
    }
  }
}

void Sae::set_decoder_norm_to_unit_norm() {
  at::NoGradGuard no_grad;
  at::Tensor& W_dec = param("W_dec");  // [d_sae, d_in]
  W_dec.div_(W_dec.norm(2, {1}, true));
}

void Sae::remove_gradient_parallel_to_decoder_directions() {
  at::Tensor& W_dec = param("W_dec");  // [d_sae, d_in], rows of unit norm
  at::Tensor g = W_dec.mutable_grad();
  MECHLAB_CHECK(g.defined(), "W_dec has no gradient yet; call this after backward()");
  at::NoGradGuard no_grad;
  const at::Tensor parallel = (g * W_dec).sum(1, true);  // [d_sae, 1]
  g.sub_(parallel * W_dec);
}

std::vector<hooks::ModulePoint> Sae::hook_points(const core::ModelConfig& cfg,
                                                 core::HookSite host) const {
  const core::SiteInfo& info = core::site_info(host.kind);
  const std::string where = host.name() + " " + core::site_shape(cfg, host);
  MECHLAB_CHECK(!info.attention_map, "an SAE cannot attach at ", where,
                ": attention maps have no per-token vector; attach at a per-token hook such as "
                "blocks.L.hook_resid_post");
  // [batch, pos, head | kv_head, d_head]: a per-head site (hook_z, hook_q, ...).
  const bool per_head = info.dims.size() == 4 && info.dims[3] == core::Dim::d_head &&
                        (info.dims[2] == core::Dim::head || info.dims[2] == core::Dim::kv_head);
  const int64_t width = core::dim_size(cfg, info.dims.back(), 0, 0);
  std::vector<core::Dim> latents = info.dims;
  if (cfg_.reshape_activations() == "hook_z") {
    MECHLAB_CHECK(per_head, "a hook_z SAE (reshape_activations hook_z) reads [batch, pos, head, d_head], which ",
                  where, " is not; attach it at blocks.L.attn.hook_z");
    const int64_t flat = core::dim_size(cfg, info.dims[2], 0, 0) * width;
    MECHLAB_CHECK(flat == cfg_.d_in(), "a hook_z SAE with d_in ", cfg_.d_in(), " does not fit ", where,
                  ", whose head * d_head is ", flat, "; attach it at a hook with head * d_head = ", cfg_.d_in());
    latents = {core::Dim::batch, core::Dim::pos, core::Dim::d_sae};  // the head axis is read into d_in
  } else {
    const bool hint = per_head && core::dim_size(cfg, info.dims[2], 0, 0) * width == cfg_.d_in();
    MECHLAB_CHECK(width == cfg_.d_in(), "an SAE with d_in ", cfg_.d_in(), " does not fit ", where,
                  ", whose last axis is ", width,
                  hint ? "; an SAE over all heads at once needs reshape_activations hook_z"
                       : str_cat("; attach it at a hook of width ", cfg_.d_in()));
    // The latents replace the host's last axis by d_sae.
    latents.back() = core::Dim::d_sae;
  }
  // Input, reconstruction, error and output keep the host's axes.
  std::vector<hooks::ModulePoint> points{{"hook_sae_input", info.dims},
                                         {"hook_sae_acts_pre", latents},
                                         {"hook_sae_acts_post", latents},
                                         {"hook_sae_recons", info.dims},
                                         {"hook_sae_error", info.dims},  // fires with the error term only
                                         {"hook_sae_output", info.dims}};
  return points;
}

bool Sae::flattens(const at::Tensor& x) const {
  return cfg_.reshape_activations() == "hook_z" && x.dim() >= 2 && x.size(-1) != cfg_.d_in() &&
         x.size(-2) * x.size(-1) == cfg_.d_in();
}

void Sae::process_in(Pass& p, const at::Tensor& x, hooks::ModuleHooks& hooks) const {
  const bool flatten = flattens(x);
  MECHLAB_CHECK(x.dim() >= 1 && (flatten || x.size(-1) == cfg_.d_in()), "SAE input of shape ", x.sizes(),
                " does not end in d_in = ", cfg_.d_in(), "; give activations [..., ", cfg_.d_in(), "]",
                cfg_.reshape_activations() == "hook_z" ? " or [..., head, d_head] with head * d_head = d_in" : "");
  const at::Tensor& W_enc = param("W_enc");
  at::Tensor sae_in = x.to(W_enc.device(), W_enc.scalar_type());  // [..., d_in] or [..., head, d_head]
  hooks("hook_sae_input", sae_in);
  if (flatten) {
    // Head-major: entry (h, i) of a position goes to h * d_head + i, as
    // SAELens's einops "... n_heads d_head -> ... (n_heads d_head)".
    p.host_sizes = sae_in.sizes().vec();
    sae_in = sae_in.flatten(-2, -1);  // [..., d_in]
  }
  if (cfg_.normalize_activations() == "constant_norm_rescale") {
    // SAELens: (d_in ** 0.5) / x.norm(dim=-1, keepdim=True), which torch
    // evaluates as reciprocal(norm) * sqrt(d_in).
    p.norm_coeff = sae_in.norm(2, {-1}, true).reciprocal() *
                   std::sqrt(static_cast<double>(cfg_.d_in()));  // [..., 1]
    sae_in = sae_in * p.norm_coeff;
  }
  p.sae_in = cfg_.apply_b_dec_to_input() ? sae_in - param("b_dec") : sae_in;  // [..., d_in]
}

at::Tensor Sae::times_W_dec(const at::Tensor& acts) const { return at::matmul(acts, param("W_dec")); }

at::Tensor Sae::decode_pass(const Pass& p, hooks::ModuleHooks& hooks) const {
  at::Tensor recons = times_W_dec(p.acts) + param("b_dec");  // [..., d_in]
  if (p.host_sizes.empty()) {
    hooks("hook_sae_recons", recons);
  } else {
    at::Tensor per_head = recons.reshape(p.host_sizes);  // [..., head, d_head]
    hooks("hook_sae_recons", per_head);
    recons = per_head.flatten(-2, -1);
  }
  at::Tensor out = p.norm_coeff.defined() ? recons / p.norm_coeff : recons;  // [..., d_in]
  return p.host_sizes.empty() ? out : out.reshape(p.host_sizes);
}

at::Tensor Sae::encode(const at::Tensor& x) const {
  NoHooks none;
  Pass p;
  process_in(p, x, none);
  encode_pass(p, none, /*training=*/false);
  return p.acts;
}

at::Tensor Sae::decode(const at::Tensor& acts) const {
  MECHLAB_CHECK(cfg_.normalize_activations() == "none",
                "decode() cannot undo constant_norm_rescale without the input's norms; use "
                "reconstruct(x)");
  return times_W_dec(acts) + param("b_dec");
}

at::Tensor Sae::reconstruct(const at::Tensor& x) const {
  NoHooks none;
  Pass p;
  process_in(p, x, none);
  encode_pass(p, none, /*training=*/false);
  return decode_pass(p, none);
}

TrainStep Sae::training_forward(const at::Tensor& x_in, const at::Tensor& dead_mask) {
  MECHLAB_CHECK(x_in.dim() == 2, "an SAE training batch must be [batch, d_in], got ", x_in.sizes());
  // The losses compare the output with x: on the parameters' device (a
  // batch read on the CPU for an SAE on a GPU); the dtype is left to
  // promotion, as before.
  const at::Tensor x = x_in.to(device());  // [batch, d_in]
  if (dead_mask.defined()) {
    MECHLAB_CHECK(dead_mask.dim() == 1 && dead_mask.size(0) == cfg_.d_sae(),
                  "the dead-latent mask must be [d_sae = ", cfg_.d_sae(), "], got ",
                  dead_mask.sizes());
  }
  before_training_step();
  NoHooks none;
  Pass p;
  process_in(p, x, none);
  encode_pass(p, none, /*training=*/true);
  TrainStep out;
  out.sae_out = decode_pass(p, none);  // [batch, d_in]
  out.feature_acts = p.acts;
  out.hidden_pre = p.hidden_pre;
  // SAELens: mse_loss(sae_out, sae_in, reduction="none").sum(-1).mean().
  at::Tensor mse = (out.sae_out - x).pow(2).sum(-1).mean();
  out.losses.emplace_back("mse_loss", mse);
  out.loss = mse;
  const at::Tensor dead = dead_mask.defined() ? dead_mask.to(device(), at::kBool) : at::Tensor();
  for (auto& term : aux_losses(x, p, out.sae_out, dead)) {
    out.loss = out.loss + term.second;
    out.losses.push_back(std::move(term));
  }
  after_training_step(p);
  return out;
}

at::Tensor Sae::forward(const at::Tensor& x, hooks::ModuleHooks& hooks) {
  Pass p;
  process_in(p, x, hooks);
  encode_pass(p, hooks, /*training=*/false);
  at::Tensor out = decode_pass(p, hooks);  // [..., d_in]
  if (use_error_term_) {
    // SAELens: the error against the SAE's clean output (no hooks), without
    // gradient, so that with no edits inside the SAE out == x.
    at::Tensor err;
    {
      at::NoGradGuard no_grad;
      NoHooks none;
      Pass clean;
      process_in(clean, x, none);
      encode_pass(clean, none, /*training=*/false);
      err = x - decode_pass(clean, none);  // x's shape
    }
    hooks("hook_sae_error", err);
    out = out + err;
  }
  // The host's dtype and device flow on (an SAE moved with to() computes in its own).
  if (out.scalar_type() != x.scalar_type() || out.device() != x.device()) out = out.to(x.device(), x.scalar_type());
  hooks("hook_sae_output", out);
  return out;
}

}  // namespace mechlab::sae
