#include "core/model/layers/rotary.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

namespace mechlab::core {

at::Tensor rotary_inv_freq(const ModelConfig& cfg) {
  const int64_t r = cfg.rotary_dims();
  // float64 angles: exact to far below any tolerance, whatever the model dtype.
  at::Tensor dim = at::arange(r / 2, at::TensorOptions(at::kDouble));  // [r/2]
  at::Tensor inv_freq = at::pow(cfg.rotary_base, -dim / (static_cast<double>(r) / 2));  // [r/2]
  if (!cfg.rope_scaling) return inv_freq;
  const RopeScaling& s = *cfg.rope_scaling;
  switch (s.kind) {
    case RopeScalingKind::linear: return inv_freq / s.factor;
    case RopeScalingKind::llama3: {
      // transformers' _compute_llama3_parameters: short wavelengths (local
      // order) stay as trained, long ones are interpolated by `factor`, and the
      // band between blends the two so that no frequency jumps.
      constexpr double kPi = 3.14159265358979323846;
      const double old_ctx = s.original_max_position_embeddings;
      at::Tensor wavelen = (2 * kPi) / inv_freq;  // [r/2]
      at::Tensor smooth =
          (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      at::Tensor blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq;
      at::Tensor scaled =
          at::where(wavelen > old_ctx / s.low_freq_factor, inv_freq / s.factor, blended);
      return at::where(wavelen < old_ctx / s.high_freq_factor, inv_freq, scaled);
    }
  }
  MECHLAB_ASSERT(false);
  return inv_freq;
}

RotaryTables make_rotary_tables(const ModelConfig& cfg, const at::TensorOptions& options) {
  at::Tensor pos = at::arange(cfg.n_ctx, at::TensorOptions(at::kDouble));  // [n_ctx]
  at::Tensor inv_freq = rotary_inv_freq(cfg);
  inv_freq = at::cat({inv_freq, inv_freq});                      // [r]
  at::Tensor angles = pos.unsqueeze(1) * inv_freq.unsqueeze(0);  // [n_ctx, r]
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
