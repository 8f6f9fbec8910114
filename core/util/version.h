// mechlab's version, for --version and the records jobs write.
#pragma once

namespace mechlab {

/// The CMake project's version, e.g. "0.1.0".
const char* version();
/// `git describe --always --dirty --tags` of the source tree when the build
/// was configured; "" when it was not a git checkout.
const char* git_describe();

}  // namespace mechlab
