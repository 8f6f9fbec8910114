// Writing the results of run_patching (patching/plan.h), all or nothing:
//   DIR/patching.h5                        every sweep and edge result
//                                          (patching/sweep_file.h layout)
//   DIR/<name>.<direction>.svg             a heatmap per sweep result (heatmap_svg)
//   DIR/paths.json                         the path results: path, direction,
//                                          metric, value, base and source metric
//   DIR/edges.<method>.<direction>.json    the top edges (EdgeScores::to_json)
// Every file is first written whole beside its target (FILE.new.tmp) and
// only then renamed in, so a failure (a full disk) leaves the previous
// results as they were, never a new patching.h5 beside old heatmaps.
// Whether DIR/patching.h5 may be replaced is the caller's check
// (core::require_replaceable), made before the run.
//
// Example:
//   auto results = run_patching(model, data, plan);
//   WrittenFiles w = write_patching_results("out", results, OutputOptions().top_edges(50));
#pragma once

#include "core/util/options.h"
#include "patching/plan.h"

#include <string>
#include <vector>

namespace mechlab::patching {

struct OutputOptions {
  /// Write a heatmap per sweep result.
  MECHLAB_OPTION(OutputOptions, bool, svg, true)
  /// Edges in each edges JSON, largest |score| first (0 = all).
  MECHLAB_OPTION(OutputOptions, int64_t, top_edges, 20)
};

struct WrittenFiles {
  std::string results_h5;
  std::vector<std::string> json;  ///< paths.json, edges.*.json
  std::vector<std::string> svg;
};

/// A file-name-safe form of a result name ("path:a1.h0<q>" -> "path_a1.h0_q_").
std::string result_file_stem(const std::string& name);

/// Writes `results` into the folder `dir` (created if missing), as above.
WrittenFiles write_patching_results(const std::string& dir, const std::vector<PatchResult>& results,
                                    const OutputOptions& options = {});

}  // namespace mechlab::patching
