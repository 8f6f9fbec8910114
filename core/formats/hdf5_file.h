// H5File: a small RAII wrapper over the HDF5 1.10 C API, the storage layer of
// checkpoints and activation stores.
//
// What it gives:
//  - H5File owns one open file (movable, not copyable; closed by the
//    destructor or by close()). open_read / open_readwrite / create open it;
//    open_read names the path and the problem when the file is missing,
//    unreadable, not HDF5 or truncated.
//  - Objects are named by '/'-separated paths relative to the file root:
//    "params/blocks.0.attn.W_Q" is the dataset "blocks.0.attn.W_Q" (dots are
//    ordinary characters) in the group "params". A leading '/' is allowed;
//    "" and "/" name the root group.
//  - Tensors: read_tensor / write_tensor / shape / dtype. Stored types:
//        float32, float64     IEEE little-endian floats
//        float16              16-bit IEEE float laid out as h5py does (sign 15,
//                             exponent 10..14 with bias 15, mantissa 0..9), so
//                             h5py/numpy read it as float16
//        bfloat16             16-bit float, sign 15, exponent 7..14 with bias
//                             127, mantissa 0..6, plus the dataset attribute
//                             mechlab_dtype = "bfloat16" (numpy has no bf16:
//                             h5py reads these as float32, values exact)
//        int8, uint8, int32, int64   little-endian integers
//        bool                 stored as uint8 (reads back as uint8)
//    Reading recognises these by class, size and bit fields (any byte order),
//    and refuses anything else with an error naming the dataset and its type.
//    Rank-0 tensors are stored as scalar datasets. Reads return contiguous CPU
//    tensors; writes make a contiguous CPU copy when needed.
//  - Attributes on the root, a group or a dataset: strings (written as
//    variable-length UTF-8, as h5py does; both variable- and fixed-length are
//    read), int64 and float64 scalars.
//
// Errors: every HDF5 call is checked; a failure throws mechlab::Error naming
// the file, the object path, HDF5's own explanation and the failing call. The
// library's automatic printing of its error stack to stderr is switched off in
// each thread that opens a file (Debian's HDF5 keeps that setting per thread).
//
// HDF5 here is a serial build: use one H5File from one thread at a time, and do
// not use two H5File objects on the same file from different threads.
#pragma once

#include "core/util/options.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

namespace mechlab::core {

/// How write_tensor lays a dataset out.
struct WriteOptions {
  /// Rows (along dim 0) per chunk; 0 = contiguous layout. Ignored for scalars
  /// and empty tensors.
  MECHLAB_OPTION(WriteOptions, int64_t, chunk_rows, 0)
  /// gzip (deflate) level 0..9; 0 = none. Compression needs chunks: with
  /// chunk_rows == 0, chunks of about 1 MiB are chosen. Byte shuffle is applied
  /// before gzip.
  MECHLAB_OPTION(WriteOptions, int, gzip_level, 0)
  /// Store a Fletcher-32 checksum with each chunk (HDF5's filter, which h5py
  /// and every HDF5 reader understand). Needs chunks: with chunk_rows == 0,
  /// chunks of about 1 MiB are chosen. Reads verify it; a mismatch is a
  /// mechlab::Error saying the file is corrupt. Scalars and empty tensors are
  /// stored without (HDF5 cannot chunk them). Not for create_dataset +
  /// write_rows stores that rely on fixed chunk addresses: a filtered chunk
  /// may move when rewritten.
  MECHLAB_OPTION(WriteOptions, bool, checksum, false)
  /// Replace an existing dataset of the same path instead of refusing.
  MECHLAB_OPTION(WriteOptions, bool, overwrite, false)
};

/// numpy-style dtype name for messages: "float32", "bfloat16", "int64", ...
const char* dtype_name(at::ScalarType dtype);

class H5File {
 public:
  /// Opens an existing file read-only.
  static H5File open_read(const std::string& path);
  /// Opens an existing file for reading and writing.
  static H5File open_readwrite(const std::string& path);
  /// Creates a new file, truncating any file already at `path`.
  static H5File create(const std::string& path);
  /// Writes a whole new file at `path` atomically: `fill` writes it at
  /// `path + suffix`, which is closed and renamed onto `path` only when
  /// `fill` returns; on any error the temporary is removed and whatever was
  /// at `path` is left as it was.
  static void write_atomically(const std::string& path, const std::function<void(H5File&)>& fill,
                               const std::string& suffix = ".tmp");

  H5File(H5File&& other) noexcept;
  H5File& operator=(H5File&& other) noexcept;
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;
  ~H5File();  ///< closes quietly; call close() to see errors

  /// Closes the file now, throwing if HDF5 fails to write it out. Idempotent.
  void close();
  bool is_open() const { return id_ >= 0; }
  bool writable() const { return writable_; }
  /// The path the file was opened with.
  const std::string& filename() const { return filename_; }

  // ------------------------------------------------------------ structure
  /// True when `path` names an existing group or dataset.
  bool exists(const std::string& path) const;
  /// True when `path` names an existing group (the root included).
  bool is_group(const std::string& path) const;
  /// Sorted names of the children of a group.
  std::vector<std::string> list(const std::string& group_path) const;
  /// Creates the group and any missing parents; a no-op if it exists.
  void ensure_group(const std::string& path);

  // ------------------------------------------------------------ tensors
  /// Reads a whole dataset into a contiguous CPU tensor of its stored dtype.
  at::Tensor read_tensor(const std::string& path) const;
  /// The dataset's shape ({} for a scalar), without reading data.
  std::vector<int64_t> shape(const std::string& path) const;
  /// The dtype read_tensor would return, without reading data.
  at::ScalarType dtype(const std::string& path) const;
  /// Writes `t` as a dataset, creating parent groups. Refuses an existing
  /// dataset unless options.overwrite.
  void write_tensor(const std::string& path, const at::Tensor& t, const WriteOptions& options = {});

  /// Creates a dataset of a fixed shape without writing data (rows are filled
  /// later with write_rows). Chunking and gzip as in WriteOptions. Without
  /// gzip its space is allocated now, so later row writes never change the
  /// file's metadata: the property crash-safe activation stores rely on.
  void create_dataset(const std::string& path, at::ScalarType dtype,
                      const std::vector<int64_t>& shape, const WriteOptions& options = {});
  /// Writes `rows` [count, ...] into rows [row0, row0 + count) of an existing
  /// dataset of rank >= 1 whose other dimensions and dtype match.
  void write_rows(const std::string& path, int64_t row0, const at::Tensor& rows);
  /// Reads rows [row0, row0 + count) of a dataset of rank >= 1.
  at::Tensor read_rows(const std::string& path, int64_t row0, int64_t count) const;

  // ------------------------------------------------------------ attributes
  /// `obj_path` is the root (""), a group or a dataset. Writing replaces an
  /// attribute of the same name; a number whose stored type is unchanged is
  /// overwritten in place (one small metadata write, nothing reallocated).
  void write_attr(const std::string& obj_path, const std::string& name, const std::string& value);
  void write_attr(const std::string& obj_path, const std::string& name, const char* value) {
    write_attr(obj_path, name, std::string(value));
  }
  void write_attr(const std::string& obj_path, const std::string& name, int64_t value);
  void write_attr(const std::string& obj_path, const std::string& name, double value);
  /// Other integer types (int, size_t, ...) are stored as int64.
  template <typename T,
            typename = std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, int64_t>>>
  void write_attr(const std::string& obj_path, const std::string& name, T value) {
    write_attr(obj_path, name, static_cast<int64_t>(value));
  }

  /// False also when `obj_path` does not exist.
  bool has_attr(const std::string& obj_path, const std::string& name) const;
  /// A string attribute, variable- or fixed-length (padding removed).
  std::string read_attr_string(const std::string& obj_path, const std::string& name) const;
  /// An integer attribute (any integer type, converted to int64).
  int64_t read_attr_int(const std::string& obj_path, const std::string& name) const;
  /// A float or integer attribute, converted to double.
  double read_attr_double(const std::string& obj_path, const std::string& name) const;

  /// Writes buffered data to disk.
  void flush();

 private:
  H5File(int64_t id, std::string filename, bool writable);
  // Throws unless the file is open (and writable, when `write`).
  void require_open(bool write) const;

  int64_t id_ = -1;  // hid_t (int64_t in HDF5 >= 1.10)
  std::string filename_;
  bool writable_ = false;
};

}  // namespace mechlab::core
