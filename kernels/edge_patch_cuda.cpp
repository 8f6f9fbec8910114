// edge_patch's CUDA host wrapper: checks the inputs, takes the current CUDA
// stream, launches the kernel in edge_patch.cu and checks the launch.
#ifdef MECHLAB_HAVE_CUDA
#include "kernels/edge_patch.h"
#include "kernels/edge_patch_launch.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

namespace mechlab::kernels::detail {

std::string edge_patch_cuda_unsupported(const EdgePatchArgs& a) {
  if (!a.base.is_cuda()) return str_cat("base is on ", a.base.device(), ", not a CUDA device");
  const at::ScalarType t = a.base.scalar_type();
  if (t != at::kFloat && t != at::kBFloat16 && t != at::kHalf) {
    return str_cat("it takes float32, bfloat16 or float16, not ", t);
  }
  if (!a.base.is_contiguous()) return str_cat("base is not contiguous (strides ", a.base.strides(), ")");
  if (!a.delta.is_contiguous()) {
    return str_cat("delta is not contiguous (strides ", a.delta.strides(), ")");
  }
  const int64_t rows = a.base.size(0) * a.base.size(1);
  if (rows > std::numeric_limits<int32_t>::max()) {
    return str_cat("batch * pos = ", rows, " is over 2^31 - 1 blocks");
  }
  if ((a.base.size(3) + kEdgePatchTileD - 1) / kEdgePatchTileD > 65535) {
    return str_cat("d_model = ", a.base.size(3), " is over 65535 tiles of ", kEdgePatchTileD);
  }
  return "";
}

at::Tensor edge_patch_cuda(const EdgePatchArgs& a) {
  const std::string why = edge_patch_cuda_unsupported(a);
  MECHLAB_CHECK(why.empty(), "edge_patch: the CUDA kernel cannot take these inputs: ", why,
                "; call .contiguous() first, or edge_patch(), which falls back to ATen");
  const c10::cuda::CUDAGuard guard(a.base.device());
  const at::ScalarType t = a.base.scalar_type();
  const PatchDtype dtype = t == at::kFloat ? PatchDtype::f32 : t == at::kBFloat16 ? PatchDtype::bf16
                                                                                 : PatchDtype::f16;
  // [n_receivers, n_senders]: small next to base and delta; converting it
  // lets the kernel take 0/1 bool masks and weights in any dtype alike.
  const at::Tensor mask = a.mask.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(a.base.sizes(), a.base.options());  // contiguous
  if (out.numel() == 0) return out;  // nothing to launch (a grid may not be empty)
  const EdgePatchLaunch launch{a.base.data_ptr(), a.delta.data_ptr(),   mask.data_ptr<float>(),
                               out.data_ptr(),    a.base.size(0) * a.base.size(1),
                               a.base.size(2),    a.delta.size(2),      a.base.size(3)};
  launch_edge_patch(dtype, launch, c10::cuda::getCurrentCUDAStream(a.base.device().index()).stream());
  return out;
}

}  // namespace mechlab::kernels::detail
#endif  // MECHLAB_HAVE_CUDA
