// mechlab cache: run a model over a dataset and write the activations of
// chosen hook points to an activation store (hooks/activation_capture.h).
#include "apps/cli/commands.h"
#include "core/data/dataset.h"
#include "core/formats/output_file.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "core/hf/model_loader.h"
#include "core/util/progress.h"
#include "core/store/store_set.h"
#include "hooks/activation_capture.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <iostream>
#include <regex>

namespace mechlab::cli {

void add_cache_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "cache",
      "Write a model's activations over a dataset to an HDF5 activation store.\n"
      "One row per real (unpadded) token; a killed run continues with --resume and gives "
      "the same file as an uninterrupted one. With --shard I/N, N processes (or machines "
      "sharing a folder) each cache one part and together make a store set that readers "
      "take as one store.");
  struct Args {
    std::string model, dataset, out, device = "cpu", model_dtype = "f32", dtype = "bf16";
    ProcessFlags process;
    std::vector<std::string> hooks;
    std::string shard;
    int64_t batch_size = 8, chunk_rows = 1024;
    int compress = 0;
    bool resume = false, overwrite = false, no_progress = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "mechlab checkpoint (.h5) or Hugging Face folder")->required();
  cmd->add_option("dataset", a->dataset, "mechlab dataset (.h5, see `mechlab dataset make`)")
      ->required();
  cmd->add_option("--hooks", a->hooks,
                  "Hook names or globs to store, e.g. 'blocks.*.hook_resid_post' "
                  "blocks.0.attn.hook_z (attention patterns are not per-token and are refused)")
      ->required();
  cmd->add_option("--out", a->out, "The activation store to write (.h5)")->required();
  cmd->add_option("--dtype", a->dtype, "Stored dtype: bf16, f16 or f32")->capture_default_str();
  cmd->add_option("--model-dtype", a->model_dtype, "dtype the model runs in: f32, bf16 or f16")
      ->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  add_count_option(cmd, "--batch-size", a->batch_size, "Dataset examples per forward");
  add_count_option(cmd, "--chunk-rows", a->chunk_rows,
                   "Rows per HDF5 chunk: the unit of commit (crash safety) and of shuffled reads");
  cmd->add_option("--compress", a->compress,
                  "gzip level 1-9 for the finished store (0 = none; applied once every row is "
                  "written)")
      ->capture_default_str()
      ->check(CLI::Range(0, 9));
  cmd->add_flag("--resume", a->resume,
                "Continue the store at --out (it must come from the same model, dataset and "
                "options)");
  cmd->add_flag("--overwrite", a->overwrite, "Replace the store at --out");
  cmd->add_option("--shard", a->shard,
                  "I/N: cache only shard I (0 to N-1) of N contiguous parts of the dataset. --out "
                  "then names the store set's manifest (.json); this shard's store is written "
                  "beside it as NAME.shard-I-of-N.h5 (resumable on its own), and the shard that "
                  "finishes last writes the manifest");
  cmd->add_flag("--no-progress", a->no_progress, "No progress bar");
  add_process_flags(cmd, a->process);
  add_threads_option(cmd);
  cmd->callback([a] {
    MECHLAB_CHECK(!(a->resume && a->overwrite), "--resume and --overwrite exclude each other");
    int64_t shard_index = 0, shard_count = 1;
    std::string store = a->out;  // the store this run writes
    if (!a->shard.empty()) {
      std::smatch m;
      MECHLAB_CHECK(std::regex_match(a->shard, m, std::regex("([0-9]{1,9})/([0-9]{1,9})")),
                    "--shard '", a->shard, "' is not I/N; write e.g. --shard 0/4 for the first of 4");
      shard_index = std::stoll(m[1]);
      shard_count = std::stoll(m[2]);
      MECHLAB_CHECK(shard_count >= 1 && shard_index < shard_count, "--shard ", a->shard,
                    ": I must be 0 to N-1 (shards are numbered from 0)");
      MECHLAB_CHECK(a->out.size() > 5 && a->out.compare(a->out.size() - 5, 5, ".json") == 0,
                    "with --shard, --out names the store set's manifest and must end in .json, "
                    "not '", a->out, "'; e.g. --out acts.json");
      store = core::shard_store_path(a->out, shard_index, shard_count);
    }
    // Before anything is read or written: --overwrite on an input would
    // truncate it, --resume would write into it.
    for (const std::string& out : {a->out, store}) {
      core::require_not_same_file(out, "--out", a->model, "the model");
      core::require_not_same_file(out, "--out", a->dataset, "the dataset");
    }
    const at::Device device = parse_device(a->device);
    core::Dataset ds = core::load_dataset(a->dataset);
    core::Transformer base =
        core::load_model(
            a->model,
            core::LoadOptions().dtype(parse_dtype(a->model_dtype)).process(a->process.options()));
    base.to(device);
    hooks::HookedTransformer model(std::move(base));
    {
      // The writer stages one chunk of every hook in memory: refuse a
      // --chunk-rows that cannot fit before anything is allocated.
      const std::vector<std::string> names = hooks::resolve_store_hooks(model, a->hooks);
      int64_t width = 0;
      for (const std::string& h : names) {
        int64_t w = 1;
        const auto dims = model.hooks().hook_dims(h);
        for (size_t k = 2; k < dims.size(); ++k) w *= core::dim_size(model.cfg(), dims[k], 1, 1);
        width += w;
      }
      const double bytes = static_cast<double>(a->chunk_rows) * static_cast<double>(width) *
                           static_cast<double>(at::elementSize(parse_dtype(a->dtype)));
      require_memory(bytes > 9e18 ? INT64_MAX : static_cast<int64_t>(bytes),
                     str_cat("--chunk-rows ", a->chunk_rows),
                     str_cat("one chunk of ", names.size(), " hooks (", width, " values per row)"),
                     "use a smaller --chunk-rows (the default is 1024)");
    }
    hooks::CacheOptions opt;
    opt.hooks(a->hooks)
        .dtype(parse_dtype(a->dtype))
        .batch_size(a->batch_size)
        .chunk_rows(a->chunk_rows)
        .gzip_level(a->compress)
        .resume(a->resume)
        .overwrite(a->overwrite)
        .model_id(a->model)
        .dataset_path(a->dataset)
        .progress(!a->no_progress)
        .shard_index(shard_index)
        .shard_count(shard_count);
    handle_interrupts(/*polled=*/true);
    hooks::CacheResult r;
    try {
      r = hooks::cache_activations(model, ds, store, opt);
    } catch (const Interrupted& e) {
      throw Interrupted(str_cat(e.what(), "; resume with the same command and --resume"));
    }
    std::cout << "store " << store << ": " << r.hooks.size() << " hooks, " << r.rows_total
              << " rows";
    if (r.rows_written > 0) {
      std::printf("; wrote %lld rows (%s) in %.2f s: %s tokens/s, %.1f MB/s\n",
                  static_cast<long long>(r.rows_written), human_bytes(r.bytes_written).c_str(),
                  r.seconds, core::human_count(r.rows_written / r.seconds).c_str(),
                  r.bytes_written / r.seconds / 1e6);
    } else {
      std::cout << " (already complete)\n";
    }
    if (shard_count > 1) {
      const int64_t done = core::complete_store_set(a->out, shard_count);
      if (done == shard_count) {
        std::cout << "store set " << a->out << ": all " << shard_count << " shards complete, "
                  << core::ActivationStore::open(a->out).num_rows() << " rows\n";
      } else {
        std::cout << "store set " << a->out << ": " << done << " of " << shard_count
                  << " shards complete; the shard that finishes last writes it\n";
      }
    }
  });
}

}  // namespace mechlab::cli
