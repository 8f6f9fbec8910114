// mechlab: command-line entry point. Catches mechlab::Error (and LibTorch's
// c10::Error) at the top so users see one clear line, never a backtrace.
#include "apps/cli/commands.h"
#include "core/util/allocator.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "core/util/mkl_dispatch.h"
#include "core/util/parallel.h"
#include "core/util/version.h"

#include <c10/util/Exception.h>
#include "core/log/log.h"

#include <ATen/Parallel.h>

#include <iostream>
#include <new>
#include <string>

// `mechlab --version`: the version and the facts a bug report needs about
// how this build computes on this machine.
std::string version_text() {
  const std::string git = mechlab::git_describe();
  return std::string("mechlab ") + mechlab::version() + (git.empty() ? "" : " (git " + git + ")") +
         "\n" + at::get_parallel_info() + mechlab::mkl_dispatch_summary() + "\n" + mechlab::task_threads_summary();
}

int main(int argc, char** argv) {
  mechlab::tune_allocator();  // before the first tensor: reuse freed pages (core/util/allocator.h)
  CLI::App app{
      "mechlab: a GPU mechanistic-interpretability workbench.\n"
      "Models are mechlab HDF5 checkpoints (create one with `mechlab new`).\n"
      "Run `mechlab COMMAND --help` for each command's options."};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_text, "Print the version, LibTorch's threading and MKL's kernels, and exit");
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
  mechlab::cli::add_attach_tokenizer_command(app);
  mechlab::cli::add_discover_command(app);
  mechlab::cli::add_probe_command(app);
  mechlab::cli::add_sae_command(app);
  // Every failure is one line on stderr, escaped (a file name or token with
  // control bytes cannot garble the terminal).
  auto fail = [](const std::string& message, int code = 1) {
    std::cerr << "mechlab: " << mechlab::cli::printable(message) << "\n";
    return code;
  };
  const std::string unknown = mechlab::cli::unknown_command_message(app, argc, argv);
  if (!unknown.empty()) return fail("error: " + unknown, 2);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    return fail(std::string("error: ") + e.what() + " (see --help)", e.get_exit_code());
  } catch (const mechlab::Interrupted& e) {
    // Ctrl-C in a long job: what was kept and how to continue; 128 + SIGINT.
    return fail(mechlab::cli::with_flag_names(e.what()), 130);
  } catch (const mechlab::Error& e) {
    return fail("error: " + mechlab::cli::with_flag_names(e.what()));
  } catch (const c10::OutOfMemoryError& e) {
    return fail(std::string("error: out of memory: ") + e.what_without_backtrace() +
                "; use a smaller batch or model, or another device");
  } catch (const c10::Error& e) {
    // LibTorch's text can be several lines; the first is the message.
    std::string text = e.what_without_backtrace();
    text = text.substr(0, text.find('\n'));
    return fail("error from LibTorch: " + text);
  } catch (const std::bad_alloc&) {
    return fail("error: out of memory; use smaller sizes (fewer examples, rows or a smaller batch)");
  } catch (const std::exception& e) {
    return fail(std::string("error: ") + e.what());
  }
  return 0;
}
