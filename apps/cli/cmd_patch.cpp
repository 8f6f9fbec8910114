// mechlab patch: activation-patching sweeps over a clean/corrupted dataset,
// with TransformerLens's semantics, run in bulk. Writes one HDF5 file with a
// group per sweep and direction, and one SVG heatmap per result.
#include "apps/cli/commands.h"
#include "core/text_file.h"
#include "core/dataset.h"
#include "core/error.h"
#include "core/word_tokenizer.h"
#include "hooks/hooked_transformer.h"
#include "patching/heatmap.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/sweep_file.h"
#include "patching/sweeps.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
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
  return s;
}

}  // namespace

void add_patch_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "patch",
      "Activation patching sweeps (TransformerLens `patching` semantics), run in bulk.\n"
      "Denoising runs the corrupted prompts and patches in clean activations (TL's default);\n"
      "noising runs the clean prompts and patches in corrupted ones. Writes DIR/patching.h5\n"
      "(one group /<sweep>/<direction> with values, axis labels and the config as JSON) and\n"
      "DIR/<sweep>.<direction>.svg heatmaps (diverging colours centred on zero).\n"
      "The dataset needs /clean_tokens, /corrupted_tokens, /answer_tokens, /wrong_tokens\n"
      "(optional /answer_pos, /attention_mask): e.g. `mechlab dataset make ioi --out ioi.h5`.");
  struct Args {
    std::string model, dataset, out, direction = "denoising", metric = "logit_diff";
    std::string device = "cpu", dtype = "f32";
    std::vector<std::string> sweeps;
    int64_t examples = 0, memory_mb = 0, max_copies = 0;
    bool no_skip = false, no_svg = false, progress = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "mechlab checkpoint (.h5)")->required();
  cmd->add_option("dataset", a->dataset, "Patching dataset (.h5) with clean/corrupted pairs")
      ->required();
  cmd->add_option("--sweep", a->sweeps, sweep_help())->required()->delimiter(',');
  cmd->add_option("--out", a->out, "Output folder (created if missing)")->required();
  cmd->add_option("--direction", a->direction,
                  "denoising (run corrupted, patch in clean), noising (run clean, patch in "
                  "corrupted) or both")
      ->capture_default_str();
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
  cmd->add_flag("--progress", a->progress, "Show a progress bar (rate and ETA) on stderr");

  cmd->callback([a] {
    const auto t0 = std::chrono::steady_clock::now();
    const at::Device device = parse_device(a->device);
    core::Transformer base = core::Transformer::load(a->model);
    base.to(device).to(parse_dtype(a->dtype));
    hooks::HookedTransformer model(std::move(base));
    const core::Dataset ds = core::load_dataset(a->dataset);
    const PatchingData data = PatchingData::from_dataset(ds, a->examples);
    data.validate(model.cfg());
    for (const auto& s : a->sweeps) find_sweep(s);  // unknown names fail before any work

    std::vector<Direction> directions;
    if (a->direction == "both") {
      directions = {Direction::denoising, Direction::noising};
    } else {
      directions = {parse_direction(a->direction)};
    }
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

    std::vector<SweepResult> all;
    for (Direction dir : directions) {
      opts.direction = dir;
      const Metric metric = make_metric(a->metric, model, data, dir);
      auto results = run_sweeps(model, data, a->sweeps, metric, opts);
      for (auto& r : results) all.push_back(std::move(r));
    }
    const std::string h5 = (std::filesystem::path(a->out) / "patching.h5").string();
    write_sweep_file(h5, all);

    std::printf("model %s, %lld prompt pairs x %lld tokens, metric %s\n", model.cfg().name.c_str(),
                static_cast<long long>(data.batch()), static_cast<long long>(data.seq_len()),
                a->metric.c_str());
    for (const auto& r : all) {
      const std::string dir = r.config["direction"].get<std::string>();
      std::printf("%-32s %-9s shape %-16s clean %.4f corrupted %.4f  range [%.4f, %.4f]  "
                  "(%lld configs, %lld no-ops skipped, %lld forwards)\n",
                  r.sweep.c_str(), dir.c_str(), c10::str(r.values.sizes()).c_str(),
                  r.config["clean_metric"].get<double>(), r.config["corrupted_metric"].get<double>(),
                  r.values.min().item<double>(), r.values.max().item<double>(),
                  static_cast<long long>(r.config["bulk"]["configs"].get<int64_t>()),
                  static_cast<long long>(r.config["bulk"]["skipped_noop"].get<int64_t>()),
                  static_cast<long long>(r.config["bulk"]["forwards"].get<int64_t>()));
      if (!a->no_svg) {
        const std::string svg =
            (std::filesystem::path(a->out) / (r.sweep + "." + dir + ".svg")).string();
        core::write_text_file(svg, heatmap_svg(r, model.cfg().name + " on " + ds.task + ": " + r.sweep));
      }
    }
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("wrote %s%s in %.1f s\n", h5.c_str(), a->no_svg ? "" : " and the SVG heatmaps", s);
  });
}

}  // namespace mechlab::cli
