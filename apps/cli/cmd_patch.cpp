// mechlab patch: activation-patching sweeps over a clean/corrupted dataset,
// with TransformerLens's semantics, run in bulk. Writes one HDF5 file with a
// group per sweep and direction, and one SVG heatmap per result.
#include "apps/cli/commands.h"
#include "core/formats/output_file.h"
#include "core/formats/text_file.h"
#include "core/data/dataset.h"
#include "core/util/error.h"
#include "core/hf/model_loader.h"
#include "core/data/tokenizer/word_tokenizer.h"
#include "hooks/hooked_transformer.h"
#include "patching/attribution.h"
#include "patching/circuit_graph.h"
#include "patching/edge_attribution.h"
#include "patching/heatmap.h"
#include "patching/metrics.h"
#include "patching/path_patching.h"
#include "patching/patching_data.h"
#include "patching/sweep_file.h"
#include "patching/sweeps.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

namespace mechlab::cli {

namespace {

using namespace mechlab::patching;

// "p: word" for each position of the first clean prompt; "p: clean/corrupted"
// where its corrupted prompt differs. Raw-id datasets show the ids.
std::vector<std::string> position_labels(const core::Dataset& ds, const PatchingData& data) {
  std::vector<std::string> out;
  std::optional<core::WordTokenizer> tok;
  if (!ds.tokenizer.empty()) {
    try {
      tok = core::WordTokenizer::from_json_string(ds.tokenizer);
    } catch (const std::exception&) {
      tok.reset();  // another tokenizer kind: fall back to ids
    }
  }
  auto word = [&](int64_t id) {
    return tok && id >= 0 && id < tok->size() ? tok->word(id) : std::to_string(id);
  };
  for (int64_t p = 0; p < data.seq_len(); ++p) {
    const int64_t c = data.clean_tokens[0][p].item<int64_t>();
    const int64_t x = data.corrupted_tokens[0][p].item<int64_t>();
    out.push_back(std::to_string(p) + ": " + word(c) + (c != x ? "/" + word(x) : ""));
  }
  return out;
}

Metric make_metric(const std::string& name, hooks::HookedTransformer& model, const PatchingData& data,
                   Direction direction) {
  const AnswerSpec a = data.answers();
  if (name == "logit_diff") return logit_diff(a);
  if (name == "answer_prob") return answer_prob(a);
  at::NoGradGuard no_grad;
  hooks::RunOptions ro;
  ro.attention_mask = data.attention_mask;
  if (name == "normalised_logit_diff" || name == "kl_to_clean") {
    at::Tensor clean = model.forward(data.clean_tokens, ro);  // [batch, pos, d_vocab]
    if (name == "kl_to_clean") return kl_to_clean(a, clean);
    at::Tensor corrupted = model.forward(data.corrupted_tokens, ro);
    const Metric ld = logit_diff(a);
    return normalised_logit_diff(a, ld(clean).item<double>(), ld(corrupted).item<double>());
  }
  if (name == "cross_entropy") {
    // The loss of the patched run's own input.
    return cross_entropy(direction == Direction::denoising ? data.corrupted_tokens : data.clean_tokens,
                         data.attention_mask);
  }
  throw Error(str_cat("unknown metric \"", name, "\"; metrics: ", metric_names()));
}

std::string sweep_help() {
  std::string s = "Sweep to run (repeatable, or comma-separated). One of:\n";
  for (const auto& spec : sweep_specs()) {
    s += "  " + spec.name + " [" ;
    for (size_t i = 0; i < spec.axes.size(); ++i) s += (i ? ", " : "") + spec.axes[i];
    s += "]: " + spec.description + "\n";
  }
  s += "  path:RECEIVERS [layer, head]: path patching from every single head to the receiver\n"
       "    inputs RECEIVERS joined by '+', e.g. 'path:a1.h0<q>+a1.h1<q>' (--method patching only)\n"
       "With --method attribution or eap-ig the node sweeps above are estimated by gradients\n"
       "(values: estimated metric change, same shapes).";
  return s;
}

// A file-name-safe form of a result name ("path:a1.h0<q>" -> "path_a1.h0_q_").
std::string file_stem(const std::string& name) {
  std::string out;
  for (char c : name) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-') ? c : '_';
  return out;
}

std::vector<Direction> directions_of(const std::string& text, Direction fallback) {
  if (text.empty()) return {fallback};
  if (text == "both") return {Direction::denoising, Direction::noising};
  return {parse_direction(text)};
}

}  // namespace

void add_patch_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "patch",
      "Activation patching sweeps (TransformerLens `patching` semantics), run in bulk; path\n"
      "patching (--path, --sweep path:RECEIVERS); attribution patching and EAP-IG of node sweeps\n"
      "and of every circuit-graph edge (--method attribution|eap-ig [--steps m] [--edges]).\n"
      "Denoising runs the corrupted prompts and patches in clean activations (TL's default);\n"
      "noising runs the clean prompts and patches in corrupted ones. Writes DIR/patching.h5\n"
      "(one group /<sweep>/<direction> with values, axis labels and the config as JSON) and\n"
      "DIR/<sweep>.<direction>.svg heatmaps (diverging colours centred on zero).\n"
      "The dataset needs /clean_tokens, /corrupted_tokens, /answer_tokens, /wrong_tokens\n"
      "(optional /answer_pos, /attention_mask): e.g. `mechlab dataset make ioi --out ioi.h5`.");
  struct Args {
    std::string model, dataset, out, direction, metric = "logit_diff";
    std::string device = "cpu", dtype = "f32", method = "patching";
    std::vector<std::string> sweeps, paths;
    int64_t examples = 0, memory_mb = 0, max_copies = 0, top = 20;
    int steps = 5;
    bool no_skip = false, no_svg = false, progress = false, edges = false, overwrite = false;
    ProcessFlags process;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "mechlab checkpoint (.h5) or Hugging Face folder")->required();
  cmd->add_option("dataset", a->dataset, "Patching dataset (.h5) with clean/corrupted pairs")
      ->required();
  cmd->add_option("--sweep", a->sweeps, sweep_help())->delimiter(',');
  cmd->add_option("--out", a->out, "Output folder (created if missing)")->required();
  cmd->add_option("--direction", a->direction,
                  "denoising (run corrupted, patch in clean), noising (run clean, patch in "
                  "corrupted) or both. Default: denoising for activation patching (TL's default), "
                  "noising for path patching and attribution (Wang et al.; Syed et al.: base = "
                  "clean, values from corrupted)");
  cmd->add_option("--method", a->method,
                  "patching: exact activation/path patching; attribution: gradient x (source - "
                  "base) from one base forward+backward and one source forward (Nanda; Syed et "
                  "al.); eap-ig: gradients averaged over --steps interpolated input embeddings "
                  "(Hanna et al. 2024). Attribution values are estimated metric changes")
      ->capture_default_str();
  cmd->add_option("--steps", a->steps, "EAP-IG interpolation steps m (--method eap-ig)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--edges", a->edges,
                "Score every edge of the circuit graph (--method attribution or eap-ig): writes "
                "group /edges:<method>/<direction> ([sender, receiver], NaN = no edge) to "
                "DIR/patching.h5 and the top edges to DIR/edges.<method>.<direction>.json. Edges "
                "are named \"SENDER -> RECEIVER\", e.g. \"a0.h3 -> a1.h2<q>\", \"input -> m0\", "
                "\"m1 -> output\"");
  cmd->add_option("--top", a->top, "Edges printed and written to the JSON, largest |score| first "
                  "(0 = all)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--path", a->paths,
                  "Path patching of one sender set to one receiver set (repeatable): "
                  "'SENDERS -> RECEIVERS', nodes joined by '+', e.g. 'a0.h1+m0 -> a1.h2<q>+output'. "
                  "Senders: input, a{L}.h{H}, m{L}; receivers: a{L}.h{H}<q|k|v>, m{L}, output. "
                  "Every other head and MLP is frozen at its base value. Values go to DIR/paths.json");
  cmd->add_option("--metric", a->metric,
                  std::string("Metric of the patched run: ") + metric_names() +
                      ". logit_diff = mean over prompts of logit(answer) - logit(wrong) at the "
                      "answer position; normalised_logit_diff: 0 = corrupted, 1 = clean; "
                      "kl_to_clean: KL(clean || patched) at the answer position; cross_entropy: "
                      "next-token loss of the run's own prompts")
      ->capture_default_str();
  cmd->add_option("--examples", a->examples,
                  "Use the first N prompt pairs (0 = all). Every patched forward runs all of them")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", a->device, "Where the model runs: cpu, cuda, cuda:N or auto")
      ->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "Model dtype: f32, bf16 or f16 (TL comparisons use f32)")
      ->capture_default_str();
  cmd->add_option("--memory-budget-mb", a->memory_mb,
                  "Working memory for the patch configurations stacked into one forward, in MiB "
                  "(0 = automatic: half the GPU's free memory, or 1 GiB on the CPU)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-copies", a->max_copies,
                  "At most this many patch configurations per forward (0 = the budget decides)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-skip-identical", a->no_skip,
                "Run every configuration, even those whose patch provably changes nothing "
                "(the patched slice already equals the value patched in, bit for bit); by default "
                "they get the unpatched metric without a forward");
  cmd->add_flag("--no-svg", a->no_svg, "Do not write heatmaps");
  cmd->add_flag("--overwrite", a->overwrite,
                "Replace the results (patching.h5, heatmaps, JSON) already in --out");
  cmd->add_flag("--progress", a->progress, "Show a progress bar (rate and ETA) on stderr");
  add_process_flags(cmd, a->process);
  add_threads_option(cmd);

  cmd->callback([a] {
    handle_interrupts(false, "mechlab: interrupted; patch writes its results whole at the end, "
                             "so no output file was written or changed; run it again\n");
    const auto t0 = std::chrono::steady_clock::now();
    const at::Device device = parse_device(a->device);
    core::Transformer base = core::load_model(a->model, {parse_dtype(a->dtype), a->process.options()});
    base.to(device);
    hooks::HookedTransformer model(std::move(base));
    const core::Dataset ds = core::load_dataset(a->dataset);
    const PatchingData data = PatchingData::from_dataset(ds, a->examples);
    data.validate(model.cfg());
    const bool patching = a->method == "patching";
    const AttributionMethod method = patching ? AttributionMethod::attribution : parse_method(a->method);
    MECHLAB_CHECK(!a->sweeps.empty() || !a->paths.empty() || a->edges,
                  "nothing to do: give --sweep NAME, --path 'SENDERS -> RECEIVERS' or --edges");
    MECHLAB_CHECK(!a->edges || !patching, "--edges scores edges by attribution: add --method "
                  "attribution or --method eap-ig");
    MECHLAB_CHECK(a->paths.empty() || patching, "--path is exact path patching; drop --method ",
                  a->method);
    // Unknown names fail before any work.
    const CircuitGraph graph(model.cfg());
    std::vector<std::string> node_sweeps, path_sweeps;
    for (const auto& s : a->sweeps) {
      if (s.rfind("path:", 0) == 0) {
        MECHLAB_CHECK(patching, "sweep ", s, " is path patching, which has no attribution form "
                      "here; use --method patching (or --edges for edge attribution)");
        graph.parse_receivers(s.substr(5));
        path_sweeps.push_back(s.substr(5));
      } else {
        find_sweep(s);
        node_sweeps.push_back(s);
      }
    }
    for (const auto& p : a->paths) {
      const size_t arrow = p.find("->");
      MECHLAB_CHECK(arrow != std::string::npos, "--path \"", p, "\" must be 'SENDERS -> RECEIVERS', "
                    "e.g. 'a0.h1+m0 -> a1.h2<q>'");
      graph.parse_senders(p.substr(0, arrow));
      graph.parse_receivers(p.substr(arrow + 2));
    }
    // Checked before the (long) run: replacing patching.h5 would leave the
    // heatmaps beside it describing data that is gone.
    const std::string h5 = (std::filesystem::path(a->out) / "patching.h5").string();
    core::require_replaceable(h5, "patching", a->overwrite);
    core::require_not_same_file(h5, "--out", a->model, "the model");
    core::require_not_same_file(h5, "--out", a->dataset, "the dataset");
    std::filesystem::create_directories(a->out);

    SweepOptions opts;
    opts.bulk.memory_budget_bytes = a->memory_mb * (int64_t(1) << 20);
    opts.bulk.max_copies = a->max_copies;
    opts.bulk.skip_identical = !a->no_skip;
    opts.bulk.show_progress = a->progress;
    opts.position_labels = position_labels(ds, data);
    opts.extra_config = {{"model_path", a->model}, {"dataset_path", a->dataset},
                         {"dataset_task", ds.task}, {"device", c10::str(device)},
                         {"dtype", a->dtype}};

    std::printf("model %s, %lld prompt pairs x %lld tokens, metric %s, method %s\n",
                model.cfg().name.c_str(), static_cast<long long>(data.batch()),
                static_cast<long long>(data.seq_len()), a->metric.c_str(), a->method.c_str());
    const Direction fallback = patching && !node_sweeps.empty() ? Direction::denoising : Direction::noising;
    std::vector<SweepResult> all;
    nlohmann::json paths_json = nlohmann::json::array();
    // Text outputs (path, contents), written with patching.h5 at the end.
    std::vector<std::pair<std::string, std::string>> texts;
    AttributionOptions aopts;
    aopts.method = method;
    aopts.steps = a->steps;
    aopts.position_labels = opts.position_labels;
    aopts.extra_config = opts.extra_config;
    PathPatchOptions popts;
    popts.bulk = opts.bulk;
    popts.position_labels = opts.position_labels;
    popts.extra_config = opts.extra_config;
    // Activation-patching sweeps keep TL's default (denoising); the rest default to noising.
    for (Direction dir : directions_of(a->direction, fallback)) {
      const Metric metric = make_metric(a->metric, model, data, dir);
      if (!node_sweeps.empty() && patching) {
        opts.direction = dir;
        for (auto& r : run_sweeps(model, data, node_sweeps, metric, opts)) all.push_back(std::move(r));
      }
      if (!node_sweeps.empty() && !patching) {
        aopts.direction = dir;
        for (auto& r : attribution_sweeps(model, data, node_sweeps, metric, aopts)) all.push_back(std::move(r));
      }
    }
    for (Direction dir : directions_of(a->direction, Direction::noising)) {
      const Metric metric = make_metric(a->metric, model, data, dir);
      popts.direction = dir;
      aopts.direction = dir;
      for (const auto& rec : path_sweeps) {
        all.push_back(path_patch_sweep(model, data, graph.parse_receivers(rec), metric, popts));
      }
      for (const auto& p : a->paths) {
        const size_t arrow = p.find("->");
        const PathPatchResult r = path_patch(model, data, graph.parse_senders(p.substr(0, arrow)),
                                             graph.parse_receivers(p.substr(arrow + 2)), metric, popts);
        std::printf("path %-40s %-9s %.6f  (base %.6f, source %.6f, change %+.6f)\n", p.c_str(),
                    direction_name(dir), r.value, r.base_metric, r.source_metric,
                    r.value - r.base_metric);
        paths_json.push_back({{"path", p}, {"direction", direction_name(dir)}, {"metric", metric.name()},
                              {"value", r.value}, {"base_metric", r.base_metric},
                              {"source_metric", r.source_metric}});
      }
      if (a->edges) {
        const EdgeScores e = edge_attribution(model, data, metric, aopts);
        const std::string json = (std::filesystem::path(a->out) /
                                  (std::string("edges.") + method_name(method) + "." +
                                   direction_name(dir) + ".json")).string();
        texts.emplace_back(json, e.to_json(a->top).dump(2) + "\n");
        std::printf("edges:%s %s: %lld edges (%lld forwards, %lld backwards), top %lld by |score| "
                    "(estimated metric change; base %.4f, source %.4f):\n",
                    method_name(method), direction_name(dir),
                    static_cast<long long>(e.config["n_edges"].get<int64_t>()),
                    static_cast<long long>(e.config["forwards"].get<int64_t>()),
                    static_cast<long long>(e.config["backwards"].get<int64_t>()),
                    static_cast<long long>(a->top), e.config["base_metric"].get<double>(),
                    e.config["source_metric"].get<double>());
        for (const auto& [edge, score] : e.top(a->top)) {
          std::printf("  %-28s %+.6f\n", edge_name(edge).c_str(), score);
        }
        all.push_back(e.as_result());
      }
    }
    if (!paths_json.empty()) {
      texts.emplace_back((std::filesystem::path(a->out) / "paths.json").string(),
                         paths_json.dump(2) + "\n");
    }

    for (const auto& r : all) {
      const std::string dir = r.config["direction"].get<std::string>();
      if (r.sweep.rfind("edges:", 0) == 0) continue;  // printed above; no heatmap of a graph
      std::printf("%-32s %-9s shape %-16s clean %.4f corrupted %.4f  range [%.4f, %.4f]",
                  r.sweep.c_str(), dir.c_str(), c10::str(r.values.sizes()).c_str(),
                  r.config["clean_metric"].get<double>(), r.config["corrupted_metric"].get<double>(),
                  r.values.min().item<double>(), r.values.max().item<double>());
      if (r.config.contains("bulk")) {
        std::printf("  (%lld configs, %lld no-ops skipped, %lld forwards)\n",
                    static_cast<long long>(r.config["bulk"]["configs"].get<int64_t>()),
                    static_cast<long long>(r.config["bulk"]["skipped_noop"].get<int64_t>()),
                    static_cast<long long>(r.config["bulk"]["forwards"].get<int64_t>()));
      } else {
        std::printf("  (%lld forwards, %lld backwards)\n",
                    static_cast<long long>(r.config["forwards"].get<int64_t>()),
                    static_cast<long long>(r.config["backwards"].get<int64_t>()));
      }
      if (!a->no_svg) {
        const std::string svg =
            (std::filesystem::path(a->out) / (file_stem(r.sweep) + "." + dir + ".svg")).string();
        texts.emplace_back(svg, heatmap_svg(r, model.cfg().name + " on " + ds.task + ": " + r.sweep));
      }
    }
    // All results or none: every file is first written whole beside its
    // target (FILE.new.tmp), and only then are they renamed in, so a failure
    // (a full disk) leaves the previous results as they were, never a new
    // patching.h5 beside old heatmaps.
    std::vector<std::pair<std::string, std::string>> staged;  // (temporary, target)
    try {
      for (const auto& [path, text] : texts) {
        core::write_text_file(path + ".new.tmp", text);
        staged.emplace_back(path + ".new.tmp", path);
      }
      write_sweep_file(h5 + ".new.tmp", all);
      staged.emplace_back(h5 + ".new.tmp", h5);
    } catch (...) {
      for (const auto& st : staged) std::remove(st.first.c_str());
      throw;
    }
    for (const auto& [tmp, target] : staged) {
      MECHLAB_CHECK(std::rename(tmp.c_str(), target.c_str()) == 0, "cannot write '", target,
                    "': renaming '", tmp, "' onto it failed: ", std::strerror(errno));
    }
    for (const auto& t : texts) {
      if (t.first.size() > 5 && t.first.compare(t.first.size() - 5, 5, ".json") == 0) {
        std::printf("wrote %s\n", t.first.c_str());
      }
    }
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("wrote %s%s in %.1f s\n", h5.c_str(), a->no_svg ? "" : " and the SVG heatmaps", s);
  });
}

}  // namespace mechlab::cli
