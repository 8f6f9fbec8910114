#include "patching/path_patching.h"

#include "core/util/error.h"
#include "hooks/act_name.h"
#include "patching/sender_delta.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>

namespace mechlab::patching {

namespace {

std::string joined_receivers(const std::vector<ReceiverInput>& receivers) {
  std::string s;
  for (const auto& r : receivers) s += (s.empty() ? "" : "+") + receiver_name(r);
  return s;
}

// The base run's value of a receiver's input [batch, pos, d_model]: the
// residual a head's q/k/v input copies, the MLP input, the final residual.
std::string base_input_hook(const CircuitGraph& g, const ReceiverInput& r) {
  if (r.node.kind == CircuitNode::Kind::head) return hooks::act_name("resid_pre", r.node.layer);
  return g.receiver_hook(r);
}

}  // namespace

at::Tensor path_patch_sets(hooks::HookedTransformer& model, const PatchingData& data,
                           const std::vector<std::vector<CircuitNode>>& sender_sets,
                           const std::vector<ReceiverInput>& receivers, const Metric& metric,
                           const PathPatchOptions& options, PathPatchResult* baselines,
                           BulkStats* stats) {
  const auto& cfg = model.cfg();
  data.validate(cfg);
  MECHLAB_CHECK(!receivers.empty(), "path patching needs at least one receiver input "
                "(a{L}.h{H}<q|k|v>, m{L} or output)");
  const CircuitGraph graph(cfg);
  for (const auto& r : receivers) graph.receiver_index(r);  // a receiver of this model

  const bool noising = options.direction() == Direction::noising;
  const at::Tensor& base_tokens = noising ? data.clean_tokens : data.corrupted_tokens;
  const at::Tensor& source_tokens = noising ? data.corrupted_tokens : data.clean_tokens;
  at::NoGradGuard no_grad;
  hooks::RunOptions ro;
  ro.attention_mask(data.attention_mask);

  // Runs 1: base and source caches.
  std::vector<std::string> hooks_wanted = sender_hooks(cfg);
  for (const auto& r : receivers) hooks_wanted.push_back(base_input_hook(graph, r));
  std::sort(hooks_wanted.begin(), hooks_wanted.end());
  hooks_wanted.erase(std::unique(hooks_wanted.begin(), hooks_wanted.end()), hooks_wanted.end());
  auto [base_logits, base_cache] = model.run_with_cache(base_tokens, hooks::NamesFilter(hooks_wanted), ro);
  auto [source_logits, source_cache] =
      model.run_with_cache(source_tokens, hooks::NamesFilter(sender_hooks(cfg)), ro);
  const std::map<std::string, at::Tensor>& base = base_cache.items();
  const std::map<std::string, at::Tensor>& source = source_cache.items();
  const double base_metric = metric(base_logits).item<double>();
  if (baselines) {
    baselines->base_metric = base_metric;
    baselines->source_metric = metric(source_logits).item<double>();
    baselines->value = base_metric;
  }

  // Run 2, in closed form: each receiver's input with the senders' differences added.
  const at::ScalarType dtype = model.model().dtype();
  std::map<int64_t, at::Tensor> deltas;  // by sender index: [batch, pos, d_model]
  auto delta_of = [&](const CircuitNode& s) -> const at::Tensor& {
    const int64_t i = graph.sender_index(s);
    auto it = deltas.find(i);
    if (it == deltas.end()) it = deltas.emplace(i, sender_delta(model, s, base, source, dtype)).first;
    return it->second;
  };
  std::vector<PatchConfig> configs;
  std::vector<size_t> config_set;  // which sender set each config is
  std::map<std::string, at::Tensor> values;
  for (size_t i = 0; i < sender_sets.size(); ++i) {
    MECHLAB_CHECK(!sender_sets[i].empty(), "path patching: sender set ", i, " is empty; name at "
                  "least one sender (input, a{L}.h{H} or m{L})");
    PatchConfig config;
    for (const auto& r : receivers) {
      at::Tensor input;  // [batch, pos, d_model]
      for (const auto& s : sender_sets[i]) {
        graph.sender_index(s);  // a sender of this model
        if (!graph.has_edge(s, r)) continue;
        input = input.defined() ? input + delta_of(s) : base.at(base_input_hook(graph, r)) + delta_of(s);
      }
      if (!input.defined()) continue;  // no sender reaches this receiver
      PatchTarget t = PatchTarget::at(graph.receiver_hook(r), cfg);
      if (r.node.kind == CircuitNode::Kind::head) {
        t.head = r.node.head;
        input = input.unsqueeze(2);  // [batch, pos, 1, d_model]: broadcasts over the head axis
      }
      t.value_key = str_cat("set", i, ":", receiver_name(r));
      values[t.value_key] = input;
      config.targets.push_back(t);
    }
    if (config.targets.empty()) continue;
    configs.push_back(std::move(config));
    config_set.push_back(i);
  }

  // Run 3: the base prompts with only the receivers' inputs patched.
  at::Tensor out = at::full({static_cast<int64_t>(sender_sets.size())}, base_metric, at::kFloat);
  if (!configs.empty()) {
    BulkPatcher patcher(model, base_tokens, data.attention_mask, metric, options.bulk());
    at::Tensor got = patcher.run(configs, values);  // float [configs] on the CPU
    float* o = out.data_ptr<float>();
    const float* g = got.data_ptr<float>();
    for (size_t c = 0; c < configs.size(); ++c) o[config_set[c]] = g[c];
    if (stats) *stats = patcher.stats();
  }
  return out;
}

PathPatchResult path_patch(hooks::HookedTransformer& model, const PatchingData& data,
                           const std::vector<CircuitNode>& senders,
                           const std::vector<ReceiverInput>& receivers, const Metric& metric,
                           const PathPatchOptions& options) {
  const CircuitGraph graph(model.cfg());
  MECHLAB_CHECK(!senders.empty(), "path patching needs at least one sender (input, a{L}.h{H} or m{L})");
  MECHLAB_CHECK(!receivers.empty(), "path patching needs at least one receiver input "
                "(a{L}.h{H}<q|k|v>, m{L} or output)");
  bool any = false;
  std::string s_names, r_names;
  for (const auto& s : senders) {
    graph.sender_index(s);
    s_names += (s_names.empty() ? "" : "+") + node_name(s);
    for (const auto& r : receivers) any = any || graph.has_edge(s, r);
  }
  r_names = joined_receivers(receivers);
  MECHLAB_CHECK(any, "path patching ", s_names, " -> ", r_names, ": no sender writes the residual "
                "stream before a receiver reads it, so there is no path (a receiver must be in a "
                "later layer than its sender, or be the MLP of the sender head's layer)");
  PathPatchResult r;
  at::Tensor v = path_patch_sets(model, data, {senders}, receivers, metric, options, &r);
  r.value = v[0].item<double>();
  return r;
}

SweepResult path_patch_sweep(hooks::HookedTransformer& model, const PatchingData& data,
                             const std::vector<ReceiverInput>& receivers, const Metric& metric,
                             const PathPatchOptions& options) {
  const auto& cfg = model.cfg();
  std::vector<std::vector<CircuitNode>> sets;
  for (int l = 0; l < cfg.n_layers; ++l) {
    for (int h = 0; h < cfg.n_heads; ++h) sets.push_back({CircuitNode{CircuitNode::Kind::head, l, h}});
  }
  PathPatchResult base;
  BulkStats st;
  at::Tensor v = path_patch_sets(model, data, sets, receivers, metric, options, &base, &st);
  SweepResult r;
  r.sweep = "path:" + joined_receivers(receivers);
  r.values = v.view({cfg.n_layers, cfg.n_heads});
  r.axes = {"layer", "head"};
  std::vector<std::string> layers, heads;
  for (int l = 0; l < cfg.n_layers; ++l) layers.push_back(std::to_string(l));
  for (int h = 0; h < cfg.n_heads; ++h) heads.push_back(std::to_string(h));
  r.labels = {layers, heads};
  const bool noising = options.direction() == Direction::noising;
  nlohmann::json rec = nlohmann::json::array();
  for (const auto& x : receivers) rec.push_back(receiver_name(x));
  r.config = {
      {"sweep", r.sweep},
      {"method", "path_patching"},
      {"description", "path patching from each single head (sender) to the receivers, every other "
                      "head and MLP frozen at its base value (Wang et al. 2022)"},
      {"receivers", rec},
      {"direction", direction_name(options.direction())},
      {"metric", metric.name()},
      {"base_metric", base.base_metric},
      {"source_metric", base.source_metric},
      {"clean_metric", noising ? base.base_metric : base.source_metric},
      {"corrupted_metric", noising ? base.source_metric : base.base_metric},
      {"n_prompts", data.batch()},
      {"seq_len", data.seq_len()},
      {"model", cfg.name},
      {"model_config", nlohmann::json::parse(cfg.to_json_string())},
      {"bulk", {{"configs", st.configs}, {"skipped_noop", st.skipped}, {"forwards", st.forwards},
                {"max_copies_per_forward", st.max_copies}}},
  };
  for (const auto& [k, val] : options.extra_config().items()) r.config[k] = val;
  return r;
}

}  // namespace mechlab::patching
