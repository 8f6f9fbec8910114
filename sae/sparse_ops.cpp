#include "sae/sparse_ops.h"

#include "core/util/error.h"
#include "kernels/sparse_decoder.h"

#include <torch/csrc/autograd/custom_function.h>

namespace mechlab::sae {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct EncoderValues : public torch::autograd::Function<EncoderValues> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& sae_in, const at::Tensor& W_enc,
                            const at::Tensor& /*b_enc: an input for its gradient only*/, const at::Tensor& hidden_pre,
                            const at::Tensor& indices, const at::Tensor& scale) {
    // scale is [d_sae], or empty for none (autograd functions take no
    // undefined inputs).
    at::Tensor values;  // [n, k]: the dense GEMM's own numbers
    {
      at::NoGradGuard no_grad;
      values = hidden_pre.gather(1, indices);
    }
    const bool scaled = scale.numel() > 0;
    ctx->save_for_backward({sae_in, W_enc, indices, scale, scaled ? values : at::Tensor()});
    return values;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& sae_in = saved[0];   // [n, d_in]
    const at::Tensor& W_enc = saved[1];    // [d_in, d_sae]
    const at::Tensor& indices = saved[2];  // [n, k]
    const at::Tensor& scale = saved[3];    // [d_sae], or empty
    at::Tensor d_in, d_W, d_b, d_scale;
    if (grads[0].defined()) {
      at::Tensor g = grads[0].contiguous();  // [n, k], dL/dvalues
      const int64_t d_sae = W_enc.size(1);
      if (scale.numel() > 0) {
        // values = raw[idx] * scale[idx]: dL/draw = g * scale[idx] (the
        // dense path's product exactly), dL/dscale[c] = sum of g * raw over
        // the entries at c, with raw = values / scale (within an ulp).
        const at::Tensor s = scale.detach().index_select(0, indices.flatten()).view_as(g);  // [n, k]
        if (ctx->needs_input_grad(5)) {
          d_scale = at::zeros({d_sae}, g.options()).index_add_(0, indices.flatten(), (g * saved[4] / s).flatten());
        }
        g = g * s;
      }
      // W_enc.t() is [d_sae, d_in] with stride 1 along d_sae: the CPU kernel
      // reads each row of W_enc once for all n.
      if (ctx->needs_input_grad(0)) d_in = kernels::sparse_decode(g, indices, W_enc.t());  // [n, d_in]
      if (ctx->needs_input_grad(1)) {
        d_W = kernels::sparse_weight_grad(g, indices, sae_in.contiguous(), d_sae, /*transposed=*/true);
      }
      if (ctx->needs_input_grad(2)) {
        const at::Tensor ones = at::ones({g.size(0), 1}, g.options());  // [n, 1]
        d_b = kernels::sparse_weight_grad(g, indices, ones, d_sae, /*transposed=*/false).view({d_sae});
      }
    }
    return {d_in, d_W, d_b, at::Tensor(), at::Tensor(), d_scale};
  }
};

struct Decoder : public torch::autograd::Function<Decoder> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& values, const at::Tensor& indices,
                            const at::Tensor& W_dec) {
    ctx->save_for_backward({values, indices, W_dec});
    return kernels::sparse_decode(values, indices, W_dec);  // [n, d_in]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& values = saved[0];   // [n, k]
    const at::Tensor& indices = saved[1];  // [n, k]
    const at::Tensor& W_dec = saved[2];    // [d_sae, d_in]
    at::Tensor d_values, d_W;
    if (grads[0].defined()) {
      const at::Tensor g = grads[0].contiguous();  // [n, d_in]
      if (ctx->needs_input_grad(0)) d_values = kernels::sparse_decode_grad_values(g, indices, W_dec);
      if (ctx->needs_input_grad(2)) {
        d_W = kernels::sparse_weight_grad(values.contiguous(), indices, g, W_dec.size(0), /*transposed=*/false);
      }
    }
    return {d_values, at::Tensor(), d_W};
  }
};

}  // namespace

at::Tensor sparse_encoder_values(const at::Tensor& sae_in, const at::Tensor& W_enc, const at::Tensor& b_enc,
                                 const at::Tensor& hidden_pre, const at::Tensor& indices, const at::Tensor& scale) {
  MECHLAB_CHECK(sae_in.dim() == 2 && W_enc.dim() == 2 && sae_in.size(1) == W_enc.size(0),
                "sparse_encoder_values: sae_in ", sae_in.sizes(), " and W_enc ", W_enc.sizes(),
                " must be [n, d_in] and [d_in, d_sae]");
  MECHLAB_CHECK(b_enc.dim() == 1 && b_enc.size(0) == W_enc.size(1), "sparse_encoder_values: b_enc ",
                b_enc.sizes(), " must be [d_sae = ", W_enc.size(1), "]");
  MECHLAB_CHECK(hidden_pre.dim() == 2 && hidden_pre.size(0) == sae_in.size(0) &&
                    hidden_pre.size(1) == W_enc.size(1),
                "sparse_encoder_values: hidden_pre ", hidden_pre.sizes(), " must be [n, d_sae] = [",
                sae_in.size(0), ", ", W_enc.size(1), "]");
  MECHLAB_CHECK(indices.dim() == 2 && indices.size(0) == sae_in.size(0), "sparse_encoder_values: indices ",
                indices.sizes(), " must be [n = ", sae_in.size(0), ", k]");
  MECHLAB_CHECK(!scale.defined() || (scale.dim() == 1 && scale.size(0) == W_enc.size(1)),
                "sparse_encoder_values: scale ", scale.sizes(), " must be [d_sae = ", W_enc.size(1), "]");
  return EncoderValues::apply(sae_in, W_enc, b_enc, hidden_pre, indices,
                              scale.defined() ? scale : at::empty({0}, hidden_pre.options()));
}

at::Tensor sparse_decode(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& W_dec) {
  return Decoder::apply(values, indices, W_dec);
}

}  // namespace mechlab::sae
