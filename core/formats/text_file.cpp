#include "core/formats/text_file.h"

#include "core/formats/output_file.h"
#include "core/util/error.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace mechlab::core {

void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  // On any failure the temporary goes and whatever was at `path` stays.
  auto fail = [&](const char* doing) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw Error(str_cat("cannot write '", path, "': ", doing, " '", tmp,
                        "' failed: ", system_error_words(err)));
  };
  {
    errno = 0;
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out.good()) fail("creating");
    out << text;
    out.close();
    if (!out.good()) fail("writing");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("renaming");
}

}  // namespace mechlab::core
