#include "patching/plan_output.h"

#include "core/formats/text_file.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "patching/heatmap.h"
#include "patching/sweep_file.h"

#include <nlohmann/json.hpp>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <utility>

namespace mechlab::patching {

std::string result_file_stem(const std::string& name) {
  std::string out;
  for (char c : name) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-') ? c : '_';
  return out;
}

WrittenFiles write_patching_results(const std::string& dir, const std::vector<PatchResult>& results,
                                    const OutputOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  MECHLAB_CHECK(!ec, "cannot create the output folder '", dir, "': ", ec.message());
  WrittenFiles w;
  w.results_h5 = (fs::path(dir) / "patching.h5").string();
  std::vector<std::pair<std::string, std::string>> texts;  // (path, contents)
  std::vector<SweepResult> stored;
  nlohmann::json paths = nlohmann::json::array();
  for (const auto& r : results) {
    const char* direction = direction_name(r.direction);
    switch (r.kind) {
      case ResultKind::path:
        paths.push_back(r.details);
        break;
      case ResultKind::edges: {
        MECHLAB_CHECK(r.edge_scores != nullptr, "edge result ", r.name, " has no edge scores");
        const std::string json = (fs::path(dir) / (std::string("edges.") + patch_method_name(r.method) +
                                                   "." + direction + ".json")).string();
        texts.emplace_back(json, r.edge_scores->to_json(options.top_edges()).dump(2) + "\n");
        w.json.push_back(json);
        stored.push_back(r.as_sweep_result());
        break;
      }
      case ResultKind::node_sweep:
      case ResultKind::path_sweep: {
        stored.push_back(r.as_sweep_result());
        if (!options.svg()) break;
        const std::string svg =
            (fs::path(dir) / (result_file_stem(r.name) + "." + direction + ".svg")).string();
        const std::string title = r.provenance.model_name + " on " +
                                  (r.provenance.dataset_task.empty() ? std::string("data")
                                                                     : r.provenance.dataset_task) +
                                  ": " + r.name;
        texts.emplace_back(svg, heatmap_svg(stored.back(), title));
        w.svg.push_back(svg);
        break;
      }
    }
  }
  if (!paths.empty()) {
    const std::string json = (fs::path(dir) / "paths.json").string();
    texts.emplace_back(json, paths.dump(2) + "\n");
    w.json.insert(w.json.begin(), json);
  }
  std::vector<std::pair<std::string, std::string>> staged;  // (temporary, target)
  try {
    for (const auto& [path, text] : texts) {
      core::write_text_file(path + ".new.tmp", text);
      staged.emplace_back(path + ".new.tmp", path);
    }
    write_sweep_file(w.results_h5 + ".new.tmp", stored);
    staged.emplace_back(w.results_h5 + ".new.tmp", w.results_h5);
    // Safe point (Ctrl-C): everything is staged and nothing replaced yet, so
    // stopping here removes the temporaries and leaves every old file as it was.
    if (core::interrupt_requested()) throw Interrupted("interrupted while writing the results");
  } catch (...) {
    for (const auto& st : staged) std::remove(st.first.c_str());
    throw;
  }
  for (const auto& [tmp, target] : staged) {
    MECHLAB_CHECK(std::rename(tmp.c_str(), target.c_str()) == 0, "cannot write '", target,
                  "': renaming '", tmp, "' onto it failed: ", std::strerror(errno));
  }
  return w;
}

}  // namespace mechlab::patching
