#include <spdlog/spdlog.h>
#include <string>
void log_line(const std::string& s) { spdlog::info("{}", s); }
