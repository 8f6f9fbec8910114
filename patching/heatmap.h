// Heatmaps of sweep results as standalone SVG (no plotting library; opens in
// any browser). One shared diverging colour scale centred on zero (blue <
// 0 < red, white at 0, symmetric range ±max|value|) with a colour bar, so
// the sign of an effect reads at a glance; every cell has a tooltip with
// its indices and value.
//
// Layout from the result's axes:
//   columns  the source position (src_pos) if present, else the position
//            (pos / dest_pos) with its token label, else the last axis
//   panels   patch_type of the "every" stacks; layer x head for dest x src maps
//   rows     the remaining axes (layer, or layer x head as "L1 H3")
//
// Example:
//   core::write_text_file("out/attn_head_out_by_pos.svg", heatmap_svg(result, "IOI, denoising"));
#pragma once

#include "patching/sweeps.h"

#include <string>

namespace mechlab::patching {

/// The SVG document for one sweep result.
std::string heatmap_svg(const SweepResult& result, const std::string& title);

}  // namespace mechlab::patching
