#include "core/formats/output_file.h"

#include "core/formats/hdf5_file.h"
#include "core/util/error.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace mechlab::core {

std::string system_error_words(int err) {
  switch (err) {
    case ENOSPC:
      return "no space left on device; free some space or write to another disk";
    case EDQUOT:
      return "disk quota exceeded (no space left on device for this user); free some space or "
             "write elsewhere";
    case EFBIG:
      return "file too large (no space left on device within the file size limit, see "
             "`ulimit -f`); raise the limit or write elsewhere";
    default: {
      std::string s = std::strerror(err);
      if (!s.empty()) s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
      return s;
    }
  }
}

void require_not_same_file(const std::string& out, const std::string& what_out,
                           const std::string& input, const std::string& what_in) {
  struct stat a {}, b {};
  // stat follows symlinks, and device + inode identify the file whatever
  // path leads to it. A missing output cannot be an input.
  if (::stat(out.c_str(), &a) != 0 || ::stat(input.c_str(), &b) != 0) return;
  auto refuse = [&](const std::string& in) {
    throw Error(str_cat(what_out, " '", out, "' is the same file as ", what_in, " '", in,
                        "' being read; writing it would destroy the input, so choose another "
                        "output path"));
  };
  if (a.st_dev == b.st_dev && a.st_ino == b.st_ino) refuse(input);
  if (S_ISDIR(b.st_mode)) {
    // A model given as a folder (Hugging Face) is read file by file.
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(input, ec)) {
      struct stat c {};
      if (::stat(e.path().c_str(), &c) == 0 && c.st_dev == a.st_dev && c.st_ino == a.st_ino) {
        refuse(e.path().string());
      }
    }
  }
}

std::string mechlab_format_of(const std::string& path) {
  try {
    H5File f = H5File::open_read(path);
    if (!f.has_attr("", "mechlab_format")) return "";
    return f.read_attr_string("", "mechlab_format");
  } catch (const Error&) {
    return "";  // not HDF5, unreadable: not a mechlab file
  }
}

void require_replaceable(const std::string& path, const std::string& format, bool overwrite,
                         const std::string& allow) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;  // nothing there
  MECHLAB_CHECK(!S_ISDIR(st.st_mode), "cannot write ", format, " '", path,
                "': it is a directory; give a file path");
  const std::string have = mechlab_format_of(path);
  MECHLAB_CHECK(have.empty() || have == format, "'", path, "' is a mechlab '", have,
                "' file; refusing to replace it with a '", format, "' file (even with ", allow,
                "), so choose another output path");
  MECHLAB_CHECK(overwrite, format, " '", path, "' already exists; pass ", allow,
                " to replace it or choose another output path");
}

}  // namespace mechlab::core
