#include "sae/sparse_ops.h"

#include "core/util/error.h"
#include "kernels/sparse_cpu.h"
#include "kernels/sparse_decoder.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <vector>

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

// ---------------------------------------------------------------- rows of varying length
// The three sums of sparse_ops.h's second half over an entry list (rows,
// latents, offsets): for float32/float64 CPU tensors, the CPU loops that the
// [n, k] kernels use too (kernels/sparse_cpu.h: one thread per output row
// or latent, entries in list order, so the result does not depend on the
// thread count), else ATen gathers and index_add_ in chunks of entries (any
// device).

bool cpu_real(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

// Entries per ATen chunk: a [chunk, d] temporary of about 64 MiB of float32.
int64_t chunk_entries(int64_t d) { return std::max<int64_t>(1, (int64_t{16} << 20) / std::max<int64_t>(1, d)); }

// The ATen path of the decode and the weight gradient, which differ only in
// which index picks the source row and which the output row:
// out[to[p], :] += coef[p] * src[from[p], :] for every entry p, in chunks of
// entries (any device).
void add_scaled_rows(at::Tensor& out, const at::Tensor& to, const at::Tensor& coef, const at::Tensor& src,
                     const at::Tensor& from) {
  const int64_t nnz = coef.size(0), step = chunk_entries(src.size(1));
  for (int64_t p0 = 0; p0 < nnz; p0 += step) {
    const int64_t p1 = std::min(nnz, p0 + step);
    const at::Tensor terms = coef.slice(0, p0, p1).unsqueeze(1) * src.index_select(0, from.slice(0, p0, p1));
    out.index_add_(0, to.slice(0, p0, p1), terms);  // [chunk, d]
  }
}

at::Tensor rows_decode(const at::Tensor& v, const at::Tensor& rows, const at::Tensor& latents,
                       const at::Tensor& offsets, const at::Tensor& weight) {
  if (cpu_real(v) && weight.scalar_type() == v.scalar_type() && weight.device().is_cpu()) {
    const at::Tensor off = offsets.contiguous();
    const int64_t* op = off.data_ptr<int64_t>();
    const auto row_start = [op](int64_t r) { return op[r]; };
    return v.scalar_type() == at::kFloat
               ? kernels::detail::entries_decode<float>(v, latents, off.size(0) - 1, row_start, weight)
               : kernels::detail::entries_decode<double>(v, latents, off.size(0) - 1, row_start, weight);
  }
  at::Tensor out = at::zeros({offsets.size(0) - 1, weight.size(1)}, v.options());  // [n, d]
  add_scaled_rows(out, rows, v, weight, latents);  // weight rows into their rows
  return out;
}

// out [nnz]: out[p] = grad[rows[p], :] . weight[latents[p], :]; grad [n, d], weight [L, d].
at::Tensor rows_grad_values(const at::Tensor& grad_in, const at::Tensor& rows, const at::Tensor& latents,
                            const at::Tensor& offsets, const at::Tensor& weight) {
  const int64_t nnz = rows.size(0), d = weight.size(1);
  if (cpu_real(grad_in) && weight.scalar_type() == grad_in.scalar_type() && weight.device().is_cpu()) {
    const at::Tensor off = offsets.contiguous();
    const int64_t* op = off.data_ptr<int64_t>();
    const auto row_start = [op](int64_t r) { return op[r]; };
    return grad_in.scalar_type() == at::kFloat
               ? kernels::detail::entries_grad_values<float>(grad_in, latents, row_start, weight)
               : kernels::detail::entries_grad_values<double>(grad_in, latents, row_start, weight);
  }
  std::vector<at::Tensor> parts;
  const int64_t step = chunk_entries(d);
  for (int64_t p0 = 0; p0 < nnz; p0 += step) {
    const int64_t p1 = std::min(nnz, p0 + step);
    parts.push_back((grad_in.index_select(0, rows.slice(0, p0, p1)) *
                     weight.index_select(0, latents.slice(0, p0, p1))).sum(1));
  }
  return parts.empty() ? at::zeros({0}, grad_in.options()) : at::cat(parts);
}

// G [L, d] (or its transpose [d, L], contiguous, with `transposed`): row c =
// sum over entries p with latents[p] = c of coef[p] * x[rows[p], :].
at::Tensor rows_weight_grad(const at::Tensor& coef, const at::Tensor& rows, const at::Tensor& latents,
                            const at::Tensor& offsets, const at::Tensor& x, int64_t L, bool transposed) {
  if (cpu_real(coef) && x.scalar_type() == coef.scalar_type() && x.device().is_cpu()) {
    const at::Tensor off = offsets.contiguous();
    const int64_t* op = off.data_ptr<int64_t>();
    const auto row_start = [op](int64_t r) { return op[r]; };
    return coef.scalar_type() == at::kFloat
               ? kernels::detail::entries_weight_grad<float>(coef, latents, row_start, x, L, transposed)
               : kernels::detail::entries_weight_grad<double>(coef, latents, row_start, x, L, transposed);
  }
  at::Tensor g = at::zeros({L, x.size(1)}, coef.options());  // [L, d]
  add_scaled_rows(g, latents, coef, x, rows);  // rows of x into their latents
  return transposed ? g.t().contiguous() : g;
}

struct RowsEncoderValues : public torch::autograd::Function<RowsEncoderValues> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& sae_in, const at::Tensor& W_enc,
                            const at::Tensor& /*b_enc: an input for its gradient only*/, const at::Tensor& hidden_pre,
                            const at::Tensor& flat, const at::Tensor& rows, const at::Tensor& latents,
                            const at::Tensor& offsets, const at::Tensor& scale) {
    at::Tensor values;  // [nnz]: the dense GEMM's own numbers
    {
      at::NoGradGuard no_grad;
      values = hidden_pre.reshape({-1}).index_select(0, flat);
    }
    const bool scaled = scale.numel() > 0;
    ctx->save_for_backward({sae_in, W_enc, rows, latents, offsets, scale, scaled ? values : at::Tensor()});
    return values;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& sae_in = saved[0];   // [n, d_in]
    const at::Tensor& W_enc = saved[1];    // [d_in, d_sae]
    const at::Tensor& rows = saved[2];     // [nnz]
    const at::Tensor& latents = saved[3];  // [nnz]
    const at::Tensor& offsets = saved[4];  // [n + 1]
    const at::Tensor& scale = saved[5];    // [d_sae], or empty
    at::Tensor d_in, d_W, d_b, d_scale;
    if (grads[0].defined()) {
      at::Tensor g = grads[0].contiguous();  // [nnz], dL/dvalues
      const int64_t d_sae = W_enc.size(1);
      if (scale.numel() > 0) {
        // As sparse_encoder_values: dL/draw = g * scale[c], dL/dscale[c] =
        // the sum of g * raw over c's entries, raw = values / scale.
        const at::Tensor s = scale.detach().index_select(0, latents);  // [nnz]
        if (ctx->needs_input_grad(8)) d_scale = at::zeros({d_sae}, g.options()).index_add_(0, latents, g * saved[6] / s);
        g = g * s;
      }
      if (ctx->needs_input_grad(0)) d_in = rows_decode(g, rows, latents, offsets, W_enc.t());  // [n, d_in]
      if (ctx->needs_input_grad(1)) d_W = rows_weight_grad(g, rows, latents, offsets, sae_in, d_sae, /*transposed=*/true);
      if (ctx->needs_input_grad(2)) {
        const at::Tensor ones = at::ones({sae_in.size(0), 1}, g.options());  // [n, 1]
        d_b = rows_weight_grad(g, rows, latents, offsets, ones, d_sae, /*transposed=*/false).view({d_sae});
      }
    }
    return {d_in, d_W, d_b, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), d_scale};
  }
};

struct RowsDecoder : public torch::autograd::Function<RowsDecoder> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& values, const at::Tensor& rows,
                            const at::Tensor& latents, const at::Tensor& offsets, const at::Tensor& W_dec) {
    ctx->save_for_backward({values, rows, latents, offsets, W_dec});
    return rows_decode(values, rows, latents, offsets, W_dec);  // [n, d_in]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& values = saved[0];   // [nnz]
    const at::Tensor& rows = saved[1];     // [nnz]
    const at::Tensor& latents = saved[2];  // [nnz]
    const at::Tensor& offsets = saved[3];  // [n + 1]
    const at::Tensor& W_dec = saved[4];    // [d_sae, d_in]
    at::Tensor d_values, d_W;
    if (grads[0].defined()) {
      const at::Tensor g = grads[0].contiguous();  // [n, d_in]
      if (ctx->needs_input_grad(0)) d_values = rows_grad_values(g, rows, latents, offsets, W_dec);
      if (ctx->needs_input_grad(4)) {
        d_W = rows_weight_grad(values, rows, latents, offsets, g, W_dec.size(0), /*transposed=*/false);
      }
    }
    return {d_values, at::Tensor(), at::Tensor(), at::Tensor(), d_W};
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

namespace mechlab::sae {

at::Tensor top_entries(const at::Tensor& x, int64_t keep) {
  MECHLAB_CHECK(x.dim() == 1 && keep >= 0 && keep <= x.numel(), "top_entries needs a vector and 0 <= keep <= its ",
                x.numel(), " entries; got keep ", keep, " of a tensor of shape ", x.sizes());
  const int64_t N = x.numel();
  constexpr int64_t kSample = 1 << 16;
  if (keep == 0 || N <= 4 * kSample || keep * 8 > N) return std::get<1>(at::topk(x, keep, -1, true, false));
  // The threshold: the sample's value at a rank that, scaled to N, lies
  // above `keep` with a wide margin (the sample's rank of the keep-th
  // largest is about keep * kSample / N, give or take its square root).
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(/*seed_in=*/1234);
  const at::Tensor pick = at::randint(N, {kSample}, gen, at::TensorOptions(at::kLong)).to(x.device());
  const double expected = static_cast<double>(keep) * kSample / static_cast<double>(N);
  const auto rank = std::min<int64_t>(kSample, static_cast<int64_t>(expected + 4.0 * std::sqrt(expected) + 16.0));
  const at::Tensor sample = x.index_select(0, pick);
  const at::Tensor t = std::get<0>(at::topk(sample, rank, -1, true, true)).select(0, rank - 1);
  const at::Tensor candidates = (x >= t).nonzero().reshape({-1});  // [c], c >= keep almost always
  if (candidates.numel() < keep) return std::get<1>(at::topk(x, keep, -1, true, false));
  const at::Tensor best = std::get<1>(at::topk(x.index_select(0, candidates), keep, -1, true, false));
  return candidates.index_select(0, best);
}

SparseRows sparse_rows(const at::Tensor& flat, int64_t n, int64_t d_sae) {
  MECHLAB_CHECK(n >= 0 && d_sae >= 1, "sparse_rows: the matrix must be [n >= 0, d_sae >= 1], got [", n, ", ",
                d_sae, "]");
  SparseRows out;
  out.n = n;
  out.d_sae = d_sae;
  out.flat = std::get<0>(at::sort(flat.reshape({-1}).to(at::kLong)));  // [nnz], by row, then latent
  if (out.flat.numel() > 0) {
    const auto [lo, hi] = at::aminmax(out.flat);
    MECHLAB_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < n * d_sae, "sparse_rows: an entry lies outside [0, ",
                  n * d_sae, ")");
  }
  out.rows = out.flat.div(d_sae, "trunc");        // [nnz]
  out.latents = out.flat - out.rows * d_sae;      // [nnz]
  const at::Tensor counts = at::bincount(out.rows, {}, n);  // [n]
  out.offsets = at::cat({at::zeros({1}, out.flat.options()), counts.cumsum(0)});  // [n + 1]
  return out;
}

namespace {
void check_entries(const char* what, const SparseRows& e, int64_t nnz) {
  MECHLAB_CHECK(e.flat.defined() && e.rows.defined() && e.latents.defined() && e.offsets.defined(), what,
                ": the entry list is empty (build it with sparse_rows)");
  MECHLAB_CHECK(e.rows.size(0) == nnz && e.latents.size(0) == nnz && e.offsets.size(0) == e.n + 1, what,
                ": the entry list holds ", e.rows.size(0), " entries and ", e.offsets.size(0), " offsets; want ", nnz,
                " and n + 1 = ", e.n + 1);
}
}  // namespace

at::Tensor sparse_rows_encoder_values(const at::Tensor& sae_in, const at::Tensor& W_enc, const at::Tensor& b_enc,
                                      const at::Tensor& hidden_pre, const SparseRows& entries, const at::Tensor& scale) {
  MECHLAB_CHECK(sae_in.dim() == 2 && W_enc.dim() == 2 && sae_in.size(1) == W_enc.size(0),
                "sparse_rows_encoder_values: sae_in ", sae_in.sizes(), " and W_enc ", W_enc.sizes(),
                " must be [n, d_in] and [d_in, d_sae]");
  MECHLAB_CHECK(b_enc.dim() == 1 && b_enc.size(0) == W_enc.size(1), "sparse_rows_encoder_values: b_enc ",
                b_enc.sizes(), " must be [d_sae = ", W_enc.size(1), "]");
  MECHLAB_CHECK(hidden_pre.dim() == 2 && hidden_pre.size(0) == sae_in.size(0) && hidden_pre.size(1) == W_enc.size(1) &&
                    hidden_pre.is_contiguous(),
                "sparse_rows_encoder_values: hidden_pre ", hidden_pre.sizes(), " must be a contiguous [n, d_sae] = [",
                sae_in.size(0), ", ", W_enc.size(1), "]");
  MECHLAB_CHECK(entries.n == sae_in.size(0) && entries.d_sae == W_enc.size(1), "sparse_rows_encoder_values: the entries are of an [",
                entries.n, ", ", entries.d_sae, "] matrix, hidden_pre is ", hidden_pre.sizes());
  check_entries("sparse_rows_encoder_values", entries, entries.flat.numel());
  MECHLAB_CHECK(!scale.defined() || (scale.dim() == 1 && scale.size(0) == W_enc.size(1)),
                "sparse_rows_encoder_values: scale ", scale.sizes(), " must be [d_sae = ", W_enc.size(1), "]");
  return RowsEncoderValues::apply(sae_in, W_enc, b_enc, hidden_pre, entries.flat, entries.rows, entries.latents,
                                  entries.offsets, scale.defined() ? scale : at::empty({0}, hidden_pre.options()));
}

at::Tensor sparse_rows_decode(const at::Tensor& values, const SparseRows& entries, const at::Tensor& W_dec) {
  MECHLAB_CHECK(values.dim() == 1, "sparse_rows_decode: values must be [nnz], got ", values.sizes());
  check_entries("sparse_rows_decode", entries, values.size(0));
  MECHLAB_CHECK(W_dec.dim() == 2 && W_dec.size(0) == entries.d_sae, "sparse_rows_decode: W_dec ", W_dec.sizes(),
                " must be [d_sae = ", entries.d_sae, ", d_in]");
  MECHLAB_CHECK(W_dec.scalar_type() == values.scalar_type() && W_dec.device() == values.device(),
                "sparse_rows_decode: values (", values.scalar_type(), ", ", values.device(), ") and W_dec (",
                W_dec.scalar_type(), ", ", W_dec.device(), ") must share dtype and device");
  return RowsDecoder::apply(values, entries.rows, entries.latents, entries.offsets, W_dec);
}

}  // namespace mechlab::sae
