// Heatmaps of sweep results as standalone SVG (no plotting library; opens in
// any browser). One shared diverging colour scale centred on the UNPATCHED
// run (white = no effect, red = towards clean / up, blue = down, symmetric
// range) with a colour bar, so the sign of an effect reads at a glance; the
// legend line says what the colour shows:
//   exact patching with distinct clean and corrupted baselines (config
//            clean_metric / corrupted_metric): the normalised metric
//            (value - corrupted) / (clean - corrupted), 0 = corrupted,
//            1 = clean, as the IOI literature plots it; white at the
//            unpatched run (0 when denoising, 1 when noising)
//   attribution / eap-ig (config method): the estimated change in the
//            metric, white at 0
//   otherwise: the metric after patching, white at the unpatched metric
// Every cell has a tooltip with its indices and raw value (and the
// normalised one). The picture is at least as wide as its title and legend.
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
