// sae_topk's CUDA host wrapper: checks the inputs, takes the current CUDA
// stream and launches the kernel in sae_topk.cu.
#ifdef MECHLAB_HAVE_CUDA
#include "kernels/sae_topk.h"
#include "kernels/sae_topk_launch.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

namespace mechlab::kernels::detail {

std::string sae_topk_cuda_unsupported(const SaeTopkArgs& a) {
  if (!a.x.is_cuda()) return str_cat("x is on ", a.x.device(), ", not a CUDA device");
  if (a.x.scalar_type() != at::kFloat) return str_cat("it takes float32, not ", a.x.scalar_type());
  if (!a.x.is_contiguous()) return str_cat("x is not contiguous (strides ", a.x.strides(), ")");
  if (a.k > kSaeTopkMaxK) return str_cat("k = ", a.k, " is over ", kSaeTopkMaxK);
  if (a.x.size(0) > std::numeric_limits<int32_t>::max()) return str_cat("n = ", a.x.size(0), " is over 2^31 - 1 blocks");
  return "";
}

at::Tensor sae_topk_cuda(const SaeTopkArgs& a) {
  const std::string why = sae_topk_cuda_unsupported(a);
  MECHLAB_CHECK(why.empty(), "sae_topk: the CUDA kernel cannot take these inputs: ", why,
                "; call sae_topk(), which falls back to ATen");
  const c10::cuda::CUDAGuard guard(a.x.device());
  at::Tensor out = at::empty({a.x.size(0), a.k}, a.x.options().dtype(at::kLong));  // [n, k]
  if (out.numel() == 0) return out;
  launch_sae_topk(SaeTopkLaunch{a.x.data_ptr<float>(), out.data_ptr<int64_t>(), a.x.size(0), a.x.size(1),
                                static_cast<int>(a.k)},
                  c10::cuda::getCurrentCUDAStream(a.x.device().index()).stream());
  return out;
}

}  // namespace mechlab::kernels::detail
#endif  // MECHLAB_HAVE_CUDA
