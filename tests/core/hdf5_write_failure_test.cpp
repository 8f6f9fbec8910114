// The HDF5 layer on a disk that fills up: every write, close and flush
// failure reaches the caller as one line naming the file and the system's
// reason, a failed atomic write leaves the old file and no temporary, the
// activation-store writer never counts rows that did not reach the disk, and
// the process still exits cleanly (HDF5 must not close failed objects again
// at exit). Also the output-file rules (core/formats/output_file.h).
#include "core/formats/hdf5_file.h"
#include "core/formats/output_file.h"
#include "core/formats/text_file.h"
#include "core/store/activation_store.h"
#include "core/store/activation_writer.h"
#include "tests/test_util.h"
#include "tests/tmpfs.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace mechlab::core {
namespace {

namespace fs = std::filesystem;
using testing::error_of;
using testing::Tmpfs;

std::string temp_path(const std::string& name) {
  return testing::temp_path("hdf5_write_failure_test", name);
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void expect_no_space(const std::string& msg, const std::string& file) {
  EXPECT_NE(msg.find("no space left on device"), std::string::npos) << msg;
  EXPECT_NE(msg.find(file), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
}

// Rows of a chunked dataset sit in HDF5's chunk cache until the dataset is
// closed: the failure shows at that close, which must not be ignored.
TEST(Hdf5WriteFailure, ChunkedRowsOnAFullDiskThrow) {
  Tmpfs m(temp_path("rows"), 4 << 20);
  MECHLAB_MOUNT_OR_SKIP(m);
  const std::string path = m.dir() + "/rows.h5";
  H5File f = H5File::create(path);
  WriteOptions chunked;
  chunked.chunk_rows(64);
  f.create_dataset("x", at::kFloat, {4096, 64}, chunked);
  f.flush();
  m.fill_leaving(8 << 10);
  std::string msg;
  try {
    for (int64_t r = 0; r < 4096; r += 64) f.write_rows("x", r, at::ones({64, 64}));
    f.flush();
  } catch (const Error& e) {
    msg = e.what();
  }
  expect_no_space(msg, path);
}

TEST(Hdf5WriteFailure, AtomicWriteOnAFullDiskKeepsTheOldFile) {
  Tmpfs m(temp_path("atomic"), 4 << 20);
  MECHLAB_MOUNT_OR_SKIP(m);
  const std::string path = m.dir() + "/a.h5";
  H5File::write_atomically(path, [](H5File& f) { f.write_tensor("x", at::arange(10)); });
  const std::string before = slurp(path);
  m.fill_leaving(8 << 10);
  const std::string msg = error_of([&] {
    H5File::write_atomically(path, [](H5File& f) { f.write_tensor("x", at::ones({256, 256})); });
  });
  expect_no_space(msg, path);
  EXPECT_TRUE(slurp(path) == before);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(Hdf5WriteFailure, TextFileOnAFullDiskKeepsTheOldFileAndNoTemporary) {
  Tmpfs m(temp_path("text"), 4 << 20);
  MECHLAB_MOUNT_OR_SKIP(m);
  const std::string path = m.dir() + "/t.svg";
  write_text_file(path, "old");
  m.fill_leaving(4 << 10);
  const std::string msg = error_of([&] { write_text_file(path, std::string(1 << 20, 'y')); });
  expect_no_space(msg, path);
  EXPECT_EQ(slurp(path), "old");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// A store filling a disk: rows_committed (in the file and in the writer)
// never passes the rows that were written without error.
TEST(Hdf5WriteFailure, StoreWriterNeverCommitsLostRows) {
  Tmpfs m(temp_path("store"), 8 << 20);
  MECHLAB_MOUNT_OR_SKIP(m);
  const std::string path = m.dir() + "/s.h5";
  StoreSpec spec;
  spec.header.model = "m";
  spec.header.job = "j";
  spec.header.hooks = {"h"};
  spec.header.hook_shapes = {{"h", {64}}};
  spec.header.dtype = at::kFloat;
  spec.header.rows_total = 4096;
  spec.header.chunk_rows = 32;
  auto w = ActivationStoreWriter::open(path, spec, /*resume=*/false);
  m.fill_leaving(300 << 10);  // room for some chunks (8 KiB each), not all
  int64_t row = 0;
  const std::string msg = error_of([&] {
    for (; row < 4096; row += 32) {
      const at::Tensor acts = at::full({32, 64}, static_cast<float>(row + 1));
      w.append(row, {{"h", acts}}, at::zeros({32}, at::kInt), at::zeros({32, 2}, at::kInt));
    }
    w.finish();
  });
  expect_no_space(msg, path);
  EXPECT_LT(w.rows_committed(), 4096);
  EXPECT_FALSE(w.complete());
  const int64_t in_memory = w.rows_committed();
  {
    ActivationStoreWriter gone = std::move(w);  // closes quietly
  }
  H5File f = H5File::open_read(path);
  const int64_t committed = f.read_attr_int("", "rows_committed");
  EXPECT_EQ(f.read_attr_int("", "complete"), 0);
  EXPECT_LE(committed, in_memory);
  // Every committed row holds what was written (chunk i is filled with 32*i+1).
  const at::Tensor acts = f.read_rows("acts/h", 0, committed);
  for (int64_t r = 0; r < committed; r += 32) {
    EXPECT_EQ(acts[r][0].item<float>(), static_cast<float>(r + 1)) << "row " << r;
  }
}

// After a failed close, the process must still exit normally: HDF5's own
// exit-time cleanup used to close the failed file again and crash.
TEST(Hdf5WriteFailure, ProcessExitsCleanlyAfterAFailedClose) {
  Tmpfs m(temp_path("exit"), 4 << 20);
  MECHLAB_MOUNT_OR_SKIP(m);
  const std::string path = m.dir() + "/e.h5";
  const pid_t pid = fork();
  if (pid == 0) {
    int code = 3;
    try {
      H5File f = H5File::create(path);
      WriteOptions chunked;
      chunked.chunk_rows(64);
      f.create_dataset("x", at::kFloat, {8192, 64}, chunked);
      f.write_attr("", "a", std::string("x"));
      m.fill_leaving(4 << 10);
      for (int64_t r = 0; r < 8192; r += 64) f.write_rows("x", r, at::ones({64, 64}));
      f.close();
      code = 4;  // the full disk went unnoticed
    } catch (const Error&) {
      code = 0;
    }
    std::exit(code);  // runs HDF5's atexit handlers, unlike _exit
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(OutputFile, SameFileIsFoundThroughOtherPaths) {
  const std::string dir = temp_path("same");
  fs::create_directories(dir + "/sub");
  const std::string in = dir + "/in.h5";
  std::ofstream(in) << "x";
  fs::remove(dir + "/link");
  fs::create_symlink(in, dir + "/link");
  for (const std::string& out : {in, dir + "/link", dir + "/sub/../in.h5", dir + "/./in.h5"}) {
    const std::string msg =
        error_of([&] { require_not_same_file(out, "--out", in, "the model"); });
    EXPECT_NE(msg.find("is the same file as the model '" + in + "'"), std::string::npos) << msg;
  }
  require_not_same_file(dir + "/other.h5", "--out", in, "the model");  // missing: fine
  // A folder input (Hugging Face model) is compared file by file.
  EXPECT_NE(error_of([&] { require_not_same_file(in, "--out", dir, "the model"); })
                .find("is the same file as"),
            std::string::npos);
}

TEST(OutputFile, ReplacingNeedsOverwriteAndTheSameKind) {
  const std::string ckpt = temp_path("ckpt.h5");
  H5File::write_atomically(ckpt, [](H5File& f) { f.write_attr("", "mechlab_format", "checkpoint"); });
  require_replaceable(temp_path("none.h5"), "dataset", false, "`overwrite`");  // nothing there
  // The message names what allows the replacement in the caller's words.
  EXPECT_NE(error_of([&] { require_replaceable(ckpt, "checkpoint", false, "`overwrite`"); })
                .find("already exists; pass `overwrite` to replace it"),
            std::string::npos);
  EXPECT_NE(error_of([&] { require_replaceable(ckpt, "checkpoint", false, "--overwrite"); })
                .find("already exists; pass --overwrite to replace it"),
            std::string::npos);
  require_replaceable(ckpt, "checkpoint", true, "`overwrite`");
  const std::string msg = error_of([&] { require_replaceable(ckpt, "dataset", true, "`overwrite`"); });
  EXPECT_NE(msg.find("is a mechlab 'checkpoint' file; refusing to replace it with a 'dataset'"),
            std::string::npos)
      << msg;
  const std::string junk = temp_path("junk.h5");
  std::ofstream(junk) << "not hdf5";
  require_replaceable(junk, "dataset", true, "`overwrite`");  // not a mechlab file: allowed
}

}  // namespace
}  // namespace mechlab::core
