#include "core/plot/grid_chart.h"

#include "core/plot/line_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace mechlab::core::plot {
namespace {

// Layout in SVG pixels. Labels are measured at ~7 px a character (11-12 px sans).
constexpr int kTop = 34, kPanelTitle = 22, kHeader = 18, kCellH = 22, kPanelGap = 18, kBar = 14, kCharW = 7;

std::string fmt(double v, const char* spec) {
  char buf[32];
  std::snprintf(buf, sizeof buf, spec, v);
  return buf;
}

int text_width(const std::string& s, double char_w = kCharW) {
  return static_cast<int>(static_cast<double>(s.size()) * char_w);
}

// A cell's text in the panel's format, and no "-0.00" for a tiny negative value.
std::string cell_text(double v, const std::string& format) {
  const std::string text = fmt(v, format.c_str());
  return text.find_first_of("123456789") == std::string::npos ? fmt(0.0, format.c_str()) : text;
}

// A panel's grid and colour bar height: at least room for the bar's three ticks.
int grid_height(size_t rows) { return std::max(static_cast<int>(rows) * kCellH, 44); }

// The cell's colour and the share of the way to the scale's dark end (for
// the text colour).
std::pair<std::string, double> cell_colour(const GridPanel& p, double v) {
  if (!std::isfinite(v)) return {"#bbbbbb", 0};
  const double span = p.hi - p.lo;
  double t = span > 0 ? (v - p.lo) / span : 0.5;  // [0, 1] across the range
  t = std::max(0.0, std::min(1.0, t));
  if (p.diverging) return {diverging_colour(2 * t - 1), std::fabs(2 * t - 1)};
  return {diverging_colour(-t), t};  // white -> the diverging scale's blue
}

}  // namespace

std::string diverging_colour(double t) {
  if (!std::isfinite(t)) return "#bbbbbb";
  t = std::max(-1.0, std::min(1.0, t));
  const double a = std::fabs(t);
  const int r0 = t < 0 ? 33 : 178, g0 = t < 0 ? 102 : 24, b0 = t < 0 ? 172 : 43;
  auto mix = [a](int c) { return static_cast<int>(std::lround(255 + (c - 255) * a)); };
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", mix(r0), mix(g0), mix(b0));
  return buf;
}

std::string grid_chart_svg(const std::string& title, const std::string& column_label,
                           const std::vector<GridPanel>& panels) {
  int label_w = 0, cell_w = 40;
  for (const GridPanel& p : panels) {
    for (const std::string& r : p.rows) label_w = std::max(label_w, text_width(r));
    for (const std::string& c : p.columns) cell_w = std::max(cell_w, text_width(c) + 8);
    for (double v : p.values) {
      if (std::isfinite(v)) cell_w = std::max(cell_w, text_width(cell_text(v, p.format)) + 10);
    }
  }
  const int left = label_w + 16;
  int grid_w = 0, height = kTop, titles_w = text_width(title, 8.5) + 20;  // 14 px bold
  for (const GridPanel& p : panels) {
    titles_w = std::max(titles_w, text_width(p.title, 7.5) + 20);       // 12 px bold
    grid_w = std::max(grid_w, static_cast<int>(p.columns.size()) * cell_w);
    height += kPanelTitle + kHeader + grid_height(p.rows.size()) + kPanelGap;
  }
  const int width = std::max(left + grid_w + kBar + 70, titles_w);

  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">" << xml_escape(title) << "</text>\n";
  int y = kTop;
  for (const GridPanel& p : panels) {
    const auto R = static_cast<int>(p.rows.size()), C = static_cast<int>(p.columns.size());
    s << "<text x=\"10\" y=\"" << y + 15 << "\" font-size=\"12\" font-weight=\"bold\">" << xml_escape(p.title)
      << "</text>\n";
    y += kPanelTitle;
    s << "<text x=\"" << left - 6 << "\" y=\"" << y + 13 << "\" text-anchor=\"end\" fill=\"#555\">"
      << xml_escape(column_label) << "</text>\n";
    for (int c = 0; c < C; ++c) {
      s << "<text x=\"" << left + c * cell_w + cell_w / 2 << "\" y=\"" << y + 13 << "\" text-anchor=\"middle\">"
        << xml_escape(p.columns[static_cast<size_t>(c)]) << "</text>\n";
    }
    y += kHeader;
    for (int r = 0; r < R; ++r) {
      const int cy = y + r * kCellH;
      s << "<text x=\"" << left - 6 << "\" y=\"" << cy + 15 << "\" text-anchor=\"end\">"
        << xml_escape(p.rows[static_cast<size_t>(r)]) << "</text>\n";
      for (int c = 0; c < C; ++c) {
        const size_t k = static_cast<size_t>(r) * static_cast<size_t>(C) + static_cast<size_t>(c);
        const double v = k < p.values.size() ? p.values[k] : NAN;
        const auto [fill, dark] = cell_colour(p, v);
        const int cx = left + c * cell_w;
        s << "<rect x=\"" << cx << "\" y=\"" << cy << "\" width=\"" << cell_w << "\" height=\"" << kCellH
          << "\" fill=\"" << fill << "\" stroke=\"white\"><title>"
          << xml_escape(k < p.tips.size() ? p.tips[k]
                                          : p.rows[static_cast<size_t>(r)] + ", " + column_label + " " +
                                                p.columns[static_cast<size_t>(c)] + ": " + fmt(v, "%.4g"))
          << "</title></rect>\n";
        if (std::isfinite(v)) {
          s << "<text x=\"" << cx + cell_w / 2 << "\" y=\"" << cy + 15 << "\" text-anchor=\"middle\" fill=\""
            << (dark > 0.6 ? "white" : "#222") << "\">" << cell_text(v, p.format) << "</text>\n";
        }
      }
    }
    // The colour bar: the scale from lo (bottom) to hi (top), beside the grid.
    const int bx = left + C * cell_w + 10, bh = grid_height(p.rows.size()), steps = 32;
    for (int k = 0; k < steps; ++k) {
      const double v = p.hi - (p.hi - p.lo) * (k + 0.5) / steps;
      s << "<rect x=\"" << bx << "\" y=\"" << fmt(y + bh * static_cast<double>(k) / steps, "%.1f")
        << "\" width=\"" << kBar << "\" height=\"" << fmt(bh / static_cast<double>(steps) + 0.5, "%.1f")
        << "\" fill=\"" << cell_colour(p, v).first << "\"/>\n";
    }
    s << "<rect x=\"" << bx << "\" y=\"" << y << "\" width=\"" << kBar << "\" height=\"" << bh
      << "\" fill=\"none\" stroke=\"#333\"/>\n";
    const double ticks[] = {p.hi, (p.hi + p.lo) / 2, p.lo};
    for (int k = 0; k < 3; ++k) {
      s << "<text x=\"" << bx + kBar + 4 << "\" y=\"" << y + bh * k / 2 + 4 << "\">" << fmt(ticks[k], "%.3g")
        << "</text>\n";
    }
    y += bh + kPanelGap;
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace mechlab::core::plot
