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

// Shared option parsing.
at::Device parse_device(const std::string& text);     // "cpu", "cuda", "cuda:1", "auto"
at::ScalarType parse_dtype(const std::string& text);  // "f32", "bf16", "f16"
std::string human_bytes(int64_t bytes);

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
