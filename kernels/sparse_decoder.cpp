#include "kernels/sparse_decoder.h"

#include "kernels/sparse_cpu.h"

#include <algorithm>

namespace mechlab::kernels {
namespace {

bool is_real(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

// The checks every family shares: [n, k] values (or coefficients) and int64
// indices, a second [n or n_latents, d] operand of the same dtype and device.
void check_sparse(const char* family, const char* vname, const at::Tensor& v, const at::Tensor& idx) {
  MECHLAB_CHECK(v.defined() && idx.defined(), family, ": ", vname, " and indices must be defined tensors");
  MECHLAB_CHECK(v.dim() == 2, family, ": ", vname, " must be [n, k]; got ", v.sizes());
  MECHLAB_CHECK(idx.sizes() == v.sizes(), family, ": indices ", idx.sizes(), " must have ", vname,
                "'s shape ", v.sizes());
  MECHLAB_CHECK(idx.scalar_type() == at::kLong, family, ": indices must be int64; got ", idx.scalar_type());
  MECHLAB_CHECK(is_real(v.scalar_type()), family, ": ", vname, " must be float32 or float64; got ",
                v.scalar_type());
  MECHLAB_CHECK(idx.device() == v.device(), family, ": ", vname, " (", v.device(), ") and indices (",
                idx.device(), ") must be on the same device");
}

void check_operand(const char* family, const char* name, const at::Tensor& t, const at::Tensor& v,
                   const char* vname) {
  MECHLAB_CHECK(t.defined() && t.dim() == 2, family, ": ", name, " must be a 2-d tensor; got ",
                t.defined() ? c10::str(t.sizes()) : std::string("undefined"));
  MECHLAB_CHECK(t.scalar_type() == v.scalar_type(), family, ": ", name, " is ", t.scalar_type(), " but ",
                vname, " is ", v.scalar_type(), "; convert one so that both have the same dtype");
  MECHLAB_CHECK(t.device() == v.device(), family, ": ", name, " (", t.device(), ") and ", vname, " (",
                v.device(), ") must be on the same device");
}

// On the CPU an index outside [0, n_latents) would read or write out of
// bounds: refuse it (one pass over n * k integers). On a GPU checking would
// cost a device sync per call; the kernels skip such entries instead.
void check_range(const char* family, const at::Tensor& idx, int64_t n_latents) {
  if (!idx.device().is_cpu() || idx.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(idx);
  const int64_t mn = lo.item<int64_t>(), mx = hi.item<int64_t>();
  MECHLAB_CHECK(mn >= 0 && mx < n_latents, family, ": indices must lie in [0, ", n_latents, "); found ",
                mn < 0 ? mn : mx);
}

void validate_decode(const SparseDecodeArgs& a) {
  check_sparse("sparse_decode", "values", a.values, a.indices);
  check_operand("sparse_decode", "weight", a.weight, a.values, "values");
  check_range("sparse_decode", a.indices, a.weight.size(0));
}

void validate_grad_values(const SparseDecodeGradValuesArgs& a) {
  MECHLAB_CHECK(a.grad_out.defined() && a.grad_out.dim() == 2,
                "sparse_decode_grad_values: grad_out must be [n, d]; got ",
                a.grad_out.defined() ? c10::str(a.grad_out.sizes()) : std::string("undefined"));
  MECHLAB_CHECK(is_real(a.grad_out.scalar_type()),
                "sparse_decode_grad_values: grad_out must be float32 or float64; got ", a.grad_out.scalar_type());
  MECHLAB_CHECK(a.indices.defined() && a.indices.dim() == 2 && a.indices.size(0) == a.grad_out.size(0),
                "sparse_decode_grad_values: indices must be [n, k] with n = ", a.grad_out.size(0), "; got ",
                a.indices.defined() ? c10::str(a.indices.sizes()) : std::string("undefined"));
  MECHLAB_CHECK(a.indices.scalar_type() == at::kLong, "sparse_decode_grad_values: indices must be int64; got ",
                a.indices.scalar_type());
  MECHLAB_CHECK(a.indices.device() == a.grad_out.device(), "sparse_decode_grad_values: grad_out (",
                a.grad_out.device(), ") and indices (", a.indices.device(), ") must be on the same device");
  check_operand("sparse_decode_grad_values", "weight", a.weight, a.grad_out, "grad_out");
  MECHLAB_CHECK(a.weight.size(1) == a.grad_out.size(1), "sparse_decode_grad_values: weight ", a.weight.sizes(),
                " and grad_out ", a.grad_out.sizes(), " must agree in d");
  check_range("sparse_decode_grad_values", a.indices, a.weight.size(0));
}

void validate_weight_grad(const SparseWeightGradArgs& a) {
  check_sparse("sparse_weight_grad", "coef", a.coef, a.indices);
  check_operand("sparse_weight_grad", "rows", a.rows, a.coef, "coef");
  MECHLAB_CHECK(a.rows.size(0) == a.coef.size(0), "sparse_weight_grad: rows ", a.rows.sizes(),
                " must have one row per row of coef ", a.coef.sizes());
  MECHLAB_CHECK(a.n_latents >= 0, "sparse_weight_grad: n_latents must be >= 0; got ", a.n_latents);
  check_range("sparse_weight_grad", a.indices, a.n_latents);
}

std::string cpu_only(const at::Device& d) {
  return d.is_cpu() ? "" : str_cat("it runs on CPU tensors, these are on ", d);
}

// ------------------------------------------------------------------ ATen paths
// Gathers the weight rows of a chunk of n rows at a time, so that the
// [chunk, k, d] temporary stays near 64 MiB whatever n is.
int64_t chunk_rows(int64_t k, int64_t d) { return std::max<int64_t>(1, (int64_t{16} << 20) / std::max<int64_t>(1, k * d)); }

// Calls f(r0, r1, w) for each chunk [r0, r1) of the n rows of indices
// [n, k], w [r1 - r0, k, d] the weight rows the chunk's indices name.
template <typename F>
void for_gathered_chunks(const at::Tensor& indices, const at::Tensor& weight, F f) {
  const int64_t n = indices.size(0), k = indices.size(1), d = weight.size(1), step = chunk_rows(k, d);
  for (int64_t r0 = 0; r0 < n && k > 0; r0 += step) {
    const int64_t r1 = std::min(n, r0 + step);
    f(r0, r1, weight.index_select(0, indices.slice(0, r0, r1).flatten()).view({r1 - r0, k, d}));
  }
}

at::Tensor decode_aten(const SparseDecodeArgs& a) {
  at::Tensor out = at::zeros({a.values.size(0), a.weight.size(1)}, a.values.options());  // [n, d]
  for_gathered_chunks(a.indices, a.weight, [&](int64_t r0, int64_t r1, const at::Tensor& w) {
    out.slice(0, r0, r1).copy_(at::bmm(a.values.slice(0, r0, r1).unsqueeze(1), w).squeeze(1));
  });
  return out;
}

at::Tensor grad_values_aten(const SparseDecodeGradValuesArgs& a) {
  at::Tensor out = at::zeros(a.indices.sizes(), a.grad_out.options());  // [n, k]
  for_gathered_chunks(a.indices, a.weight, [&](int64_t r0, int64_t r1, const at::Tensor& w) {
    out.slice(0, r0, r1).copy_(at::bmm(w, a.grad_out.slice(0, r0, r1).unsqueeze(2)).squeeze(2));
  });
  return out;
}

at::Tensor weight_grad_aten(const SparseWeightGradArgs& a) {
  const int64_t n = a.coef.size(0), k = a.coef.size(1), d = a.rows.size(1);
  at::Tensor g = at::zeros({a.n_latents, d}, a.coef.options());  // [n_latents, d]
  const int64_t step = chunk_rows(k, d);
  for (int64_t r0 = 0; r0 < n && k > 0; r0 += step) {
    const int64_t r1 = std::min(n, r0 + step);
    const at::Tensor terms = a.coef.slice(0, r0, r1).unsqueeze(2) * a.rows.slice(0, r0, r1).unsqueeze(1);
    g.index_add_(0, a.indices.slice(0, r0, r1).flatten(), terms.view({-1, d}));  // [chunk * k, d]
  }
  return a.transposed ? g.t().contiguous() : g;
}

// ------------------------------------------------------------------ CPU kernels

// The [n, k] layout of kernels/sparse_cpu.h's loops: entry e = n k + j,
// row r's entries are [r k, r k + k).
template <typename T>
at::Tensor decode_cpu_t(const SparseDecodeArgs& a) {
  const int64_t k = a.values.size(1);
  const auto row_start = [k](int64_t r) { return r * k; };
  return detail::entries_decode<T>(a.values, a.indices, a.values.size(0), row_start, a.weight);
}

template <typename T>
at::Tensor grad_values_cpu_t(const SparseDecodeGradValuesArgs& a) {
  const int64_t n = a.indices.size(0), k = a.indices.size(1);
  const auto row_start = [k](int64_t r) { return r * k; };
  return detail::entries_grad_values<T>(a.grad_out, a.indices, row_start, a.weight).view({n, k});
}

template <typename T>
at::Tensor weight_grad_cpu_t(const SparseWeightGradArgs& a) {
  const int64_t k = a.coef.size(1);
  const auto row_start = [k](int64_t r) { return r * k; };
  return detail::entries_weight_grad<T>(a.coef, a.indices, row_start, a.rows, a.n_latents, a.transposed);
}

at::Tensor decode_cpu(const SparseDecodeArgs& a) {
  return a.values.scalar_type() == at::kFloat ? decode_cpu_t<float>(a) : decode_cpu_t<double>(a);
}
at::Tensor grad_values_cpu(const SparseDecodeGradValuesArgs& a) {
  return a.grad_out.scalar_type() == at::kFloat ? grad_values_cpu_t<float>(a) : grad_values_cpu_t<double>(a);
}
at::Tensor weight_grad_cpu(const SparseWeightGradArgs& a) {
  return a.coef.scalar_type() == at::kFloat ? weight_grad_cpu_t<float>(a) : weight_grad_cpu_t<double>(a);
}

}  // namespace

const KernelFamily<SparseDecodeArgs>& sparse_decode_family() {
  static const KernelFamily<SparseDecodeArgs> family(
      "sparse_decode", validate_decode,
      {
#ifdef MECHLAB_HAVE_CUDA
          {"cuda", Runs::cuda, detail::sparse_decode_cuda_unsupported, detail::sparse_decode_cuda},
#endif
          {"cpu", Runs::anywhere, [](const SparseDecodeArgs& a) { return cpu_only(a.device()); }, decode_cpu},
          {"aten", Runs::anywhere, [](const SparseDecodeArgs&) { return std::string(); }, decode_aten},
      });
  return family;
}

const KernelFamily<SparseDecodeGradValuesArgs>& sparse_decode_grad_values_family() {
  static const KernelFamily<SparseDecodeGradValuesArgs> family(
      "sparse_decode_grad_values", validate_grad_values,
      {
#ifdef MECHLAB_HAVE_CUDA
          {"cuda", Runs::cuda, detail::sparse_decode_grad_values_cuda_unsupported,
           detail::sparse_decode_grad_values_cuda},
#endif
          {"cpu", Runs::anywhere, [](const SparseDecodeGradValuesArgs& a) { return cpu_only(a.device()); },
           grad_values_cpu},
          {"aten", Runs::anywhere, [](const SparseDecodeGradValuesArgs&) { return std::string(); },
           grad_values_aten},
      });
  return family;
}

const KernelFamily<SparseWeightGradArgs>& sparse_weight_grad_family() {
  static const KernelFamily<SparseWeightGradArgs> family(
      "sparse_weight_grad", validate_weight_grad,
      {
#ifdef MECHLAB_HAVE_CUDA
          {"cuda", Runs::cuda, detail::sparse_weight_grad_cuda_unsupported, detail::sparse_weight_grad_cuda},
#endif
          {"cpu", Runs::anywhere, [](const SparseWeightGradArgs& a) { return cpu_only(a.device()); },
           weight_grad_cpu},
          {"aten", Runs::anywhere, [](const SparseWeightGradArgs&) { return std::string(); }, weight_grad_aten},
      });
  return family;
}

at::Tensor sparse_decode(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& weight) {
  return sparse_decode_family()(SparseDecodeArgs{values, indices, weight});
}

at::Tensor sparse_decode_grad_values(const at::Tensor& grad_out, const at::Tensor& indices,
                                     const at::Tensor& weight) {
  return sparse_decode_grad_values_family()(SparseDecodeGradValuesArgs{grad_out, indices, weight});
}

at::Tensor sparse_weight_grad(const at::Tensor& coef, const at::Tensor& indices, const at::Tensor& rows,
                              int64_t n_latents, bool transposed) {
  SparseWeightGradArgs a;
  a.coef = coef;
  a.indices = indices;
  a.rows = rows;
  a.n_latents = n_latents;
  a.transposed = transposed;
  return sparse_weight_grad_family()(a);
}

}  // namespace mechlab::kernels
