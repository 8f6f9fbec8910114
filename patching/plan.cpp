#include "patching/plan.h"

#include "core/formats/hdf5_file.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "patching/path_patching.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace mechlab::patching {

namespace {

bool is_path_sweep(const std::string& s) { return s.rfind("path:", 0) == 0; }

double json_number(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : PatchStats::kNone;
}

int64_t json_count(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : 0;
}

// A result of the sweep functions, typed. Their config JSON is the record the
// results file keeps (details); the statistics are read from it once, here.
PatchResult from_sweep(SweepResult r, ResultKind kind, PatchMethod method, Direction dir,
                       const std::string& metric, const Provenance& prov) {
  PatchResult out;
  out.name = r.sweep;
  out.kind = kind;
  out.method = method;
  out.direction = dir;
  out.metric = metric;
  out.values = r.values;
  for (size_t i = 0; i < r.axes.size(); ++i) {
    out.axes.push_back({r.axes[i], r.values.size(static_cast<int64_t>(i)), r.labels[i]});
  }
  out.values_are_changes = method != PatchMethod::activation;
  const nlohmann::json& c = r.config;
  PatchStats& s = out.stats;
  s.clean_metric = json_number(c, "clean_metric");
  s.corrupted_metric = json_number(c, "corrupted_metric");
  const bool denoise = dir == Direction::denoising;
  s.base_metric = c.contains("base_metric") ? json_number(c, "base_metric")
                                            : (denoise ? s.corrupted_metric : s.clean_metric);
  s.source_metric = c.contains("source_metric") ? json_number(c, "source_metric")
                                                : (denoise ? s.clean_metric : s.corrupted_metric);
  if (c.contains("bulk")) {
    s.configs = json_count(c["bulk"], "configs");
    s.skipped_noop = json_count(c["bulk"], "skipped_noop");
    s.forwards = json_count(c["bulk"], "forwards");
  } else {
    s.forwards = json_count(c, "forwards");
    s.backwards = json_count(c, "backwards");
  }
  out.provenance = prov;
  out.details = std::move(r.config);
  return out;
}

}  // namespace

const char* patch_method_name(PatchMethod m) {
  switch (m) {
    case PatchMethod::activation: return "activation";
    case PatchMethod::attribution: return "attribution";
    case PatchMethod::eap_ig: return "eap-ig";
  }
  return "?";
}

PatchMethod parse_patch_method(const std::string& text) {
  if (text == "activation" || text == "patching") return PatchMethod::activation;
  if (text == "attribution") return PatchMethod::attribution;
  if (text == "eap-ig" || text == "eap_ig") return PatchMethod::eap_ig;
  throw Error(str_cat("unknown patching method \"", text,
                      "\"; methods: activation (exact patching), attribution, eap-ig"));
}

void PatchPlan::check(const core::ModelConfig& cfg) const {
  const bool exact = method_ == PatchMethod::activation;
  MECHLAB_CHECK(!sweeps_.empty() || !paths_.empty() || edges_,
                "the patching plan has nothing to do: give it sweeps, paths or edges");
  MECHLAB_CHECK(!edges_ || !exact, "the plan scores edges, which needs a gradient method: set "
                "its method to attribution or eap-ig");
  MECHLAB_CHECK(paths_.empty() || exact, "the plan's paths are exact path patching, which has no ",
                patch_method_name(method_), " form here; set its method to activation");
  MECHLAB_CHECK(steps_ >= 1, "the plan's steps (EAP-IG interpolation steps) must be at least 1, "
                "not ", steps_);
  const CircuitGraph graph(cfg);
  for (const auto& s : sweeps_) {
    if (is_path_sweep(s)) {
      MECHLAB_CHECK(exact, "sweep ", s, " is path patching, which has no ", patch_method_name(method_),
                    " form here; use method activation (or edges for edge attribution)");
      graph.parse_receivers(s.substr(5));
    } else if (parse_point_sweep(s)) {
      MECHLAB_CHECK(exact, "sweep ", s, " patches one hook point exactly, which has no ",
                    patch_method_name(method_), " form here; use method activation");
    } else {
      find_sweep(s);
    }
  }
  for (const auto& p : paths_) graph.parse_path(p);
  bool known = false;
  for (const auto& m : metric_catalog()) known = known || metric_.name() == m.name;
  MECHLAB_CHECK(known, "unknown metric \"", metric_.name(), "\"; metrics: ", metric_names());
}

std::vector<Direction> PatchPlan::node_directions() const {
  if (!directions_.empty()) return directions_;
  // TransformerLens patches clean into corrupted by default; the gradient
  // methods estimate Syed et al.'s noising direction.
  return {method_ == PatchMethod::activation ? Direction::denoising : Direction::noising};
}

std::vector<Direction> PatchPlan::graph_directions() const {
  return directions_.empty() ? std::vector<Direction>{Direction::noising} : directions_;
}

nlohmann::json PatchPlan::to_json() const {
  nlohmann::json dirs = nlohmann::json::array();
  for (Direction d : directions_) dirs.push_back(direction_name(d));
  nlohmann::json metric = {{"name", metric_.name()}};
  if (!std::isnan(metric_.clean_baseline())) metric["clean_baseline"] = metric_.clean_baseline();
  if (!std::isnan(metric_.corrupted_baseline())) {
    metric["corrupted_baseline"] = metric_.corrupted_baseline();
  }
  return {{"sweeps", sweeps_},
          {"paths", paths_},
          {"edges", edges_},
          {"method", patch_method_name(method_)},
          {"steps", steps_},
          {"directions", dirs},
          {"metric", metric},
          {"memory_budget_bytes", bulk_.memory_budget_bytes()},
          {"max_copies", bulk_.max_copies()},
          {"skip_identical", bulk_.skip_identical()},
          {"model_id", model_id_},
          {"dataset_id", dataset_id_},
          {"dataset_task", dataset_task_}};
}

double PatchResult::change(double value) const {
  return values_are_changes ? value : value - stats.base_metric;
}

SweepResult PatchResult::as_sweep_result() const {
  SweepResult r;
  r.sweep = name;
  r.values = values;
  for (const auto& a : axes) {
    r.axes.push_back(a.name);
    r.labels.push_back(a.labels);
  }
  r.config = details;
  return r;
}

namespace {

// Ctrl-C (core/util/interrupt.h): the safe points are the start of each unit
// (a direction's node sweeps, a path sweep, a path, an edge scoring) and,
// inside exact patching, each batched forward (BulkPatcher::run). `doing`
// names the unit running, `out` holds the results complete so far.
void safe_point(std::string& doing, std::string next) {
  doing = std::move(next);
  if (core::interrupt_requested()) throw Interrupted("interrupted");
}

void run_plan(hooks::HookedTransformer& model, const PatchingData& data, const PatchPlan& plan,
              std::vector<PatchResult>& out, std::string& doing) {
  const core::ModelConfig& cfg = model.cfg();
  data.validate(cfg);
  plan.check(cfg);
  // Point sweeps name hook points that may belong to attached modules, which
  // only the model knows: check them here, still before any forward.
  for (const auto& s : plan.sweeps()) {
    if (parse_point_sweep(s)) point_sweep_configs(s, model, data.seq_len(), nullptr);
  }
  const CircuitGraph graph(cfg);
  std::vector<std::string> node_sweeps, path_sweeps;
  for (const auto& s : plan.sweeps()) (is_path_sweep(s) ? path_sweeps : node_sweeps).push_back(s);

  Provenance prov;
  prov.model_id = plan.model_id();
  prov.model_name = cfg.name;
  prov.model_config_hash = cfg.hash();
  prov.device = c10::str(model.model().device());
  prov.dtype = core::dtype_name(model.model().dtype());
  prov.dataset_id = plan.dataset_id();
  prov.dataset_task = plan.dataset_task();
  prov.n_prompts = data.batch();
  prov.seq_len = data.seq_len();
  prov.plan = plan;
  // Copied into every stored config, so a results file says what made it.
  const nlohmann::json extra = {{"model_path", prov.model_id},
                                {"model_config_hash", prov.model_config_hash},
                                {"dataset_path", prov.dataset_id},
                                {"dataset_task", prov.dataset_task},
                                {"device", prov.device},
                                {"dtype", prov.dtype},
                                {"plan", plan.to_json()}};

  const PatchMethod method = plan.method();
  const bool exact = method == PatchMethod::activation;
  AttributionOptions aopts;
  aopts.method(method == PatchMethod::eap_ig ? AttributionMethod::eap_ig : AttributionMethod::attribution);
  aopts.steps(plan.steps());
  aopts.position_labels(plan.position_labels());
  aopts.extra_config(extra);

  if (!node_sweeps.empty()) {
    for (Direction dir : plan.node_directions()) {
      std::string names;
      for (const auto& s : node_sweeps) names += (names.empty() ? "" : ", ") + s;
      safe_point(doing, str_cat("sweep ", names, " (", direction_name(dir), ")"));
      const Metric metric = make_metric(plan.metric(), model, data, dir);
      std::vector<SweepResult> rs;
      if (exact) {
        SweepOptions o;
        o.direction(dir);
        o.bulk(plan.bulk());
        o.position_labels(plan.position_labels());
        o.extra_config(extra);
        rs = run_sweeps(model, data, node_sweeps, metric, o);
      } else {
        aopts.direction(dir);
        rs = attribution_sweeps(model, data, node_sweeps, metric, aopts);
      }
      for (auto& r : rs) {
        out.push_back(from_sweep(std::move(r), ResultKind::node_sweep, method, dir, metric.name(), prov));
      }
    }
  }
  if (path_sweeps.empty() && plan.paths().empty() && !plan.edges()) return;
  for (Direction dir : plan.graph_directions()) {
    const Metric metric = make_metric(plan.metric(), model, data, dir);
    PathPatchOptions popts;
    popts.direction(dir);
    popts.bulk(plan.bulk());
    popts.position_labels(plan.position_labels());
    popts.extra_config(extra);
    for (const auto& rec : path_sweeps) {
      safe_point(doing, str_cat("sweep ", rec, " (", direction_name(dir), ")"));
      out.push_back(from_sweep(path_patch_sweep(model, data, graph.parse_receivers(rec.substr(5)), metric,
                                                popts),
                               ResultKind::path_sweep, method, dir, metric.name(), prov));
    }
    for (const auto& spec : plan.paths()) {
      safe_point(doing, str_cat("path ", spec, " (", direction_name(dir), ")"));
      const PathSpec p = graph.parse_path(spec);
      const PathPatchResult pr = path_patch(model, data, p.senders, p.receivers, metric, popts);
      PatchResult r;
      r.name = spec;
      r.kind = ResultKind::path;
      r.method = method;
      r.direction = dir;
      r.metric = metric.name();
      r.values = at::scalar_tensor(pr.value, at::kFloat);  // []
      const bool noising = dir == Direction::noising;
      r.stats.base_metric = pr.base_metric;
      r.stats.source_metric = pr.source_metric;
      r.stats.clean_metric = noising ? pr.base_metric : pr.source_metric;
      r.stats.corrupted_metric = noising ? pr.source_metric : pr.base_metric;
      r.provenance = prov;
      r.details = {{"path", spec},
                   {"direction", direction_name(dir)},
                   {"metric", metric.name()},
                   {"value", pr.value},
                   {"base_metric", pr.base_metric},
                   {"source_metric", pr.source_metric}};
      out.push_back(std::move(r));
    }
    if (plan.edges()) {
      safe_point(doing, str_cat("edges:", patch_method_name(method), " (", direction_name(dir), ")"));
      aopts.direction(dir);
      auto e = std::make_shared<EdgeScores>(edge_attribution(model, data, metric, aopts));
      PatchResult r = from_sweep(e->as_result(), ResultKind::edges, method, dir, metric.name(), prov);
      r.edge_scores = std::move(e);
      out.push_back(std::move(r));
    }
  }
}

}  // namespace

std::vector<PatchResult> run_patching(hooks::HookedTransformer& model, const PatchingData& data,
                                      const PatchPlan& plan) {
  std::vector<PatchResult> out;
  std::string doing = "the setup";
  try {
    run_plan(model, data, plan, out, doing);
  } catch (const Interrupted& e) {
    // Nothing is written here, so the stop keeps nothing; say what was done.
    std::string complete;
    for (const auto& r : out) {
      complete += str_cat(complete.empty() ? "" : ", ", r.name, " (", direction_name(r.direction), ")");
    }
    throw Interrupted(str_cat(e.what(), " during ", doing, "; results complete: ",
                              complete.empty() ? "none" : complete));
  }
  return out;
}

std::vector<Effect> top_effects(const PatchResult& r, int64_t k) {
  at::Tensor v = r.values.to(at::kCPU, at::kDouble).contiguous();  // [axis sizes...]
  const int64_t n = v.numel();
  const double* data = v.data_ptr<double>();
  const double clean = r.stats.clean_metric, corrupted = r.stats.corrupted_metric;
  const bool can_normalise = std::isfinite(clean) && std::isfinite(corrupted) && clean != corrupted;
  const bool edge_axes = r.axes.size() == 2 && r.axes[0].name == "sender" && r.axes[1].name == "receiver";
  std::vector<Effect> all;
  for (int64_t flat = 0; flat < n; ++flat) {
    if (!std::isfinite(data[flat])) continue;
    Effect e;
    e.index.assign(r.axes.size(), 0);
    for (size_t a = r.axes.size(), rest = static_cast<size_t>(flat); a-- > 0;) {
      e.index[a] = static_cast<int64_t>(rest % static_cast<size_t>(r.axes[a].size));
      rest /= static_cast<size_t>(r.axes[a].size);
    }
    for (size_t a = 0; a < r.axes.size(); ++a) {
      const std::string& axis = r.axes[a].name;
      const std::string& label = r.axes[a].labels[e.index[a]];
      std::string part = axis == "layer"                         ? "L" + label
                         : axis == "head" || axis == "head_index" ? "H" + label
                         : axis == "patch_type" || edge_axes     ? label
                                                                 : axis + " " + label;
      e.label += (e.label.empty() ? "" : edge_axes ? " -> " : " ") + part;
    }
    if (r.axes.empty()) e.label = r.name;
    e.value = data[flat];
    e.change = r.change(e.value);
    if (can_normalise) e.normalised = (r.stats.base_metric + e.change - corrupted) / (clean - corrupted);
    all.push_back(std::move(e));
  }
  std::stable_sort(all.begin(), all.end(), [](const Effect& a, const Effect& b) {
    return std::fabs(a.change) > std::fabs(b.change);
  });
  if (k > 0 && static_cast<int64_t>(all.size()) > k) all.resize(static_cast<size_t>(k));
  return all;
}

}  // namespace mechlab::patching
