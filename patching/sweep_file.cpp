#include "patching/sweep_file.h"

#include "core/util/error.h"
#include "core/formats/hdf5_file.h"

#include <ATen/ATen.h>

#include <set>

namespace mechlab::patching {

std::string result_group(const SweepResult& r) {
  const std::string dir = r.config.value("direction", std::string("denoising"));
  return r.sweep + "/" + dir;
}

void write_sweep_file(const std::string& path, const std::vector<SweepResult>& results) {
  std::set<std::string> groups;
  for (const auto& r : results) {
    MECHLAB_CHECK(groups.insert(result_group(r)).second, "two results would both be stored as /",
                  result_group(r), " in ", path, "; run each sweep and direction once");
  }
  core::H5File::write_atomically(path, [&](core::H5File& f) {
    f.write_attr("", "mechlab_format", kPatchingFormat);
    f.write_attr("", "mechlab_version", kPatchingVersion);
    for (const auto& r : results) {
      const std::string g = result_group(r);
      f.write_tensor(g + "/values", r.values.to(at::kCPU, at::kFloat).contiguous());
      f.write_attr(g, "axes", nlohmann::json(r.axes).dump());
      f.write_attr(g, "labels", nlohmann::json(r.labels).dump());
      f.write_attr(g, "config", r.config.dump());
    }
  });
}

std::vector<SweepResult> read_sweep_file(const std::string& path) {
  core::H5File f = core::H5File::open_read(path);
  MECHLAB_CHECK(f.has_attr("", "mechlab_format") &&
                    f.read_attr_string("", "mechlab_format") == kPatchingFormat,
                path, " is not a mechlab patching results file (mechlab_format != \"patching\")");
  const int64_t version = f.read_attr_int("", "mechlab_version");
  MECHLAB_CHECK(version <= kPatchingVersion, path, " is patching-results version ", version,
                " but this mechlab reads up to version ", kPatchingVersion, "; update mechlab");
  std::vector<SweepResult> out;
  for (const auto& sweep : f.list("")) {
    if (!f.is_group(sweep)) continue;
    for (const auto& dir : f.list(sweep)) {
      const std::string g = sweep + "/" + dir;
      SweepResult r;
      r.sweep = sweep;
      r.values = f.read_tensor(g + "/values");
      r.axes = nlohmann::json::parse(f.read_attr_string(g, "axes")).get<std::vector<std::string>>();
      r.labels = nlohmann::json::parse(f.read_attr_string(g, "labels"))
                     .get<std::vector<std::vector<std::string>>>();
      r.config = nlohmann::json::parse(f.read_attr_string(g, "config"));
      out.push_back(std::move(r));
    }
  }
  return out;
}

}  // namespace mechlab::patching
