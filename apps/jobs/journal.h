// The resume journal of a long discovery job (ACDC): journal.jsonl in the
// job's output folder, one JSON object per decided step, each line written
// as the method reports it, so that a job killed at any moment resumes from
// its last whole line. A kill loses nothing the kernel has accepted; lines
// reach the disk itself (fsync) at most a second apart and at close, so a
// power cut loses at most that second of decisions. (An fsync per line made
// a 2,000-edge ACDC 10x slower on a local disk.) The job removes the journal
// once its outputs are written.
//
// Reading: a last line without its newline is a write the kill cut short
// and is ignored (the writer truncates it away before appending); any other
// line that is not a JSON object is an error naming the file and the line.
//
// Example:
//   JournalContents old = read_journal(dir + "/journal.jsonl");
//   JournalWriter w(dir + "/journal.jsonl", old.valid_bytes);
//   w.append({{"edge", "a0.h3 -> a1.h2<q>"}, {"kept", false}, {"metric", 0.12}});
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::jobs {

struct JournalContents {
  std::vector<nlohmann::json> entries;  ///< the whole lines, in order
  int64_t valid_bytes = 0;              ///< bytes up to the end of the last whole line
  bool truncated_tail = false;          ///< a cut-off last line was ignored
};

/// The journal at `path`; a missing file is an empty journal.
JournalContents read_journal(const std::string& path);

class JournalWriter {
 public:
  /// Opens (creating) `path` for appending after its first `keep_bytes`
  /// bytes (what read_journal found whole); anything after is cut off.
  JournalWriter(const std::string& path, int64_t keep_bytes = 0);
  ~JournalWriter();
  JournalWriter(const JournalWriter&) = delete;
  JournalWriter& operator=(const JournalWriter&) = delete;

  /// One line: the entry's compact JSON and "\n", written (fsync'ed when the
  /// last fsync is a second old); throws mechlab::Error naming the file when
  /// the write fails.
  void append(const nlohmann::json& entry);
  /// Flushes every line to the disk (fsync).
  void sync();
  /// Flushes, then closes, checking both. Idempotent.
  void close();

 private:
  std::string path_;
  int fd_ = -1;
  std::chrono::steady_clock::time_point last_sync_;
};

}  // namespace mechlab::jobs
