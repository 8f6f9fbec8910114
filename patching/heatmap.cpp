#include "patching/heatmap.h"

#include "core/util/error.h"
#include "core/plot/grid_chart.h"
#include "core/plot/line_chart.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

namespace mechlab::patching {

namespace plot = core::plot;

namespace {

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

std::string short_axis(const std::string& axis) {
  if (axis == "layer") return "L";
  if (axis == "head" || axis == "head_index") return "H";
  if (axis == "patch_type") return "";
  return axis + " ";
}

bool is_pos(const std::string& a) { return a == "pos" || a == "dest_pos" || a == "src_pos"; }

}  // namespace

std::string heatmap_svg(const SweepResult& r, const std::string& title) {
  const int64_t n_axes = static_cast<int64_t>(r.axes.size());
  MECHLAB_CHECK(n_axes >= 1 && r.values.dim() == n_axes && r.labels.size() == r.axes.size(),
                "heatmap: result ", r.sweep, " has inconsistent axes");
  at::Tensor v = r.values.to(at::kCPU, at::kDouble).contiguous();

  // Choose the column axis, the panel axes and the row axes.
  auto find = [&](const std::string& a) {
    for (int64_t i = 0; i < n_axes; ++i) {
      if (r.axes[i] == a) return i;
    }
    return int64_t(-1);
  };
  int64_t col = find("src_pos");
  if (col < 0) col = find("pos");
  if (col < 0) col = find("dest_pos");
  if (col < 0) col = n_axes - 1;
  std::vector<int64_t> panels, rows;
  for (int64_t i = 0; i < n_axes; ++i) {
    if (i == col) continue;
    const bool panel = r.axes[i] == "patch_type" || (find("src_pos") >= 0 && !is_pos(r.axes[i]));
    (panel ? panels : rows).push_back(i);
  }
  if (n_axes == 1) rows.clear();

  auto count = [&](const std::vector<int64_t>& axes) {
    int64_t n = 1;
    for (int64_t a : axes) n *= v.size(a);
    return n;
  };
  const int64_t n_panels = count(panels), n_rows = count(rows), n_cols = v.size(col);
  // Multi-index of a flat index over some axes (last fastest).
  auto unflat = [&](int64_t flat, const std::vector<int64_t>& axes, std::vector<int64_t>& idx) {
    for (size_t j = axes.size(); j-- > 0;) {
      idx[axes[j]] = flat % v.size(axes[j]);
      flat /= v.size(axes[j]);
    }
  };
  auto label_of = [&](int64_t flat, const std::vector<int64_t>& axes) {
    std::vector<int64_t> idx(n_axes, 0);
    unflat(flat, axes, idx);
    std::string s;
    for (int64_t a : axes) {
      s += (s.empty() ? "" : " ") +
           (axes.size() > 1 ? short_axis(r.axes[a]) : std::string()) + r.labels[a][idx[a]];
    }
    return s;
  };
  std::string row_title;
  for (int64_t a : rows) row_title += (row_title.empty() ? "" : " × ") + r.axes[a];

  // What the colour shows (see heatmap.h): the change an estimate predicts,
  // or the metric on the 0 = corrupted, 1 = clean scale, or the raw metric;
  // in each case white is the unpatched run.
  const auto number = [&](const char* key) {
    return r.config.contains(key) && r.config[key].is_number() ? r.config[key].get<double>()
                                                               : std::nan("");
  };
  const std::string direction = r.config.value("direction", std::string());
  const std::string method = r.config.value("method", std::string());
  const bool estimate = method == "attribution" || method == "eap-ig";
  const double clean = number("clean_metric"), corrupted = number("corrupted_metric");
  double base = number("base_metric");
  if (std::isnan(base)) base = direction == "noising" ? clean : corrupted;
  const bool normalise = !estimate && std::isfinite(clean) && std::isfinite(corrupted) &&
                         clean != corrupted && std::isfinite(base);
  // shown = scale * (value - shift); centre = the unpatched run on that scale.
  double shift = 0, scale = 1, centre = 0;
  std::string legend;
  if (estimate) {
    legend = "colour: estimated change in metric (" + method + "); white = no change";
  } else if (normalise) {
    shift = corrupted;
    scale = 1.0 / (clean - corrupted);
    centre = (base - corrupted) * scale + 0.0;  // + 0.0: never print "-0"
    legend = "colour: normalised metric, 0 = corrupted (" + num(corrupted) + "), 1 = clean (" +
             num(clean) + "); white = unpatched (" + num(centre) + ")";
  } else {
    centre = std::isfinite(base) ? base : 0.0;
    legend = "colour: metric after patching; white = unpatched (" + num(centre) + ")";
  }
  at::Tensor shown = (v - shift) * scale;  // same shape as v
  const double vmax =
      std::max(1e-12, (shown - centre).abs().nan_to_num(0, 0, 0).max().item<double>());
  const double* data = v.data_ptr<double>();
  shown = shown.contiguous();
  const double* shown_data = shown.data_ptr<double>();

  size_t longest_row = 4, longest_col = 4;
  for (int64_t i = 0; i < n_rows; ++i) longest_row = std::max(longest_row, label_of(i, rows).size());
  for (const auto& l : r.labels[col]) longest_col = std::max(longest_col, l.size());
  // Small grids get bigger cells, so a 2 x 4 head map is readable.
  const int cw = n_cols <= 8 ? 40 : 22, ch = n_rows <= 8 ? 28 : n_rows > 60 ? 12 : 18;
  const int left = 40 + static_cast<int>(std::min<size_t>(longest_row, 28) * 7);
  const int top = 74, col_label_h = 20 + static_cast<int>(std::min<size_t>(longest_col, 24) * 6);
  const int panel_w = n_cols * cw, panel_h = n_rows * ch;
  const int gap = 30, panel_title_h = n_panels > 1 ? 18 : 0;
  const int bar_w = 90;
  const int per_line = std::max<int64_t>(1, std::min<int64_t>(n_panels, panel_w > 400 ? 1 : 3));
  const int64_t lines = (n_panels + per_line - 1) / per_line;
  const std::string subtitle =
      r.sweep + " (" + direction + "), metric " + r.config.value("metric", std::string());
  // Wide enough for the title and the two text lines, however small the grid.
  const int text_w = static_cast<int>(
      std::max({title.size() * 9, subtitle.size() * 6, legend.size() * 6})) + 20;
  const int grid_right = left + per_line * (panel_w + gap);
  const int width = std::max(grid_right + bar_w, left + text_w);
  const int bar_h = std::max(120, std::min(300, panel_h));
  const int block_h = panel_title_h + panel_h + col_label_h + gap;
  // Tall enough for the colour bar and its bottom tick label.
  const int height = std::max(top + static_cast<int>(lines) * block_h + 20, top + bar_h + 30);

  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << left << "\" y=\"22\" font-size=\"15\" font-weight=\"bold\">" << plot::xml_escape(title)
    << "</text>\n";
  s << "<text x=\"" << left << "\" y=\"40\" fill=\"#444\">" << plot::xml_escape(subtitle)
    << "</text>\n";
  s << "<text x=\"" << left << "\" y=\"56\" fill=\"#444\">" << plot::xml_escape(legend)
    << "</text>\n";

  std::vector<int64_t> idx(n_axes, 0);
  for (int64_t p = 0; p < n_panels; ++p) {
    const int px = left + static_cast<int>(p % per_line) * (panel_w + gap);
    const int py = top + static_cast<int>(p / per_line) * block_h + panel_title_h;
    if (n_panels > 1) {
      s << "<text x=\"" << px << "\" y=\"" << py - 5 << "\" font-weight=\"bold\">"
        << plot::xml_escape(label_of(p, panels)) << "</text>\n";
    }
    for (int64_t i = 0; i < n_rows; ++i) {
      for (int64_t j = 0; j < n_cols; ++j) {
        unflat(p, panels, idx);
        unflat(i, rows, idx);
        idx[col] = j;
        int64_t off = 0;
        for (int64_t a = 0; a < n_axes; ++a) off = off * v.size(a) + idx[a];
        const double x = data[off];
        s << "<rect x=\"" << px + j * cw << "\" y=\"" << py + i * ch << "\" width=\"" << cw
          << "\" height=\"" << ch << "\" fill=\"" << plot::diverging_colour((shown_data[off] - centre) / vmax)
          << "\"><title>";
        std::string tip;
        for (int64_t a = 0; a < n_axes; ++a) {
          tip += r.axes[a] + " " + r.labels[a][idx[a]] + ", ";
        }
        s << plot::xml_escape(tip) << "value " << num(x);
        if (normalise) s << " (normalised " << num(shown_data[off]) << ")";
        s << "</title></rect>\n";
      }
    }
    s << "<rect x=\"" << px << "\" y=\"" << py << "\" width=\"" << panel_w << "\" height=\""
      << panel_h << "\" fill=\"none\" stroke=\"#333\"/>\n";
    // Row labels (left of the first panel of each line) and column labels (below).
    if (p % per_line == 0) {
      for (int64_t i = 0; i < n_rows; ++i) {
        s << "<text x=\"" << px - 4 << "\" y=\"" << py + i * ch + ch * 0.7
          << "\" text-anchor=\"end\">" << plot::xml_escape(label_of(i, rows)) << "</text>\n";
      }
      s << "<text transform=\"translate(" << 12 << "," << py + panel_h / 2
        << ") rotate(-90)\" text-anchor=\"middle\" font-weight=\"bold\">" << plot::xml_escape(row_title)
        << "</text>\n";
    }
    for (int64_t j = 0; j < n_cols; ++j) {
      const double cx = px + j * cw + cw * 0.6, cy = py + panel_h + 6;
      s << "<text transform=\"translate(" << cx << "," << cy
        << ") rotate(60)\" text-anchor=\"start\">" << plot::xml_escape(r.labels[col][j]) << "</text>\n";
    }
    s << "<text x=\"" << px + panel_w / 2 << "\" y=\"" << py + panel_h + col_label_h
      << "\" text-anchor=\"middle\" font-weight=\"bold\">" << plot::xml_escape(r.axes[col]) << "</text>\n";
  }

  // Colour bar on the shown scale: centre - vmax (bottom) .. centre + vmax (top).
  // Beside the grid (not at the far right of a wide legend line).
  const int bx = grid_right + 10, by = top, bh = bar_h, bw = 14;
  const int steps = 40;
  for (int k = 0; k < steps; ++k) {
    const double t = 1.0 - 2.0 * (k + 0.5) / steps;
    s << "<rect x=\"" << bx << "\" y=\"" << by + k * bh / static_cast<double>(steps)
      << "\" width=\"" << bw << "\" height=\"" << bh / static_cast<double>(steps) + 0.5
      << "\" fill=\"" << plot::diverging_colour(t) << "\"/>\n";
  }
  s << "<rect x=\"" << bx << "\" y=\"" << by << "\" width=\"" << bw << "\" height=\"" << bh
    << "\" fill=\"none\" stroke=\"#333\"/>\n";
  const double ticks[] = {centre + vmax, centre + vmax / 2, centre, centre - vmax / 2, centre - vmax};
  for (int k = 0; k < 5; ++k) {
    const double y = by + bh * k / 4.0;
    s << "<line x1=\"" << bx + bw << "\" x2=\"" << bx + bw + 4 << "\" y1=\"" << y << "\" y2=\"" << y
      << "\" stroke=\"#333\"/><text x=\"" << bx + bw + 6 << "\" y=\"" << y + 4 << "\">"
      << num(ticks[k]) << "</text>\n";
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace mechlab::patching
