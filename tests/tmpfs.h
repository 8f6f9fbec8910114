// A tmpfs mounted for one test, to make writes fail for real: a small one
// fills up (ENOSPC), a remounted read-only one refuses (EROFS) even to root,
// who ignores permission bits. Needs root (or CAP_SYS_ADMIN); tests skip
// with the reason when mounting is not permitted.
#pragma once

#include <gtest/gtest.h>

#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace mechlab::testing {

class Tmpfs {
 public:
  /// Mounts a tmpfs of `size` bytes at `dir` (created if missing).
  Tmpfs(const std::string& dir, size_t size) : dir_(dir) {
    std::filesystem::create_directories(dir_);
    const std::string opts = "size=" + std::to_string(size);
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, opts.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~Tmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  Tmpfs(const Tmpfs&) = delete;
  Tmpfs& operator=(const Tmpfs&) = delete;

  bool ok() const { return mounted_; }
  const std::string& error() const { return error_; }
  const std::string& dir() const { return dir_; }

  /// Remounts read-only; false (errno set) on failure.
  bool make_read_only() {
    return ::mount(nullptr, dir_.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr) == 0;
  }
  /// Fills the file system with a file "filler" until about `leave` bytes
  /// are free.
  void fill_leaving(size_t leave) {
    struct statvfs st {};
    ASSERT_EQ(::statvfs(dir_.c_str(), &st), 0);
    const size_t free_bytes = static_cast<size_t>(st.f_bavail) * st.f_frsize;
    ASSERT_GT(free_bytes, leave);
    std::ofstream f(dir_ + "/filler", std::ios::binary);
    const std::string block(4096, 'x');
    for (size_t n = 0; n + leave < free_bytes; n += block.size()) f << block;
  }

 private:
  std::string dir_, error_;
  bool mounted_ = false;
};

}  // namespace mechlab::testing

/// The disk-full and read-only cases need a tmpfs: without root they skip,
/// saying so; as root (CI, the development machines) a failed mount is a
/// failure, so these cases can never drop out silently where they can run.
#define MECHLAB_MOUNT_OR_SKIP(m)                                                                \
  if (!(m).ok()) {                                                                              \
    if (::geteuid() != 0) {                                                                     \
      GTEST_SKIP() << "cannot mount a tmpfs at " << (m).dir() << " (" << (m).error()            \
                   << "): the disk-full and read-only cases need root";                         \
    }                                                                                           \
    FAIL() << "cannot mount a tmpfs at " << (m).dir() << " as root (" << (m).error() << ")";    \
  }
