#include "core/formats/hdf5_file.h"

#include "core/formats/output_file.h"
#include "core/util/error.h"

#include <hdf5.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <utility>

namespace mechlab::core {
namespace {

static_assert(std::is_same_v<hid_t, int64_t>, "H5File stores hid_t as int64_t (HDF5 >= 1.10)");

// ------------------------------------------------------------ error checking

// The messages of HDF5's error stack, and whether one of them is a failed
// checksum (a filter such as Fletcher-32 found the stored bytes changed).
struct ErrorWalk {
  std::vector<std::string> msgs;
  bool checksum = false;
};

herr_t collect_error(unsigned /*n*/, const H5E_error2_t* e, void* data) {
  auto* walk = static_cast<ErrorWalk*>(data);
  // HDF5 has no error code of its own for a failed filter checksum: the
  // Fletcher-32 filter reports H5E_READERROR "data error detected by
  // Fletcher32 checksum", so its text is what identifies it.
  if (e->min_num == H5E_READERROR && e->desc != nullptr &&
      std::strstr(e->desc, "checksum") != nullptr) {
    walk->checksum = true;
  }
  std::vector<std::string>* out = &walk->msgs;
  if (e->desc != nullptr && e->desc[0] != '\0') {
    out->emplace_back(e->desc);
  } else {
    char buf[256] = {0};
    if (H5Eget_msg(e->min_num, nullptr, buf, sizeof buf) > 0) out->emplace_back(buf);
  }
  return 0;
}

// HDF5's messages may span lines (the POSIX driver embeds ctime()'s "\n"),
// and a mechlab error is one line: runs of whitespace become one space.
std::string one_line(const std::string& s) {
  std::string out;
  for (char c : s) {
    const bool space = std::isspace(static_cast<unsigned char>(c)) != 0;
    if (space && (out.empty() || out.back() == ' ')) continue;
    out += space ? ' ' : c;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

// The POSIX file driver reports a failed system call as "..., errno = 28,
// error message = '...', ..."; the first such errno on the stack, or 0.
int errno_in(const std::vector<std::string>& msgs) {
  for (const auto& m : msgs) {
    const auto at = m.find("errno = ");
    if (at == std::string::npos) continue;
    const int e = std::atoi(m.c_str() + at + 8);
    if (e > 0) return e;
  }
  return 0;
}

struct Hdf5Failure {
  std::string reason;  // one line: HDF5's API-level and innermost messages
  int sys_errno = 0;   // the failed system call's errno, when HDF5 names one
  bool checksum = false;  // a stored checksum did not match the data read
};

// HDF5's own explanation of the last failure. (Not checked through H5_CALL:
// this runs while reporting.)
Hdf5Failure hdf5_failure() {
  ErrorWalk walk;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &walk);
  H5Eclear2(H5E_DEFAULT);
  const std::vector<std::string>& msgs = walk.msgs;
  Hdf5Failure f;
  f.checksum = walk.checksum;
  f.sys_errno = errno_in(msgs);
  if (msgs.empty()) {
    f.reason = "HDF5 gave no details";
  } else if (msgs.size() == 1 || msgs.front() == msgs.back()) {
    f.reason = one_line(msgs.front());
  } else {
    f.reason = one_line(msgs.front() + ": " + msgs.back());
  }
  return f;
}

[[noreturn]] void fail_h5(const char* call, const char* src, int line, const std::string& context) {
  std::string fn(call);
  fn = fn.substr(0, fn.find('('));
  const char* base = std::strrchr(src, '/');
  const Hdf5Failure f = hdf5_failure();
  const std::string where = str_cat(" [", fn, " at ", base ? base + 1 : src, ":", line, "]");
  if (f.checksum) {
    // HDF5's own words ("data error detected by Fletcher32 checksum") do not
    // say what it means for the user: the bytes on disk changed after writing.
    throw Error(str_cat(one_line(context), ": the stored data does not match its checksum, so "
                        "the file is corrupt (restore or re-create it)", where));
  }
  if (f.sys_errno != 0) {
    // The system's reason is what the user can act on; HDF5's own text around
    // it (buffer addresses, offsets) is noise at this level.
    throw Error(str_cat(one_line(context), ": ", system_error_words(f.sys_errno), where));
  }
  throw Error(str_cat(one_line(context), ": ", f.reason, where));
}

// Negative (or, for size_t results, zero) means failure in the HDF5 C API.
template <typename T, typename Context>
T check_h5(T ret, const char* call, const char* src, int line, const Context& context) {
  bool failed;
  if constexpr (std::is_unsigned_v<T>) {
    failed = ret == 0;
  } else {
    failed = ret < 0;
  }
  if (failed) fail_h5(call, src, line, context());
  return ret;
}

}  // namespace
}  // namespace mechlab::core

/// Checks the result of one HDF5 call; on failure throws mechlab::Error that
/// starts with `context` (a string expression, evaluated only on failure) and
/// ends with HDF5's reason and this call's source location.
#define H5_CALL(expr, context)                                 \
  ::mechlab::core::check_h5((expr), #expr, __FILE__, __LINE__, \
                            [&]() -> std::string { return (context); })

namespace mechlab::core {
namespace {

void init_hdf5() {
  static std::once_flag once;
  std::call_once(once, [] {
    // HDF5 closes every open object again at exit. An object whose close
    // already failed (a disk filled up under it) fails again there, inside
    // library teardown, and that path has crashed the process after mechlab
    // had reported the error. Every H5File is closed by its owner, so the
    // exit-time pass has nothing of ours left to do. Must precede any other
    // HDF5 call.
    H5dont_atexit();
  });
  // A thread-safe HDF5 (Debian's is one) keeps the error stack and its
  // automatic printing per thread: switch the printing off in every thread
  // that touches a file (the store writer runs in its own), or HDF5 dumps
  // its stack on stderr beside mechlab's one-line error.
  // Never throws: it also runs in destructors.
  thread_local bool quiet = false;
  if (!quiet) quiet = H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr) >= 0;
}

/// Owns one HDF5 identifier and closes it with the matching H5?close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, -1)), closer_(o.closer_) {}
  Handle& operator=(Handle&&) = delete;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() {
    // Quiet: this runs on paths that are already throwing. Objects written
    // to are closed with close() first, which reports.
    if (id_ >= 0) closer_(id_);
  }
  hid_t get() const { return id_; }
  /// Closes now and throws on failure: closing a dataset writes out its
  /// cached chunks, so this is where a full disk shows up after a write.
  void close(const std::string& context);

 private:
  hid_t id_;
  Closer closer_;
};

void Handle::close(const std::string& context) {
  if (id_ < 0) return;
  const hid_t id = std::exchange(id_, -1);
  check_h5(closer_(id), "H5Xclose(id)", __FILE__, __LINE__, [&] { return context; });
}

// ------------------------------------------------------------ paths

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::string cur;
  auto push = [&] {
    if (cur.empty()) return;
    MECHLAB_CHECK(cur != "." && cur != "..", "HDF5 path '", path,
                  "' has a '.' or '..' component; use plain names separated by '/'");
    parts.push_back(cur);
    cur.clear();
  };
  for (char c : path) {
    if (c == '/') {
      push();
    } else {
      cur += c;
    }
  }
  push();
  return parts;
}

std::string join_path(const std::vector<std::string>& parts, size_t n) {
  if (n == 0) return "/";
  std::string out;
  for (size_t i = 0; i < n; ++i) out += "/" + parts[i];
  return out;
}

std::string abs_path(const std::string& path) {
  const auto parts = split_path(path);
  return join_path(parts, parts.size());
}

// "'/params/x' in 'model.h5'"
std::string on(const std::string& filename, const std::string& abs) {
  return str_cat("'", abs, "' in '", filename, "'");
}

enum class Kind { missing, group, dataset, other };

Kind kind_of(hid_t file, const std::string& filename, const std::string& path) {
  const auto parts = split_path(path);
  if (parts.empty()) return Kind::group;
  for (size_t i = 1; i <= parts.size(); ++i) {
    const std::string prefix = join_path(parts, i);
    const char* p = prefix.c_str();
    auto ctx = [&] { return "HDF5 error looking up " + on(filename, prefix); };
    if (H5_CALL(H5Lexists(file, p, H5P_DEFAULT), ctx()) <= 0) return Kind::missing;
    // False for a dangling soft or external link.
    if (H5_CALL(H5Oexists_by_name(file, p, H5P_DEFAULT), ctx()) <= 0) return Kind::missing;
    Handle obj(H5_CALL(H5Oopen(file, p, H5P_DEFAULT), ctx()), H5Oclose);
    const H5I_type_t type = H5_CALL(H5Iget_type(obj.get()), ctx());
    if (i == parts.size()) {
      return type == H5I_GROUP ? Kind::group : type == H5I_DATASET ? Kind::dataset : Kind::other;
    }
    if (type != H5I_GROUP) return Kind::missing;  // "a/b" where a is a dataset
  }
  return Kind::missing;  // unreachable
}

Handle open_dataset(hid_t file, const std::string& filename, const std::string& path) {
  const std::string abs = abs_path(path);
  const Kind kind = kind_of(file, filename, abs);
  MECHLAB_CHECK(kind != Kind::missing, "no dataset ", on(filename, abs));
  MECHLAB_CHECK(kind == Kind::dataset, on(filename, abs), " is ",
                kind == Kind::group ? "a group" : "a named datatype", ", not a dataset");
  return Handle(
      H5_CALL(H5Dopen2(file, abs.c_str(), H5P_DEFAULT), "HDF5 error opening " + on(filename, abs)),
      H5Dclose);
}

Handle open_object(hid_t file, const std::string& filename, const std::string& path) {
  const std::string abs = abs_path(path);
  MECHLAB_CHECK(kind_of(file, filename, abs) != Kind::missing, "no group or dataset ",
                on(filename, abs));
  return Handle(
      H5_CALL(H5Oopen(file, abs.c_str(), H5P_DEFAULT), "HDF5 error opening " + on(filename, abs)),
      H5Oclose);
}

// ------------------------------------------------------------ types

constexpr const char* kSupported =
    "float32, float64, float16, bfloat16, int32, int64, uint8, int8 (bool is stored as uint8)";

Handle copy_type(hid_t predefined) {
  return Handle(H5_CALL(H5Tcopy(predefined), std::string("HDF5 error copying a type")), H5Tclose);
}

// 16-bit floats as h5py builds float16: a copy of IEEE f32 with new fields.
Handle half_type(bool bf16, H5T_order_t order) {
  const std::string ctx = "HDF5 error building a 16-bit float type";
  Handle t = copy_type(H5T_IEEE_F32LE);
  if (bf16) {
    H5_CALL(H5Tset_fields(t.get(), 15, 7, 8, 0, 7), ctx);
  } else {
    H5_CALL(H5Tset_fields(t.get(), 15, 10, 5, 0, 10), ctx);
  }
  H5_CALL(H5Tset_size(t.get(), 2), ctx);
  H5_CALL(H5Tset_ebias(t.get(), bf16 ? 127 : 15), ctx);
  H5_CALL(H5Tset_order(t.get(), order), ctx);
  return t;
}

H5T_order_t native_order() {
  return H5_CALL(H5Tget_order(H5T_NATIVE_FLOAT),
                 std::string("HDF5 error reading the native byte order"));
}

/// The HDF5 type for a dtype: as stored in files (`in_file`, little-endian) or
/// in memory (native). Throws for dtypes mechlab does not store.
Handle h5_type(at::ScalarType s, bool in_file, const std::string& what) {
  switch (s) {
    case at::kFloat: return copy_type(in_file ? H5T_IEEE_F32LE : H5T_NATIVE_FLOAT);
    case at::kDouble: return copy_type(in_file ? H5T_IEEE_F64LE : H5T_NATIVE_DOUBLE);
    case at::kHalf: return half_type(false, in_file ? H5T_ORDER_LE : native_order());
    case at::kBFloat16: return half_type(true, in_file ? H5T_ORDER_LE : native_order());
    case at::kInt: return copy_type(in_file ? H5T_STD_I32LE : H5T_NATIVE_INT32);
    case at::kLong: return copy_type(in_file ? H5T_STD_I64LE : H5T_NATIVE_INT64);
    case at::kByte: return copy_type(in_file ? H5T_STD_U8LE : H5T_NATIVE_UINT8);
    case at::kChar: return copy_type(in_file ? H5T_STD_I8LE : H5T_NATIVE_INT8);
    default:
      throw Error(str_cat("cannot store ", what, ": dtype ", dtype_name(s),
                          " is not supported; supported: ", kSupported));
  }
}

struct FloatFields {
  size_t spos, epos, esize, mpos, msize, ebias;
};

FloatFields float_fields(hid_t t, const std::string& ctx) {
  FloatFields f{};
  H5_CALL(H5Tget_fields(t, &f.spos, &f.epos, &f.esize, &f.mpos, &f.msize), ctx);
  f.ebias = H5_CALL(H5Tget_ebias(t), ctx);
  return f;
}

// Human-readable HDF5 type, for error messages.
std::string describe_type(hid_t t, const std::string& ctx) {
  const H5T_class_t cls = H5_CALL(H5Tget_class(t), ctx);
  const size_t size = H5_CALL(H5Tget_size(t), ctx);
  switch (cls) {
    case H5T_INTEGER: {
      const bool is_signed = H5_CALL(H5Tget_sign(t), ctx) != H5T_SGN_NONE;
      return str_cat(is_signed ? "signed " : "unsigned ", size * 8, "-bit integer");
    }
    case H5T_FLOAT: {
      const FloatFields f = float_fields(t, ctx);
      return str_cat(size * 8, "-bit float (", f.esize, "-bit exponent with bias ", f.ebias, ", ",
                     f.msize, "-bit mantissa)");
    }
    case H5T_STRING: return "string";
    case H5T_ENUM:
      return size == 1 ? "1-byte enum (h5py stores numpy bool this way; store uint8 instead)"
                       : "enum";
    case H5T_COMPOUND: return "compound";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length sequence";
    case H5T_OPAQUE: return "opaque";
    case H5T_REFERENCE: return "reference";
    case H5T_BITFIELD: return "bitfield";
    case H5T_TIME: return "time";
    default: return "unknown type";
  }
}

/// The dtype of a stored type, or an error naming `abs` and the type.
at::ScalarType dtype_of(hid_t t, const std::string& filename, const std::string& abs) {
  const std::string ctx = "HDF5 error reading the type of " + on(filename, abs);
  const H5T_class_t cls = H5_CALL(H5Tget_class(t), ctx);
  const size_t size = H5_CALL(H5Tget_size(t), ctx);
  if (cls == H5T_FLOAT) {
    if (size == 4) return at::kFloat;
    if (size == 8) return at::kDouble;
    if (size == 2) {
      const FloatFields f = float_fields(t, ctx);
      if (f.spos == 15 && f.epos == 10 && f.esize == 5 && f.mpos == 0 && f.msize == 10 &&
          f.ebias == 15) {
        return at::kHalf;
      }
      if (f.spos == 15 && f.epos == 7 && f.esize == 8 && f.mpos == 0 && f.msize == 7 &&
          f.ebias == 127) {
        return at::kBFloat16;
      }
    }
  } else if (cls == H5T_INTEGER) {
    const bool is_signed = H5_CALL(H5Tget_sign(t), ctx) != H5T_SGN_NONE;
    if (size == 1) return is_signed ? at::kChar : at::kByte;
    if (size == 4 && is_signed) return at::kInt;
    if (size == 8 && is_signed) return at::kLong;
  }
  throw Error(str_cat("dataset ", on(filename, abs), " has type ", describe_type(t, ctx),
                      ", which mechlab cannot read; supported: ", kSupported));
}

// ------------------------------------------------------------ attributes

std::string attr_on(const std::string& filename, const std::string& obj, const std::string& name) {
  return str_cat("attribute '", name, "' of ", on(filename, abs_path(obj)));
}

Handle open_attr(hid_t file, const std::string& filename, const std::string& obj_path,
                 const std::string& name) {
  Handle obj = open_object(file, filename, obj_path);
  const std::string what = attr_on(filename, obj_path, name);
  MECHLAB_CHECK(H5_CALL(H5Aexists(obj.get(), name.c_str()), "HDF5 error looking up " + what) > 0,
                "no ", what);
  return Handle(
      H5_CALL(H5Aopen(obj.get(), name.c_str(), H5P_DEFAULT), "HDF5 error opening " + what),
      H5Aclose);
}

// Checks that an attribute holds exactly one value.
void require_single(hid_t attr, const std::string& what) {
  Handle space(H5_CALL(H5Aget_space(attr), "HDF5 error reading " + what), H5Sclose);
  const hssize_t n =
      H5_CALL(H5Sget_simple_extent_npoints(space.get()), "HDF5 error reading " + what);
  MECHLAB_CHECK(n == 1, what, " holds ", n, " values, not one");
}

void write_scalar_attr(hid_t file, const std::string& filename, const std::string& obj_path,
                       const std::string& name, hid_t file_type, hid_t mem_type,
                       const void* value) {
  MECHLAB_CHECK(!name.empty(), "attribute names cannot be empty (object ",
                on(filename, abs_path(obj_path)), ")");
  Handle obj = open_object(file, filename, obj_path);
  const std::string ctx = "HDF5 error writing " + attr_on(filename, obj_path, name);
  if (H5_CALL(H5Aexists(obj.get(), name.c_str()), ctx) > 0) {
    // Same stored numeric type, one value: overwrite in place. Activation
    // stores update rows_committed this way, so a commit rewrites one object
    // header and allocates nothing.
    Handle old(H5_CALL(H5Aopen(obj.get(), name.c_str(), H5P_DEFAULT), ctx), H5Aclose);
    Handle old_type(H5_CALL(H5Aget_type(old.get()), ctx), H5Tclose);
    Handle old_space(H5_CALL(H5Aget_space(old.get()), ctx), H5Sclose);
    if (H5_CALL(H5Tget_class(file_type), ctx) != H5T_STRING &&
        H5_CALL(H5Tequal(old_type.get(), file_type), ctx) > 0 &&
        H5_CALL(H5Sget_simple_extent_type(old_space.get()), ctx) == H5S_SCALAR) {
      H5_CALL(H5Awrite(old.get(), mem_type, value), ctx);
      old.close(ctx);
      return;
    }
    H5_CALL(H5Adelete(obj.get(), name.c_str()), ctx);
  }
  Handle space(H5_CALL(H5Screate(H5S_SCALAR), ctx), H5Sclose);
  Handle attr(
      H5_CALL(H5Acreate2(obj.get(), name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
              ctx),
      H5Aclose);
  H5_CALL(H5Awrite(attr.get(), mem_type, value), ctx);
  attr.close(ctx);
}

Handle vlen_string_type(H5T_cset_t cset) {
  const std::string ctx = "HDF5 error building a string type";
  Handle t = copy_type(H5T_C_S1);
  H5_CALL(H5Tset_size(t.get(), H5T_VARIABLE), ctx);
  H5_CALL(H5Tset_cset(t.get(), cset), ctx);
  return t;
}

// The creation property list for a dataset of `dims` (element_size bytes
// each): chunked along rows when asked or when compressed.
Handle dataset_creation(const std::vector<hsize_t>& dims, size_t element_size,
                        const WriteOptions& options, const std::string& where) {
  const std::string ctx = "HDF5 error creating " + where;
  MECHLAB_CHECK(options.chunk_rows() >= 0, "cannot write ", where, ": chunk_rows must be >= 0, got ",
                options.chunk_rows());
  MECHLAB_CHECK(options.gzip_level() >= 0 && options.gzip_level() <= 9, "cannot write ", where,
                ": gzip_level must be 0..9, got ", options.gzip_level());
  Handle dcpl(H5_CALL(H5Pcreate(H5P_DATASET_CREATE), ctx), H5Pclose);
  uint64_t numel = 1;
  for (hsize_t d : dims) numel *= d;
  if (!dims.empty() && numel > 0 &&
      (options.chunk_rows() > 0 || options.gzip_level() > 0 || options.checksum())) {
    const uint64_t row_bytes = numel / dims[0] * element_size;
    uint64_t rows = options.chunk_rows() > 0
                        ? static_cast<uint64_t>(options.chunk_rows())
                        : std::max<uint64_t>(1, (uint64_t(1) << 20) / row_bytes);  // ~1 MiB
    rows = std::min<uint64_t>(rows, dims[0]);
    MECHLAB_CHECK(rows * row_bytes < (uint64_t(1) << 32), "cannot write ", where, ": a chunk of ",
                  rows, " rows is ", rows * row_bytes,
                  " bytes; HDF5 chunks must be under 4 GiB (lower chunk_rows)");
    std::vector<hsize_t> chunk = dims;
    chunk[0] = rows;
    H5_CALL(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), ctx);
    if (options.gzip_level() > 0) {
      H5_CALL(H5Pset_shuffle(dcpl.get()), ctx);
      H5_CALL(H5Pset_deflate(dcpl.get(), static_cast<unsigned>(options.gzip_level())), ctx);
    }
    // Last in the pipeline, so the checksum covers the bytes as stored.
    if (options.checksum()) H5_CALL(H5Pset_fletcher32(dcpl.get()), ctx);
  }
  return dcpl;
}

// Selects rows [row0, row0 + count) of `space` (a dataspace of `dims`) and
// returns a memory dataspace of that extent.
Handle row_slab(hid_t space, const std::vector<hsize_t>& dims, int64_t row0, int64_t count,
                const std::string& ctx) {
  std::vector<hsize_t> start(dims.size(), 0), extent = dims;
  start[0] = static_cast<hsize_t>(row0);
  extent[0] = static_cast<hsize_t>(count);
  H5_CALL(H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, extent.data(), nullptr),
          ctx);
  return Handle(H5_CALL(H5Screate_simple(static_cast<int>(extent.size()), extent.data(), nullptr),
                        ctx),
                H5Sclose);
}

}  // namespace

const char* dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kBool: return "bool";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    default: return c10::toString(s);
  }
}

// ------------------------------------------------------------ open / close

H5File::H5File(int64_t id, std::string filename, bool writable)
    : id_(id), filename_(std::move(filename)), writable_(writable) {}

namespace {

hid_t open_existing(const std::string& path, bool writable) {
  init_hdf5();
  namespace fs = std::filesystem;
  MECHLAB_CHECK(!path.empty(), "cannot open an HDF5 file: the path is empty");
  std::error_code ec;
  MECHLAB_CHECK(!fs::is_directory(path, ec), "cannot open '", path,
                "': it is a directory, not an HDF5 file");
  if (FILE* f = std::fopen(path.c_str(), writable ? "r+b" : "rb")) {
    std::fclose(f);
  } else {
    throw Error(str_cat("cannot open '", path, "': ", std::strerror(errno)));
  }
  bool signature = false;
  try {
    signature = H5_CALL(H5Fis_hdf5(path.c_str()), "cannot open '" + path + "'") > 0;
  } catch (const Error&) {
    signature = false;
  }
  MECHLAB_CHECK(signature, "cannot open '", path,
                "': it is not an HDF5 file or is truncated (no HDF5 signature found)");
  try {
    return H5_CALL(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT),
                   "HDF5");
  } catch (const Error& e) {
    const std::string why = e.what();
    std::string lower = why;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (lower.find("unable to lock") != std::string::npos) {
      throw Error(str_cat("cannot open '", path,
                          "': it is locked by another process (is it still being written?) (", why,
                          ")"));
    }
    throw Error(
        str_cat("cannot open '", path, "': it is not an HDF5 file or is truncated (", why, ")"));
  }
}

}  // namespace

H5File H5File::open_read(const std::string& path) {
  return H5File(open_existing(path, false), path, false);
}

H5File H5File::open_readwrite(const std::string& path) {
  return H5File(open_existing(path, true), path, true);
}

H5File H5File::create(const std::string& path) {
  init_hdf5();
  namespace fs = std::filesystem;
  MECHLAB_CHECK(!path.empty(), "cannot create an HDF5 file: the path is empty");
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  MECHLAB_CHECK(parent.empty() || fs::is_directory(parent, ec), "cannot create '", path,
                "': the directory '", parent.string(), "' does not exist");
  MECHLAB_CHECK(!fs::is_directory(path, ec), "cannot create '", path, "': it is a directory");
  const hid_t id = H5_CALL(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                           "cannot create '" + path + "'");
  return H5File(id, path, true);
}

void H5File::write_atomically(const std::string& path, const std::function<void(H5File&)>& fill,
                              const std::string& suffix) {
  const std::string tmp = path + suffix;
  try {
    H5File file = create(tmp);
    fill(file);
    file.close();
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    MECHLAB_CHECK(!ec, "cannot write '", path, "': renaming '", tmp, "' onto it failed: ",
                  ec.message());
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
}

H5File::H5File(H5File&& other) noexcept
    : id_(std::exchange(other.id_, -1)),
      filename_(std::move(other.filename_)),
      writable_(other.writable_) {}

H5File& H5File::operator=(H5File&& other) noexcept {
  if (this != &other) {
    if (id_ >= 0) H5Fclose(id_);  // noexcept: errors on this path cannot be reported
    id_ = std::exchange(other.id_, -1);
    filename_ = std::move(other.filename_);
    writable_ = other.writable_;
  }
  return *this;
}

H5File::~H5File() {
  if (id_ < 0) return;
  init_hdf5();
  H5Fclose(id_);  // a destructor cannot report; call close() to see errors
}

void H5File::close() {
  if (id_ < 0) return;
  init_hdf5();
  const hid_t id = std::exchange(id_, -1);
  H5_CALL(H5Fclose(id), "HDF5 error closing '" + filename_ + "'");
}

void H5File::require_open(bool write) const {
  init_hdf5();  // this thread's error printing off (cheap after the first call)
  MECHLAB_CHECK(id_ >= 0, "HDF5 file '", filename_, "' is closed");
  MECHLAB_CHECK(!write || writable_, "HDF5 file '", filename_,
                "' is open read-only; open it with open_readwrite or create to change it");
}

void H5File::flush() {
  require_open(false);
  H5_CALL(H5Fflush(id_, H5F_SCOPE_LOCAL), "HDF5 error flushing '" + filename_ + "'");
}

// ------------------------------------------------------------ structure

bool H5File::exists(const std::string& path) const {
  require_open(false);
  const Kind k = kind_of(id_, filename_, path);
  return k == Kind::group || k == Kind::dataset;
}

bool H5File::is_group(const std::string& path) const {
  require_open(false);
  return kind_of(id_, filename_, path) == Kind::group;
}

std::vector<std::string> H5File::list(const std::string& group_path) const {
  require_open(false);
  const std::string abs = abs_path(group_path);
  const Kind kind = kind_of(id_, filename_, abs);
  MECHLAB_CHECK(kind != Kind::missing, "no group ", on(filename_, abs));
  MECHLAB_CHECK(kind == Kind::group, on(filename_, abs), " is not a group");
  const std::string ctx = "HDF5 error listing " + on(filename_, abs);
  Handle group(H5_CALL(H5Gopen2(id_, abs.c_str(), H5P_DEFAULT), ctx), H5Gclose);
  H5G_info_t info;
  H5_CALL(H5Gget_info(group.get(), &info), ctx);
  std::vector<std::string> names;
  names.reserve(info.nlinks);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5_CALL(H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i,
                                                   nullptr, 0, H5P_DEFAULT),
                                ctx);
    std::vector<char> buf(static_cast<size_t>(len) + 1, '\0');
    H5_CALL(H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, buf.data(),
                               buf.size(), H5P_DEFAULT),
            ctx);
    names.emplace_back(buf.data(), static_cast<size_t>(len));
  }
  std::sort(names.begin(), names.end());
  return names;
}

void H5File::ensure_group(const std::string& path) {
  require_open(true);
  const auto parts = split_path(path);
  for (size_t i = 1; i <= parts.size(); ++i) {
    const std::string prefix = join_path(parts, i);
    const Kind kind = kind_of(id_, filename_, prefix);
    if (kind == Kind::group) continue;
    MECHLAB_CHECK(kind == Kind::missing, "cannot create group ", on(filename_, abs_path(path)),
                  ": ", on(filename_, prefix), " exists and is not a group");
    Handle group(H5_CALL(H5Gcreate2(id_, prefix.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                         "HDF5 error creating group " + on(filename_, prefix)),
                 H5Gclose);
    group.close("HDF5 error creating group " + on(filename_, prefix));
  }
}

// ------------------------------------------------------------ tensors

std::vector<int64_t> H5File::shape(const std::string& path) const {
  require_open(false);
  const std::string abs = abs_path(path);
  Handle ds = open_dataset(id_, filename_, abs);
  const std::string ctx = "HDF5 error reading the shape of " + on(filename_, abs);
  Handle space(H5_CALL(H5Dget_space(ds.get()), ctx), H5Sclose);
  const H5S_class_t cls = H5_CALL(H5Sget_simple_extent_type(space.get()), ctx);
  MECHLAB_CHECK(cls != H5S_NULL, "dataset ", on(filename_, abs), " has no data (null dataspace)");
  const int rank = H5_CALL(H5Sget_simple_extent_ndims(space.get()), ctx);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) H5_CALL(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), ctx);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

at::ScalarType H5File::dtype(const std::string& path) const {
  require_open(false);
  const std::string abs = abs_path(path);
  Handle ds = open_dataset(id_, filename_, abs);
  Handle type(
      H5_CALL(H5Dget_type(ds.get()), "HDF5 error reading the type of " + on(filename_, abs)),
      H5Tclose);
  return dtype_of(type.get(), filename_, abs);
}

at::Tensor H5File::read_tensor(const std::string& path) const {
  const std::string abs = abs_path(path);
  const at::ScalarType st = dtype(abs);
  const std::vector<int64_t> dims = shape(abs);
  at::Tensor t = at::empty(dims, at::TensorOptions().dtype(st));
  if (t.numel() == 0) return t;
  Handle ds = open_dataset(id_, filename_, abs);
  Handle mem = h5_type(st, /*in_file=*/false, "dataset " + on(filename_, abs));
  H5_CALL(H5Dread(ds.get(), mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()),
          "HDF5 error reading " + on(filename_, abs));
  return t;
}

void H5File::write_tensor(const std::string& path, const at::Tensor& t,
                          const WriteOptions& options) {
  require_open(true);
  const auto parts = split_path(path);
  MECHLAB_CHECK(!parts.empty(), "write_tensor: the root of '", filename_,
                "' is a group; give a dataset path");
  const std::string abs = join_path(parts, parts.size());
  const std::string where = on(filename_, abs);
  MECHLAB_CHECK(t.defined(), "cannot write ", where, ": the tensor is undefined");

  at::Tensor c = t.detach().to(at::kCPU);
  if (c.scalar_type() == at::kBool) c = c.to(at::kByte);
  c = c.contiguous();
  Handle file_type = h5_type(c.scalar_type(), /*in_file=*/true, where);
  Handle mem_type = h5_type(c.scalar_type(), /*in_file=*/false, where);

  ensure_group(join_path(parts, parts.size() - 1));
  const Kind kind = kind_of(id_, filename_, abs);
  if (kind != Kind::missing) {
    MECHLAB_CHECK(kind == Kind::dataset, "cannot write ", where, ": a group of that name exists");
    MECHLAB_CHECK(options.overwrite(), "cannot write ", where,
                  ": the dataset already exists (set WriteOptions::overwrite to replace it)");
    H5_CALL(H5Ldelete(id_, abs.c_str(), H5P_DEFAULT), "HDF5 error replacing " + where);
  }

  const std::string ctx = "HDF5 error writing " + where;
  const std::vector<hsize_t> dims(c.sizes().begin(), c.sizes().end());
  Handle space(
      H5_CALL(dims.empty() ? H5Screate(H5S_SCALAR)
                           : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
              ctx),
      H5Sclose);
  Handle dcpl = dataset_creation(dims, c.element_size(), options, where);
  {
    Handle ds(H5_CALL(H5Dcreate2(id_, abs.c_str(), file_type.get(), space.get(), H5P_DEFAULT,
                                 dcpl.get(), H5P_DEFAULT),
                      ctx),
              H5Dclose);
    if (c.numel() > 0) {
      H5_CALL(H5Dwrite(ds.get(), mem_type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, c.const_data_ptr()),
              ctx);
    }
    ds.close(ctx);
  }
  if (c.scalar_type() == at::kBFloat16) write_attr(abs, "mechlab_dtype", std::string("bfloat16"));
}

void H5File::create_dataset(const std::string& path, at::ScalarType dtype,
                            const std::vector<int64_t>& shape, const WriteOptions& options) {
  require_open(true);
  const auto parts = split_path(path);
  MECHLAB_CHECK(!parts.empty(), "create_dataset: the root of '", filename_,
                "' is a group; give a dataset path");
  const std::string abs = join_path(parts, parts.size());
  const std::string where = on(filename_, abs);
  MECHLAB_CHECK(!options.checksum(), "cannot create ", where, ": checksums are for write_tensor; "
                "a dataset filled by write_rows keeps unfiltered chunks so that its chunks never move");
  if (dtype == at::kBool) dtype = at::kByte;
  Handle file_type = h5_type(dtype, /*in_file=*/true, where);
  ensure_group(join_path(parts, parts.size() - 1));
  MECHLAB_CHECK(kind_of(id_, filename_, abs) == Kind::missing, "cannot create ", where,
                ": it already exists");
  const std::vector<hsize_t> dims(shape.begin(), shape.end());
  const std::string ctx = "HDF5 error creating " + where;
  Handle space(
      H5_CALL(dims.empty() ? H5Screate(H5S_SCALAR)
                           : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
              ctx),
      H5Sclose);
  Handle dcpl = dataset_creation(dims, c10::elementSize(dtype), options, where);
  if (options.gzip_level() == 0) {
    // All space now, no fill: later row writes touch raw data only.
    H5_CALL(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY), ctx);
    H5_CALL(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), ctx);
  }
  {
    Handle ds(H5_CALL(H5Dcreate2(id_, abs.c_str(), file_type.get(), space.get(), H5P_DEFAULT,
                                 dcpl.get(), H5P_DEFAULT),
                      ctx),
              H5Dclose);
    ds.close(ctx);
  }
  if (dtype == at::kBFloat16) write_attr(abs, "mechlab_dtype", std::string("bfloat16"));
}

void H5File::write_rows(const std::string& path, int64_t row0, const at::Tensor& rows) {
  require_open(true);
  const std::string abs = abs_path(path);
  const std::string where = on(filename_, abs);
  MECHLAB_CHECK(rows.defined() && rows.dim() >= 1, "cannot write rows of ", where,
                ": give a tensor of rank >= 1");
  const std::vector<int64_t> dims = shape(abs);
  const at::ScalarType st = dtype(abs);
  MECHLAB_CHECK(dims.size() == static_cast<size_t>(rows.dim()), "cannot write rows of ", where,
                ": the dataset has rank ", dims.size(), ", the rows rank ", rows.dim());
  for (size_t i = 1; i < dims.size(); ++i) {
    MECHLAB_CHECK(dims[i] == rows.size(static_cast<int64_t>(i)), "cannot write rows of ", where,
                  ": dimension ", i, " is ", dims[i], " in the file and ",
                  rows.size(static_cast<int64_t>(i)), " in the rows");
  }
  MECHLAB_CHECK(row0 >= 0 && row0 + rows.size(0) <= dims[0], "cannot write rows [", row0, ", ",
                row0 + rows.size(0), ") of ", where, ": it has ", dims[0], " rows");
  at::Tensor c = rows.detach().to(at::kCPU);
  if (c.scalar_type() == at::kBool) c = c.to(at::kByte);
  MECHLAB_CHECK(c.scalar_type() == st, "cannot write rows of ", where, ": the dataset is ",
                dtype_name(st), ", the rows are ", dtype_name(c.scalar_type()));
  if (c.size(0) == 0) return;
  c = c.contiguous();
  const std::string ctx = "HDF5 error writing rows of " + where;
  Handle ds = open_dataset(id_, filename_, abs);
  Handle space(H5_CALL(H5Dget_space(ds.get()), ctx), H5Sclose);
  const std::vector<hsize_t> hdims(dims.begin(), dims.end());
  Handle mem_space = row_slab(space.get(), hdims, row0, c.size(0), ctx);
  Handle mem_type = h5_type(st, /*in_file=*/false, where);
  H5_CALL(H5Dwrite(ds.get(), mem_type.get(), mem_space.get(), space.get(), H5P_DEFAULT,
                   c.const_data_ptr()),
          ctx);
  // Chunked rows may sit in the dataset's chunk cache until it is closed.
  ds.close(ctx);
}

at::Tensor H5File::read_rows(const std::string& path, int64_t row0, int64_t count) const {
  require_open(false);
  const std::string abs = abs_path(path);
  const std::string where = on(filename_, abs);
  const std::vector<int64_t> dims = shape(abs);
  MECHLAB_CHECK(!dims.empty(), "cannot read rows of ", where, ": it is a scalar");
  MECHLAB_CHECK(row0 >= 0 && count >= 0 && row0 + count <= dims[0], "cannot read rows [", row0,
                ", ", row0 + count, ") of ", where, ": it has ", dims[0], " rows");
  const at::ScalarType st = dtype(abs);
  std::vector<int64_t> out_dims = dims;
  out_dims[0] = count;
  at::Tensor t = at::empty(out_dims, at::TensorOptions().dtype(st));
  if (t.numel() == 0) return t;
  const std::string ctx = "HDF5 error reading rows of " + where;
  Handle ds = open_dataset(id_, filename_, abs);
  Handle space(H5_CALL(H5Dget_space(ds.get()), ctx), H5Sclose);
  const std::vector<hsize_t> hdims(dims.begin(), dims.end());
  Handle mem_space = row_slab(space.get(), hdims, row0, count, ctx);
  Handle mem_type = h5_type(st, /*in_file=*/false, where);
  H5_CALL(H5Dread(ds.get(), mem_type.get(), mem_space.get(), space.get(), H5P_DEFAULT,
                  t.data_ptr()),
          ctx);
  return t;
}

// ------------------------------------------------------------ attributes

void H5File::write_attr(const std::string& obj_path, const std::string& name,
                        const std::string& value) {
  require_open(true);
  MECHLAB_CHECK(value.find('\0') == std::string::npos, "cannot write ",
                attr_on(filename_, obj_path, name), ": the string contains a NUL byte");
  Handle type = vlen_string_type(H5T_CSET_UTF8);
  const char* p = value.c_str();
  write_scalar_attr(id_, filename_, obj_path, name, type.get(), type.get(), &p);
}

void H5File::write_attr(const std::string& obj_path, const std::string& name, int64_t value) {
  require_open(true);
  write_scalar_attr(id_, filename_, obj_path, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void H5File::write_attr(const std::string& obj_path, const std::string& name, double value) {
  require_open(true);
  write_scalar_attr(id_, filename_, obj_path, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

bool H5File::has_attr(const std::string& obj_path, const std::string& name) const {
  require_open(false);
  const std::string abs = abs_path(obj_path);
  if (kind_of(id_, filename_, abs) == Kind::missing) return false;
  return H5_CALL(H5Aexists_by_name(id_, abs.c_str(), name.c_str(), H5P_DEFAULT),
                 "HDF5 error looking up " + attr_on(filename_, abs, name)) > 0;
}

std::string H5File::read_attr_string(const std::string& obj_path, const std::string& name) const {
  require_open(false);
  const std::string what = attr_on(filename_, obj_path, name);
  const std::string ctx = "HDF5 error reading " + what;
  Handle attr = open_attr(id_, filename_, obj_path, name);
  Handle type(H5_CALL(H5Aget_type(attr.get()), ctx), H5Tclose);
  MECHLAB_CHECK(H5_CALL(H5Tget_class(type.get()), ctx) == H5T_STRING, what, " is a ",
                describe_type(type.get(), ctx), ", not a string");
  require_single(attr.get(), what);

  if (H5_CALL(H5Tis_variable_str(type.get()), ctx) > 0) {
    Handle mem = vlen_string_type(H5_CALL(H5Tget_cset(type.get()), ctx));
    char* buf = nullptr;
    H5_CALL(H5Aread(attr.get(), mem.get(), &buf), ctx);
    std::string out = buf != nullptr ? std::string(buf) : std::string();
    H5_CALL(H5free_memory(buf), ctx);
    return out;
  }
  const size_t size = H5_CALL(H5Tget_size(type.get()), ctx);
  std::vector<char> buf(size, '\0');
  H5_CALL(H5Aread(attr.get(), type.get(), buf.data()), ctx);
  std::string out(buf.data(), size);
  out = out.substr(0, out.find('\0'));
  if (H5_CALL(H5Tget_strpad(type.get()), ctx) == H5T_STR_SPACEPAD) {
    out.erase(out.find_last_not_of(' ') + 1);
  }
  return out;
}

int64_t H5File::read_attr_int(const std::string& obj_path, const std::string& name) const {
  require_open(false);
  const std::string what = attr_on(filename_, obj_path, name);
  const std::string ctx = "HDF5 error reading " + what;
  Handle attr = open_attr(id_, filename_, obj_path, name);
  Handle type(H5_CALL(H5Aget_type(attr.get()), ctx), H5Tclose);
  MECHLAB_CHECK(H5_CALL(H5Tget_class(type.get()), ctx) == H5T_INTEGER, what, " is a ",
                describe_type(type.get(), ctx), ", not an integer");
  require_single(attr.get(), what);
  int64_t value = 0;
  H5_CALL(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), ctx);
  return value;
}

double H5File::read_attr_double(const std::string& obj_path, const std::string& name) const {
  require_open(false);
  const std::string what = attr_on(filename_, obj_path, name);
  const std::string ctx = "HDF5 error reading " + what;
  Handle attr = open_attr(id_, filename_, obj_path, name);
  Handle type(H5_CALL(H5Aget_type(attr.get()), ctx), H5Tclose);
  const H5T_class_t cls = H5_CALL(H5Tget_class(type.get()), ctx);
  MECHLAB_CHECK(cls == H5T_FLOAT || cls == H5T_INTEGER, what, " is a ",
                describe_type(type.get(), ctx), ", not a number");
  require_single(attr.get(), what);
  double value = 0;
  H5_CALL(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &value), ctx);
  return value;
}

}  // namespace mechlab::core
