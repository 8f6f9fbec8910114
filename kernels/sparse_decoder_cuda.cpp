// The sparse decoder's CUDA host wrappers: check the inputs, sort the
// entries by latent for the weight gradient (ATen on the same stream), take
// the current CUDA stream and launch the kernels in sparse_decoder.cu.
#ifdef MECHLAB_HAVE_CUDA
#include "kernels/sparse_decoder.h"
#include "kernels/sparse_decoder_launch.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

namespace mechlab::kernels::detail {
namespace {

constexpr int64_t kMaxGrid = std::numeric_limits<int32_t>::max();

std::string common_unsupported(const at::Tensor& first, const char* name, const char* rows_name, int64_t rows,
                               int64_t d) {
  if (!first.is_cuda()) return str_cat(name, " is on ", first.device(), ", not a CUDA device");
  if (first.scalar_type() != at::kFloat) return str_cat("it takes float32, not ", first.scalar_type());
  if (rows > kMaxGrid) return str_cat(rows_name, " = ", rows, " is over 2^31 - 1 blocks");
  if ((d + kSparseThreads - 1) / kSparseThreads > 65535) return str_cat("d = ", d, " is over 65535 tiles of ", kSparseThreads);
  return "";
}

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

}  // namespace

std::string sparse_decode_cuda_unsupported(const SparseDecodeArgs& a) {
  return common_unsupported(a.values, "values", "n", a.values.size(0), a.weight.size(1));
}

at::Tensor sparse_decode_cuda(const SparseDecodeArgs& a) {
  const std::string why = sparse_decode_cuda_unsupported(a);
  MECHLAB_CHECK(why.empty(), "sparse_decode: the CUDA kernel cannot take these inputs: ", why,
                "; call sparse_decode(), which falls back to ATen");
  const c10::cuda::CUDAGuard guard(a.values.device());
  const at::Tensor v = a.values.contiguous(), idx = a.indices.contiguous();
  const int64_t n = v.size(0), d = a.weight.size(1);
  at::Tensor out = at::empty({n, d}, v.options());  // [n, d]
  if (out.numel() == 0) return out;
  launch_sparse_decode(SparseDecodeLaunch{v.data_ptr<float>(), idx.data_ptr<int64_t>(), a.weight.data_ptr<float>(),
                                          out.data_ptr<float>(), n, v.size(1), a.weight.size(0), d,
                                          a.weight.stride(0), a.weight.stride(1)},
                       stream_of(v));
  return out;
}

std::string sparse_decode_grad_values_cuda_unsupported(const SparseDecodeGradValuesArgs& a) {
  return common_unsupported(a.grad_out, "grad_out", "n", a.grad_out.size(0), 0);
}

at::Tensor sparse_decode_grad_values_cuda(const SparseDecodeGradValuesArgs& a) {
  const std::string why = sparse_decode_grad_values_cuda_unsupported(a);
  MECHLAB_CHECK(why.empty(), "sparse_decode_grad_values: the CUDA kernel cannot take these inputs: ", why,
                "; call sparse_decode_grad_values(), which falls back to ATen");
  const c10::cuda::CUDAGuard guard(a.grad_out.device());
  const at::Tensor g = a.grad_out.contiguous(), idx = a.indices.contiguous();
  const int64_t n = idx.size(0), k = idx.size(1);
  at::Tensor out = at::empty({n, k}, g.options());  // [n, k]
  if (out.numel() == 0) return out;
  launch_sparse_grad_values(SparseGradValuesLaunch{g.data_ptr<float>(), idx.data_ptr<int64_t>(),
                                                   a.weight.data_ptr<float>(), out.data_ptr<float>(), n, k,
                                                   a.weight.size(0), g.size(1), a.weight.stride(0),
                                                   a.weight.stride(1)},
                            stream_of(g));
  return out;
}

std::string sparse_weight_grad_cuda_unsupported(const SparseWeightGradArgs& a) {
  const std::string why = common_unsupported(a.coef, "coef", "n_latents", a.n_latents, a.transposed ? 0 : a.rows.size(1));
  if (!why.empty()) return why;
  if (a.transposed && (a.rows.size(1) + kSparseTile - 1) / kSparseTile > 65535) {
    return str_cat("d = ", a.rows.size(1), " is over 65535 tiles of ", kSparseTile);
  }
  return "";
}

at::Tensor sparse_weight_grad_cuda(const SparseWeightGradArgs& a) {
  const std::string why = sparse_weight_grad_cuda_unsupported(a);
  MECHLAB_CHECK(why.empty(), "sparse_weight_grad: the CUDA kernel cannot take these inputs: ", why,
                "; call sparse_weight_grad(), which falls back to ATen");
  const c10::cuda::CUDAGuard guard(a.coef.device());
  const at::Tensor cf = a.coef.contiguous(), x = a.rows.contiguous();
  const int64_t n = cf.size(0), k = cf.size(1), d = x.size(1), L = a.n_latents;
  at::Tensor out = a.transposed ? at::empty({d, L}, cf.options()) : at::empty({L, d}, cf.options());
  if (out.numel() == 0) return out;
  // Entries sorted by latent (stable: in order of n, then j, within a
  // latent), and each latent's first entry; indices outside [0, L) sort
  // before start[0] or after start[L] and are never read.
  const auto [sorted, order] = at::sort(a.indices.flatten(), /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor start = at::searchsorted(sorted, at::arange(L + 1, sorted.options()));  // [L + 1] int64
  launch_sparse_weight_grad(SparseWeightGradLaunch{cf.data_ptr<float>(), x.data_ptr<float>(),
                                                   order.data_ptr<int64_t>(), start.data_ptr<int64_t>(),
                                                   out.data_ptr<float>(), n, k, L, d, a.transposed},
                            stream_of(cf));
  return out;
}

}  // namespace mechlab::kernels::detail
#endif  // MECHLAB_HAVE_CUDA
