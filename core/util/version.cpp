#include "core/util/version.h"

// Both come from CMakeLists.txt (set on this file alone, so that a new
// commit recompiles only it).
#ifndef MECHLAB_VERSION_STRING
#define MECHLAB_VERSION_STRING "unknown"
#endif
#ifndef MECHLAB_GIT_DESCRIBE
#define MECHLAB_GIT_DESCRIBE ""
#endif

namespace mechlab {

const char* version() { return MECHLAB_VERSION_STRING; }
const char* git_describe() { return MECHLAB_GIT_DESCRIBE; }

}  // namespace mechlab
