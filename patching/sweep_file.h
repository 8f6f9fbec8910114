// Sweep results on disk: one HDF5 file, one group per sweep and direction.
//
// Layout (mechlab_format = "patching", mechlab_version = 1):
//   /                                root attributes mechlab_format, mechlab_version
//   /<sweep>/<direction>/            group per result, e.g. /attn_head_out_by_pos/denoising
//     values     float32 [axis sizes...]   the metric after each patch
//     attributes axes    JSON list of axis names    ["layer", "pos", "head"]
//                labels  JSON list of label lists  [["0","1"], ["0: When", ...], ...]
//                config  JSON of what produced it (sweep, TL function, direction,
//                        metric, clean/corrupted baselines, model, dataset, bulk stats)
// The file is written whole to `path.tmp` and renamed (H5File::write_atomically).
//
// Example:
//   write_sweep_file("out/patching.h5", results);
//   std::vector<SweepResult> back = read_sweep_file("out/patching.h5");
#pragma once

#include "patching/sweeps.h"

#include <string>
#include <vector>

namespace mechlab::patching {

inline constexpr const char* kPatchingFormat = "patching";
inline constexpr int64_t kPatchingVersion = 1;

/// "<sweep>/<direction>": the group a result is stored under.
std::string result_group(const SweepResult& r);
void write_sweep_file(const std::string& path, const std::vector<SweepResult>& results);
/// Reads every result back; refuses non-mechlab files, other formats, newer versions.
std::vector<SweepResult> read_sweep_file(const std::string& path);

}  // namespace mechlab::patching
