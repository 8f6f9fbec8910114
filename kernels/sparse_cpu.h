// The CPU loops of the sparse decoder's three sums, written once for the two
// ways an SAE's sparse path lists its active (row, latent) entries:
//
//   [n, k] (TopK; kernels/sparse_decoder.cpp's "cpu" implementations):
//     entry e = n k + j, row r's entries are [r k, r k + k);
//   a list sorted by row, then latent (BatchTopK; sae/sparse_ops.cpp's
//     SparseRows): entry p, row r's entries are [offsets[r], offsets[r + 1]).
//
// Entries e in [0, nnz) each have a value (or coefficient) and a latent,
// stored contiguous in entry order (an [n, k] tensor is read row-major). The
// caller says where the rows are through a functor, inlined: `row_start(r)`,
// the first entry of row r, for r in [0, n]; row r's entries are
// [row_start(r), row_start(r + 1)), row_start(0) = 0 and row_start(n) = nnz.
// Every sum runs in entry order, one term at a time:
//
//   entries_decode:      out[r] = sum over row r's entries e of values[e] * weight[latents[e]]
//   entries_grad_values: out[e] = grad[r] . weight[latents[e]], r the row of e
//   entries_weight_grad: G[c]   = sum over e with latents[e] = c of coef[e] * x[row of e]
//
// so with the [n, k] layout a latent's sum runs in order of n, then j, and
// with the row list in list order: in order of row (a row holds a latent at
// most once). One thread computes each output row or latent, so the result
// does not depend on the number of threads. float32 and float64 CPU
// tensors; latents must lie in [0, L) (the callers check or guarantee it).
#pragma once

#include "core/util/error.h"
#include "kernels/cpu_vec.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mechlab::kernels::detail {

/// Refuses row starts that do not rise from 0 to nnz (the loops would read
/// or write outside the entries): one pass over the n + 1 starts.
template <typename RowStart>
void check_row_starts(int64_t n, RowStart row_start, int64_t nnz) {
  MECHLAB_CHECK(row_start(0) == 0 && row_start(n) == nnz, "sparse rows: the ", n, " rows' entries run from ",
                row_start(0), " to ", row_start(n), "; the row offsets must run from 0 to the ", nnz, " entries");
  for (int64_t r = 0; r < n; ++r) {
    MECHLAB_CHECK(row_start(r) <= row_start(r + 1), "sparse rows: row ", r, " starts at entry ", row_start(r),
                  " and ends at ", row_start(r + 1), "; the row offsets must not decrease");
  }
}

/// out [n, d]: row r sums values[e] * weight[latents[e], :] over its entries
/// e in [row_start(r), row_start(r + 1)), in order; weight [L, d] any strides.
template <typename T, typename RowStart>
at::Tensor entries_decode(const at::Tensor& values, const at::Tensor& latents, int64_t n,
                          RowStart row_start, const at::Tensor& weight) {
  const at::Tensor v = values.contiguous(), lat = latents.contiguous();
  const int64_t d = weight.size(1);
  check_row_starts(n, row_start, lat.numel());
  const T* vp = v.data_ptr<T>();
  const int64_t* lp = lat.data_ptr<int64_t>();
  if (weight.stride(1) != 1 && weight.stride(0) == 1 && d > 1) {
    // Columns contiguous (W_enc.t(), [d_sae, d_in] with stride 1 along
    // d_sae): one column of the weight (a row of W_enc, d_sae entries, cache
    // resident) serves every output row at once; the output is built as its
    // transpose [d, n] and transposed back.
    const T* wp = weight.data_ptr<T>();
    const int64_t cs = weight.stride(1);
    at::Tensor out_t = at::empty({d, n}, v.options());  // [d, n]
    T* op = out_t.data_ptr<T>();
    at::parallel_for(0, d, 4, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        const T* col = wp + c * cs;  // weight[:, c]
        for (int64_t r = 0; r < n; ++r) {
          T acc = 0;
          for (int64_t p = row_start(r), end = row_start(r + 1); p < end; ++p) {
            acc += vp[p] * col[lp[p]];
          }
          op[c * n + r] = acc;
        }
      }
    });
    return out_t.t().contiguous();
  }
  // Rows of the weight contiguous (W_dec; any other layout is copied to
  // that): each output row is its entries' scaled weight rows added in order.
  const at::Tensor w = weight.stride(1) == 1 ? weight : weight.contiguous();
  const T* wp = w.data_ptr<T>();
  const int64_t ws = w.stride(0);
  at::Tensor out = at::zeros({n, d}, v.options());  // [n, d]
  T* op = out.data_ptr<T>();
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      for (int64_t p = row_start(r), end = row_start(r + 1); p < end; ++p) {
        axpy(d, vp[p], wp + lp[p] * ws, op + r * d);
      }
    }
  });
  return out;
}

/// out [nnz]: out[e] = grad[r, :] . weight[latents[e], :] for each entry e
/// of row r; grad [n, d], weight [L, d] any strides.
template <typename T, typename RowStart>
at::Tensor entries_grad_values(const at::Tensor& grad, const at::Tensor& latents, RowStart row_start,
                               const at::Tensor& weight) {
  const at::Tensor g = grad.contiguous(), lat = latents.contiguous();
  const at::Tensor w = weight.stride(1) == 1 ? weight : weight.contiguous();
  const int64_t n = g.size(0), d = g.size(1), ws = w.stride(0);
  check_row_starts(n, row_start, lat.numel());
  at::Tensor out = at::empty({lat.numel()}, g.options());  // [nnz]
  const T* gp = g.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  const int64_t* lp = lat.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      for (int64_t p = row_start(r), end = row_start(r + 1); p < end; ++p) {
        op[p] = dot(d, gp + r * d, wp + lp[p] * ws);
      }
    }
  });
  return out;
}

/// G [L, d], or with `transposed` its transpose [d, L] stored contiguous:
/// row c sums coef[e] * x[r, :] over the entries e with latents[e] = c, r
/// the row of e, in entry order; rows of latents no entry names are zero.
/// x [n, d].
template <typename T, typename RowStart>
at::Tensor entries_weight_grad(const at::Tensor& coef, const at::Tensor& latents, RowStart row_start,
                               const at::Tensor& x_in, int64_t L, bool transposed) {
  const at::Tensor cf = coef.contiguous(), lat = latents.contiguous(), x = x_in.contiguous();
  const int64_t nnz = lat.numel(), n = x.size(0), d = x.size(1);
  check_row_starts(n, row_start, nnz);
  const T* cp = cf.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const int64_t* lp = lat.data_ptr<int64_t>();
  // Entries bucketed by latent (a counting sort, entry order kept within a
  // latent), each as its coefficient and row, so that each latent's row is
  // summed by one thread, in a fixed order, with no atomics.
  std::vector<int64_t> start(static_cast<size_t>(L) + 1, 0);
  for (int64_t p = 0; p < nnz; ++p) ++start[lp[p] + 1];
  for (int64_t c = 0; c < L; ++c) start[c + 1] += start[c];
  std::vector<T> coef_of(static_cast<size_t>(nnz));      // [nnz], by latent
  std::vector<int64_t> row_of(static_cast<size_t>(nnz));  // [nnz], by latent
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t p = row_start(r), end = row_start(r + 1); p < end; ++p) {
        const int64_t q = fill[lp[p]]++;
        coef_of[q] = cp[p];
        row_of[q] = r;
      }
    }
  }
  // Adds latent c's terms to `row` [d], in entry order.
  const auto sum_latent = [&](int64_t c, T* row) {
    for (int64_t q = start[c]; q < start[c + 1]; ++q) axpy(d, coef_of[q], xp + row_of[q] * d, row);
  };
  if (!transposed) {
    at::Tensor g = at::empty({L, d}, cf.options());  // [L, d]
    T* gp = g.data_ptr<T>();
    at::parallel_for(0, L, 64, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        T* row = gp + c * d;
        std::fill(row, row + d, T(0));
        sum_latent(c, row);
      }
    });
    return g;
  }
  // [d, L]: blocks of 16 latents are summed as rows in a local buffer and
  // written out as 16 consecutive entries (one cache line of float32) of
  // each of the d rows.
  constexpr int64_t kBlock = 16;
  at::Tensor g = at::empty({d, L}, cf.options());  // [d, L]
  T* gp = g.data_ptr<T>();
  at::parallel_for(0, (L + kBlock - 1) / kBlock, 4, [&](int64_t b, int64_t e) {
    std::vector<T> buf(static_cast<size_t>(kBlock * d));  // [kBlock, d]
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t c0 = blk * kBlock, c1 = std::min(L, c0 + kBlock);
      std::fill(buf.begin(), buf.end(), T(0));
      for (int64_t c = c0; c < c1; ++c) sum_latent(c, buf.data() + (c - c0) * d);
      for (int64_t dd = 0; dd < d; ++dd) {
        for (int64_t c = c0; c < c1; ++c) gp[dd * L + c] = buf[(c - c0) * d + dd];
      }
    }
  });
  return g;
}

}  // namespace mechlab::kernels::detail
