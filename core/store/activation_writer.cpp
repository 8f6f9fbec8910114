#include "core/store/activation_writer.h"

#include "core/formats/output_file.h"
#include "core/util/error.h"
#include "core/log/log.h"

#include <nlohmann/json.hpp>

#include <sys/resource.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>

namespace mechlab::core {
namespace {

using core::H5File;
using core::StoreHeader;

const char* store_dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default:
      throw Error(str_cat("activation stores hold float32, bfloat16 or float16, not ",
                          core::dtype_name(s)));
  }
}

void write_header(H5File& f, const StoreHeader& h) {
  nlohmann::json shapes = nlohmann::json::object();
  for (const auto& [name, shape] : h.hook_shapes) shapes[name] = shape;
  f.write_attr("", "mechlab_format", std::string(core::kActivationsFormat));
  f.write_attr("", "mechlab_version", core::kActivationsVersion);
  f.write_attr("", "model", h.model);
  f.write_attr("", "config_hash", h.config_hash);
  f.write_attr("", "hooks", nlohmann::json(h.hooks).dump());
  f.write_attr("", "hook_shapes", shapes.dump());
  f.write_attr("", "dtype", std::string(store_dtype_name(h.dtype)));
  f.write_attr("", "rows_total", h.rows_total);
  f.write_attr("", "chunk_rows", h.chunk_rows);
  f.write_attr("", "rows_committed", h.rows_committed);
  f.write_attr("", "complete", static_cast<int64_t>(h.complete));
  f.write_attr("", "job", h.job);
}

// Creates the whole structure at path.tmp and renames it into place, so a
// store either does not exist or has every dataset allocated.
void create_store(const std::string& path, const StoreHeader& h) {
  H5File::write_atomically(path, [&](H5File& f) {
    core::WriteOptions chunked;
    chunked.chunk_rows(h.chunk_rows);
    for (const auto& name : h.hooks) {
      f.create_dataset("acts/" + name, h.dtype, {h.rows_total, h.width(name)}, chunked);
    }
    f.create_dataset("token_ids", at::kInt, {h.rows_total}, chunked);
    f.create_dataset("row_source", at::kInt, {h.rows_total, 2}, chunked);
    StoreHeader fresh = h;
    fresh.rows_committed = 0;
    fresh.complete = false;
    write_header(f, fresh);
  });
}

// The bytes a whole store takes (activations and row metadata; HDF5's own
// metadata is small beside them).
int64_t store_bytes(const StoreHeader& h) {
  int64_t row = 4 + 2 * 4;  // token id + (example, position), int32
  for (const auto& name : h.hooks) row += h.width(name) * c10::elementSize(h.dtype);
  return row * h.rows_total;
}

// A store is written in place (that is what makes it resumable), so once the
// new one is renamed over the old, the old is gone. Refuse up front unless
// the whole new store fits beside the old one, rather than lose the old one
// to a full disk halfway. (Counting the old store's blocks as free would let
// a disk that holds only one store through, and fail it halfway.)
void require_room_to_replace(const std::string& path, const StoreHeader& h) {
  const int64_t need = store_bytes(h);
  struct rlimit lim {};
  if (::getrlimit(RLIMIT_FSIZE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
      static_cast<uint64_t>(need) > lim.rlim_cur) {
    throw Error(str_cat("cannot replace activation store '", path, "': the new store needs ",
                        need, " bytes: ", core::system_error_words(EFBIG)));
  }
  std::error_code ec;
  const std::string dir = std::filesystem::absolute(path, ec).parent_path().string();
  struct statvfs fs {};
  if (::statvfs(dir.c_str(), &fs) != 0) return;
  const uint64_t room = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  MECHLAB_CHECK(static_cast<uint64_t>(need) <= room, "cannot replace activation store '", path,
                "': the new store needs ", need, " bytes and the file system has room for ", room,
                ": ", core::system_error_words(ENOSPC), " (the old store is left as it was)");
}

// A resumed store must be the same job: same model, hooks, dtype, rows,
// chunking and producing job.
void require_same(const std::string& path, const StoreHeader& file, const StoreHeader& want) {
  auto differ = [&](const char* what, const std::string& have, const std::string& asked) {
    throw Error(str_cat("cannot resume activation store '", path, "': its ", what, " is ", have,
                        " but this run asks for ", asked,
                        ". Resume with the same model, dataset and options, or pass `overwrite` "
                        "to start over"));
  };
  if (file.model != want.model) differ("model", file.model, want.model);
  if (file.config_hash != want.config_hash) {
    differ("model config hash", file.config_hash, want.config_hash);
  }
  if (file.hooks != want.hooks) {
    differ("hook list", nlohmann::json(file.hooks).dump(), nlohmann::json(want.hooks).dump());
  }
  if (file.dtype != want.dtype) {
    differ("dtype", store_dtype_name(file.dtype), store_dtype_name(want.dtype));
  }
  if (file.rows_total != want.rows_total) {
    differ("row count", std::to_string(file.rows_total), std::to_string(want.rows_total));
  }
  if (file.chunk_rows != want.chunk_rows) {
    differ("chunk_rows", std::to_string(file.chunk_rows), std::to_string(want.chunk_rows));
  }
  if (file.job != want.job) differ("job", file.job, want.job);
}

}  // namespace

ActivationStoreWriter::ActivationStoreWriter(std::string path, StoreSpec spec, H5File file)
    : path_(std::move(path)), spec_(std::move(spec)), file_(std::make_unique<H5File>(std::move(file))) {
  const StoreHeader& h = spec_.header;
  for (const auto& name : h.hooks) {
    stage_[name] = at::empty({h.chunk_rows, h.width(name)}, at::TensorOptions().dtype(h.dtype));
  }
  stage_tokens_ = at::empty({h.chunk_rows}, at::kInt);
  stage_source_ = at::empty({h.chunk_rows, 2}, at::kInt);
}

ActivationStoreWriter::ActivationStoreWriter(ActivationStoreWriter&&) noexcept = default;
ActivationStoreWriter::~ActivationStoreWriter() = default;

ActivationStoreWriter ActivationStoreWriter::open(const std::string& path, const StoreSpec& spec,
                                                  bool resume, bool overwrite) {
  const StoreHeader& h = spec.header;
  MECHLAB_CHECK(h.chunk_rows > 0, "chunk_rows must be positive, got ", h.chunk_rows);
  MECHLAB_CHECK(!h.hooks.empty(), "an activation store needs at least one hook");
  MECHLAB_CHECK(spec.gzip_level >= 0 && spec.gzip_level <= 9, "gzip level must be 0..9, got ",
                spec.gzip_level);
  store_dtype_name(h.dtype);  // refuses other dtypes
  const bool exists = std::filesystem::exists(path);
  if (exists && !resume && !overwrite) {
    throw Error(str_cat("activation store '", path,
                        "' already exists; pass `resume` to continue it or `overwrite` to "
                        "replace it"));
  }
  if (exists && overwrite) {
    // `overwrite` replaces a store, never a checkpoint or dataset given by mistake.
    core::require_replaceable(path, core::kActivationsFormat, true, "`overwrite`");
    require_room_to_replace(path, h);
  }
  if (!exists || overwrite) {
    create_store(path, h);
  }
  H5File file = H5File::open_readwrite(path);
  const StoreHeader have = core::read_store_header(file);
  require_same(path, have, h);
  ActivationStoreWriter w(path, spec, std::move(file));
  w.committed_ = have.rows_committed;
  w.complete_ = have.complete;
  if (exists && resume && !overwrite) {
    log::info(str_cat("resuming '", path, "' at row ", have.rows_committed, " of ",
                      have.rows_total, have.complete ? " (already complete)" : ""));
  }
  return w;
}

void ActivationStoreWriter::append(int64_t row0, const std::map<std::string, at::Tensor>& acts,
                                   const at::Tensor& token_ids, const at::Tensor& row_source) {
  const StoreHeader& h = spec_.header;
  MECHLAB_CHECK(!complete_, "activation store '", path_, "' is complete; nothing more to append");
  const int64_t n = token_ids.size(0);
  const int64_t end = committed_ + staged_;
  MECHLAB_ASSERT(row0 <= end);
  MECHLAB_CHECK(row0 + n <= h.rows_total, "rows [", row0, ", ", row0 + n,
                ") go past the end of activation store '", path_, "' (", h.rows_total, " rows)");
  MECHLAB_ASSERT(row_source.size(0) == n);
  for (const auto& name : h.hooks) {
    auto it = acts.find(name);
    MECHLAB_ASSERT(it != acts.end() && it->second.size(0) == n &&
                   it->second.size(1) == h.width(name) && it->second.scalar_type() == h.dtype);
  }
  // Skip rows already committed or staged (a resumed job recomputes them).
  int64_t i = std::max<int64_t>(0, end - row0);
  while (i < n) {
    const int64_t take = std::min(n - i, h.chunk_rows - staged_);
    for (const auto& name : h.hooks) {
      stage_[name].narrow(0, staged_, take).copy_(acts.at(name).narrow(0, i, take));
    }
    stage_tokens_.narrow(0, staged_, take).copy_(token_ids.narrow(0, i, take));
    stage_source_.narrow(0, staged_, take).copy_(row_source.narrow(0, i, take));
    staged_ += take;
    i += take;
    if (staged_ == h.chunk_rows) commit_staged();
  }
}

void ActivationStoreWriter::commit_staged() {
  if (staged_ == 0) return;
  // Data first, flushed; only then the counter that makes it visible.
  for (const auto& name : spec_.header.hooks) {
    at::Tensor block = stage_[name].narrow(0, 0, staged_);
    file_->write_rows("acts/" + name, committed_, block);
    bytes_written_ += block.numel() * block.element_size();
  }
  file_->write_rows("token_ids", committed_, stage_tokens_.narrow(0, 0, staged_));
  file_->write_rows("row_source", committed_, stage_source_.narrow(0, 0, staged_));
  constexpr int64_t kRowMetaBytes = 4 + 2 * 4;  // token id + (example, position), int32
  bytes_written_ += staged_ * kRowMetaBytes;
  file_->flush();
  // The counter moves (on disk, then here) only once the rows and then the
  // counter itself have reached the file without error: a failed write,
  // close or flush throws before, and the store still says what it holds.
  const int64_t next = committed_ + staged_;
  file_->write_attr("", "rows_committed", next);
  file_->flush();
  committed_ = next;
  staged_ = 0;
}

void ActivationStoreWriter::finish() {
  if (complete_) return;
  commit_staged();
  const StoreHeader& h = spec_.header;
  MECHLAB_CHECK(committed_ == h.rows_total, "activation store '", path_, "' has ", committed_,
                " of ", h.rows_total, " rows; cannot finish it before every row is written");
  if (spec_.gzip_level == 0) {
    file_->write_attr("", "complete", int64_t{1});
    file_->close();
    complete_ = true;
    return;
  }
  // Compressed copy written beside the store, renamed over it when whole: a
  // kill here leaves the complete uncompressed store, and resuming redoes this.
  H5File::write_atomically(
      path_,
      [&](H5File& out) {
        core::WriteOptions gz;
        gz.chunk_rows(h.chunk_rows);
        gz.gzip_level(spec_.gzip_level);
        auto copy = [&](const std::string& ds, at::ScalarType dtype, std::vector<int64_t> shape) {
          out.create_dataset(ds, dtype, shape, gz);
          for (int64_t r = 0; r < h.rows_total; r += h.chunk_rows) {
            const int64_t n = std::min(h.chunk_rows, h.rows_total - r);
            out.write_rows(ds, r, file_->read_rows(ds, r, n));
          }
        };
        for (const auto& name : h.hooks) {
          copy("acts/" + name, h.dtype, {h.rows_total, h.width(name)});
        }
        copy("token_ids", at::kInt, {h.rows_total});
        copy("row_source", at::kInt, {h.rows_total, 2});
        StoreHeader done = h;
        done.rows_committed = h.rows_total;
        done.complete = true;
        write_header(out, done);
        out.write_attr("", "gzip_level", static_cast<int64_t>(spec_.gzip_level));
        file_->close();  // the uncompressed store is replaced next
      },
      ".gz.tmp");
  complete_ = true;
}

}  // namespace mechlab::core
