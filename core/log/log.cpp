#include "core/log/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

namespace mechlab::log {
namespace {

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto made = spdlog::stderr_color_mt("mechlab");
    made->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
    return made;
  }();
  return *l;
}

}  // namespace

void set_level(Level level) {
  switch (level) {
    case Level::debug: logger().set_level(spdlog::level::debug); break;
    case Level::info: logger().set_level(spdlog::level::info); break;
    case Level::warn: logger().set_level(spdlog::level::warn); break;
    case Level::error: logger().set_level(spdlog::level::err); break;
  }
}

void debug(const std::string& msg) { logger().debug(msg); }
void info(const std::string& msg) { logger().info(msg); }
void warn(const std::string& msg) { logger().warn(msg); }
void error(const std::string& msg) { logger().error(msg); }

bool stderr_is_terminal() { return isatty(STDERR_FILENO) != 0; }

}  // namespace mechlab::log
