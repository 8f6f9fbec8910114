// Helpers shared by the test suites: temporary paths, the message of an
// expected mechlab::Error, and running the mechlab binary as a user would.
#pragma once

#include "core/util/error.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <set>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern char** environ;  // the child gets this process's environment

namespace mechlab::testing {

/// Removes a folder and what it holds; a missing path is fine. Not
/// std::filesystem::remove_all: libtorch.so exports its own copy, the
/// dynamic linker binds the tests' calls to it, and it crashes on a folder
/// that holds files (docs/ARCHITECTURE.md, Build).
inline void remove_tree(const std::string& path) {
  ::nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

/// A path in a per-suite, per-process folder under the test temporary
/// directory: CTest runs each test in its own process, in parallel, and two
/// checkouts may test at once, so no two processes share a file. The
/// folder is emptied on its first use in a process: one that exists then
/// was left by an earlier process with the same id (the kernel reuses
/// them), and its files would make a test that writes without overwriting
/// fail ("... exists").
inline std::string temp_path(const std::string& suite, const std::string& name) {
  static std::mutex m;
  static std::set<std::string> fresh;  // the suites whose folder this process has emptied
  const std::string dir =
      ::testing::TempDir() + "mechlab_" + suite + "_" + std::to_string(::getpid()) + "/";
  {
    std::lock_guard<std::mutex> lock(m);
    if (fresh.insert(suite).second) remove_tree(dir);
  }
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

/// Starts `args` (argv[0] a path) without waiting, stdout and stderr into
/// `log`: for tests that signal or kill the child mid-run. -1 if it failed.
inline pid_t spawn_process(const std::vector<std::string>& args,
                           const std::string& log = "/dev/null") {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return rc == 0 ? pid : -1;
}

/// Waits for `pid`: its exit code, or -signal when a signal ended it.
inline int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

/// Runs a shell command line and collects its exit code and output.
// `/bin/sh -c COMMAND_LINE` with stdout and stderr into one pipe. Started by
// posix_spawn, not popen's fork: glibc's posix_spawn runs no atfork handlers
// in the test process (LibTorch's and OpenMP's), where a rare crash at the
// start of a CLI test (a call through a null pointer) was seen under popen.
inline CliResult run_program(const std::string& command_line) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return {-1, "pipe failed"};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  std::string sh = "/bin/sh", dash_c = "-c", cmd = command_line;
  char* argv[] = {sh.data(), dash_c.data(), cmd.data(), nullptr};
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, "/bin/sh", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    return {-1, "posix_spawn failed"};
  }
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

/// Runs `mechlab ARGS` (the built binary) and collects its exit code and output.
inline CliResult run_cli(const std::string& args) {
  return run_program(std::string(MECHLAB_BINARY) + " " + args);
}

/// The CLI's one error line (rc 1, "mechlab: error: ...", nothing after it).
inline std::string error_line(const CliResult& r) {
  EXPECT_EQ(r.rc, 1) << r.output;
  const auto at = r.output.find("mechlab: error: ");
  EXPECT_NE(at, std::string::npos) << r.output;
  if (at == std::string::npos) return "";
  const std::string line = r.output.substr(at);
  EXPECT_EQ(line.find('\n'), line.size() - 1) << r.output;
  return line;
}

/// Writes `text` to `path` (a test failure if it cannot).
inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

/// The whole file ("" when it cannot be read).
inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
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

/// A TCP port nobody listens on now (the kernel's pick for port 0), so that
/// rendezvous in parallel ctest runs do not collide; -1 if none is free.
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

/// LibTorch's intra-op thread count for one scope (a test that needs real
/// threads, or one), restored at its end, failures included.
class ScopedThreads {
 public:
  explicit ScopedThreads(int n) : old_(at::get_num_threads()) { at::set_num_threads(n); }
  ~ScopedThreads() { at::set_num_threads(old_); }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  int old_;
};

}  // namespace mechlab::testing
