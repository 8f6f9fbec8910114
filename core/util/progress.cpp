#include "core/util/progress.h"

#include "core/log/log.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

namespace mechlab::core {

std::string human_count(double n) {
  static const char* suffix[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (std::fabs(n) >= 1000 && i < 4) {
    n /= 1000;
    ++i;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, i == 0 ? "%.0f%s" : (n < 10 ? "%.2f%s" : (n < 100 ? "%.1f%s" : "%.0f%s")),
                n, suffix[i]);
  return buf;
}

std::string human_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit, int64_t start,
                         double log_every_s)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(std::max<int64_t>(total, 0)),
      start_(start),
      done_(start),
      log_every_s_(log_every_s),
      terminal_(log::stderr_is_terminal()),
      t0_(Clock::now()),
      last_draw_(t0_) {}

ProgressBar::~ProgressBar() {
  try {
    finish();
  } catch (...) {  // a destructor must not throw; drawing is best effort
  }
}

double ProgressBar::rate() const {
  const double dt = std::chrono::duration<double>(Clock::now() - t0_).count();
  return dt > 0 ? static_cast<double>(done_ - start_) / dt : 0.0;
}

std::string ProgressBar::line() const {
  const double frac = total_ > 0 ? std::min(1.0, static_cast<double>(done_) / total_) : 1.0;
  constexpr int kWidth = 20;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '-');
  const double r = rate();
  const double eta = r > 0 ? static_cast<double>(total_ - done_) / r : -1.0;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s  [%s] %3d%%  %s/%s %s  %s %s/s  ETA %s", label_.c_str(),
                bar.c_str(), static_cast<int>(frac * 100), human_count(done_).c_str(),
                human_count(total_).c_str(), unit_.c_str(), human_count(r).c_str(), unit_.c_str(),
                human_duration(eta).c_str());
  return status_.empty() ? std::string(buf) : std::string(buf) + "  " + status_;
}

void ProgressBar::draw(bool final) {
  const auto now = Clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (terminal_) {
    if (!final && since < 0.1) return;
    std::fprintf(stderr, "\r%s\033[K%s", line().c_str(), final ? "\n" : "");
    std::fflush(stderr);
  } else {
    if (!final && since < log_every_s_) return;
    log::info(line());
  }
  last_draw_ = now;
}

void ProgressBar::advance(int64_t n) {
  done_ += n;
  draw(false);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

}  // namespace mechlab::core
