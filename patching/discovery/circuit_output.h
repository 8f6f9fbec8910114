// One discovery job's outputs, written into a folder so that a reader never
// sees a half-written set: every file is written beside its target as
// NAME.new.tmp and renamed in only when all of them are whole.
//
//   circuit.json  {"mechlab_format": "circuit", "config": the job, "versions":
//                 mechlab version, model id and config hash, dataset, method,
//                 metric, ablation, threshold, "results": metrics and counts,
//                 "circuit": Circuit::to_json() (every edge, its score and
//                 kept/removed), "trace": [{"edge", "kept", "metric"}...] (the
//                 decisions in order: ACDC's; empty for EAP)}
//   circuit.h5    root attribute mechlab_format = "circuit"; group /circuit:
//                 kept_residual uint8 [senders, receivers], kept_head_input
//                 uint8 [receivers], scores float64 [senders, receivers],
//                 head_input_scores float64 [receivers] (NaN = no edge or no
//                 score), attributes senders, receivers (JSON name lists) and
//                 json (circuit.json's text)
//                 (position-split circuits: each of the four with a leading
//                 [positions] axis, and attribute n_positions)
//   circuit.dot   the kept edges for Graphviz (circuit_dot below; split
//                 circuits: one node per (component, position), positions as
//                 columns under their labels)
//   circuit.svg   `dot -Tsvg circuit.dot`, staged with the others; when `dot`
//                 is missing or fails, the other three are still written and
//                 CircuitFiles::svg_error says why (install graphviz).
//
// Example:
//   CircuitRecord rec{circuit, trace, job_config, versions, results};
//   CircuitFiles f = write_circuit_outputs("runs/ioi-eap", rec);
#pragma once

#include "core/util/options.h"
#include "patching/discovery/circuit.h"

#include <nlohmann/json.hpp>

#include <string>

namespace mechlab::discovery {

/// The root attribute / JSON field `mechlab_format` of circuit files.
inline constexpr const char* kCircuitFormat = "circuit";

/// What one job produced, as written.
struct CircuitRecord {
  Circuit circuit;
  /// [{"edge": "a0.h3 -> a1.h2<q>", "kept": true, "metric": 0.12}, ...]; empty for EAP.
  nlohmann::json trace = nlohmann::json::array();
  /// The job as given (its name, model, dataset, method, ...).
  nlohmann::json config = nlohmann::json::object();
  /// mechlab version, model id and config hash, dataset path, method, metric, ablation, threshold.
  nlohmann::json versions = nlohmann::json::object();
  /// Metrics and counts (full_metric, circuit_metric, seconds, ...).
  nlohmann::json results = nlohmann::json::object();
};

struct CircuitOutputOptions {
  /// Render circuit.svg with Graphviz.
  MECHLAB_OPTION(CircuitOutputOptions, bool, svg, true)
  /// The Graphviz program, looked up on PATH.
  MECHLAB_OPTION(CircuitOutputOptions, std::string, dot_program, "dot")
  /// The picture's title (default: the job's name and method).
  MECHLAB_OPTION(CircuitOutputOptions, std::string, title, "")
};

struct CircuitFiles {
  std::string json, h5, dot, svg;  ///< svg empty when not drawn
  /// One line when the picture could not be drawn (e.g. "... install
  /// graphviz ..."); empty when drawn or not asked for.
  std::string svg_error;
};

/// circuit.json's document.
nlohmann::json circuit_document(const CircuitRecord& record);

/// Graphviz text of the kept edges: nodes named as in the circuit graph
/// (input, a1.h2, m0, output), one rank per layer (heads, then the MLP)
/// from input at the top to output at the bottom; residual edges into a
/// head's q, k and v inputs in three colours, into MLPs and the output in a
/// fourth; pen width 1 to 6 by |score| over the largest kept |score|. An
/// edge is drawn when it and its receiver's head-input edge are kept.
/// Position-split circuits: one node per (component, position) with a drawn
/// edge, the ranks as rows and the positions as columns under a header of
/// their labels (Circuit::position_labels, else "pos p").
std::string circuit_dot(const Circuit& circuit, const std::string& title);

/// Writes circuit.json, circuit.h5, circuit.dot and circuit.svg into `dir`
/// (created if missing). Throws mechlab::Error naming the file on a failed
/// write (nothing replaced then). A picture that cannot be drawn is not an
/// exception: the data files are written, an older circuit.svg is removed
/// and svg_error says why.
CircuitFiles write_circuit_outputs(const std::string& dir, const CircuitRecord& record,
                                   const CircuitOutputOptions& options = {});

/// Reads circuit.json (checks mechlab_format); errors name the file.
nlohmann::json read_circuit_document(const std::string& path);

}  // namespace mechlab::discovery
