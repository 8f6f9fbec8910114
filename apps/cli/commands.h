// The mechlab CLI: one file per subcommand, each adding itself to the app.
#pragma once

#include "core/model/weight_processing.h"

#include <CLI/CLI.hpp>

#include <ATen/core/Tensor.h>

#include <string>

namespace mechlab::cli {

void add_info_command(CLI::App& app);
void add_run_command(CLI::App& app);
void add_new_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_dataset_command(CLI::App& app);
void add_cache_command(CLI::App& app);
void add_store_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_patch_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_heads_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_attach_tokenizer_command(CLI::App& app);
void add_discover_command(CLI::App& app);
void add_probe_command(CLI::App& app);
/// `mechlab sae` and its subcommands (each adds itself to the group `sae`).
void add_sae_command(CLI::App& app);
void add_sae_eval_command(CLI::App& sae);
void add_sae_export_command(CLI::App& sae);
void add_sae_import_command(CLI::App& sae);
void add_sae_dashboard_command(CLI::App& sae);
void add_sae_train(CLI::App& sae);

// Shared option parsing.
at::Device parse_device(const std::string& text);     // "cpu", "cuda", "cuda:1", "auto"
at::ScalarType parse_dtype(const std::string& text);  // "f32", "bf16", "f16"
std::string human_bytes(int64_t bytes);

/// --threads N, the same on every compute command: CPU threads for LibTorch,
/// 1 to max_threads() (0, the default, keeps LibTorch's default: all cores).
/// Applied as soon as it is parsed; a count out of range is an error (a
/// huge pool would hang the machine creating threads). `use` (optional) says
/// what the threads do in this command.
void add_threads_option(CLI::App* cmd, const std::string& use = "");
/// The --threads note of the commands that run ACDC (discover, bench).
inline constexpr const char* kAcdcThreadsNote =
    "ACDC's node path uses fewer while other processes keep cores busy (MECHLAB_ADAPTIVE_THREADS=0: never)";
int max_threads();  // 4 x the hardware threads

/// Ctrl-C for the command that follows (core/util/interrupt.h). Long jobs
/// that stop at a consistent point (cache, train) pass polled = true; a job
/// that writes its outputs whole at the end passes false and the line to
/// print, and SIGINT ends it at once with exit code 130.
void handle_interrupts(bool polled, const char* unpolled_note = nullptr);

/// A number option's check: > 0 (or >= 0), with a message that says so
/// (CLI11's PositiveNumber prints its 300-digit bound).
CLI::Validator positive();
CLI::Validator non_negative();

/// An integer count option that also takes "1e6" (a whole number in
/// scientific notation), refusing anything below `min` with "must be > 0"
/// (min 1) or "must be >= 0" (min 0).
CLI::Option* add_count_option(CLI::App* cmd, const std::string& name, int64_t& target,
                              const std::string& description, int64_t min = 1);

/// The machine's physical memory in bytes (0 when unknown).
int64_t physical_memory_bytes();
/// Refuses a job whose estimated memory (`bytes`) exceeds what this machine
/// has: "OPTION VALUE needs about X GB of memory for WHAT; this machine has
/// Y GB; HINT". Checked before allocating, so no bad_alloc ever reaches the user.
void require_memory(int64_t bytes, const std::string& option_and_value, const std::string& what,
                    const std::string& hint);

/// A library error as the CLI user should read it: the library names an
/// option or argument in backticks (`overwrite`, `CacheOptions::batch_size`,
/// docs/ARCHITECTURE.md "API conventions"); each one that a command-line flag
/// sets is replaced by that flag ("--overwrite", "--batch-size"). Every
/// listed flag means the same on each command that has it.
std::string with_flag_names(std::string message);

/// Text for a terminal: control bytes and bytes that are not UTF-8 become
/// \xNN, so a file name or token with binary bytes cannot garble the line.
std::string printable(const std::string& text);

/// "unknown command 'infoo'; did you mean 'info'?" for a word in argv that
/// names no subcommand where one is expected (also under `dataset`,
/// `store`, `bench`); empty when argv names its commands right.
std::string unknown_command_message(const CLI::App& app, int argc, char** argv);

/// --fold-ln, --center-writing-weights, --center-unembed, --fold-value-biases
/// and --process (all four, skipping what the model cannot take, as
/// TransformerLens's from_pretrained): the weight-processing flags of every
/// command that loads a model. Default: no processing (weights as stored).
struct ProcessFlags {
  bool all = false, fold_ln = false, center_writing_weights = false, center_unembed = false,
       fold_value_biases = false;
  core::ProcessOptions options() const;
};
void add_process_flags(CLI::App* cmd, ProcessFlags& flags);

}  // namespace mechlab::cli
