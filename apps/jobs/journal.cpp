#include "apps/jobs/journal.h"

#include "core/formats/output_file.h"
#include "core/util/error.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

namespace mechlab::jobs {

JournalContents read_journal(const std::string& path) {
  JournalContents out;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    MECHLAB_CHECK(errno == ENOENT, "cannot read the journal '", path, "': ", core::system_error_words(errno));
    return out;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  size_t start = 0;
  int64_t line = 0;
  while (start < text.size()) {
    ++line;
    const size_t nl = text.find('\n', start);
    if (nl == std::string::npos) {  // cut short by a kill: ignored
      out.truncated_tail = true;
      break;
    }
    const std::string body = text.substr(start, nl - start);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(body);
    } catch (const nlohmann::json::parse_error&) {
      throw Error(str_cat("journal ", path, " line ", line,
                          " is not JSON; the file is damaged: delete it to start the job afresh"));
    }
    MECHLAB_CHECK(j.is_object(), "journal ", path, " line ", line,
                  " is not a JSON object; the file is damaged: delete it to start the job afresh");
    out.entries.push_back(std::move(j));
    start = nl + 1;
    out.valid_bytes = static_cast<int64_t>(start);
  }
  return out;
}

JournalWriter::JournalWriter(const std::string& path, int64_t keep_bytes) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  MECHLAB_CHECK(fd_ >= 0, "cannot open the journal '", path, "': ", core::system_error_words(errno));
  if (::ftruncate(fd_, keep_bytes) != 0 || ::lseek(fd_, keep_bytes, SEEK_SET) < 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    throw Error(str_cat("cannot prepare the journal '", path, "': ", core::system_error_words(err)));
  }
}

JournalWriter::~JournalWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void JournalWriter::append(const nlohmann::json& entry) {
  MECHLAB_CHECK(fd_ >= 0, "the journal '", path_, "' is closed");
  const std::string line = entry.dump() + "\n";
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    MECHLAB_CHECK(n > 0, "cannot write the journal '", path_, "': ", core::system_error_words(errno));
    done += static_cast<size_t>(n);
  }
  if (std::chrono::steady_clock::now() - last_sync_ >= std::chrono::seconds(1)) sync();
}

void JournalWriter::sync() {
  MECHLAB_CHECK(fd_ >= 0, "the journal '", path_, "' is closed");
  MECHLAB_CHECK(::fsync(fd_) == 0, "cannot flush the journal '", path_, "' to disk: ",
                core::system_error_words(errno));
  last_sync_ = std::chrono::steady_clock::now();
}

void JournalWriter::close() {
  if (fd_ < 0) return;
  sync();
  const int fd = fd_;
  fd_ = -1;
  MECHLAB_CHECK(::close(fd) == 0, "cannot close the journal '", path_, "': ", core::system_error_words(errno));
}

}  // namespace mechlab::jobs
