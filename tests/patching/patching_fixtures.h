// Paths and inputs of the patching tests' fixtures: the runtime models
// (tests/data/runtime/NAME.h5) and the TransformerLens reference files that
// store the prompt pairs under /inputs (tests/data/patching/...).
#pragma once

#include "core/formats/hdf5_file.h"
#include "patching/patching_data.h"

#include <string>

namespace mechlab::testing {

/// tests/data/DIR/MODEL.h5, e.g. test_data_h5("runtime", "gpt2_like").
inline std::string test_data_h5(const std::string& dir, const std::string& model) {
  return std::string(MECHLAB_TEST_DATA) + "/" + dir + "/" + model + ".h5";
}

/// tests/data/runtime/MODEL.h5: the TransformerLens-checked runtime models.
inline std::string runtime_model(const std::string& model) { return test_data_h5("runtime", model); }

/// The clean/corrupted prompts and answers a reference file stores under /inputs.
inline patching::PatchingData read_fixture_inputs(const core::H5File& ref) {
  patching::PatchingData d;
  d.clean_tokens = ref.read_tensor("inputs/clean_tokens");
  d.corrupted_tokens = ref.read_tensor("inputs/corrupted_tokens");
  d.answer_tokens = ref.read_tensor("inputs/answer_tokens");
  d.wrong_tokens = ref.read_tensor("inputs/wrong_tokens");
  d.answer_pos = ref.read_tensor("inputs/answer_pos");
  return d;
}

}  // namespace mechlab::testing
