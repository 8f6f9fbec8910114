// mechlab patch: flags -> a PatchPlan (patching/plan.h) -> run_patching ->
// print (baselines, ranges, the top effects, top edges) -> write
// (patching/plan_output.h). Every decision about what to run lives in the plan.
#include "apps/cli/commands.h"
#include "core/data/dataset.h"
#include "core/formats/output_file.h"
#include "core/hf/model_loader.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "hooks/hooked_transformer.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/plan.h"
#include "patching/plan_output.h"
#include "patching/sweeps.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

namespace mechlab::cli {

namespace {

using namespace mechlab::patching;

std::string sweep_help() {
  std::string s = "Sweep to run (repeatable, or comma-separated). One of:\n";
  for (const auto& spec : sweep_specs()) {
    s += "  " + spec.name + " [" ;
    for (size_t i = 0; i < spec.axes.size(); ++i) s += (i ? ", " : "") + spec.axes[i];
    s += "]: " + spec.description + "\n";
  }
  s += "  path:RECEIVERS [layer, head]: path patching from every single head to the receiver\n"
       "    inputs RECEIVERS joined by '+', e.g. 'path:a1.h0<q>+a1.h1<q>' (--method patching only)\n"
       "  point:HOOK [pos] / point_all_pos:HOOK [point]: one hook point by name, at each\n"
       "    position alone / at every position, e.g. 'point:blocks.1.hook_mlp_out' (--method\n"
       "    patching only; from C++ also the points of attached modules such as SAEs)\n"
       "With --method attribution or eap-ig the node sweeps above are estimated by gradients\n"
       "(values: estimated metric change, same shapes).";
  return s;
}

std::string metric_help() {
  std::string s = "Metric of the patched run:";
  for (const auto& m : metric_catalog()) s += std::string("\n  ") + m.name + ": " + m.description;
  return s;
}

std::vector<Direction> directions_of(const std::string& text) {
  if (text.empty()) return {};  // the plan's defaults
  if (text == "both") return {Direction::denoising, Direction::noising};
  return {parse_direction(text)};
}

// The k cells of largest effect with the baselines they are measured against.
void print_top_effects(const PatchResult& r, int64_t k) {
  const auto top = top_effects(r, k);
  if (top.empty()) return;
  std::printf("  top %zu by |%s| (%s: clean %.4f, corrupted %.4f, unpatched %.4f):\n", top.size(),
              r.values_are_changes ? "estimated change" : "change", r.metric.c_str(),
              r.stats.clean_metric, r.stats.corrupted_metric, r.stats.base_metric);
  for (const auto& e : top) {
    if (r.values_are_changes) {
      std::printf("    %-24s estimated change %+.4f", e.label.c_str(), e.change);
    } else {
      std::printf("    %-24s metric %9.4f  change %+.4f", e.label.c_str(), e.value, e.change);
    }
    if (!std::isnan(e.normalised)) std::printf("  normalised %.3f", e.normalised);
    std::printf("\n");
  }
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
      ->check(positive());
  cmd->add_flag("--edges", a->edges,
                "Score every edge of the circuit graph (--method attribution or eap-ig): writes "
                "group /edges:<method>/<direction> ([sender, receiver], NaN = no edge) to "
                "DIR/patching.h5 and the top edges to DIR/edges.<method>.<direction>.json. Edges "
                "are named \"SENDER -> RECEIVER\", e.g. \"a0.h3 -> a1.h2<q>\", \"input -> m0\", "
                "\"m1 -> output\"");
  cmd->add_option("--top", a->top, "Edges printed and written to the JSON, largest |score| first "
                  "(0 = all)")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--path", a->paths,
                  "Path patching of one sender set to one receiver set (repeatable): "
                  "'SENDERS -> RECEIVERS', nodes joined by '+', e.g. 'a0.h1+m0 -> a1.h2<q>+output'. "
                  "Senders: input, a{L}.h{H}, m{L}; receivers: a{L}.h{H}<q|k|v>, m{L}, output. "
                  "Every other head and MLP is frozen at its base value. Values go to DIR/paths.json");
  cmd->add_option("--metric", a->metric, metric_help())->capture_default_str();
  cmd->add_option("--examples", a->examples,
                  "Use the first N prompt pairs (0 = all). Every patched forward runs all of them")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--device", a->device, "Where the model runs: cpu, cuda, cuda:N or auto")
      ->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "Model dtype: f32, bf16 or f16 (TL comparisons use f32)")
      ->capture_default_str();
  cmd->add_option("--memory-budget-mb", a->memory_mb,
                  "Working memory for the patch configurations stacked into one forward, in MiB "
                  "(0 = automatic: half the GPU's free memory, or 1 GiB on the CPU)")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--max-copies", a->max_copies,
                  "At most this many patch configurations per forward (0 = the budget decides)")
      ->capture_default_str()
      ->check(non_negative());
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
    // Ctrl-C stops at a safe point (between batched forwards, between
    // results, before the staged files replace old ones): see run_patching.
    handle_interrupts(/*polled=*/true);
    const auto t0 = std::chrono::steady_clock::now();
    // The CLI's own words for what the plan would refuse, before any loading.
    MECHLAB_CHECK(!a->sweeps.empty() || !a->paths.empty() || a->edges,
                  "nothing to do: give --sweep NAME, --path 'SENDERS -> RECEIVERS' or --edges");
    const PatchMethod method = parse_patch_method(a->method);
    MECHLAB_CHECK(!a->edges || method != PatchMethod::activation, "--edges scores edges by "
                  "attribution: add --method attribution or --method eap-ig");
    MECHLAB_CHECK(a->paths.empty() || method == PatchMethod::activation,
                  "--path is exact path patching; drop --method ", a->method);
    // The budget is what the stacked forwards may take: more than this
    // machine has ends in bad_alloc mid-run. In double: MiB x 2^20 overflows.
    const double budget = static_cast<double>(a->memory_mb) * (1 << 20);
    require_memory(budget > 9e18 ? INT64_MAX : static_cast<int64_t>(budget),
                   str_cat("--memory-budget-mb ", a->memory_mb),
                   "the patch configurations stacked into one forward",
                   "lower --memory-budget-mb (0 = automatic)");
    const at::Device device = parse_device(a->device);
    core::Transformer base = core::load_model(
        a->model, core::LoadOptions().dtype(parse_dtype(a->dtype)).process(a->process.options()));
    base.to(device);
    hooks::HookedTransformer model(std::move(base));
    const core::Dataset ds = core::load_dataset(a->dataset);
    const PatchingData data = PatchingData::from_dataset(ds, a->examples);
    data.validate(model.cfg());
    {
      // One unpatched forward over every prompt pair (one copy, the least a
      // forward can stack): its logits and log-softmax [examples, pos, d_vocab]
      // in float32, its working activations, and the clean and corrupted
      // runs' cached residuals. Refused before the first forward, in double.
      const core::ModelConfig& c = model.cfg();
      const double tokens = static_cast<double>(data.batch()) * static_cast<double>(data.seq_len());
      const double elem = std::max(4.0, static_cast<double>(c10::elementSize(model.model().dtype())));
      const double per_token = static_cast<double>(c.d_vocab) * 4 * 2 +
                               (8.0 * c.d_model + 4.0 * c.n_heads * c.d_head + 3.0 * c.d_mlp) * elem +
                               2.0 * c.n_layers * c.d_model * elem;
      const double bytes = tokens * per_token;
      require_memory(bytes > 9e18 ? INT64_MAX : static_cast<int64_t>(bytes),
                     a->examples > 0 ? str_cat("--examples ", a->examples)
                                     : str_cat("the dataset (", data.batch(), " prompt pairs)"),
                     str_cat("one forward over ", data.batch(), " prompt pairs x ", data.seq_len(),
                             " positions (logits over ", c.d_vocab, " tokens)"),
                     "use fewer prompt pairs (--examples N)");
    }

    BulkOptions bulk;
    bulk.memory_budget_bytes(a->memory_mb * (int64_t(1) << 20));
    bulk.max_copies(a->max_copies);
    bulk.skip_identical(!a->no_skip);
    bulk.show_progress(a->progress);
    const PatchPlan plan = PatchPlan()
                               .sweeps(a->sweeps)
                               .paths(a->paths)
                               .edges(a->edges)
                               .method(method)
                               .steps(a->steps)
                               .directions(directions_of(a->direction))
                               .metric(MetricOptions().name(a->metric))
                               .bulk(bulk)
                               .position_labels(position_labels(ds, a->examples))
                               .model_id(a->model)
                               .dataset_id(a->dataset)
                               .dataset_task(ds.task);
    // Unknown names fail before any work.
    plan.check(model.cfg());
    // Checked before the (long) run: replacing patching.h5 would leave the
    // heatmaps beside it describing data that is gone.
    const std::string h5 = (std::filesystem::path(a->out) / "patching.h5").string();
    core::require_replaceable(h5, "patching", a->overwrite, "--overwrite");
    core::require_not_same_file(h5, "--out", a->model, "the model");
    core::require_not_same_file(h5, "--out", a->dataset, "the dataset");
    std::filesystem::create_directories(a->out);

    std::printf("model %s, %lld prompt pairs x %lld tokens, metric %s, method %s\n",
                model.cfg().name.c_str(), static_cast<long long>(data.batch()),
                static_cast<long long>(data.seq_len()), a->metric.c_str(), a->method.c_str());
    // Results are written whole at the end, so a stop keeps nothing new and
    // changes nothing old; the message says what was complete.
    const auto interrupted = [&](const Interrupted& e) {
      return Interrupted(str_cat(e.what(), "; nothing was written and the files in '", a->out,
                                 "' are as they were; run the same command again"));
    };
    std::vector<PatchResult> results;
    try {
      results = run_patching(model, data, plan);
    } catch (const Interrupted& e) {
      throw interrupted(e);
    }
    for (const auto& r : results) {
      const char* dir = direction_name(r.direction);
      if (r.kind == ResultKind::path) {
        const double value = r.values.item<double>();
        std::printf("path %-40s %-9s %.6f  (base %.6f, source %.6f, change %+.6f)\n",
                    r.name.c_str(), dir, value, r.stats.base_metric, r.stats.source_metric,
                    r.change(value));
      } else if (r.kind == ResultKind::edges) {
        const EdgeScores& e = *r.edge_scores;
        std::printf("edges:%s %s: %lld edges (%lld forwards, %lld backwards), top %lld by |score| "
                    "(estimated metric change; base %.4f, source %.4f):\n",
                    patch_method_name(r.method), dir,
                    static_cast<long long>(e.config["n_edges"].get<int64_t>()),
                    static_cast<long long>(e.config["forwards"].get<int64_t>()),
                    static_cast<long long>(e.config["backwards"].get<int64_t>()),
                    static_cast<long long>(a->top), r.stats.base_metric, r.stats.source_metric);
        for (const auto& [edge, score] : e.top(a->top)) {
          std::printf("  %-28s %+.6f\n", edge_name(edge).c_str(), score);
        }
      }
    }
    for (const auto& r : results) {
      if (r.kind != ResultKind::node_sweep && r.kind != ResultKind::path_sweep) continue;
      std::printf("%-32s %-9s shape %-16s clean %.4f corrupted %.4f  range [%.4f, %.4f]",
                  r.name.c_str(), direction_name(r.direction), c10::str(r.values.sizes()).c_str(),
                  r.stats.clean_metric, r.stats.corrupted_metric, r.values.min().item<double>(),
                  r.values.max().item<double>());
      if (r.method == PatchMethod::activation) {
        std::printf("  (%lld configs, %lld no-ops skipped, %lld forwards)\n",
                    static_cast<long long>(r.stats.configs),
                    static_cast<long long>(r.stats.skipped_noop),
                    static_cast<long long>(r.stats.forwards));
      } else {
        std::printf("  (%lld forwards, %lld backwards)\n", static_cast<long long>(r.stats.forwards),
                    static_cast<long long>(r.stats.backwards));
      }
      print_top_effects(r, 5);
    }
    WrittenFiles w;
    try {
      w = write_patching_results(a->out, results, OutputOptions().svg(!a->no_svg).top_edges(a->top));
    } catch (const Interrupted& e) {
      throw interrupted(e);
    }
    for (const auto& j : w.json) std::printf("wrote %s\n", j.c_str());
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("wrote %s%s in %.1f s\n", w.results_h5.c_str(), a->no_svg ? "" : " and the SVG heatmaps", s);
  });
}

}  // namespace mechlab::cli
