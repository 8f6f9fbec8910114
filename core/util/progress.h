// ProgressBar: rate and ETA for long work (caching a dataset, training).
//
// On a terminal it redraws one line on stderr at most ten times a second:
//   cache  [########------------]  41%  52.3k/128k tokens  8.1k tokens/s  ETA 0:09
// Elsewhere (CI logs, files) it logs a plain line every `log_every_s` seconds
// and once at the end, so logs stay readable. A status text, when set, ends
// the line (the SAE trainer shows its latest L0, FVU and dead fraction):
//   sae train  [##------------------]  12%  1.2M/10M tokens  41k tokens/s  ETA 3:35  L0 31.2  FVU 0.0812  dead 0.4%
//
// Example:
//   mechlab::core::ProgressBar bar("cache", total_tokens, "tokens");
//   for (...) { ...; bar.advance(batch_tokens); }
//   bar.finish();
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

namespace mechlab::core {

class ProgressBar {
 public:
  /// `start` units are already done (a resumed job): they count towards the
  /// bar but not towards the rate.
  ProgressBar(std::string label, int64_t total, std::string unit, int64_t start = 0,
              double log_every_s = 10.0);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void advance(int64_t n);
  /// Draws the final state (idempotent).
  void finish();

  int64_t done() const { return done_; }
  /// Units per second since construction (excluding `start`).
  double rate() const;
  /// The line that would be drawn now (for tests and logs).
  std::string line() const;
  /// Text appended to the line after the ETA ("" = none, the default); shown
  /// at the next draw.
  void set_status(std::string status) { status_ = std::move(status); }
  const std::string& status() const { return status_; }

 private:
  void draw(bool final);

  using Clock = std::chrono::steady_clock;
  std::string label_, unit_, status_;
  int64_t total_, start_, done_;
  double log_every_s_;
  bool terminal_, finished_ = false;
  Clock::time_point t0_, last_draw_;
};

/// "1.5k", "12.3M": a count in three significant figures.
std::string human_count(double n);
/// "0:09", "1:02:03": seconds as [h:]mm:ss; "?" when unknown.
std::string human_duration(double seconds);

}  // namespace mechlab::core
