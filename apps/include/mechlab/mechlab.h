// mechlab's umbrella header: the whole C++ API in one include, as a
// researcher's experiment program wants it.
//
//   #include <mechlab/mechlab.h>
//   auto model = mechlab::hooks::HookedTransformer::from_pretrained("gpt2/");
//   auto [logits, cache] = model.run_with_cache(model.to_tokens("Hello world"));
//
// In a CMake project: find_package(mechlab REQUIRED) and
// target_link_libraries(exp PRIVATE mechlab::mechlab). Each header below
// states its own contract at its top; docs/ARCHITECTURE.md maps them.
#pragma once

// Utilities: errors (mechlab::Error), fluent options, seeded RNG.
#include "core/util/allocator.h"
#include "core/util/error.h"
#include "core/util/options.h"
#include "core/util/rng.h"

// File formats.
#include "core/formats/hdf5_file.h"

// The model: config, presets, the transformer, weight processing, generation.
#include "core/model/checkpoint.h"
#include "core/model/generate.h"
#include "core/model/model_config.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "core/model/weight_processing.h"

// Loading any model path (checkpoint or Hugging Face folder).
#include "core/hf/model_loader.h"

// Data: datasets, task generators, tokenizers.
#include "core/data/dataset.h"
#include "core/data/tasks/tasks.h"
#include "core/data/tokenizer/tokenizer.h"
#include "core/data/tokenizer/tokenizer_json.h"

// Activation stores.
#include "core/store/activation_store.h"
#include "core/store/activation_writer.h"
#include "core/store/shuffled_batches.h"

// Training.
#include "core/train/trainer.h"

// Hooks: HookedTransformer, the cache, names, capture into a store.
#include "hooks/act_name.h"
#include "hooks/activation_cache.h"
#include "hooks/activation_capture.h"
#include "hooks/hooked_transformer.h"
#include "hooks/names_filter.h"

// Analyses.
#include "hooks/analysis/head_detector.h"

// Kernels: operations with a CUDA kernel and an ATen path behind one call.
#include "kernels/edge_patch.h"

// Patching: metrics, ablations, sweeps, path and attribution patching, the circuit graph.
#include "patching/ablation.h"
#include "patching/attribution.h"
#include "patching/circuit_graph.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "patching/path_patching.h"
#include "patching/patching_data.h"
#include "patching/plan.h"
#include "patching/plan_output.h"
#include "patching/sweep_file.h"
#include "patching/sweeps.h"

// Circuit discovery: the circuit type, the masked forward, ACDC, selection
// of attribution circuits, evaluation.
#include "patching/discovery/acdc.h"
#include "patching/discovery/circuit.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/discovery/evaluation.h"
#include "patching/discovery/selection.h"

// Sparse autoencoders: architectures by name, SAELens files, metrics.
#include "sae/metrics.h"
#include "sae/registry.h"
#include "sae/saelens_io.h"
#include "sae/splice.h"
#include "sae/density.h"
#include "sae/dashboard.h"
#include "sae/trainer.h"
#include "sae/toy_superposition.h"

// Linear probes: many at once, scikit-learn objectives, controls.
#include "probes/evaluation.h"
#include "probes/intervention.h"
#include "probes/linear_probe.h"
#include "probes/metrics.h"
#include "probes/probe_data.h"
#include "probes/probe_run.h"
