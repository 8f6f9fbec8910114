#include "core/formats/text_file.h"

#include "core/util/error.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace mechlab::core {

void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MECHLAB_CHECK(out.good(), "cannot write '", tmp, "': ", std::strerror(errno));
    out << text;
    out.close();
    MECHLAB_CHECK(out.good(), "writing '", tmp, "' failed: ", std::strerror(errno));
  }
  MECHLAB_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path,
                "': ", std::strerror(errno));
}

}  // namespace mechlab::core
