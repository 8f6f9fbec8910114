// mechlab bench: benchmark programs, each printing a table of ratios against a
// baseline measured in the same run. The bench programs live in apps/bench/.
#include "apps/cli/commands.h"

namespace mechlab::cli {

void add_bench_runtime(CLI::App& bench);
void add_bench_cache(CLI::App& bench);
void add_bench_tokenize(CLI::App& bench);
void add_bench_patch(CLI::App& bench);
void add_bench_load(CLI::App& bench);
void add_bench_train(CLI::App& bench);
void add_bench_acdc(CLI::App& bench);
void add_bench_sae(CLI::App& bench);
void add_bench_probe(CLI::App& bench);

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (each prints a table of ratios)");
  bench->require_subcommand(1);
  add_bench_runtime(*bench);
  add_bench_cache(*bench);
  add_bench_tokenize(*bench);
  add_bench_patch(*bench);
  add_bench_load(*bench);
  add_bench_train(*bench);
  add_bench_acdc(*bench);
  add_bench_sae(*bench);
  add_bench_probe(*bench);
  for (CLI::App* sub : bench->get_subcommands([](CLI::App*) { return true; })) {
    add_threads_option(sub, sub->get_name() == "acdc" ? kAcdcThreadsNote : "");
  }
}

}  // namespace mechlab::cli
