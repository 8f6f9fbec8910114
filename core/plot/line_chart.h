// Line charts as standalone SVG: stacked panels sharing one x axis, each with
// its own y axis (linear or log10), gridlines, tick labels and a legend. Used
// for training curves; no plotting library needed, and the SVG opens in any
// browser.
//
// Example:
//   Panel loss{"loss", true, {{"train", steps, train_loss}, {"test", steps, test_loss}}};
//   write_text_file("curve.svg", line_chart_svg("induction", "step", {loss}));
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::core::plot {

struct Series {
  std::string label;  ///< legend text; empty: drawn but not listed
  std::vector<double> x, y;  ///< same length; non-finite points are skipped
  /// Optional band drawn shaded in the series' colour behind it (a
  /// confidence interval): lower and upper bounds at each x, or empty.
  std::vector<double> lower = {}, upper = {};
  bool markers = false;  ///< a dot at each point
  bool dashed = false;
  int colour = -1;  ///< index into the palette (kGrey: grey); -1: the series' position in its panel
};

/// The palette's grey, for reference lines (chance, a baseline).
inline constexpr int kGrey = 6;

struct Panel {
  std::string y_label;
  bool log_y = false;  ///< log10 axis (non-positive values are skipped)
  std::vector<Series> series;
  std::optional<std::pair<double, double>> y_range;  ///< fixed range; default: the data's
};

/// The SVG document.
std::string line_chart_svg(const std::string& title, const std::string& x_label,
                           const std::vector<Panel>& panels);

/// Escapes &, <, >, " for SVG/XML text.
std::string xml_escape(const std::string& text);

}  // namespace mechlab::core::plot
