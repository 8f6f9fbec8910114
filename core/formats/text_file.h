// Small text outputs (CSV logs, SVG pictures, JSON configs) written so that
// a reader never sees half a file: a temporary beside the target, then a
// rename.
#pragma once

#include <string>

namespace mechlab::core {

/// Writes `text` to `path + ".tmp"` and renames it onto `path`; throws
/// mechlab::Error naming the file and the system's reason on failure.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace mechlab::core
