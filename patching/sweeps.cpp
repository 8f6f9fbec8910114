#include "patching/sweeps.h"

#include "core/util/error.h"
#include "hooks/act_name.h"

#include <ATen/ATen.h>

#include <map>
#include <set>
#include <utility>

namespace mechlab::patching {

namespace {

const std::vector<std::string> kHeadParts = {"output", "query", "key", "value", "pattern"};

SweepSpec leaf(std::string name, std::string act, std::vector<std::string> axes,
               std::string description, std::string tl = "") {
  SweepSpec s;
  s.tl_function = tl.empty() ? "get_act_patch_" + name : tl;
  s.name = std::move(name);
  s.act = std::move(act);
  s.axes = std::move(axes);
  s.description = std::move(description);
  return s;
}

SweepSpec every(std::string name, std::vector<std::string> parts, std::vector<std::string> labels,
                std::vector<std::string> axes, std::string description) {
  SweepSpec s;
  s.tl_function = "get_act_patch_" + name;
  s.name = std::move(name);
  s.parts = std::move(parts);
  s.part_labels = std::move(labels);
  s.axes = std::move(axes);
  s.description = std::move(description);
  return s;
}

int64_t axis_size(const std::string& axis, const core::ModelConfig& cfg, core::HookKind kind,
                  int64_t seq_len) {
  if (axis == "layer") return cfg.n_layers;
  if (axis == "pos" || axis == "dest_pos" || axis == "src_pos") return seq_len;
  if (axis == "head" || axis == "head_index") return heads_at(cfg, kind);
  throw Error(str_cat("internal error (a mechlab bug): unknown sweep axis ", axis));
}

std::vector<std::string> axis_labels(const std::string& axis, int64_t n,
                                     const std::vector<std::string>& positions) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < n; ++i) {
    const bool pos = axis == "pos" || axis == "dest_pos" || axis == "src_pos";
    out.push_back(pos && static_cast<int64_t>(positions.size()) == n ? positions[i]
                                                                       : std::to_string(i));
  }
  return out;
}

}  // namespace

const char* direction_name(Direction d) {
  return d == Direction::denoising ? "denoising" : "noising";
}

Direction parse_direction(const std::string& text) {
  if (text == "denoising") return Direction::denoising;
  if (text == "noising") return Direction::noising;
  throw Error(str_cat("unknown patching direction \"", text,
                      "\"; use denoising (run corrupted, patch in clean: TransformerLens's default) "
                      "or noising (run clean, patch in corrupted)"));
}

const std::vector<SweepSpec>& sweep_specs() {
  static const std::vector<SweepSpec> specs = [] {
    const std::vector<std::string> lp = {"layer", "pos"}, lph = {"layer", "pos", "head"},
                                   lh = {"layer", "head"};
    std::vector<SweepSpec> s = {
        leaf("resid_pre", "resid_pre", lp, "residual stream entering each layer, by position"),
        leaf("resid_mid", "resid_mid", lp, "residual stream between attention and MLP, by position"),
        leaf("resid_post", "resid_post", lp,
             "residual stream leaving each layer, by position (TL: generic_activation_patch with "
             "layer_pos_patch_setter)",
             "generic_activation_patch"),
        leaf("attn_out", "attn_out", lp, "attention layer output, by position"),
        leaf("mlp_out", "mlp_out", lp, "MLP layer output, by position"),
        leaf("attn_head_out_by_pos", "z", lph, "each head's output (hook_z), by position"),
        leaf("attn_head_q_by_pos", "q", lph, "each head's queries, by position"),
        leaf("attn_head_k_by_pos", "k", lph, "each (kv) head's keys, by position"),
        leaf("attn_head_v_by_pos", "v", lph, "each (kv) head's values, by position"),
        leaf("attn_head_pattern_by_pos", "pattern", {"layer", "head_index", "dest_pos"},
             "each head's attention pattern row, by destination position"),
        leaf("attn_head_pattern_dest_src_pos", "pattern",
             {"layer", "head_index", "dest_pos", "src_pos"},
             "each single entry of each head's attention pattern"),
        leaf("attn_head_out_all_pos", "z", lh, "each head's output at every position at once"),
        leaf("attn_head_q_all_pos", "q", lh, "each head's queries at every position"),
        leaf("attn_head_k_all_pos", "k", lh, "each (kv) head's keys at every position"),
        leaf("attn_head_v_all_pos", "v", lh, "each (kv) head's values at every position"),
        leaf("attn_head_pattern_all_pos", "pattern", {"layer", "head_index"},
             "each head's whole attention pattern"),
        every("block_every", {"resid_pre", "attn_out", "mlp_out"}, {"resid_pre", "attn_out", "mlp_out"},
              {"patch_type", "layer", "pos"}, "resid_pre, attn_out and mlp_out stacked: [3, layer, pos]"),
        every("attn_head_all_pos_every",
              {"attn_head_out_all_pos", "attn_head_q_all_pos", "attn_head_k_all_pos",
               "attn_head_v_all_pos", "attn_head_pattern_all_pos"},
              kHeadParts, {"patch_type", "layer", "head"},
              "out, q, k, v, pattern of each head at all positions: [5, layer, head]"),
        every("attn_head_by_pos_every",
              {"attn_head_out_by_pos", "attn_head_q_by_pos", "attn_head_k_by_pos",
               "attn_head_v_by_pos", "attn_head_pattern_by_pos"},
              kHeadParts, {"patch_type", "layer", "pos", "head"},
              "out, q, k, v, pattern (by destination) of each head by position: [5, layer, pos, head]"),
    };
    return s;
  }();
  return specs;
}

const SweepSpec& find_sweep(const std::string& name) {
  std::string names;
  for (const auto& s : sweep_specs()) {
    if (s.name == name) return s;
    names += (names.empty() ? "" : ", ") + s.name;
  }
  throw Error(str_cat("unknown sweep \"", name, "\"; sweeps: ", names));
}

bool parse_point_sweep(const std::string& name, std::string* hook, bool* by_pos) {
  static const std::string kByPos = "point:", kAll = "point_all_pos:";
  const bool pos = name.rfind(kByPos, 0) == 0, all = name.rfind(kAll, 0) == 0;
  if (!pos && !all) return false;
  const std::string h = name.substr((pos ? kByPos : kAll).size());
  MECHLAB_CHECK(!h.empty(), "sweep \"", name, "\" names no hook point; write ", name,
                "HOOK, e.g. ", name, "blocks.0.hook_resid_post");
  if (hook) *hook = h;
  if (by_pos) *by_pos = pos;
  return true;
}

std::vector<PatchConfig> point_sweep_configs(const std::string& name,
                                             const hooks::HookedTransformer& model, int64_t seq_len,
                                             std::vector<int64_t>* shape) {
  std::string hook;
  bool by_pos = false;
  MECHLAB_CHECK(parse_point_sweep(name, &hook, &by_pos),
                "internal error (a mechlab bug): point_sweep_configs on ", name);
  const PatchTarget base = PatchTarget::at(hook, model);  // unknown: nearest names listed
  std::vector<PatchConfig> configs;
  if (!by_pos) {
    if (shape) *shape = {1};
    return {PatchConfig{{base}}};
  }
  MECHLAB_CHECK(base.has_pos_axis(), "sweep ", name, ": ", hook, " ",
                core::shape_string(model.cfg(), base.dims()),
                " has no position axis after the batch; use point_all_pos:", hook);
  for (int64_t p = 0; p < seq_len; ++p) configs.push_back(PatchConfig{{PatchTarget(base).with_pos(p)}});
  if (shape) *shape = {seq_len};
  return configs;
}

at::Tensor stack_every(const SweepSpec& spec, const std::vector<at::Tensor>& part_values) {
  MECHLAB_ASSERT(part_values.size() == spec.parts.size());
  std::vector<at::Tensor> parts;
  for (size_t i = 0; i < part_values.size(); ++i) {
    at::Tensor v = part_values[i];
    if (spec.parts[i] == "attn_head_pattern_by_pos") v = v.permute({0, 2, 1});  // head, pos -> pos, head
    if (!parts.empty() && v.size(-1) < parts.front().size(-1)) {               // GQA k/v: pad heads
      v = at::constant_pad_nd(v, {0, parts.front().size(-1) - v.size(-1)}, 0);
    }
    parts.push_back(v);
  }
  return at::stack(parts, 0).contiguous();
}

std::vector<std::vector<std::string>> sweep_labels(const SweepSpec& spec, const at::Tensor& values,
                                                   const std::vector<std::string>& position_labels) {
  std::vector<std::vector<std::string>> out;
  for (size_t a = 0; a < spec.axes.size(); ++a) {
    out.push_back(spec.axes[a] == "patch_type"
                      ? spec.part_labels
                      : axis_labels(spec.axes[a], values.size(static_cast<int64_t>(a)), position_labels));
  }
  return out;
}

std::vector<PatchConfig> sweep_configs(const SweepSpec& spec, const core::ModelConfig& cfg,
                                       int64_t seq_len, std::vector<int64_t>* shape) {
  MECHLAB_CHECK(spec.parts.empty(), "internal error (a mechlab bug): sweep_configs on stack ",
                spec.name);
  std::vector<core::HookSite> sites;
  for (int l = 0; l < cfg.n_layers; ++l) {
    const std::string hook = hooks::act_name(spec.act, l);
    core::HookSite site;
    MECHLAB_ASSERT(core::parse_site(hook, cfg.n_layers, &site));
    MECHLAB_CHECK(core::site_exists(cfg, site), "sweep ", spec.name, ": model \"", cfg.name,
                  "\" has no hook point ", hook,
                  (spec.act == "resid_mid"
                       ? " (attention-only and parallel attention/MLP models have no resid_mid)"
                       : spec.act == "mlp_out" ? " (attention-only models have no MLP)" : ""),
                  "; choose a sweep over hook points this model has (`mechlab info MODEL` lists them)");
    sites.push_back(site);
  }
  const core::HookKind kind = sites.front().kind;
  std::vector<int64_t> sizes;
  for (const auto& a : spec.axes) sizes.push_back(axis_size(a, cfg, kind, seq_len));
  if (shape) *shape = sizes;

  std::vector<PatchConfig> configs;
  std::vector<int64_t> idx(sizes.size(), 0);
  int64_t total = 1;
  for (int64_t n : sizes) total *= n;
  configs.reserve(static_cast<size_t>(total));
  for (int64_t flat = 0; flat < total; ++flat) {
    int64_t rest = flat;
    for (size_t a = sizes.size(); a-- > 0;) {  // last axis fastest, as TL's itertools.product
      idx[a] = rest % sizes[a];
      rest /= sizes[a];
    }
    PatchTarget t;
    for (size_t a = 0; a < sizes.size(); ++a) {
      const std::string& axis = spec.axes[a];
      if (axis == "layer") t.site = sites[static_cast<size_t>(idx[a])];
      if (axis == "pos" || axis == "dest_pos") t.pos = idx[a];
      if (axis == "head" || axis == "head_index") t.head = idx[a];
      if (axis == "src_pos") t.src_pos = idx[a];
    }
    configs.push_back(PatchConfig{{t}});
  }
  return configs;
}

std::vector<SweepResult> run_sweeps(hooks::HookedTransformer& model, const PatchingData& data,
                                    const std::vector<std::string>& sweeps, const Metric& metric,
                                    const SweepOptions& options) {
  const auto& cfg = model.cfg();
  data.validate(cfg);
  MECHLAB_CHECK(!sweeps.empty(), "no sweep asked for; pass at least one sweep name (patching/sweeps.h "
                "lists them)");
  const int64_t seq = data.seq_len();

  // Every single-hook sweep needed, its configs and its place in one big run.
  struct Leaf {
    std::vector<int64_t> shape;
    size_t offset = 0, count = 0;
  };
  std::map<std::string, Leaf> leaves;
  std::vector<PatchConfig> all;
  std::set<std::string> hook_names;
  auto add_leaf = [&](const SweepSpec& s) {
    if (leaves.count(s.name)) return;
    Leaf l;
    std::vector<PatchConfig> c = sweep_configs(s, cfg, seq, &l.shape);
    l.offset = all.size();
    l.count = c.size();
    for (auto& pc : c) {
      for (const auto& t : pc.targets) hook_names.insert(t.hook_name());
      all.push_back(std::move(pc));
    }
    leaves[s.name] = l;
  };
  for (const auto& name : sweeps) {
    if (parse_point_sweep(name)) {
      if (leaves.count(name)) continue;
      Leaf l;
      std::vector<PatchConfig> c = point_sweep_configs(name, model, seq, &l.shape);
      l.offset = all.size();
      l.count = c.size();
      for (auto& pc : c) {
        for (const auto& t : pc.targets) hook_names.insert(t.hook_name());
        all.push_back(std::move(pc));
      }
      leaves[name] = l;
      continue;
    }
    const SweepSpec& s = find_sweep(name);
    if (s.parts.empty()) add_leaf(s);
    for (const auto& p : s.parts) add_leaf(find_sweep(p));
  }

  const bool denoise = options.direction() == Direction::denoising;
  const at::Tensor& run_tokens = denoise ? data.corrupted_tokens : data.clean_tokens;
  const at::Tensor& source_tokens = denoise ? data.clean_tokens : data.corrupted_tokens;
  at::NoGradGuard no_grad;
  hooks::RunOptions ro;
  if (data.attention_mask.defined()) ro.attention_mask(data.attention_mask);
  auto [source_logits, source_cache] = model.run_with_cache(
      source_tokens, hooks::NamesFilter(std::vector<std::string>(hook_names.begin(), hook_names.end())),
      ro);
  BulkPatcher patcher(model, run_tokens, data.attention_mask, metric, options.bulk());
  const double source_metric = metric(source_logits).item<double>();
  at::Tensor flat = patcher.run(all, source_cache.items());  // [all configs]

  auto leaf_values = [&](const std::string& name) {
    const Leaf& l = leaves.at(name);
    return flat.slice(0, static_cast<int64_t>(l.offset), static_cast<int64_t>(l.offset + l.count))
        .view(l.shape);
  };

  std::vector<SweepResult> results;
  for (const auto& name : sweeps) {
    std::string point;
    bool by_pos = false;
    SweepSpec point_spec;  // a point sweep's spec, made here: it is not in the table
    if (parse_point_sweep(name, &point, &by_pos)) {
      point_spec.name = name;
      point_spec.tl_function = "(none)";
      point_spec.act = point;
      point_spec.axes = {by_pos ? "pos" : "point"};
      point_spec.description = str_cat("the hook point ", point,
                                       by_pos ? ", by position" : ", at every position at once");
    }
    const SweepSpec& s = point.empty() ? find_sweep(name) : point_spec;
    SweepResult r;
    r.sweep = s.name;
    r.axes = s.axes;
    if (s.parts.empty()) {
      r.values = leaf_values(s.name).clone();
    } else {
      std::vector<at::Tensor> parts;
      for (const auto& p : s.parts) parts.push_back(leaf_values(p));
      r.values = stack_every(s, parts);
    }
    r.labels = sweep_labels(s, r.values, options.position_labels());
    if (!point.empty() && !by_pos) r.labels = {{point}};
    const BulkStats& st = patcher.stats();
    r.config = {
        {"sweep", s.name},
        {"tl_function", s.tl_function},
        {"description", s.description},
        {"direction", direction_name(options.direction())},
        {"metric", metric.name()},
        {"clean_metric", denoise ? source_metric : patcher.baseline()},
        {"corrupted_metric", denoise ? patcher.baseline() : source_metric},
        {"n_prompts", data.batch()},
        {"seq_len", seq},
        {"model", cfg.name},
        {"model_config", nlohmann::json::parse(cfg.to_json_string())},
        {"bulk", {{"configs", st.configs}, {"skipped_noop", st.skipped}, {"forwards", st.forwards},
                  {"max_copies_per_forward", st.max_copies},
                  {"prefix_forwards", st.prefix_forwards},
                  {"reused_positions", st.reused_positions},
                  {"skip_identical", options.bulk().skip_identical()},
                  {"reuse_prefix", options.bulk().reuse_prefix()}}},
    };
    for (const auto& [k, v] : options.extra_config().items()) r.config[k] = v;
    results.push_back(std::move(r));
  }
  return results;
}

SweepResult run_sweep(hooks::HookedTransformer& model, const PatchingData& data,
                      const std::string& sweep, const Metric& metric, const SweepOptions& options) {
  return std::move(run_sweeps(model, data, {sweep}, metric, options).front());
}

}  // namespace mechlab::patching
