// LiveSource: SAE training rows straight from a model's forward passes over a
// dataset, without an activation store (SAELens's ActivationsStore over a
// model; the "or from live model activations").
//
// The dataset's examples are cut into model batches of prompts_per_forward
// examples (batch b = examples [b * P, (b + 1) * P), as `mechlab cache`
// batches them). Each epoch visits the model batches in an order seeded by
// seed + epoch; each visit runs one forward (stopping after the hook's
// layer) and puts the batch's rows at `hook` (its real tokens: padding
// dropped, position 0 too with exclude_first_position; a per-head hook such as
// hook_z flattened head-major, as the store does) into a mixing buffer of
// buffer_rows rows, permuted whenever it is refilled below half and served
// from its tail: ShuffledBatches's scheme (core/store/shuffled_batches.h)
// with model batches in place of store chunks, so memory stays bounded by the
// buffer whatever the dataset's size, and a store cached with chunk_rows =
// the rows of one model batch (a dataset without padding) is served in the
// very same order, bit for bit (tests/sae/sae_live_source_test.cpp).
//
// Exact resume: the batch of step s is a function of the seed and s; a
// source asked for a step before its current one starts again from step 0
// and replays the forwards up to it, so resuming at step s costs the model
// forwards of steps 0..s (as the store source re-reads its rows).
//
// Evaluation and b_dec initialisation rows: the first rows in dataset order,
// position 0 included (as the store source's first rows), computed once.
//
// Example:
//   auto model = std::make_shared<hooks::HookedTransformer>(core::load_model("gpt2/"));
//   auto src = mechlab::sae::live_source(model, core::load_dataset("data.h5"),
//       LiveSourceOptions().hook("blocks.6.hook_resid_post").batch_size(4096).seed(1));
//   at::Tensor x = src->batch(0, 4096, rng);   // [4096, d_model] float32
#pragma once

#include "core/data/dataset.h"
#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "sae/trainer.h"

#include <cstdint>
#include <memory>
#include <string>

namespace mechlab::sae {

struct LiveSourceOptions {
  /// A per-token hook point of the model (an attached module's points too).
  MECHLAB_OPTION(LiveSourceOptions, std::string, hook, "")
  /// Seed of the model-batch order and the mixing; epoch e uses seed + e.
  MECHLAB_OPTION(LiveSourceOptions, uint64_t, seed, 0)
  /// Rows per training batch (the trainer's batch_size).
  MECHLAB_OPTION(LiveSourceOptions, int64_t, batch_size, 4096)
  /// Rows held for mixing (at least batch_size).
  MECHLAB_OPTION(LiveSourceOptions, int64_t, buffer_rows, 1 << 16)
  /// Skip position 0 (BOS in most datasets).
  MECHLAB_OPTION(LiveSourceOptions, bool, exclude_first_position, false)
  /// Dataset examples per forward pass.
  MECHLAB_OPTION(LiveSourceOptions, int64_t, prompts_per_forward, 8)
};

/// A source over `model` (its device and dtype; rows come back float32 on
/// the CPU) and `dataset`; `dataset_name` names the dataset in messages.
/// Refuses, one line each: a hook the model lacks or that is not per token,
/// a dataset whose ids do not fit the model, fewer rows than one batch.
std::unique_ptr<BatchSource> live_source(std::shared_ptr<hooks::HookedTransformer> model, core::Dataset dataset,
                                         const LiveSourceOptions& options,
                                         const std::string& dataset_name = "dataset");
/// The same over a model file or folder (core::load_model, float32, weights
/// as stored, moved to `device`: the SAE training config's device) and a
/// dataset file (core::load_dataset).
std::unique_ptr<BatchSource> live_source(const std::string& model_path, const std::string& dataset_path,
                                         const LiveSourceOptions& options, at::Device device = at::kCPU);

}  // namespace mechlab::sae
