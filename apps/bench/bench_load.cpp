// mechlab bench load: how long loading a Hugging Face model folder takes,
// against transformers' from_pretrained measured in the same run by
// scripts/bench/load_vs_transformers.py (which makes a 124M-parameter GPT-2
// folder outside the checkout, times from_pretrained, then runs this command
// with --transformers-ms).
//   load_model            core::load_model: parse, map, convert to
//                         TransformerLens layout; unchanged tensors stay
//                         memory-mapped, so their pages are not read yet
//   load + touch weights  the same, then one read per 4 KiB page of every
//                         parameter, so every weight is resident: the state
//                         from_pretrained leaves its model in (the fair row)
//   transformers          from_pretrained(folder) on the CPU, float32
// Page cache warm for both (warm-up runs first); ratios < 1 mean mechlab is faster.
#include "apps/bench/bench_util.h"
#include "apps/cli/commands.h"
#include "core/util/error.h"
#include "core/hf/model_loader.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <memory>

namespace mechlab::cli {
namespace {

/// Reads one byte per page of every parameter; returns their sum so the
/// reads cannot be optimised away.
uint64_t touch_weights(const core::Transformer& model) {
  uint64_t sum = 0;
  for (const auto& [name, t] : model.named_parameters()) {
    const auto* bytes = static_cast<const volatile uint8_t*>(t.data_ptr());
    const size_t n = t.numel() * t.element_size();
    for (size_t i = 0; i < n; i += 4096) sum += bytes[i];
  }
  return sum;
}

}  // namespace

void add_bench_load(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "load",
      "Time core::load_model on a Hugging Face folder (bare, and with every weight paged in). "
      "scripts/bench/load_vs_transformers.py makes a 124M GPT-2 folder and passes "
      "transformers' from_pretrained time for the ratio.");
  struct Args {
    std::string folder, dtype = "f32";
    int repeats = 5, warmup = 1;
    double transformers_ms = 0;
    std::vector<double> transformers_iqr;
    int transformers_runs = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("folder", a->folder, "Hugging Face model folder (or mechlab checkpoint)")->required();
  cmd->add_option("--dtype", a->dtype, "f32, bf16 or f16")->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "Timed runs (median reported)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--warmup", a->warmup, "Untimed runs first (warm the page cache)")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--transformers-ms", a->transformers_ms,
                  "Median from_pretrained time measured by the driver script, the baseline row");
  cmd->add_option("--transformers-iqr", a->transformers_iqr,
                  "Its interquartile range: Q1,Q3 in ms (as the driver measured them)")
      ->delimiter(',')
      ->expected(2);
  cmd->add_option("--transformers-runs", a->transformers_runs,
                  "How many runs that median is of (required with --transformers-ms)")
      ->check(non_negative());
  cmd->callback([a] {
    // Every figure in the table is a median of stated runs, the baseline too.
    MECHLAB_CHECK(a->transformers_ms <= 0 || (a->transformers_runs > 0 && a->transformers_iqr.size() == 2),
                  "--transformers-ms needs --transformers-runs N and --transformers-iqr Q1,Q3: the "
                  "table states each median's runs and spread");
    const auto options = core::LoadOptions().dtype(parse_dtype(a->dtype));
    int64_t params = 0;
    const bench::Stats load_ms = bench::time_ms(
        [&] {
          core::Transformer m = core::load_model(a->folder, options);
          params = m.config().parameter_count();
        },
        a->warmup, a->repeats, at::kCPU);
    uint64_t sink = 0;
    const bench::Stats touch_ms = bench::time_ms(
        [&] { sink += touch_weights(core::load_model(a->folder, options)); }, a->warmup,
        a->repeats, at::kCPU);

    std::vector<bench::Row> rows = {
        {"mechlab load_model", load_ms, "mmap, pages read lazily"},
        {"mechlab load + touch weights", touch_ms, "every page resident"},
    };
    std::string baseline = "mechlab load + touch weights";
    if (a->transformers_ms > 0) {
      bench::Stats hf;
      hf.n = a->transformers_runs;
      hf.median = a->transformers_ms;
      hf.q1 = a->transformers_iqr[0];
      hf.q3 = a->transformers_iqr[1];
      rows.push_back({"transformers from_pretrained", hf, "same folder, same run"});
      baseline = "transformers from_pretrained";
    }
    std::printf("model %s: %lld parameters, %s (checksum %llu)\n", a->folder.c_str(),
                static_cast<long long>(params), a->dtype.c_str(),
                static_cast<unsigned long long>(sink % 997));
    bench::print_table("load (CPU, page cache warm)", rows, baseline, params / 1e6, "Mparam");
    if (a->transformers_ms > 0) {
      std::printf("speed-up over transformers (from_pretrained / load + touch): %.2fx (goal >= 1)\n",
                  a->transformers_ms / touch_ms.median);
    }
  });
}

}  // namespace mechlab::cli
