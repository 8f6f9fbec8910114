#include "core/util/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace mechlab::core {
namespace {

// sig_atomic_t-sized lock-free atomics are async-signal-safe to store.
std::atomic<bool> g_requested{false};
std::atomic<bool> g_polled{false};
std::atomic<const char*> g_note{nullptr};

void on_sigint(int) {
  if (g_polled.load() && !g_requested.exchange(true)) return;  // the loops will stop
  // Unpolled job, or a second Ctrl-C: leave now. write() and _exit() are
  // async-signal-safe; nothing else is called here.
  const char* note = g_note.load();
  if (note == nullptr) note = "mechlab: interrupted\n";
  ssize_t ignored = ::write(STDERR_FILENO, note, std::strlen(note));
  (void)ignored;
  ::_exit(130);
}

}  // namespace

void install_interrupt_handler(bool polled, const char* unpolled_note) {
  g_polled.store(polled);
  g_note.store(unpolled_note);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
}

bool interrupt_requested() { return g_requested.load(std::memory_order_relaxed); }

void set_interrupt_requested(bool value) { g_requested.store(value); }

}  // namespace mechlab::core
