// ActivationStoreWriter: appends rows to an activation store (layout and crash
// guarantees in core/store/activation_store.h) and commits them in whole chunks.
//
// Rows arrive in order, as blocks that may overlap what is already committed
// (a resumed job recomputes the batch it was killed in): rows below the
// staged end are skipped, so the finished file is the same whether or not
// the job was interrupted. Use from one thread.
//
// Example:
//   auto w = ActivationStoreWriter::open("acts.h5", spec, /*resume=*/true);
//   w.append(row0, {{"blocks.0.hook_resid_post", acts}}, token_ids, row_source);
//   w.finish();
#pragma once

#include "core/store/activation_store.h"
#include "core/formats/hdf5_file.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>

namespace mechlab::core {

/// What a new store holds; a resumed store must have been created with the
/// same spec (compared field by field, the differing one named).
struct StoreSpec {
  core::StoreHeader header;  ///< rows_committed and complete are ignored
  int gzip_level = 0;        ///< 0 = none; applied when the store is complete
};

class ActivationStoreWriter {
 public:
  /// Creates the store at `path`. If a file is there: with `resume`, reopens
  /// it after checking it matches `spec`; without, refuses (unless
  /// `overwrite`, which starts over).
  static ActivationStoreWriter open(const std::string& path, const StoreSpec& spec, bool resume,
                                    bool overwrite = false);

  ActivationStoreWriter(ActivationStoreWriter&&) noexcept;
  ~ActivationStoreWriter();

  int64_t rows_committed() const { return committed_; }
  int64_t rows_total() const { return spec_.header.rows_total; }
  bool complete() const { return complete_; }
  /// Bytes of activations and row metadata committed by this writer.
  int64_t bytes_written() const { return bytes_written_; }

  /// Appends rows [row0, row0 + n): acts[hook] is [n, d] in the store's
  /// dtype, token_ids int32 [n], row_source int32 [n, 2]. row0 must not be
  /// past the end of what is staged (no gaps).
  void append(int64_t row0, const std::map<std::string, at::Tensor>& acts,
              const at::Tensor& token_ids, const at::Tensor& row_source);
  /// Commits the last partial chunk, compresses if asked, marks complete.
  void finish();

 private:
  ActivationStoreWriter(std::string path, StoreSpec spec, core::H5File file);
  void commit_staged();

  std::string path_;
  StoreSpec spec_;
  std::unique_ptr<core::H5File> file_;
  int64_t committed_ = 0;
  bool complete_ = false;
  int64_t bytes_written_ = 0;
  // Staging for the chunk being filled: rows [committed_, committed_ + staged_).
  std::map<std::string, at::Tensor> stage_;  // hook -> [chunk_rows, d]
  at::Tensor stage_tokens_, stage_source_;   // [chunk_rows], [chunk_rows, 2]
  int64_t staged_ = 0;
};

}  // namespace mechlab::core
