// Helpers shared by the test suites: temporary paths, the message of an
// expected mechlab::Error, and running the mechlab binary as a user would.
#pragma once

#include "core/util/error.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <ATen/Context.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace mechlab::testing {

/// A path in a per-suite, per-process folder under the test temporary
/// directory: CTest runs each test in its own process, in parallel, and two
/// checkouts may test at once, so no two processes share a file.
inline std::string temp_path(const std::string& suite, const std::string& name) {
  const std::string dir =
      ::testing::TempDir() + "mechlab_" + suite + "_" + std::to_string(::getpid()) + "/";
  std::filesystem::create_directories(dir);
  return dir + name;
}

/// The message of the mechlab::Error that `fn` throws; a test failure if it
/// throws nothing.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected mechlab::Error";
  return "";
}

struct CliResult {
  int rc;
  std::string output;  // stdout and stderr
};

/// Runs a shell command line and collects its exit code and output.
inline CliResult run_program(const std::string& command_line) {
  const std::string cmd = command_line + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

/// Runs `mechlab ARGS` (the built binary) and collects its exit code and output.
inline CliResult run_cli(const std::string& args) {
  return run_program(std::string(MECHLAB_BINARY) + " " + args);
}

/// True when a CUDA device is visible. Without one, CUDA tests skip, unless
/// MECHLAB_REQUIRE_CUDA=1 (scripts/gpu/run.sh sets it): then this also
/// records a failure, so a GPU run cannot pass by skipping.
inline bool have_cuda_or_skip() {
  if (at::hasCUDA()) return true;
  const char* req = std::getenv("MECHLAB_REQUIRE_CUDA");
  if (req && std::string(req) == "1") {
    ADD_FAILURE() << "MECHLAB_REQUIRE_CUDA=1 but no CUDA device is visible";
  }
  return false;
}

}  // namespace mechlab::testing
