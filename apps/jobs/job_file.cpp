#include "apps/jobs/job_file.h"

#include "core/data/dataset.h"
#include "core/data/tasks/tasks.h"
#include "core/hf/model_loader.h"
#include "core/store/activation_store.h"
#include "core/util/error.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"

#include <ATen/ATen.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

namespace mechlab::jobs {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string> kTopFields = {"jobs", "steps"};
const std::vector<std::string> kJobFields = {"name",     "model",  "dataset", "method", "metric",
                                             "ablation", "threshold", "thresholds", "top_n", "steps",
                                             "device",   "examples", "out", "abs_value", "indices_mode",
                                             "max_batch", "attribution_threshold", "attribution_top_n",
                                             "reference_edges", "split_positions"};
const std::vector<std::string> kIndicesModes = {"normal", "reverse"};
const std::vector<std::string> kAblations = {"corrupted", "mean", "zero"};
const std::vector<std::string> kDevices = {"cpu", "cuda"};

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& valid) {
  const std::string near = nearest_name(word, valid);
  return near.empty() ? "valid: " + joined(valid) : "did you mean '" + near + "'? (valid: " + joined(valid) + ")";
}

// YAML -> JSON: plain scalars become booleans, null, integers or floats
// when they read as one; quoted scalars stay strings.
json yaml_to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& item : n) a.push_back(yaml_to_json(item));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) {
        const std::string key = kv.first.as<std::string>();
        if (o.contains(key)) {
          throw Error(str_cat("field '", key, "' is given twice (line ", kv.first.Mark().line + 1, ")"));
        }
        o[key] = yaml_to_json(kv.second);
      }
      return o;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = n.Scalar();
      if (n.Tag() == "!") return s;  // quoted
      if (s == "true" || s == "True" || s == "TRUE") return true;
      if (s == "false" || s == "False" || s == "FALSE") return false;
      if (s == "null" || s == "~" || s == "Null" || s == "NULL") return nullptr;
      if (!s.empty() && s.find_first_not_of("0123456789+-") == std::string::npos) {
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(s.c_str(), &end, 10);
        if (errno == 0 && *end == '\0') return static_cast<int64_t>(v);
      }
      if (!s.empty() && s.find_first_not_of("0123456789+-.eE") == std::string::npos &&
          s.find_first_of("0123456789") != std::string::npos) {
        errno = 0;
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (errno == 0 && *end == '\0') return v;
      }
      if (s == ".inf" || s == ".Inf") return std::numeric_limits<double>::infinity();
      if (s == "-.inf" || s == "-.Inf") return -std::numeric_limits<double>::infinity();
      if (s == ".nan" || s == ".NaN") return std::numeric_limits<double>::quiet_NaN();
      return s;
    }
  }
  return nullptr;
}

std::string resolve(const std::string& dir, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  return (fs::path(dir) / p).lexically_normal().string();
}

bool same_path(const std::string& a, const std::string& b) {
  std::error_code ec1, ec2;
  const fs::path ca = fs::weakly_canonical(a, ec1), cb = fs::weakly_canonical(b, ec2);
  if (ec1 || ec2) return fs::path(a).lexically_normal() == fs::path(b).lexically_normal();
  return ca == cb;
}

std::string value_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// As the file wrote it: JSON's dump would print NaN and infinity (YAML's .nan, .inf) as null.
std::string number_text(const json& v) {
  if (v.is_number_float() && !std::isfinite(v.get<double>())) {
    const double x = v.get<double>();
    return std::isnan(x) ? ".nan" : x > 0 ? ".inf" : "-.inf";
  }
  return v.dump();
}

// Field readers: one-line errors naming `who` and the field.
struct Fields {
  std::string who;
  const json& obj;
  std::string string(const std::string& f, bool required, const std::string& fallback = "") const {
    if (!obj.contains(f)) {
      MECHLAB_CHECK(!required, who, ": field '", f, "' is missing; give it");
      return fallback;
    }
    MECHLAB_CHECK(obj[f].is_string() && !obj[f].get<std::string>().empty(), who, ": field '", f,
                  "' must be a non-empty text, not ", obj[f].dump());
    return obj[f].get<std::string>();
  }
  int64_t integer(const std::string& f, int64_t fallback, int64_t min) const {
    if (!obj.contains(f)) return fallback;
    const json& v = obj[f];
    MECHLAB_CHECK(v.is_number_integer() && v.get<int64_t>() >= min, who, ": field '", f,
                  "' must be a whole number >= ", min, ", not ", v.dump());
    return v.get<int64_t>();
  }
  double tau(const json& v, const std::string& f) const {
    MECHLAB_CHECK(v.is_number() && std::isfinite(v.get<double>()), who, ": field '", f,
                  "' must be a number (τ >= 0), not ", number_text(v));
    MECHLAB_CHECK(v.get<double>() >= 0.0, who, ": field '", f, "' is ", v.get<double>(),
                  "; τ must be >= 0 (edges scoring |s| >= τ are kept)");
    return v.get<double>();
  }
};

Step parse_step(const json& item, size_t index, const std::string& dir) {
  const std::string label = str_cat("step ", index + 1);
  MECHLAB_CHECK(item.is_object() && item.size() == 1, label,
                ": a step is one field naming its kind, e.g. {dataset: {task: ioi, out: ioi.h5}}; kinds: ",
                [] {
                  std::vector<std::string> n;
                  for (const auto& k : step_kinds()) n.push_back(k.name);
                  return joined(n);
                }());
  const std::string kind_name = item.begin().key();
  const StepKind* kind = nullptr;
  std::vector<std::string> names;
  for (const auto& k : step_kinds()) {
    names.push_back(k.name);
    if (k.name == kind_name) kind = &k;
  }
  MECHLAB_CHECK(kind != nullptr, label, ": unknown step '", kind_name, "'; ", did_you_mean(kind_name, names));
  Step s;
  s.kind = kind->name;
  s.label = str_cat(label, " (", kind->name, ")");
  const json& args = item.begin().value();
  MECHLAB_CHECK(args.is_object(), s.label, ": its arguments must be fields, e.g. {out: file.h5}");
  std::vector<std::string> valid = kind->positionals;
  valid.insert(valid.end(), kind->flags.begin(), kind->flags.end());
  for (const auto& [k, v] : args.items()) {
    MECHLAB_CHECK(std::find(valid.begin(), valid.end(), k) != valid.end(), s.label, ": unknown field '", k,
                  "'; ", did_you_mean(k, valid));
  }
  // Paths the step reads or writes are relative to the job file.
  auto path_field = [&](const std::string& f) {
    return f == "out" || f == "model" || f == "dataset" || f == "config" || f == "source" || f == "sae";
  };
  s.argv = kind->command;
  for (const auto& p : kind->positionals) {
    MECHLAB_CHECK(args.contains(p), s.label, ": field '", p, "' is missing; give it");
    const json& v = args[p];
    MECHLAB_CHECK(v.is_string() || v.is_number(), s.label, ": field '", p, "' must be a text, not ", v.dump());
    s.argv.push_back(path_field(p) ? resolve(dir, value_text(v)) : value_text(v));
  }
  MECHLAB_CHECK(args.contains("out") && args["out"].is_string(), s.label,
                ": field 'out' is missing; give the file the step writes");
  if (s.kind == "dataset") {
    // The task and its options, before any step runs (the command itself
    // would find them only when this step's turn comes).
    const core::tasks::TaskInfo* info = nullptr;
    try {
      info = &core::tasks::task_info(value_text(args["task"]));
    } catch (const Error& e) {
      throw Error(str_cat(s.label, ": field 'task': ", e.what()));
    }
    std::vector<std::string> keys;
    for (const core::tasks::OptionInfo& o : info->options) keys.push_back(o.key);
    if (args.contains("set") && args["set"].is_object()) {
      for (const auto& [k, x] : args["set"].items()) {
        MECHLAB_CHECK(std::find(keys.begin(), keys.end(), k) != keys.end(), s.label, ": field 'set': task ",
                      info->name, " has no option '", k, "'; ", did_you_mean(k, keys));
      }
    }
  }
  s.out = resolve(dir, args["out"].get<std::string>());
  s.done = s.kind == "sae_train" ? (fs::path(s.out) / "sae").string()
           : s.kind == "probe"   ? (fs::path(s.out) / "probes.h5").string()
                                 : s.out;
  for (const auto& f : kind->flags) {
    if (!args.contains(f)) continue;
    const json& v = args[f];
    const std::string flag = "--" + f;
    if (f == "set") {
      MECHLAB_CHECK(v.is_object(), s.label, ": field 'set' must be a map of task options, e.g. {order: ABBA}");
      for (const auto& [k, x] : v.items()) {
        s.argv.push_back(flag);
        s.argv.push_back(k + "=" + value_text(x));
      }
    } else if (std::find(kind->switches.begin(), kind->switches.end(), f) != kind->switches.end()) {
      MECHLAB_CHECK(v.is_boolean(), s.label, ": field '", f, "' is a switch: give true or false, not ", v.dump());
      if (v.get<bool>()) s.argv.push_back(flag);
    } else if (v.is_boolean()) {
      throw Error(str_cat(s.label, ": field '", f, "' takes a value, not ", v.dump()));
    } else if (v.is_array()) {
      for (const auto& x : v) {
        MECHLAB_CHECK(x.is_string() || x.is_number(), s.label, ": field '", f, "' lists ", x.dump(),
                      "; give texts or numbers");
        s.argv.push_back(flag);
        s.argv.push_back(path_field(f) ? resolve(dir, value_text(x)) : value_text(x));
      }
    } else {
      MECHLAB_CHECK(v.is_string() || v.is_number(), s.label, ": field '", f, "' must be a text, number, "
                    "true/false or a list, not ", v.dump());
      s.argv.push_back(flag);
      s.argv.push_back(path_field(f) ? resolve(dir, value_text(v)) : value_text(v));
    }
  }
  return s;
}

Job parse_job(const json& item, size_t index, const std::string& dir) {
  const std::string at = str_cat("job ", index + 1);
  MECHLAB_CHECK(item.is_object(), at, ": a job must be a map of fields (name, model, dataset, method, ...)");
  Job j;
  {
    const Fields f{at, item};
    j.name = f.string("name", true);
  }
  const std::string who = "job '" + j.name + "'";
  MECHLAB_CHECK(j.name.find('/') == std::string::npos && j.name != "." && j.name != "..", who,
                ": field 'name' names the output folder; use no '/'");
  for (const auto& [k, v] : item.items()) {
    MECHLAB_CHECK(std::find(kJobFields.begin(), kJobFields.end(), k) != kJobFields.end(), who,
                  ": unknown field '", k, "'; ", did_you_mean(k, kJobFields));
  }
  const Fields f{who, item};
  j.model = resolve(dir, f.string("model", true));
  j.dataset = resolve(dir, f.string("dataset", true));
  j.method = f.string("method", true);
  MECHLAB_CHECK(std::find(method_names().begin(), method_names().end(), j.method) != method_names().end(), who,
                ": field 'method' is '", j.method, "'; ", did_you_mean(j.method, method_names()));
  j.metric = f.string("metric", false, j.metric);
  std::vector<std::string> metrics;
  for (const auto& m : patching::metric_catalog()) metrics.push_back(m.name);
  MECHLAB_CHECK(std::find(metrics.begin(), metrics.end(), j.metric) != metrics.end(), who,
                ": field 'metric' is '", j.metric, "'; ", did_you_mean(j.metric, metrics));
  j.ablation = f.string("ablation", false, j.ablation);
  MECHLAB_CHECK(std::find(kAblations.begin(), kAblations.end(), j.ablation) != kAblations.end(), who,
                ": field 'ablation' is '", j.ablation, "'; ", did_you_mean(j.ablation, kAblations));
  j.device = f.string("device", false, j.device);
  MECHLAB_CHECK(std::find(kDevices.begin(), kDevices.end(), j.device) != kDevices.end(), who,
                ": field 'device' is '", j.device, "'; ", did_you_mean(j.device, kDevices));
  j.examples = f.integer("examples", 0, 0);
  const bool eap = j.method == "eap" || j.method == "eap-ig";
  const bool acdc = j.method == "acdc" || j.method == "eap-acdc";
  if (item.contains("steps")) {
    MECHLAB_CHECK(j.method == "eap-ig" || j.method == "eap-acdc", who,
                  ": field 'steps' is for methods eap-ig and eap-acdc (EAP-IG interpolation steps); ",
                  "drop it for ", j.method);
  }
  j.steps = static_cast<int>(f.integer("steps", 5, 1));
  j.steps_given = item.contains("steps");
  for (const char* field : {"abs_value", "indices_mode", "max_batch"}) {
    MECHLAB_CHECK(acdc || !item.contains(field), who, ": field '", field,
                  "' is an ACDC option (methods acdc, eap-acdc); drop it for ", j.method);
  }
  if (item.contains("abs_value")) {
    MECHLAB_CHECK(item["abs_value"].is_boolean(), who, ": field 'abs_value' must be true or false, not ",
                  item["abs_value"].dump());
    j.abs_value = item["abs_value"].get<bool>();
  }
  j.indices_mode = f.string("indices_mode", false, j.indices_mode);
  MECHLAB_CHECK(std::find(kIndicesModes.begin(), kIndicesModes.end(), j.indices_mode) != kIndicesModes.end(), who,
                ": field 'indices_mode' is '", j.indices_mode, "'; ", did_you_mean(j.indices_mode, kIndicesModes));
  j.max_batch = f.integer("max_batch", 0, 0);
  if (item.contains("split_positions")) {
    MECHLAB_CHECK(item["split_positions"].is_boolean(), who,
                  ": field 'split_positions' must be true or false, not ", item["split_positions"].dump());
    j.split_positions = item["split_positions"].get<bool>();
  }
  for (const char* field : {"attribution_threshold", "attribution_top_n"}) {
    MECHLAB_CHECK(j.method == "eap-acdc" || !item.contains(field), who, ": field '", field,
                  "' chooses the EAP edges of method eap-acdc; drop it for ", j.method);
  }
  if (j.method == "eap-acdc") {
    const int chosen = int(item.contains("attribution_threshold")) + int(item.contains("attribution_top_n"));
    MECHLAB_CHECK(chosen == 1, who, ": method eap-acdc needs exactly one of fields 'attribution_threshold' and ",
                  "'attribution_top_n' (the EAP edges ACDC starts from; ", chosen, " given)");
    if (item.contains("attribution_threshold")) {
      j.attribution_threshold = f.tau(item["attribution_threshold"], "attribution_threshold");
    }
    j.attribution_top_n = f.integer("attribution_top_n", 0, 1);
  }
  if (item.contains("reference_edges")) j.reference_edges = resolve(dir, f.string("reference_edges", true));
  const int given = int(item.contains("threshold")) + int(item.contains("thresholds")) + int(item.contains("top_n"));
  MECHLAB_CHECK(given == 1, who, ": give exactly one of fields 'threshold', 'thresholds'",
                eap ? " and 'top_n'" : "", " (", given, " given)");
  if (item.contains("threshold")) j.thresholds.push_back(f.tau(item["threshold"], "threshold"));
  if (item.contains("thresholds")) {
    const json& v = item["thresholds"];
    MECHLAB_CHECK(v.is_array() && !v.empty(), who, ": field 'thresholds' must be a non-empty list of τ, not ",
                  v.dump());
    for (const auto& t : v) j.thresholds.push_back(f.tau(t, "thresholds"));
    std::set<double> seen;
    for (double t : j.thresholds) {
      MECHLAB_CHECK(seen.insert(t).second, who, ": field 'thresholds' lists ", t, " twice");
    }
  }
  if (item.contains("top_n")) {
    MECHLAB_CHECK(eap, who, ": field 'top_n' selects EAP edges (methods eap, eap-ig); give 'threshold' for ",
                  j.method);
    j.top_n = f.integer("top_n", 0, 1);
  }
  if (eap || j.method == "eap-acdc") {
    MECHLAB_CHECK(j.ablation == "corrupted", who, ": field 'ablation' is '", j.ablation, "' but method ",
                  j.method, " attributes edges against the corrupted run; use ablation: corrupted");
  }
  // KL to the clean run is at its minimum on the clean run, where EAP takes
  // its one gradient: every score would be 0.
  MECHLAB_CHECK(!(j.method == "eap" && j.metric == "kl_to_clean"), who, ": field 'metric' is kl_to_clean, "
                "whose gradient at the clean run is zero, so eap would score every edge 0; give metric: "
                "logit_diff (or method eap-ig)");
  MECHLAB_CHECK(!(j.method == "eap-acdc" && !j.steps_given && j.metric == "kl_to_clean"), who,
                ": field 'metric' is kl_to_clean, whose gradient at the clean run is zero, so eap-acdc's EAP "
                "would score every edge 0; give 'steps' (EAP-IG scores instead) or another metric");
  j.out = item.contains("out") ? resolve(dir, f.string("out", true)) : resolve(dir, j.name);
  return j;
}

}  // namespace

const std::vector<StepKind>& step_kinds() {
  static const std::vector<StepKind> kinds = {
      {"dataset", {"dataset", "make"}, {"task"}, {"out", "n", "seed", "set", "overwrite", "threads"}, {"overwrite"}},
      {"cache",
       {"cache"},
       {"model", "dataset"},
       {"out", "hooks", "dtype", "model-dtype", "device", "batch-size", "chunk-rows", "compress", "resume",
        "overwrite", "no-progress", "fold-ln", "center-writing-weights", "center-unembed",
        "fold-value-biases", "process", "threads"},
       {"resume", "overwrite", "no-progress", "fold-ln", "center-writing-weights", "center-unembed",
        "fold-value-biases", "process"}},
      // `out` is the run's folder; the run is done once out/sae exists (the
      // SAELens folder, written last), and a folder with only a checkpoint
      // is resumed.
      {"sae_train",
       {"sae", "train"},
       {"config"},
       {"out", "set", "max-steps", "no-progress", "threads"},
       {"no-progress"}},
      // `out` is a folder; the step is done once out/probes.h5 exists (renamed
      // into place last, after probes.svg).
      {"probe",
       {"probe"},
       {"source", "dataset"},
       {"out", "hooks", "sae", "split-heads", "label", "position", "overwrite", "test-fraction", "split-by", "seed",
        "C", "penalty", "solver", "max-iter", "tol", "epochs", "resamples", "confidence", "batch-size",
        "max-examples", "ablate", "ablate-examples", "device", "threads"},
       {"split-heads", "overwrite", "ablate"}},
  };
  return kinds;
}

bool step_done(const Step& step) { return fs::exists(step.done); }

std::vector<std::string> step_command(const Step& step) {
  std::vector<std::string> argv = step.argv;
  if (step.kind == "sae_train" && fs::exists(fs::path(step.out) / "checkpoint.h5")) argv.push_back("--resume");
  return argv;
}

const std::vector<std::string>& method_names() {
  static const std::vector<std::string> names = {"acdc", "eap", "eap-ig", "eap-acdc"};
  return names;
}

const std::vector<std::string>& job_field_names() { return kJobFields; }

std::string nearest_name(const std::string& word, const std::vector<std::string>& valid) {
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& v : valid) {
    // Levenshtein distance, one row at a time.
    std::vector<size_t> row(v.size() + 1);
    for (size_t j = 0; j <= v.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      size_t diag = row[0];
      row[0] = i;
      for (size_t j = 1; j <= v.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (word[i - 1] == v[j - 1] ? 0 : 1)});
        diag = up;
      }
    }
    if (row[v.size()] < best_d) best_d = row[v.size()], best = v;
  }
  // Close: at most a third of the word's letters differ.
  return best_d <= std::max<size_t>(1, word.size() / 3) ? best : "";
}

std::string threshold_text(double tau) {
  // %g's 6 digits (the names folders have always had), more only when
  // needed: std::to_chars' shortest form would rename 0.0001 to 1e-04.
  char buf[64];
  for (int digits = 6; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, tau);
    if (std::strtod(buf, nullptr) == tau) break;
  }
  return buf;
}

std::vector<JobRun> JobFile::runs() const {
  // The config records paths relative to the job file's folder, so that a
  // rerun from another working directory finds its runs finished.
  const fs::path base_dir = fs::absolute(dir.empty() ? "." : dir).lexically_normal();
  auto rel = [&](const std::string& p) {
    return fs::absolute(p).lexically_normal().lexically_relative(base_dir).string();
  };
  std::vector<JobRun> out;
  for (const Job& j : jobs) {
    auto base = [&] {
      json c = {{"name", j.name},       {"model", rel(j.model)},   {"dataset", rel(j.dataset)},
                {"method", j.method},   {"metric", j.metric}, {"ablation", j.ablation},
                {"device", j.device},   {"examples", j.examples}};
      if (j.method == "eap-ig" || (j.method == "eap-acdc" && j.steps_given)) c["steps"] = j.steps;
      if (j.method == "acdc" || j.method == "eap-acdc") {
        // max_batch is left out: it changes the speed, not the decisions.
        c["abs_value"] = j.abs_value;
        c["indices_mode"] = j.indices_mode;
      }
      if (j.method == "eap-acdc") {
        if (j.attribution_top_n > 0) {
          c["attribution_top_n"] = j.attribution_top_n;
        } else {
          c["attribution_threshold"] = j.attribution_threshold;
        }
      }
      if (!j.reference_edges.empty()) c["reference_edges"] = rel(j.reference_edges);
      // Only when on: the configs of unsplit jobs (and their finished runs) stay as they were.
      if (j.split_positions) c["split_positions"] = true;
      return c;
    };
    if (j.thresholds.empty()) {
      JobRun r{&j, std::numeric_limits<double>::quiet_NaN(), j.out, base()};
      r.config["top_n"] = j.top_n;
      r.config["out"] = rel(r.out);
      out.push_back(r);
      continue;
    }
    for (double t : j.thresholds) {
      JobRun r{&j, t, j.out, base()};
      if (j.thresholds.size() > 1) r.out = (fs::path(j.out) / ("threshold-" + threshold_text(t))).string();
      r.config["threshold"] = t;
      r.config["out"] = rel(r.out);
      out.push_back(r);
    }
  }
  return out;
}

json read_job_document(const std::string& path) {
  MECHLAB_CHECK(!fs::is_directory(path), "the job file '", path, "' is a folder; give a .json, .yaml or .yml file");
  std::ifstream in(path);
  MECHLAB_CHECK(in, "cannot read the job file '", path, "': ", std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".yaml" || ext == ".yml") {
    try {
      return yaml_to_json(YAML::Load(ss.str()));
    } catch (const YAML::Exception& e) {
      throw Error(str_cat("job file ", path, " is not valid YAML: line ", e.mark.line + 1, ": ", e.msg));
    } catch (const Error& e) {
      throw Error(str_cat("job file ", path, ": ", e.what()));
    }
  }
  // nlohmann keeps the last of two equal keys; YAML refuses them, and so does JSON here.
  std::vector<std::set<std::string>> keys;  // of each open object
  std::string twice;
  const json::parser_callback_t note_keys = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) keys.emplace_back();
    if (event == json::parse_event_t::object_end) keys.pop_back();
    if (event == json::parse_event_t::key && !keys.back().insert(parsed.get<std::string>()).second &&
        twice.empty()) {
      twice = parsed.get<std::string>();
    }
    return true;
  };
  try {
    json doc = json::parse(ss.str(), note_keys);
    MECHLAB_CHECK(twice.empty(), "job file ", path, ": field '", twice, "' is given twice in one object; give it once");
    return doc;
  } catch (const json::parse_error& e) {
    throw Error(str_cat("job file ", path, " is not valid JSON (", e.what(),
                        "); YAML job files must end in .yaml or .yml"));
  }
}

JobFile parse_job_document(const json& doc, const std::string& path, const std::string& dir) {
  JobFile file;
  file.path = path;
  file.dir = dir;
  MECHLAB_CHECK(doc.is_object(), "job file ", path, " must be a map with a 'jobs' list");
  for (const auto& [k, v] : doc.items()) {
    MECHLAB_CHECK(std::find(kTopFields.begin(), kTopFields.end(), k) != kTopFields.end(), "job file ", path,
                  ": unknown field '", k, "'; ", did_you_mean(k, kTopFields));
  }
  // Steps alone (make a dataset, cache, train an SAE, probe) are a job
  // file too; without steps there must be jobs.
  const bool has_steps = doc.contains("steps") && doc["steps"].is_array() && !doc["steps"].empty();
  MECHLAB_CHECK(!doc.contains("jobs") || doc["jobs"].is_array(), "job file ", path,
                ": field 'jobs' must be a list of jobs");
  MECHLAB_CHECK(has_steps || (doc.contains("jobs") && !doc["jobs"].empty()), "job file ", path,
                " has nothing to run; give a list of jobs, or of steps, or both");
  if (doc.contains("steps")) {
    MECHLAB_CHECK(doc["steps"].is_array(), "job file ", path, ": field 'steps' must be a list of steps");
    for (size_t i = 0; i < doc["steps"].size(); ++i) file.steps.push_back(parse_step(doc["steps"][i], i, dir));
  }
  const json jobs = doc.value("jobs", json::array());
  for (size_t i = 0; i < jobs.size(); ++i) file.jobs.push_back(parse_job(jobs[i], i, dir));

  std::set<std::string> names;
  for (const Job& j : file.jobs) {
    MECHLAB_CHECK(names.insert(j.name).second, "job '", j.name, "': field 'name' is used by two jobs; names must be unique");
  }
  auto produced = [&](const std::string& p) {
    for (const Step& s : file.steps) {
      if (same_path(s.out, p)) return true;
    }
    return false;
  };
  for (size_t a = 0; a < file.steps.size(); ++a) {
    for (size_t b = 0; b < a; ++b) {
      MECHLAB_CHECK(!same_path(file.steps[a].out, file.steps[b].out), file.steps[a].label, ": field 'out' is '",
                    file.steps[a].out, "', which ", file.steps[b].label, " writes; give each step its own output");
    }
  }
  for (const Step& s : file.steps) {
    const StepKind& kind = *std::find_if(step_kinds().begin(), step_kinds().end(),
                                         [&](const StepKind& k) { return k.name == s.kind; });
    for (size_t i = 0; i < kind.positionals.size(); ++i) {
      const std::string& f = kind.positionals[i];
      if (f != "model" && f != "dataset" && f != "source") continue;
      const std::string& p = s.argv[kind.command.size() + i];
      MECHLAB_CHECK(fs::exists(p) || produced(p), s.label, ": field '", f, "': no file '", p,
                    "' (and no earlier step writes it)");
    }
  }
  const std::vector<JobRun> runs = file.runs();
  for (const JobRun& r : runs) {
    const Job& j = *r.job;
    const std::string who = "job '" + j.name + "'";
    MECHLAB_CHECK(fs::exists(j.model), who, ": field 'model': no file or folder '", j.model, "'");
    MECHLAB_CHECK(j.reference_edges.empty() || fs::is_regular_file(j.reference_edges), who,
                  ": field 'reference_edges': no file '", j.reference_edges,
                  "'; give a file of edge names (one a line) or a circuit.json");
    MECHLAB_CHECK(fs::exists(j.dataset) || produced(j.dataset), who, ": field 'dataset': no file '", j.dataset,
                  "' (and no step writes it)");
    std::vector<std::pair<const char*, const std::string*>> inputs = {{"model", &j.model}, {"dataset", &j.dataset}};
    if (!j.reference_edges.empty()) inputs.emplace_back("reference_edges", &j.reference_edges);
    for (const auto& [field, in] : inputs) {
      MECHLAB_CHECK(!same_path(r.out, *in), who, ": field 'out' is '", r.out, "', which is the job's ", field,
                    "; an output must not be an input");
      for (const char* f : {"circuit.json", "circuit.h5", "circuit.dot", "circuit.svg", "journal.jsonl"}) {
        MECHLAB_CHECK(!same_path((fs::path(r.out) / f).string(), *in), who, ": field 'out': '", r.out, "/", f,
                      "' would overwrite the job's ", field, "; choose another output folder",
                      in == &j.reference_edges ? " or copy the reference elsewhere" : "");
      }
    }
    MECHLAB_CHECK(!fs::exists(r.out) || fs::is_directory(r.out), who, ": field 'out': '", r.out,
                  "' is a file, not a folder");
    for (const Step& s : file.steps) {
      MECHLAB_CHECK(!same_path(s.out, r.out), who, ": field 'out' is '", r.out, "', which ", s.label,
                    " writes; choose another output folder");
    }
    for (const JobRun& o : runs) {
      if (&o == &r || o.job == r.job) continue;
      MECHLAB_CHECK(!same_path(o.out, r.out), who, ": field 'out' is '", r.out, "', also the output of job '",
                    o.job->name, "'; give each job its own folder");
    }
  }
  return file;
}

JobFile parse_job_file(const std::string& path) {
  const std::string dir = fs::path(path).parent_path().string();
  return parse_job_document(read_job_document(path), path, dir.empty() ? "." : dir);
}

std::string input_key(const Job& job) { return job.dataset + "\n" + std::to_string(job.examples); }

namespace {
// fnv1a over each tensor's bytes (contiguous), then over the list of those.
std::string tensors_hash(const std::vector<at::Tensor>& tensors) {
  std::string parts;
  for (const at::Tensor& t : tensors) {
    if (!t.defined()) {
      parts += "-";
      continue;
    }
    const at::Tensor c = t.contiguous();
    parts += core::fnv1a_hex(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  }
  return core::fnv1a_hex(parts);
}
}  // namespace

InputFacts check_job_inputs(const JobFile& file, bool skip_missing, const InputFacts& known) {
  InputFacts out = known;
  std::map<std::string, ModelFacts>& models = out.models;
  for (const Job& j : file.jobs) {
    const std::string who = "job '" + j.name + "'";
    if (!models.count(j.model)) {
      try {
        const core::Transformer m = core::load_model(j.model);
        std::vector<at::Tensor> weights;
        for (const auto& [name, w] : m.named_parameters()) weights.push_back(w);
        models[j.model] = {m.config(), tensors_hash(weights)};
      } catch (const Error& e) {
        throw Error(str_cat(who, ": field 'model': ", e.what()));
      }
    }
    if ((skip_missing && !fs::exists(j.dataset)) || known.data_hash.count(input_key(j))) continue;
    const ModelFacts& facts = models[j.model];
    patching::PatchingData data;
    int64_t pairs = 0;
    try {
      const core::Dataset ds = core::load_dataset(j.dataset);
      pairs = ds.clean_tokens.defined() ? ds.clean_tokens.size(0) : 0;
      data = patching::PatchingData::from_dataset(ds, j.examples);
    } catch (const Error& e) {
      throw Error(str_cat(who, ": field 'dataset': ", e.what()));
    }
    MECHLAB_CHECK(j.examples <= pairs, who, ": field 'examples' is ", j.examples, " but '", j.dataset, "' has ",
                  pairs, " prompt pairs; give at most ", pairs, " (0 = all)");
    int64_t max_id = -1;
    for (const at::Tensor* t : {&data.clean_tokens, &data.corrupted_tokens, &data.answer_tokens, &data.wrong_tokens}) {
      if (t->defined() && t->numel() > 0) max_id = std::max(max_id, t->max().item<int64_t>());
    }
    MECHLAB_CHECK(max_id < facts.config.d_vocab, who, ": field 'dataset': '", j.dataset, "' has token id ", max_id,
                  " but the model '", j.model, "' has d_vocab ", facts.config.d_vocab,
                  "; make the dataset with this model's vocabulary");
    if (j.split_positions) {
      try {
        data.check_same_padding("field 'split_positions'");
      } catch (const Error& e) {
        throw Error(str_cat(who, ": ", e.what(), " (dataset '", j.dataset, "')"));
      }
    }
    out.data_hash[input_key(j)] =
        tensors_hash({data.clean_tokens, data.corrupted_tokens, data.attention_mask, data.answer_tokens,
                      data.wrong_tokens, data.answer_pos});
  }
  return out;
}

}  // namespace mechlab::jobs
