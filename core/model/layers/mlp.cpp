#include "core/model/layers/mlp.h"

#include <ATen/ATen.h>

namespace mechlab::core {
namespace {

// [batch, pos, d_in] @ [d_in, d_out] (+ bias) through one 2-D GEMM.
at::Tensor matmul_bias(const at::Tensor& x, const at::Tensor& W, const at::Tensor& bias) {
  auto sizes = x.sizes().vec();
  at::Tensor x2 = x.reshape({-1, sizes.back()});
  at::Tensor y = bias.defined() ? at::addmm(bias, x2, W) : at::mm(x2, W);
  sizes.back() = W.size(1);
  return y.view(sizes);
}

}  // namespace

at::Tensor activation(Activation act, const at::Tensor& x) {
  switch (act) {
    case Activation::gelu_new: return at::gelu(x, "tanh");  // GPT-2's tanh approximation
    case Activation::gelu: return at::gelu(x);
    case Activation::relu: return at::relu(x);
    case Activation::silu: return at::silu(x);
  }
  return x;
}

at::Tensor mlp_forward(const ModelConfig& cfg, const LayerWeights& w, int layer,
                       const at::Tensor& x, const Hooks& hooks) {
  at::Tensor post;
  if (cfg.mlp == MlpKind::gated) {
    at::Tensor pre = matmul_bias(x, w.W_gate, {});            // [batch, pos, d_mlp]
    hooks({HookKind::mlp_pre, layer}, pre);
    at::Tensor pre_linear = matmul_bias(x, w.W_in, {});       // [batch, pos, d_mlp]
    hooks({HookKind::mlp_pre_linear, layer}, pre_linear);
    post = activation(cfg.act, pre) * pre_linear + w.b_in;
  } else {
    at::Tensor pre = matmul_bias(x, w.W_in, w.b_in);          // [batch, pos, d_mlp]
    hooks({HookKind::mlp_pre, layer}, pre);
    post = activation(cfg.act, pre);
  }
  hooks({HookKind::mlp_post, layer}, post);
  return matmul_bias(post, w.W_out, w.b_out);                 // [batch, pos, d_model]
}

}  // namespace mechlab::core
