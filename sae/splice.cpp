#include "sae/splice.h"

#include "core/model/transformer.h"
#include "core/util/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace mechlab::sae {

namespace {

std::string host_of(const SaeAt& s) {
  MECHLAB_CHECK(s.sae, "run_with_saes: an SAE is null; give loaded SAEs");
  const std::string host = s.hook.empty() ? s.sae->cfg().hook_name() : s.hook;
  MECHLAB_CHECK(!host.empty(),
                "the SAE's config has no hook_name; give the hook to splice it at");
  return host;
}

}  // namespace

SaeSplice::SaeSplice(hooks::HookedTransformer& model, std::vector<SaeAt> saes, bool use_error_term)
    : model_(model) {
  try {
    for (const SaeAt& s : saes) {
      const std::string host = host_of(s);
      MECHLAB_CHECK(std::find(hosts_.begin(), hosts_.end(), host) == hosts_.end(),
                    "two SAEs at ", host, "; splice at most one SAE per hook");
      saved_.emplace_back(s.sae, s.sae->use_error_term());
      s.sae->use_error_term(use_error_term);
      model_.attach(host, s.sae);  // refuses an unknown hook or another width
      hosts_.push_back(host);
    }
  } catch (...) {
    undo();
    throw;
  }
}

SaeSplice::~SaeSplice() { undo(); }

void SaeSplice::undo() noexcept {
  for (auto it = hosts_.rbegin(); it != hosts_.rend(); ++it) {
    try {
      model_.detach(*it, "sae");
    } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw; detach of an attached module cannot fail
    }
  }
  hosts_.clear();
  // Reverse order: an SAE given twice gets its first saved (original) value back last.
  for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) it->first->use_error_term(it->second);
  saved_.clear();
}

at::Tensor run_with_saes(hooks::HookedTransformer& model, const at::Tensor& tokens,
                         std::vector<SaeAt> saes, bool use_error_term, const hooks::RunOptions& opts) {
  SaeSplice splice(model, std::move(saes), use_error_term);
  return model.forward(tokens, opts);
}

std::pair<at::Tensor, hooks::ActivationCache> run_with_cache_with_saes(
    hooks::HookedTransformer& model, const at::Tensor& tokens, std::vector<SaeAt> saes,
    const hooks::NamesFilter& filter, bool use_error_term, const hooks::RunOptions& opts) {
  SaeSplice splice(model, std::move(saes), use_error_term);
  return model.run_with_cache(tokens, filter, opts);
}

at::Tensor kl_per_position(const at::Tensor& clean_logits, const at::Tensor& new_logits) {
  MECHLAB_CHECK(clean_logits.sizes() == new_logits.sizes(), "KL of logits of shapes ",
                clean_logits.sizes(), " and ", new_logits.sizes(), "; give logits of one shape");
  const at::Tensor logp = at::log_softmax(clean_logits, -1);  // [..., d_vocab]
  const at::Tensor logq = at::log_softmax(new_logits, -1);
  const at::Tensor p = logp.exp();
  // torch's kl_div: p (log p - log q), 0 where p underflows to 0.
  return at::where(p > 0, p * (logp - logq), at::zeros_like(p)).sum(-1);  // [...]
}

namespace {

/// Float64 sums over the batches; SAELens concatenates per-token values and
/// takes one mean, which these sums divided by the counts equal.
struct Sums {
  double ce_clean = 0, ce_sae = 0, ce_abl = 0, ce_err = 0;
  double kl_sae = 0, kl_abl = 0, kl_err = 0;
  double l0 = 0, l1 = 0, resid = 0, legacy = 0, cossim = 0, l2_in = 0, l2_out = 0, l2_ratio = 0;
  double sum_sq = 0;
  at::Tensor sum_x;    // [d_in] float64
  at::Tensor fired;    // [d_sae] float64
  double rrb_sum = 0;  // per batch, then averaged over batches (SAELens)
  int64_t rrb_batches = 0;
  int64_t tokens = 0, ce_tokens = 0;
};

double sum_at(const at::Tensor& v, const at::Tensor& mask) {
  return v.masked_select(mask).to(at::kDouble).sum().item<double>();
}

}  // namespace

SpliceMetrics splice_metrics(hooks::HookedTransformer& model, const std::shared_ptr<Sae>& sae,
                             const std::string& hook, const at::Tensor& tokens,
                             const SpliceEvalOptions& opts) {
  const std::string host = host_of({hook, sae});
  MECHLAB_CHECK(tokens.defined(), "SAE evaluation needs tokens [prompts, pos]; the tokens are empty");
  MECHLAB_CHECK(tokens.dim() == 2 && tokens.size(1) >= 2 && tokens.size(0) >= 1,
                "SAE evaluation needs tokens [prompts, pos] with pos >= 2, got ", tokens.sizes());
  MECHLAB_CHECK(opts.batch_size() >= 1, "SAE evaluation batch_size ", opts.batch_size(),
                " must be at least 1");
  // An id outside the vocabulary matches no token, so it would ignore
  // nothing and say nothing: most likely a typo.
  const int64_t d_vocab = model.cfg().d_vocab;
  for (int64_t id : opts.ignore_tokens()) {
    MECHLAB_CHECK(id >= 0 && id < d_vocab, "SAE evaluation ignore_tokens holds ", id,
                  ", outside the model's vocabulary [0, ", d_vocab, "); give token ids of this model");
  }
  { SaeSplice probe(model, {{host, sae}}); }  // refuses a wrong hook before any forward
  at::NoGradGuard no_grad;
  const at::Device device = model.model().device();
  const std::string p = host + ".sae.";
  Sums s;
  const int64_t n = tokens.size(0);
  for (int64_t b0 = 0; b0 < n; b0 += opts.batch_size()) {
    const at::Tensor t = tokens.slice(0, b0, std::min(n, b0 + opts.batch_size())).to(device, at::kLong);  // [b, pos]
    at::Tensor mask = at::ones(t.sizes(), t.options().dtype(at::kBool));  // [b, pos], true = counted
    for (int64_t id : opts.ignore_tokens()) mask = mask.logical_and(t != id);
    const at::Tensor ce_mask = mask.slice(1, 0, -1);  // [b, pos - 1]: by the predicting position
    auto keep_ignored = [&](at::Tensor& act, const at::Tensor& original) {
      std::vector<int64_t> shape = mask.sizes().vec();  // [b, pos, 1...]
      shape.resize(static_cast<size_t>(act.dim()), 1);
      act = at::where(mask.view(shape), act, original.to(act.scalar_type()));
    };

    at::Tensor x;  // [b, pos, d_in] the host's clean activation
    const at::Tensor clean = model.run_with_hooks(
        t, {{host, [&](at::Tensor& a, const hooks::HookPoint&) { x = a.detach().clone(); }}});
    at::Tensor spliced;
    {
      SaeSplice splice(model, {{host, sae}}, /*use_error_term=*/false);
      at::Tensor x_in;
      spliced = model.run_with_hooks(
          t, {{p + "hook_sae_input", [&](at::Tensor& a, const hooks::HookPoint&) { x_in = a; }},
              {p + "hook_sae_output", [&](at::Tensor& a, const hooks::HookPoint&) { keep_ignored(a, x_in); }}});
    }
    const at::Tensor ablated = model.run_with_hooks(
        t, {{host, [](at::Tensor& a, const hooks::HookPoint&) { a = at::zeros_like(a); }}});

    const at::Tensor ce_clean = core::loss_per_token(clean, t);  // [b, pos - 1]
    s.ce_clean += sum_at(ce_clean, ce_mask);
    s.ce_sae += sum_at(core::loss_per_token(spliced, t), ce_mask);
    s.ce_abl += sum_at(core::loss_per_token(ablated, t), ce_mask);
    s.kl_sae += sum_at(kl_per_position(clean, spliced), mask);
    s.kl_abl += sum_at(kl_per_position(clean, ablated), mask);
    if (opts.error_term_check()) {
      SaeSplice splice(model, {{host, sae}}, /*use_error_term=*/true);
      const at::Tensor with_err = model.forward(t);
      s.ce_err += sum_at(core::loss_per_token(with_err, t), ce_mask);
      s.kl_err += sum_at(kl_per_position(clean, with_err), mask);
    }
    s.ce_tokens += ce_mask.sum().item<int64_t>();
    const int64_t m = mask.sum().item<int64_t>();
    s.tokens += m;
    if (m == 0) continue;

    // get_sparsity_and_variance_metrics, on the counted positions.
    // A hook_z SAE reads each position's heads as one row (SAELens: flatten(-2, -1)).
    const at::Tensor xp = sae->cfg().reshape_activations() == "hook_z" && x.dim() == 4 ? x.flatten(-2, -1) : x;
    const at::Tensor xf = xp.reshape({-1, xp.size(-1)}).index({mask.flatten()}).to(at::kFloat);  // [m, d_in]
    const at::Tensor acts = sae->encode(xf);                                              // [m, d_sae]
    const at::Tensor out = sae->reconstruct(xf).to(at::kFloat);                            // [m, d_in]
    auto total = [](const at::Tensor& v) { return v.to(at::kDouble).sum().item<double>(); };
    s.l0 += total((acts != 0).sum(-1));
    s.l1 += total(acts.abs().sum(-1));
    const at::Tensor resid = (xf - out).pow(2).sum(-1);  // [m]
    s.resid += total(resid);
    s.legacy += total(1 - resid / (xf - xf.mean(0)).pow(2).sum(-1));
    const at::Tensor n_in = xf.norm(2, {-1}), n_out = out.norm(2, {-1});  // [m]
    s.cossim += total((xf / n_in.unsqueeze(-1) * (out / n_out.unsqueeze(-1))).sum(-1));
    s.l2_in += total(n_in);
    s.l2_out += total(n_out);
    s.l2_ratio += total(n_out / at::where(n_in.abs() < 1e-4, at::ones_like(n_in), n_in));
    // Rajamanoharan et al. 2024, eq. 10, per batch as SAELens has it.
    s.rrb_sum += (n_out.pow(2).mean() / (xf * out).sum(-1).mean()).item<double>();
    ++s.rrb_batches;
    const at::Tensor sx = xf.sum(0).to(at::kDouble);  // [d_in]
    s.sum_x = s.sum_x.defined() ? s.sum_x + sx : sx;
    s.sum_sq += xf.pow(2).sum().item<double>();
    const at::Tensor fired = (acts != 0).sum(0).to(at::kDouble);  // [d_sae]
    s.fired = s.fired.defined() ? s.fired + fired : fired;
  }

  SpliceMetrics r;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto mean = [&](double v, int64_t c) { return c > 0 ? v / static_cast<double>(c) : nan; };
  r.tokens = s.tokens;
  r.ce_tokens = s.ce_tokens;
  r.ce_loss_without_sae = mean(s.ce_clean, s.ce_tokens);
  r.ce_loss_with_sae = mean(s.ce_sae, s.ce_tokens);
  r.ce_loss_with_ablation = mean(s.ce_abl, s.ce_tokens);
  r.ce_loss_score = (r.ce_loss_with_ablation - r.ce_loss_with_sae) /
                    (r.ce_loss_with_ablation - r.ce_loss_without_sae);
  r.kl_div_with_sae = mean(s.kl_sae, s.tokens);
  r.kl_div_with_ablation = mean(s.kl_abl, s.tokens);
  r.kl_div_score = (r.kl_div_with_ablation - r.kl_div_with_sae) / r.kl_div_with_ablation;
  r.ce_loss_with_error_term = opts.error_term_check() ? mean(s.ce_err, s.ce_tokens) : nan;
  r.kl_div_with_error_term = opts.error_term_check() ? mean(s.kl_err, s.tokens) : nan;
  r.l0 = mean(s.l0, s.tokens);
  r.l1 = mean(s.l1, s.tokens);
  r.mse = mean(s.resid, s.tokens);
  r.explained_variance_legacy = mean(s.legacy, s.tokens);
  r.cossim = mean(s.cossim, s.tokens);
  r.l2_norm_in = mean(s.l2_in, s.tokens);
  r.l2_norm_out = mean(s.l2_out, s.tokens);
  r.l2_ratio = mean(s.l2_ratio, s.tokens);
  r.relative_reconstruction_bias = mean(s.rrb_sum, s.rrb_batches);
  if (s.tokens > 0) {
    // ExplainedVarianceCalculator: 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2).
    const double cnt = static_cast<double>(s.tokens);
    const double var = s.sum_sq / cnt - (s.sum_x / cnt).pow(2).sum().item<double>();
    r.explained_variance = var < 1e-10 ? (r.mse < 1e-10 ? 1.0 : 0.0) : 1.0 - r.mse / var;
    r.feature_density = s.fired / cnt;
  } else {
    r.explained_variance = nan;
    r.feature_density = at::full({sae->d_sae()}, nan, at::kDouble);
  }
  return r;
}

}  // namespace mechlab::sae
