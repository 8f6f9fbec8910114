// Learning-rate schedule: linear warmup, then cosine decay to a floor — the
// schedule of most small-transformer recipes (nanoGPT, TransformerLens's
// training utilities with warmup + cosine).
//
// For step s (counting from 0) of `total` steps, peak `lr`, `warmup` steps and
// floor `min_lr`:
//   s < warmup:  lr * (s + 1) / warmup
//   otherwise:   min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2,
//                progress = (s - warmup) / max(1, total - warmup)  in [0, 1)
// warmup = 0 starts at the peak; min_lr = lr keeps it constant after warmup.
#pragma once

#include <cstdint>

namespace mechlab::core::train {

struct LrSchedule {
  double lr = 1e-3;
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  /// The learning rate of step `step` (0-based).
  double at(int64_t step) const;
};

}  // namespace mechlab::core::train
