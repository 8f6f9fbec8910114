#include "patching/attribution.h"

#include "core/util/error.h"
#include "hooks/act_name.h"
#include "hooks/names_filter.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

namespace mechlab::patching {

namespace {

constexpr const char* kInputHook = "blocks.0.hook_resid_pre";

std::vector<std::string> unique(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

void check_gradient_hook(const core::ModelConfig& cfg, const std::string& name) {
  hooks::require_hook_name(cfg, name);
  core::HookSite site;
  MECHLAB_ASSERT(core::parse_site(name, cfg.n_layers, &site));
  MECHLAB_CHECK(core::site_info(site.kind).stage != core::SiteStage::input,
                "attribution at ", name, " is not supported: gradients start at ", kInputHook,
                " (the embedding's sum); attribute blocks.0.hook_resid_pre instead");
}

// Float64 models keep float64 (finite-difference checks need it); others
// accumulate in float32.
at::ScalarType score_dtype(const hooks::HookedTransformer& model) {
  return model.model().dtype() == at::kDouble ? at::kDouble : at::kFloat;
}

// grad x (source - base) reduced to the axes a sweep keeps, for one layer's
// activation: per-token hooks [batch, pos, (head), ...], attention maps
// [batch, head, dest_pos, src_pos].
at::Tensor reduce_to_axes(const at::Tensor& prod, const SweepSpec& spec, bool map) {
  auto has = [&](const char* a) {
    return std::find(spec.axes.begin(), spec.axes.end(), a) != spec.axes.end();
  };
  std::vector<int64_t> sum_dims = {0};  // always the batch
  if (map) {
    if (!has("head_index")) sum_dims.push_back(1);
    if (!has("dest_pos")) sum_dims.push_back(2);
    if (!has("src_pos")) sum_dims.push_back(3);
  } else {
    if (!has("pos")) sum_dims.push_back(1);
    for (int64_t d = has("head") ? 3 : 2; d < prod.dim(); ++d) sum_dims.push_back(d);
  }
  return prod.sum(sum_dims);
}

// The metric of a forward of `input` (tokens, or the residual entering layer
// 0 when ro.start_at_layer is set). Metrics that read only the answer
// positions stop before ln_final and unembed those positions alone, as the
// BulkPatcher does (ln_final and W_U act per position, so this is exact):
// the unembedding is the largest matrix product of a small model, and the
// gradient passes need it only there. `logits_hooked`: a hook sits on
// ln_final, which must then see every position.
template <typename Run>
at::Tensor forward_metric(hooks::HookedTransformer& model, const Metric& metric, bool logits_hooked,
                          hooks::RunOptions ro, const Run& run) {
  const int n = model.cfg().n_layers;
  if (metric.reads() != Metric::Reads::answer_logits || logits_hooked) {
    return metric(run(ro));
  }
  ro.stop_at_layer(n);
  at::Tensor resid = run(ro);  // [batch, pos, d_model]
  at::Tensor pos = metric.answer_pos().to(resid.device(), at::kLong);
  at::Tensor rows = at::arange(resid.size(0), pos.options());
  at::Tensor last = resid.index({rows, pos}).unsqueeze(1);  // [batch, 1, d_model]
  core::ForwardOptions fo;
  fo.start_at_layer(n);
  at::Tensor logits = model.model().forward(last, fo);  // [batch, 1, d_vocab]
  return metric.batched(logits.view({1, resid.size(0), -1})).reshape({});
}

bool is_logit_side(const std::string& name, const core::ModelConfig& cfg) {
  core::HookSite site;
  return core::parse_site(name, cfg.n_layers, &site) &&
         core::site_info(site.kind).stage == core::SiteStage::output;
}

}  // namespace

const char* method_name(AttributionMethod m) {
  return m == AttributionMethod::attribution ? "attribution" : "eap-ig";
}

AttributionMethod parse_method(const std::string& text) {
  if (text == "attribution") return AttributionMethod::attribution;
  if (text == "eap-ig" || text == "eap_ig") return AttributionMethod::eap_ig;
  throw Error(str_cat("unknown attribution method \"", text,
                      "\"; use attribution (gradient x (source - base), Nanda / Syed et al.) or "
                      "eap-ig (integrated gradients over interpolated input embeddings, Hanna et al. "
                      "2024)"));
}

GradientRuns run_gradient_passes(
    hooks::HookedTransformer& model, const PatchingData& data, const Metric& metric,
    const AttributionOptions& options, const std::vector<std::string>& act_hooks,
    const std::vector<std::string>& grad_hooks,
    const std::function<void(const std::string&, const at::Tensor&, const GradientRuns&)>& on_grad,
    const std::vector<std::string>& pass_hooks) {
  const auto& cfg = model.cfg();
  data.validate(cfg);
  const bool ig = options.method() == AttributionMethod::eap_ig;
  MECHLAB_CHECK(!ig || options.steps() >= 1, "EAP-IG needs at least 1 interpolation step, got steps = ",
                options.steps());
  for (const auto& h : act_hooks) check_gradient_hook(cfg, h);
  for (const auto& h : grad_hooks) check_gradient_hook(cfg, h);
  for (const auto& h : pass_hooks) check_gradient_hook(cfg, h);

  // Gradients need autograd, even when the caller runs in inference mode.
  c10::InferenceMode not_inference(false);
  const bool noising = options.direction() == Direction::noising;
  const at::Tensor& base_tokens = noising ? data.clean_tokens : data.corrupted_tokens;
  const at::Tensor& source_tokens = noising ? data.corrupted_tokens : data.clean_tokens;
  hooks::RunOptions ro;
  ro.attention_mask(data.attention_mask);

  std::vector<std::string> cache_hooks = act_hooks;
  cache_hooks.push_back(kInputHook);
  cache_hooks = unique(cache_hooks);
  bool logits_hooked = false;
  for (const auto& h : cache_hooks) logits_hooked = logits_hooked || is_logit_side(h, cfg);
  for (const auto& h : grad_hooks) logits_hooked = logits_hooked || is_logit_side(h, cfg);
  GradientRuns out;
  {
    at::NoGradGuard no_grad;
    auto cached_run = [&](const at::Tensor& tokens, std::map<std::string, at::Tensor>* acts) {
      return forward_metric(model, metric, logits_hooked, ro, [&](const hooks::RunOptions& o) {
               auto [result, cache] = model.run_with_cache(tokens, hooks::NamesFilter(cache_hooks), o);
               *acts = cache.items();
               return result;
             }).item<double>();
    };
    out.source_metric = cached_run(source_tokens, &out.source);
    out.forwards += 1;
    if (ig) {  // the base activations come from the real base run, not an interpolated one
      out.base_metric = cached_run(base_tokens, &out.base);
      out.forwards += 1;
    }
  }

  at::AutoGradMode grad_mode(true);
  const int passes = ig ? options.steps() : 1;
  const double scale = 1.0 / passes;
  for (int j = 1; j <= passes; ++j) {
    at::Tensor input;  // eap_ig: the interpolated embedding [batch, pos, d_model]
    if (ig) {
      const at::Tensor& e_base = out.base.at(kInputHook);
      const at::Tensor& e_source = out.source.at(kInputHook);
      input = e_base + (static_cast<double>(j) / passes) * (e_source - e_base);
    }
    hooks::HookScope scope(model.hooks());
    // First hook on the input site: the gradient starts here (a leaf), so
    // nothing upstream is differentiated and the weights never need grad.
    scope.add(kInputHook, [&input, ig](at::Tensor& act, const hooks::HookPoint&) {
      act = (ig ? input : act).detach().requires_grad_(true);
    });
    if (!ig) {
      for (const auto& name : act_hooks) {
        scope.add(name, [&out, name](at::Tensor& act, const hooks::HookPoint&) {
          out.base[name] = act.detach();
        });
      }
    }
    for (const auto& name : pass_hooks) {
      scope.add(name, [&out, name](at::Tensor& act, const hooks::HookPoint&) {
        out.pass[name] = act.detach();
      });
    }
    // Added after the forward hooks: a backward hook attaches to the tensor
    // the site holds once the forward hooks above have run.
    for (const auto& name : grad_hooks) {
      scope.add_backward(name, [&on_grad, &out, scale](at::Tensor& grad, const hooks::HookPoint& p) {
        on_grad(p.name, grad * scale, out);
      });
    }
    at::Tensor m = forward_metric(model, metric, logits_hooked, ro, [&](const hooks::RunOptions& o) {
      return model.forward(base_tokens, o);
    });
    MECHLAB_CHECK(m.requires_grad(), "metric \"", metric.name(),
                  "\" does not depend on the model's activations (it has no gradient), so "
                  "attribution patching cannot use it");
    if (!ig) out.base_metric = m.item<double>();
    m.backward();
    out.forwards += 1;
    out.backwards += 1;
  }
  return out;
}

GradientCache attribution_gradients(hooks::HookedTransformer& model, const PatchingData& data,
                                    const Metric& metric, const std::vector<std::string>& hook_names,
                                    const AttributionOptions& options) {
  GradientCache cache;
  const std::vector<std::string> names = unique(hook_names);
  cache.runs = run_gradient_passes(model, data, metric, options, names, names,
                                   [&cache](const std::string& hook, const at::Tensor& g,
                                            const GradientRuns&) {
                                     at::Tensor& acc = cache.grad[hook];
                                     acc = acc.defined() ? acc + g.detach() : g.detach().clone();
                                   });
  for (const auto& n : names) {
    // A hook the metric does not depend on gets no gradient: zero.
    if (!cache.grad.count(n)) cache.grad[n] = at::zeros_like(cache.runs.base.at(n));
  }
  return cache;
}

at::Tensor target_attribution(const GradientCache& cache, const PatchTarget& target) {
  const std::string name = target.hook_name();
  MECHLAB_CHECK(cache.grad.count(name), "no gradient was computed at ", name,
                "; pass it to attribution_gradients");
  const at::Tensor& g = cache.grad.at(name);
  const at::ScalarType dt = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor prod = g.to(dt) * (cache.runs.source.at(name).to(dt) - cache.runs.base.at(name).to(dt));
  return target_slice(prod, target).sum();
}

std::vector<SweepResult> attribution_sweeps(hooks::HookedTransformer& model, const PatchingData& data,
                                            const std::vector<std::string>& sweeps,
                                            const Metric& metric, const AttributionOptions& options) {
  const auto& cfg = model.cfg();
  data.validate(cfg);
  MECHLAB_CHECK(!sweeps.empty(), "no sweep asked for; pass at least one sweep name (patching/sweeps.h "
                "lists them)");
  // Every single-hook sweep needed (checks each exists in this model).
  std::vector<std::string> leaves, hook_names;
  auto add_leaf = [&](const SweepSpec& s) {
    if (std::find(leaves.begin(), leaves.end(), s.name) != leaves.end()) return;
    sweep_configs(s, cfg, data.seq_len(), nullptr);  // throws if the model lacks the hook
    leaves.push_back(s.name);
    for (int l = 0; l < cfg.n_layers; ++l) hook_names.push_back(hooks::act_name(s.act, l));
  };
  for (const auto& name : sweeps) {
    const SweepSpec& s = find_sweep(name);
    if (s.parts.empty()) add_leaf(s);
    for (const auto& p : s.parts) add_leaf(find_sweep(p));
  }
  const GradientCache cache = attribution_gradients(model, data, metric, hook_names, options);
  const at::ScalarType dt = score_dtype(model);

  auto leaf_values = [&](const std::string& leaf) {
    const SweepSpec& s = find_sweep(leaf);
    std::vector<at::Tensor> layers;
    for (int l = 0; l < cfg.n_layers; ++l) {
      const std::string h = hooks::act_name(s.act, l);
      core::HookSite site;
      MECHLAB_ASSERT(core::parse_site(h, cfg.n_layers, &site));
      at::Tensor prod = cache.grad.at(h).to(dt) *
                        (cache.runs.source.at(h).to(dt) - cache.runs.base.at(h).to(dt));
      layers.push_back(reduce_to_axes(prod, s, is_attention_map(site.kind)));
    }
    return at::stack(layers, 0).cpu();  // [layer, ...]
  };

  const bool noising = options.direction() == Direction::noising;
  const bool ig = options.method() == AttributionMethod::eap_ig;
  std::vector<SweepResult> results;
  for (const auto& name : sweeps) {
    const SweepSpec& s = find_sweep(name);
    SweepResult r;
    r.sweep = std::string(method_name(options.method())) + ":" + s.name;
    r.axes = s.axes;
    if (s.parts.empty()) {
      r.values = leaf_values(s.name);
    } else {
      std::vector<at::Tensor> parts;
      for (const auto& p : s.parts) parts.push_back(leaf_values(p));
      r.values = stack_every(s, parts);
    }
    r.labels = sweep_labels(s, r.values, options.position_labels());
    r.config = {
        {"sweep", r.sweep},
        {"node_sweep", s.name},
        {"method", method_name(options.method())},
        {"steps", ig ? options.steps() : 1},
        {"description", "estimated metric change when each slice is patched from the source run "
                        "into the base run: gradient x (source - base) (" + s.description + ")"},
        {"direction", direction_name(options.direction())},
        {"metric", metric.name()},
        {"base_metric", cache.runs.base_metric},
        {"source_metric", cache.runs.source_metric},
        {"clean_metric", noising ? cache.runs.base_metric : cache.runs.source_metric},
        {"corrupted_metric", noising ? cache.runs.source_metric : cache.runs.base_metric},
        {"forwards", cache.runs.forwards},
        {"backwards", cache.runs.backwards},
        {"n_prompts", data.batch()},
        {"seq_len", data.seq_len()},
        {"model", cfg.name},
        {"model_config", nlohmann::json::parse(cfg.to_json_string())},
    };
    for (const auto& [k, v] : options.extra_config().items()) r.config[k] = v;
    results.push_back(std::move(r));
  }
  return results;
}

}  // namespace mechlab::patching
