// Errors. Two kinds (docs/ARCHITECTURE.md, "Errors and logging"):
//  - a user's mistake (bad file, unknown hook, wrong shape) throws
//    mechlab::Error whose message names the thing and says what to do;
//  - a broken invariant inside mechlab is MECHLAB_ASSERT, which also throws
//    (so tests see it) but says it is a bug.
// The CLI catches mechlab::Error at the top and prints one line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace mechlab {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void append_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append_all(os, rest...);
}
}  // namespace detail

/// Concatenates its arguments with operator<< into a string.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::append_all(os, args...);
  return os.str();
}

}  // namespace mechlab

/// Throws mechlab::Error built from the remaining arguments unless `cond`.
#define MECHLAB_CHECK(cond, ...)                                   \
  do {                                                             \
    if (!(cond)) throw ::mechlab::Error(::mechlab::str_cat(__VA_ARGS__)); \
  } while (0)

/// Internal invariant; a failure is a mechlab bug, not a user error.
#define MECHLAB_ASSERT(cond)                                                         \
  do {                                                                               \
    if (!(cond))                                                                     \
      throw ::mechlab::Error(::mechlab::str_cat("internal error (a mechlab bug): ",  \
                                                #cond, " at ", __FILE__, ":", __LINE__)); \
  } while (0)
