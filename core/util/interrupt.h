// Ctrl-C (SIGINT) for long jobs. The signal handler only sets a flag; the
// long loops (caching a store, training) poll it between units of work that
// leave their outputs consistent (a committed chunk, a checkpointed step)
// and throw Interrupted, whose message says what was kept. Code that polls
// nothing (a caller that never installed the handler) keeps the default:
// SIGINT ends the process at once.
#pragma once

#include "core/util/error.h"

#include <string>

namespace mechlab {

/// Thrown by a long loop that saw the interrupt flag. A mechlab::Error, so
/// callers that catch Error still see it; the CLI turns it into exit code 130.
class Interrupted : public Error {
 public:
  explicit Interrupted(const std::string& what) : Error(what) {}
};

namespace core {

/// Installs the SIGINT handler. `polled` says whether the job that follows
/// polls interrupt_requested(): when true the first SIGINT sets the flag and
/// a second one ends the process at once (exit code 130); when false every
/// SIGINT prints `unpolled_note` (one line, kept by pointer: pass a string
/// literal) and ends the process at once with exit code 130 (for jobs whose
/// outputs are written whole at the end, so there is nothing to keep).
void install_interrupt_handler(bool polled, const char* unpolled_note = nullptr);

/// True once SIGINT arrived (after install_interrupt_handler(true)).
bool interrupt_requested();

/// Sets or clears the flag as the handler would (tests, and callers that
/// interrupt a job from another thread).
void set_interrupt_requested(bool value);

}  // namespace core
}  // namespace mechlab
