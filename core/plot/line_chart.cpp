#include "core/plot/line_chart.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>

namespace mechlab::core::plot {
namespace {

// Layout in SVG pixels.
constexpr double kWidth = 720, kPanelHeight = 260, kLeft = 70, kRight = 150, kTop = 40,
                 kGap = 50, kBottom = 50;
// Colour-blind-safe palette (Okabe & Ito 2008), then grey (kGrey) for references.
const char* const kColours[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#777777"};

std::string fmt(double v) {
  std::ostringstream os;
  os << std::setprecision(4) << v;
  return os.str();
}

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void add(double v) { lo = std::min(lo, v), hi = std::max(hi, v); }
  bool empty() const { return !(lo <= hi); }
};

// About five round tick values covering [lo, hi].
std::vector<double> ticks(double lo, double hi) {
  const double span = hi - lo;
  const double raw = span / 5;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) {
    t.push_back(std::abs(v) < 1e-12 * span ? 0.0 : v);
  }
  return t;
}

}  // namespace

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string line_chart_svg(const std::string& title, const std::string& x_label,
                           const std::vector<Panel>& panels) {
  const double plot_w = kWidth - kLeft - kRight;
  const double height = kTop + panels.size() * (kPanelHeight + kGap) + kBottom - kGap;
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << kWidth / 2 << "\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">"
      << xml_escape(title) << "</text>\n";

  Range xr;
  for (const Panel& p : panels)
    for (const Series& s : p.series)
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
        if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) xr.add(s.x[i]);
  if (xr.empty()) xr = {0, 1};
  if (xr.hi == xr.lo) xr = {xr.lo - 0.5, xr.hi + 0.5};  // one x (one probe): in the middle
  const double x_pad = 0.03 * (xr.hi - xr.lo);             // first and last points off the frame
  xr = {xr.lo - x_pad, xr.hi + x_pad};
  auto px = [&](double x) { return kLeft + (x - xr.lo) / (xr.hi - xr.lo) * plot_w; };

  for (size_t pi = 0; pi < panels.size(); ++pi) {
    const Panel& p = panels[pi];
    const double top = kTop + pi * (kPanelHeight + kGap), bottom = top + kPanelHeight;
    auto usable = [&](double y) { return std::isfinite(y) && (!p.log_y || y > 0); };
    auto ty = [&](double y) { return p.log_y ? std::log10(y) : y; };
    Range yr;
    if (p.y_range) {
      yr = {ty(p.y_range->first), ty(p.y_range->second)};
    } else {
      for (const Series& s : p.series) {
        for (size_t i = 0; i < s.y.size(); ++i)
          if (usable(s.y[i])) yr.add(ty(s.y[i]));
        for (const std::vector<double>* b : {&s.lower, &s.upper})
          for (double v : *b)
            if (usable(v)) yr.add(ty(v));
      }
    }
    if (yr.empty()) yr = {0, 1};
    if (yr.hi == yr.lo) yr = {yr.lo - 0.5, yr.hi + 0.5};
    if (!p.y_range) {  // the data's range, with room so that nothing sits on the frame
      const double pad = 0.05 * (yr.hi - yr.lo);
      yr = {yr.lo - pad, yr.hi + pad};
    }
    auto py = [&](double v) { return bottom - (v - yr.lo) / (yr.hi - yr.lo) * kPanelHeight; };

    // Frame, gridlines and tick labels.
    svg << "<rect x=\"" << kLeft << "\" y=\"" << top << "\" width=\"" << plot_w << "\" height=\""
        << kPanelHeight << "\" fill=\"none\" stroke=\"#444\"/>\n";
    std::vector<double> yt;
    if (p.log_y) {
      for (double e = std::ceil(yr.lo); e <= yr.hi; e += 1) yt.push_back(e);
      if (yt.size() < 2) yt = ticks(yr.lo, yr.hi);
    } else {
      yt = ticks(yr.lo, yr.hi);
    }
    for (double v : yt) {
      svg << "<line x1=\"" << kLeft << "\" x2=\"" << kLeft + plot_w << "\" y1=\"" << py(v)
          << "\" y2=\"" << py(v) << "\" stroke=\"#ddd\"/>\n"
          << "<text x=\"" << kLeft - 6 << "\" y=\"" << py(v) + 4 << "\" text-anchor=\"end\">"
          << fmt(p.log_y ? std::pow(10.0, v) : v) << "</text>\n";
    }
    for (double v : ticks(xr.lo, xr.hi)) {
      svg << "<line x1=\"" << px(v) << "\" x2=\"" << px(v) << "\" y1=\"" << top << "\" y2=\""
          << bottom << "\" stroke=\"#eee\"/>\n"
          << "<text x=\"" << px(v) << "\" y=\"" << bottom + 16 << "\" text-anchor=\"middle\">"
          << fmt(v) << "</text>\n";
    }
    svg << "<text transform=\"translate(18," << (top + bottom) / 2
        << ") rotate(-90)\" text-anchor=\"middle\">" << xml_escape(p.y_label)
        << (p.log_y ? " (log)" : "") << "</text>\n";

    // Bands first (behind every line), then lines, markers and the legend.
    const size_t n_colours = sizeof kColours / sizeof *kColours;
    auto colour_of = [&](size_t si) {
      const int c = p.series[si].colour;
      return kColours[c >= 0 ? static_cast<size_t>(c) % n_colours : si % (n_colours - 1)];  // grey only on request
    };
    auto clamped = [&](double v) { return std::clamp(ty(v), yr.lo, yr.hi); };
    for (size_t si = 0; si < p.series.size(); ++si) {
      const Series& s = p.series[si];
      if (s.lower.empty() || s.upper.empty()) continue;
      std::vector<size_t> at;
      for (size_t i = 0; i < s.x.size() && i < s.lower.size() && i < s.upper.size(); ++i) {
        if (std::isfinite(s.x[i]) && usable(s.lower[i]) && usable(s.upper[i])) at.push_back(i);
      }
      if (at.empty()) continue;
      // One point's band is a bar 12 px wide (a polygon of one x is invisible).
      const double half = at.size() == 1 ? 6 : 0;
      svg << "<polygon fill=\"" << colour_of(si) << "\" fill-opacity=\"0.18\" stroke=\"none\" points=\"";
      for (size_t i : at) {
        svg << fmt(px(s.x[i]) - half) << "," << fmt(py(clamped(s.upper[i]))) << " ";
        if (half > 0) svg << fmt(px(s.x[i]) + half) << "," << fmt(py(clamped(s.upper[i]))) << " ";
      }
      for (auto it = at.rbegin(); it != at.rend(); ++it) {
        if (half > 0) svg << fmt(px(s.x[*it]) + half) << "," << fmt(py(clamped(s.lower[*it]))) << " ";
        svg << fmt(px(s.x[*it]) - half) << "," << fmt(py(clamped(s.lower[*it]))) << " ";
      }
      svg << "\"/>\n";
    }
    size_t legend_row = 0;
    for (size_t si = 0; si < p.series.size(); ++si) {
      const Series& s = p.series[si];
      const char* colour = colour_of(si);
      const char* dash = s.dashed ? "\" stroke-dasharray=\"6,4" : "";
      size_t points = 0;
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) points += std::isfinite(s.x[i]) && usable(s.y[i]);
      // One point draws a line 24 px wide (a reference level at a single x).
      const double reach = points == 1 ? 12 : 0;
      svg << "<polyline fill=\"none\" stroke=\"" << colour << dash << "\" stroke-width=\"1.5\" points=\"";
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !usable(s.y[i])) continue;
        svg << fmt(px(s.x[i]) - reach) << "," << fmt(py(clamped(s.y[i]))) << " ";
        if (reach > 0) svg << fmt(px(s.x[i]) + reach) << "," << fmt(py(clamped(s.y[i]))) << " ";
      }
      svg << "\"/>\n";
      if (s.markers) {
        for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
          if (!std::isfinite(s.x[i]) || !usable(s.y[i])) continue;
          svg << "<circle cx=\"" << fmt(px(s.x[i])) << "\" cy=\"" << fmt(py(clamped(s.y[i]))) << "\" r=\"3\" fill=\""
              << colour << "\"/>\n";
        }
      }
      if (s.label.empty()) continue;  // drawn, not listed (e.g. several lines of one legend entry)
      const double ly = top + 14 + 18 * static_cast<double>(legend_row++), lx = kLeft + plot_w + 12;
      svg << "<line x1=\"" << lx << "\" x2=\"" << lx + 20 << "\" y1=\"" << ly - 4 << "\" y2=\""
          << ly - 4 << "\" stroke=\"" << colour << dash << "\" stroke-width=\"2\"/>\n";
      if (s.markers) svg << "<circle cx=\"" << lx + 10 << "\" cy=\"" << ly - 4 << "\" r=\"3\" fill=\"" << colour << "\"/>\n";
      svg << "<text x=\"" << lx + 26 << "\" y=\"" << ly << "\">" << xml_escape(s.label) << "</text>\n";
    }
    if (pi + 1 == panels.size()) {
      svg << "<text x=\"" << kLeft + plot_w / 2 << "\" y=\"" << bottom + 36
          << "\" text-anchor=\"middle\">" << xml_escape(x_label) << "</text>\n";
    }
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace mechlab::core::plot
