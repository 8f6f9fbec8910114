// What the cache crash and shard tests share: a tiny model with a padded
// random dataset on disk, and the `mechlab cache` command line they run
// (resumable, small batches and chunks so that a kill lands mid-store).
#pragma once

#include "core/data/dataset.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace mechlab::testing {

/// Writes the "tiny" preset (seed 11) to `model` and `rows` random prompts of
/// 32 tokens to `data`, every third one with its last 4 positions padded.
inline void write_cache_job_inputs(const std::string& model, const std::string& data, int64_t rows) {
  core::Transformer(core::preset("tiny"), 11).save(model);
  core::Dataset ds;
  ds.d_vocab = core::preset("tiny").d_vocab;
  at::manual_seed(0);
  ds.tokens = at::randint(0, ds.d_vocab, {rows, 32}, at::kInt);
  ds.attention_mask = at::ones({rows, 32}, at::kByte);
  ds.attention_mask.slice(0, 0, rows, 3).narrow(1, 28, 4).zero_();  // some padding
  core::save_dataset(data, ds);
}

/// `mechlab cache MODEL DATA --out OUT --resume ...` (two hooks, f32), with
/// `--shard SHARD` when one is given.
inline std::vector<std::string> cache_job_args(const std::string& model, const std::string& data,
                                               const std::string& out, const std::string& shard = "") {
  std::vector<std::string> a = {MECHLAB_BINARY, "cache", model, data, "--hooks", "blocks.*.hook_resid_post",
                                "blocks.0.attn.hook_z", "--out", out, "--dtype", "f32", "--batch-size", "4",
                                "--chunk-rows", "64", "--no-progress", "--resume"};
  if (!shard.empty()) {
    a.push_back("--shard");
    a.push_back(shard);
  }
  return a;
}

}  // namespace mechlab::testing
