// Grids of values as standalone SVG: panels stacked one under the other,
// each a table of coloured cells (rows x columns, e.g. hooks x heads) with
// its value written in the cell, a tooltip, and a colour bar. For sweeps
// with two axes, where a line per row would be a tangle (one probe per
// layer and head).
//
// Example:
//   GridPanel acc{"accuracy", {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}, {"0", "1"}, {0.6, 0.5, 0.9, 0.7}};
//   acc.lo = 0.5, acc.hi = 1;
//   write_text_file("heads.svg", grid_chart_svg("probes per head", "head", {acc}));
#pragma once

#include <string>
#include <vector>

namespace mechlab::core::plot {

struct GridPanel {
  std::string title;
  std::vector<std::string> rows, columns;  ///< labels
  std::vector<double> values;              ///< [rows x columns] row-major; NaN: an empty (grey) cell
  std::vector<std::string> tips = {};      ///< optional tooltip of each cell, same layout
  double lo = 0, hi = 1;                   ///< the colour scale's ends
  /// false: white at lo to blue at hi; true: blue at lo, white at the
  /// middle, red at hi (give a range symmetric about the neutral value).
  bool diverging = false;
  /// The value written in a cell (printf); a value that rounds to zero is
  /// written as zero (no "-0.00").
  std::string format = "%.2f";
};

/// The SVG document; `column_label` names the columns' axis.
std::string grid_chart_svg(const std::string& title, const std::string& column_label,
                           const std::vector<GridPanel>& panels);

/// t in [-1, 1] -> "#rrggbb": blue (33,102,172) at -1, white at 0, red
/// (178,24,43) at +1, clamped; grey for NaN.
std::string diverging_colour(double t);

}  // namespace mechlab::core::plot
