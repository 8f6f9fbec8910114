// Logging through spdlog, behind a small string interface.
//
// Why a wrapper: LibTorch ships its own fmt (12.x) in its include path, and
// Debian's spdlog is built against fmt 9; one translation unit cannot see
// both. log.cpp is compiled without LibTorch's include path (CMake target
// mechlab_log) and everything else passes ready-made strings.
//
// Example:
//   mechlab::log::info(mechlab::str_cat("wrote ", n, " rows to ", path));
#pragma once

#include <string>

namespace mechlab::log {

enum class Level { debug, info, warn, error };

void set_level(Level level);
void debug(const std::string& msg);
void info(const std::string& msg);
void warn(const std::string& msg);
void error(const std::string& msg);

/// Whether stderr is a terminal (progress bars redraw there; elsewhere they
/// print periodic plain lines).
bool stderr_is_terminal();

}  // namespace mechlab::log
