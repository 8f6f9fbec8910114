// Rules for the files a command writes, shared by every command so that none
// can lose an input or an earlier result:
//  - an output must not be one of the files being read (compared by device
//    and inode, so a symlink or "dir/../x" to the same file is caught);
//  - an existing output is replaced only when the caller allows it (the CLI's
//    --overwrite), and never when it
//    is a mechlab file of another kind (its root attribute mechlab_format
//    differs), whatever the flags;
//  - a failed system call is reported in words a user can act on.
#pragma once

#include <string>

namespace mechlab::core {

/// "no space left on device", "file too large ...", ... for a failed system
/// call's errno: the words for the three "out of room" errors say what to do;
/// others are the system's own message.
std::string system_error_words(int err);

/// Throws when `out` (which need not exist) is the same file as `input`,
/// naming both: `what_out` is how the user gave the output (e.g. "--out"),
/// `what_in` what the input is (e.g. "the model").
void require_not_same_file(const std::string& out, const std::string& what_out,
                           const std::string& input, const std::string& what_in);

/// Checks that a mechlab file of kind `format` ("checkpoint", "dataset",
/// "activations", "patching") may be written at `path`: fine when nothing is
/// there; an existing file needs `overwrite` and must not be a mechlab file
/// of another kind (nor a directory). `allow` is what allows the replacement
/// in the caller's words, named in the message: "--overwrite" for the CLI,
/// "`overwrite`" (an argument or option) for the library.
void require_replaceable(const std::string& path, const std::string& format, bool overwrite,
                         const std::string& allow);

/// The `mechlab_format` of the mechlab file at `path`, or "" when it is not
/// one (missing, not HDF5, or no such attribute).
std::string mechlab_format_of(const std::string& path);

}  // namespace mechlab::core
