// mechlab: command-line entry point. Catches mechlab::Error (and LibTorch's
// c10::Error) at the top so users see one clear line, never a backtrace.
#include "apps/cli/commands.h"
#include "core/util/error.h"

#include <c10/util/Exception.h>
#include "core/log/log.h"

#include <iostream>

int main(int argc, char** argv) {
  CLI::App app{
      "mechlab: a GPU mechanistic-interpretability workbench.\n"
      "Models are mechlab HDF5 checkpoints (create one with `mechlab new`).\n"
      "Run `mechlab COMMAND --help` for each command's options."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mechlab 0.1.0");
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Debug logging");
  app.parse_complete_callback([&verbose] {
    if (verbose) mechlab::log::set_level(mechlab::log::Level::debug);
  });
  mechlab::cli::add_info_command(app);
  mechlab::cli::add_run_command(app);
  mechlab::cli::add_new_command(app);
  mechlab::cli::add_bench_command(app);
  mechlab::cli::add_dataset_command(app);
  mechlab::cli::add_cache_command(app);
  mechlab::cli::add_store_command(app);
  mechlab::cli::add_tokenize_command(app);
  mechlab::cli::add_patch_command(app);
  mechlab::cli::add_train_command(app);
  mechlab::cli::add_heads_command(app);
  mechlab::cli::add_generate_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const mechlab::Error& e) {
    std::cerr << "mechlab: error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "mechlab: error from LibTorch: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "mechlab: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
