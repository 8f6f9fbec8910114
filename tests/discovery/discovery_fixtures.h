// Shared setup of the discovery tests: the patching fixture models in
// float64, their prompt pairs, KL to the clean run, and a circuit's kept
// edge names.
#pragma once

#include "core/formats/hdf5_file.h"
#include "hooks/hooked_transformer.h"
#include "patching/discovery/circuit.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "tests/patching/patching_fixtures.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>

#include <set>
#include <string>

namespace mechlab::testing {

/// A runtime fixture model (tests/data/runtime), converted to float64.
inline hooks::HookedTransformer load_f64(const std::string& name) {
  hooks::HookedTransformer m = hooks::HookedTransformer::load(runtime_model(name));
  m.model().to(at::kDouble);
  return m;
}

/// The clean/corrupted prompt pairs of a patching fixture.
inline patching::PatchingData fixture_data(const std::string& model) {
  return read_fixture_inputs(core::H5File::open_read(test_data_h5("patching", model)));
}

/// KL divergence to the model's own clean logits at the answer positions.
inline patching::Metric kl_metric(hooks::HookedTransformer& model, const patching::PatchingData& data) {
  at::NoGradGuard ng;
  return patching::kl_to_clean(data.answers(), model.forward(data.clean_tokens));
}

/// The names of the edges a circuit keeps.
inline std::set<std::string> kept_names(const discovery::Circuit& c) {
  std::set<std::string> out;
  for (const discovery::CircuitEdge& e : c.edges()) {
    if (c.kept(e)) out.insert(c.edge_name(e));
  }
  return out;
}

}  // namespace mechlab::testing
