#include "core/layers/rotary.h"

#include <ATen/ATen.h>

namespace mechlab::core {

RotaryTables make_rotary_tables(const ModelConfig& cfg, const at::TensorOptions& options) {
  const int64_t r = cfg.rotary_dims();
  // float64 angles: exact to far below any tolerance, whatever the model dtype.
  auto f64 = at::TensorOptions(at::kDouble);
  at::Tensor pos = at::arange(cfg.n_ctx, f64);                                // [n_ctx]
  at::Tensor dim = at::arange(r / 2, f64);                                    // [r/2]
  at::Tensor freq = at::pow(cfg.rotary_base, dim / (static_cast<double>(r) / 2));
  freq = at::cat({freq, freq});                                               // [r]
  at::Tensor angles = pos.unsqueeze(1) / freq.unsqueeze(0);                   // [n_ctx, r]
  return {angles.cos().to(options), angles.sin().to(options)};
}

at::Tensor apply_rotary(const at::Tensor& x, const RotaryTables& t, const at::Tensor& positions) {
  const int64_t r = t.cos.size(1);
  const int64_t d_head = x.size(-1);
  at::Tensor x_rot = x.narrow(-1, 0, r);
  at::Tensor flipped = at::cat({-x_rot.narrow(-1, r / 2, r / 2), x_rot.narrow(-1, 0, r / 2)}, -1);
  // cos/sin: [pos, r] -> [1, pos, 1, r], or [batch, pos] ids -> [batch, pos, 1, r]
  at::Tensor cos = t.cos.index_select(0, positions.reshape(-1));
  at::Tensor sin = t.sin.index_select(0, positions.reshape(-1));
  if (positions.dim() == 1) {
    cos = cos.view({1, positions.size(0), 1, r});
    sin = sin.view({1, positions.size(0), 1, r});
  } else {
    cos = cos.view({positions.size(0), positions.size(1), 1, r});
    sin = sin.view({positions.size(0), positions.size(1), 1, r});
  }
  at::Tensor rotated = x_rot * cos + flipped * sin;
  if (r == d_head) return rotated;
  return at::cat({rotated, x.narrow(-1, r, d_head - r)}, -1);
}

}  // namespace mechlab::core
