// Sae: a sparse autoencoder, the base of every architecture in sae/, with
// SAELens 6.x's parameter names, forward pass and training losses, attachable
// at a hook point of a HookedTransformer (hooks/attached_module.h).
//
// The forward pass (SAELens's SAE.forward), on x [..., d_in]:
//   sae_in     = normalise(x) - b_dec * apply_b_dec_to_input        [..., d_in]
//   hidden_pre = sae_in @ W_enc + b_enc                             [..., d_sae]
//   acts       = the architecture's activation of hidden_pre        [..., d_sae]
//   recons     = acts @ W_dec + b_dec                               [..., d_in]
//   out        = denormalise(recons) (+ the error term, see below)  [..., d_in]
// normalise is "none" or "constant_norm_rescale" (each row scaled to norm
// sqrt(d_in), the scale undone on the way out).
//
// A hook_z SAE (cfg().reshape_activations() == "hook_z", SAELens's field;
// Kissane et al. 2024) also takes x [..., head, d_head], flattened head-major
// to [..., head * d_head = d_in] before normalising (SAELens's
// "... n_heads d_head -> ... (n_heads d_head)"); what it returns (the
// reconstruction, the output, the error term) has x's shape again.
//
// Attached at host H (model.attach(H, sae)), its points are, in the order they
// fire, "H.sae.hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post",
// "hook_sae_recons", "hook_sae_error" (only with the error term),
// "hook_sae_output": SAELens's names, so SAELens paths such as
// "blocks.3.hook_resid_post.sae.hook_sae_acts_post" work unchanged. At a
// hook_z host, hook_sae_input, hook_sae_recons, hook_sae_error and
// hook_sae_output have the host's axes [batch, pos, head, d_head] (SAELens
// fires the first two flat; flatten(-2, -1) gives its tensors), so a hook can
// edit them per head; the latents are [batch, pos, d_sae]. With
// use_error_term, out gains error = x - (the SAE's output on x with no hooks
// run), computed without gradient as SAELens does: the model downstream sees
// x exactly unless a hook edits a point inside the SAE.
//
// Example:
//   auto sae = mechlab::sae::import_saelens("my_sae");          // sae/saelens_io.h
//   sae->use_error_term(true);
//   model.attach("blocks.0.hook_resid_post", sae);
//   auto [logits, cache] = model.run_with_cache(tokens, NamesFilter::glob("*.sae.*"));
#pragma once

#include "hooks/attached_module.h"
#include "sae/sae_config.h"

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::sae {

/// One named loss term (SAELens's key: "mse_loss", "l1_loss", "l0_loss",
/// "auxiliary_reconstruction_loss").
using LossTerms = std::vector<std::pair<std::string, at::Tensor>>;

/// What a training forward pass returns (SAELens's TrainStepOutput).
struct TrainStep {
  at::Tensor sae_out;       ///< [batch, d_in]
  at::Tensor feature_acts;  ///< [batch, d_sae]
  at::Tensor hidden_pre;    ///< [batch, d_sae], as the architecture's losses see it
  at::Tensor loss;          ///< scalar: the sum of `losses`
  LossTerms losses;         ///< mse_loss first, then the architecture's terms
};

class Sae : public hooks::AttachedModule {
 public:
  ~Sae() override = default;

  const SaeConfig& cfg() const { return cfg_; }
  /// The registry name ("relu", "topk", "batchtopk", "jumprelu", "gated").
  const std::string& architecture() const { return cfg_.architecture(); }
  int64_t d_in() const { return cfg_.d_in(); }
  int64_t d_sae() const { return cfg_.d_sae(); }

  /// Parameters by SAELens name, in a fixed order (W_enc first). The tensors
  /// are the SAE's own: editing them in place edits the SAE.
  const std::vector<std::pair<std::string, at::Tensor>>& named_parameters() const { return params_; }
  /// A parameter by name; throws naming the known ones when absent.
  at::Tensor& param(const std::string& name);
  const at::Tensor& param(const std::string& name) const;
  /// Sets requires_grad on every parameter (for a training step).
  void requires_grad(bool on);
  /// Refuses (one line, naming the tensor) a parameter with NaN or inf entries.
  void check_finite() const;
  /// Moves every parameter to `device` and converts it to the floating-point
  /// `dtype` (SAELens's SAE.to), keeping requires_grad; a parameter already
  /// there is left as it is. Inputs are cast to the parameters' device and
  /// dtype, and forward() gives the host its own dtype and device back.
  /// Gradient hooks and optimiser state on the old tensors do not follow:
  /// move an SAE before training it.
  Sae& to(at::Device device, at::ScalarType dtype);
  at::Device device() const;
  at::ScalarType dtype() const;

  /// acts [..., d_sae] of x [..., d_in] (a hook_z SAE: also [..., head,
  /// d_head]) (inference: BatchTopK uses its threshold, not the batch's top k).
  at::Tensor encode(const at::Tensor& x) const;
  /// The output [..., d_in] for acts [..., d_sae], flat also for a hook_z
  /// SAE (denormalisation needs the input's scale, so decode alone refuses a
  /// constant_norm_rescale SAE: use reconstruct()).
  at::Tensor decode(const at::Tensor& acts) const;
  /// decode(encode(x)) with the per-row normalisation undone; no error term;
  /// x's shape (a hook_z SAE given [..., head, d_head] returns that shape).
  at::Tensor reconstruct(const at::Tensor& x) const;

  /// SAELens's training_forward_pass on x [batch, d_in]: every loss term of
  /// the architecture with the coefficients of cfg(), differentiable with
  /// ATen autograd (parameters need requires_grad(true)). dead_mask [d_sae]
  /// bool marks the latents the dead-latent losses act on (AuxK); undefined
  /// means none are dead. Updates training state as SAELens does (BatchTopK's
  /// threshold, JumpReLU's threshold clamp at 0).
  TrainStep training_forward(const at::Tensor& x, const at::Tensor& dead_mask = {});

  /// Folds a fixed input scaling factor into the weights (SAELens's
  /// fold_activation_norm_scaling_factor): an SAE trained on x * f then
  /// reconstructs x directly. W_enc *= f, W_dec /= f, b_dec /= f (BatchTopK
  /// with the decoder-norm rescale: topk_threshold /= f).
  void fold_activation_norm_scaling_factor(double f);
  /// Scales each decoder row to unit norm and the encoder column, b_enc (and
  /// JumpReLU's threshold, Gated's b_gate and b_mag) by the old norm
  /// (SAELens's fold_W_dec_norm): reconstructions are unchanged. Refused for
  /// TopK/BatchTopK without the decoder-norm rescale, whose selection it would change.
  void fold_W_dec_norm();
  /// Decoder unit norm during training (SAELens 5's normalize_sae_decoder):
  /// each W_dec row scaled to norm 1, and, before the optimiser step, the
  /// component of W_dec's gradient parallel to each row removed
  /// (g_i -= (g_i . w_i) w_i, for unit w_i).
  void set_decoder_norm_to_unit_norm();
  void remove_gradient_parallel_to_decoder_directions();

  /// Whether forward() adds the error term (see the file comment).
  bool use_error_term() const { return use_error_term_; }
  Sae& use_error_term(bool on) {
    use_error_term_ = on;
    return *this;
  }

  // hooks::AttachedModule
  std::string name() const override { return "sae"; }
  std::vector<hooks::ModulePoint> hook_points(const core::ModelConfig& cfg,
                                              core::HookSite host) const override;
  at::Tensor forward(const at::Tensor& x, hooks::ModuleHooks& hooks) override;

 protected:
  /// Every architecture starts from zero parameters of SAELens's shapes:
  /// W_enc [d_in, d_sae], b_enc [d_sae] (not Gated), W_dec [d_sae, d_in],
  /// b_dec [d_in]; the architecture adds its own with add_param.
  explicit Sae(SaeConfig cfg, bool has_b_enc = true);
  void add_param(const std::string& name, std::vector<int64_t> shape);

  /// One pass's intermediate values.
  struct Pass {
    at::Tensor sae_in;      ///< [n, d_in] after normalisation and b_dec subtraction
    at::Tensor norm_coeff;  ///< [n, 1] sqrt(d_in) / |x| (constant_norm_rescale), else undefined
    at::Tensor hidden_pre;  ///< [n, d_sae]
    at::Tensor acts;        ///< [n, d_sae]
    /// The input's shape [..., head, d_head] when a hook_z SAE flattened it, else empty.
    std::vector<int64_t> host_sizes;
  };
  /// hidden_pre and acts from p.sae_in, firing hook_sae_acts_pre and
  /// hook_sae_acts_post through `hooks`. `training` selects the training
  /// activation where it differs (BatchTopK's batch top k, JumpReLU's STE).
  virtual void encode_pass(Pass& p, hooks::ModuleHooks& hooks, bool training) const = 0;
  /// acts @ W_dec (TopK rescales by the decoder norms), without b_dec.
  virtual at::Tensor times_W_dec(const at::Tensor& acts) const;
  /// The architecture's loss terms after mse_loss.
  virtual LossTerms aux_losses(const at::Tensor& x, const Pass& p, const at::Tensor& sae_out,
                               const at::Tensor& dead_mask) const = 0;
  /// Before / after a training step (JumpReLU clamps, BatchTopK updates).
  virtual void before_training_step() {}
  virtual void after_training_step(const Pass& /*p*/) {}

  SaeConfig cfg_;

 private:
  /// Whether x is a hook_z SAE's [..., head, d_head] input, to be flattened.
  bool flattens(const at::Tensor& x) const;
  void process_in(Pass& p, const at::Tensor& x, hooks::ModuleHooks& hooks) const;
  at::Tensor decode_pass(const Pass& p, hooks::ModuleHooks& hooks) const;

  std::vector<std::pair<std::string, at::Tensor>> params_;
  bool use_error_term_ = false;
};

/// A ModuleHooks that runs nothing (the SAE used on its own).
class NoHooks : public hooks::ModuleHooks {
 public:
  void operator()(const std::string& /*suffix*/, at::Tensor& /*act*/) override {}
};

}  // namespace mechlab::sae
