#include "kernels/edge_patch.h"

namespace mechlab::kernels {
namespace {

bool is_patch_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

void validate(const EdgePatchArgs& a) {
  MECHLAB_CHECK(a.base.defined() && a.delta.defined() && a.mask.defined(),
                "edge_patch: base, delta and mask must all be defined tensors");
  MECHLAB_CHECK(a.base.dim() == 4, "edge_patch: base must be [batch, pos, n_receivers, d_model]; got ",
                a.base.sizes());
  MECHLAB_CHECK(a.delta.dim() == 4, "edge_patch: delta must be [batch, pos, n_senders, d_model]; got ",
                a.delta.sizes());
  MECHLAB_CHECK(a.mask.dim() == 2, "edge_patch: mask must be [n_receivers, n_senders]; got ",
                a.mask.sizes());
  MECHLAB_CHECK(a.base.size(0) == a.delta.size(0) && a.base.size(1) == a.delta.size(1) &&
                    a.base.size(3) == a.delta.size(3),
                "edge_patch: base ", a.base.sizes(), " and delta ", a.delta.sizes(),
                " must agree in batch, pos and d_model");
  MECHLAB_CHECK(a.mask.size(0) == a.base.size(2) && a.mask.size(1) == a.delta.size(2),
                "edge_patch: mask must be [n_receivers, n_senders] = [", a.base.size(2), ", ",
                a.delta.size(2), "]; got ", a.mask.sizes());
  MECHLAB_CHECK(is_patch_dtype(a.base.scalar_type()),
                "edge_patch: base must be float32, bfloat16, float16 or float64; got ",
                a.base.scalar_type());
  MECHLAB_CHECK(a.delta.scalar_type() == a.base.scalar_type(), "edge_patch: delta is ",
                a.delta.scalar_type(), " but base is ", a.base.scalar_type(),
                "; convert one so that both have the same dtype");
  MECHLAB_CHECK(at::isFloatingType(a.mask.scalar_type()) || a.mask.scalar_type() == at::kBool,
                "edge_patch: mask must be a floating or bool tensor; got ", a.mask.scalar_type());
  MECHLAB_CHECK(a.delta.device() == a.base.device() && a.mask.device() == a.base.device(),
                "edge_patch: base (", a.base.device(), "), delta (", a.delta.device(), ") and mask (",
                a.mask.device(), ") must be on the same device");
}

// The ATen path: one broadcast matmul, [n_receivers, n_senders] @
// [batch, pos, n_senders, d_model] -> [batch, pos, n_receivers, d_model], in
// float32 for the half types so that the sum over senders does not round at
// every step.
at::Tensor edge_patch_aten(const EdgePatchArgs& a) {
  const at::ScalarType dtype = a.base.scalar_type();
  const at::ScalarType acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor removed = at::matmul(a.mask.to(acc), a.delta.to(acc));  // [b, p, r, d]
  return at::sub(a.base.to(acc), removed).to(dtype).contiguous();
}

}  // namespace

const KernelFamily<EdgePatchArgs>& edge_patch_family() {
  static const KernelFamily<EdgePatchArgs> family(
      "edge_patch", validate,
      {
#ifdef MECHLAB_HAVE_CUDA
          {"cuda", Runs::cuda, detail::edge_patch_cuda_unsupported, detail::edge_patch_cuda},
#endif
          {"aten", Runs::anywhere, [](const EdgePatchArgs&) { return std::string(); },
           edge_patch_aten},
      });
  return family;
}

at::Tensor edge_patch(const at::Tensor& base, const at::Tensor& delta, const at::Tensor& mask) {
  return edge_patch_family()(EdgePatchArgs{base, delta, mask});
}

}  // namespace mechlab::kernels
