// mechlab store: look inside an activation store (core/store/activation_store.h).
#include "apps/cli/commands.h"
#include "core/store/activation_store.h"
#include "core/util/error.h"
#include "core/formats/hdf5_file.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <iostream>

namespace mechlab::cli {

void add_store_command(CLI::App& app) {
  auto* store = app.add_subcommand("store", "Activation stores written by `mechlab cache`");
  store->require_subcommand(1);
  auto* cmd = store->add_subcommand(
      "inspect", "Print a store's model, hooks, shapes, progress and per-hook statistics");
  struct Args {
    std::string path;
    bool check = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("store", a->path, "Activation store (.h5)")->required();
  cmd->add_flag("--check", a->check,
                "Read every committed row and refuse the store if any value is NaN/Inf "
                "(names the row, example and position)");
  cmd->callback([a] {
    auto s = core::ActivationStore::open(a->path);
    const auto& h = s.header();
    std::cout << "activation store " << a->path << "\n"
              << "  model        " << h.model << " (config hash " << h.config_hash << ")\n"
              << "  dtype        " << core::dtype_name(h.dtype) << "\n"
              << "  rows         " << h.rows_committed << " committed of " << h.rows_total
              << (h.complete ? " (complete)" : " (unfinished: continue with mechlab cache --resume)")
              << "\n"
              << "  chunk_rows   " << h.chunk_rows << "\n"
              << "  job          " << h.job << "\n"
              << "  hooks        " << h.hooks.size() << "\n";
    const int64_t sample = std::min<int64_t>(s.num_rows(), h.chunk_rows);
    for (const auto& name : h.hooks) {
      std::printf("    %-36s per token %-12s d = %-6lld", name.c_str(),
                  c10::str(c10::IntArrayRef(h.hook_shapes.at(name))).c_str(),
                  static_cast<long long>(h.width(name)));
      if (sample > 0) {
        at::Tensor x = s.rows(name, 0, sample).to(at::kFloat);
        std::printf("  first %lld rows: mean %+.4f std %.4f", static_cast<long long>(sample),
                    x.mean().item<double>(), x.std().item<double>());
      }
      std::printf("\n");
    }
    if (a->check) {
      s.check_all_finite();
      std::cout << "  check        every committed value is finite\n";
    }
  });
}

}  // namespace mechlab::cli
