#include "probes/fused_objective.h"

#include "core/util/error.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>

// The C++ standard mode (-std=c++17, no GNU extensions) turns GCC's
// contraction of a * b + c into one FMA off; the inner loops want it (half
// the instructions). Set here, after the includes, so that only this file's
// own functions carry it. Clang contracts within an expression by default.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif

#define MECHLAB_INLINE __attribute__((always_inline)) inline

namespace mechlab::probes::detail {
namespace {

// W lanes of T as one GCC/Clang vector (W * sizeof(T) bytes: 64 for
// AVX-512, 32 for AVX2, 16 for the portable build). Loads and stores go
// through memcpy (unaligned); vectors are never passed by value, so no
// function's ABI depends on the instruction set.
template <typename T, int W>
struct Vec {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
};

template <typename T, int W>
MECHLAB_INLINE T hsum(const typename Vec<T, W>::type& v) {
  T lanes[W];
  std::memcpy(lanes, &v, sizeof(lanes));
  for (int h = W / 2; h >= 1; h /= 2) {
    for (int l = 0; l < h; ++l) lanes[l] += lanes[l + h];
  }
  return lanes[0];
}

template <typename T>
MECHLAB_INLINE T max_of(T a, T b) { return a < b ? b : a; }
MECHLAB_INLINE int64_t min_of(int64_t a, int64_t b) { return a < b ? a : b; }

// z[r * O + k] = x_r . w_k for R rows (R <= 2) and KT outputs: R * KT
// accumulators, each x vector loaded once for KT weights and each weight
// vector once for R rows.
template <typename T, int W, int R, int KT>
MECHLAB_INLINE void dot_tile(const T* x, int64_t ldx, const T* w, int64_t d, T* z, int64_t O) {
  using V = typename Vec<T, W>::type;
  V acc[R][KT];
  for (int r = 0; r < R; ++r) {
    for (int k = 0; k < KT; ++k) acc[r][k] = V{};
  }
  int64_t i = 0;
  for (; i + W <= d; i += W) {
    V xv[R];
    for (int r = 0; r < R; ++r) std::memcpy(&xv[r], x + r * ldx + i, sizeof(V));
    for (int k = 0; k < KT; ++k) {
      V wv;
      std::memcpy(&wv, w + k * d + i, sizeof(V));
      for (int r = 0; r < R; ++r) acc[r][k] += xv[r] * wv;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int k = 0; k < KT; ++k) {
      T s = hsum<T, W>(acc[r][k]);
      for (int64_t j = i; j < d; ++j) s += x[r * ldx + j] * w[k * d + j];
      z[r * O + k] = s;
    }
  }
}

// Tiles of at most 5 outputs: 2 rows x 5 outputs = 10 accumulators, which
// with the loaded vectors fits AVX2's 16 registers.
constexpr int kMaxTile = 5;

template <typename T, int W, int R>
MECHLAB_INLINE void dot_rows(const T* x, int64_t ldx, const T* w, int64_t d, T* z, int64_t O) {
  for (int64_t k0 = 0; k0 < O; k0 += kMaxTile) {
    const T* wk = w + k0 * d;
    T* zk = z + k0;
    switch (min_of(kMaxTile, O - k0)) {
      case 1: dot_tile<T, W, R, 1>(x, ldx, wk, d, zk, O); break;
      case 2: dot_tile<T, W, R, 2>(x, ldx, wk, d, zk, O); break;
      case 3: dot_tile<T, W, R, 3>(x, ldx, wk, d, zk, O); break;
      case 4: dot_tile<T, W, R, 4>(x, ldx, wk, d, zk, O); break;
      default: dot_tile<T, W, R, 5>(x, ldx, wk, d, zk, O); break;
    }
  }
}

// g[k, :] += sum_j r[j * O + k] x_j for KT outputs over m rows (the block,
// in cache after dot_rows): each gradient tile [KT, 2W] stays in registers
// while the block's rows stream past it.
template <typename T, int W, int KT>
MECHLAB_INLINE void axpy_tile(const T* x, int64_t ldx, int64_t m, const T* r, int64_t O, T* g, int64_t d) {
  using V = typename Vec<T, W>::type;
  int64_t i = 0;
  for (; i + 2 * W <= d; i += 2 * W) {
    V acc[KT][2];
    for (int k = 0; k < KT; ++k) {
      std::memcpy(&acc[k][0], g + k * d + i, sizeof(V));
      std::memcpy(&acc[k][1], g + k * d + i + W, sizeof(V));
    }
    for (int64_t j = 0; j < m; ++j) {
      V a, b;
      std::memcpy(&a, x + j * ldx + i, sizeof(V));
      std::memcpy(&b, x + j * ldx + i + W, sizeof(V));
      const T* rj = r + j * O;
      for (int k = 0; k < KT; ++k) {
        const T s = rj[k];
        acc[k][0] += s * a;
        acc[k][1] += s * b;
      }
    }
    for (int k = 0; k < KT; ++k) {
      std::memcpy(g + k * d + i, &acc[k][0], sizeof(V));
      std::memcpy(g + k * d + i + W, &acc[k][1], sizeof(V));
    }
  }
  for (; i + W <= d; i += W) {
    V acc[KT];
    for (int k = 0; k < KT; ++k) std::memcpy(&acc[k], g + k * d + i, sizeof(V));
    for (int64_t j = 0; j < m; ++j) {
      V a;
      std::memcpy(&a, x + j * ldx + i, sizeof(V));
      for (int k = 0; k < KT; ++k) acc[k] += r[j * O + k] * a;
    }
    for (int k = 0; k < KT; ++k) std::memcpy(g + k * d + i, &acc[k], sizeof(V));
  }
  for (; i < d; ++i) {
    for (int k = 0; k < KT; ++k) {
      T s = g[k * d + i];
      for (int64_t j = 0; j < m; ++j) s += r[j * O + k] * x[j * ldx + i];
      g[k * d + i] = s;
    }
  }
}

template <typename T, int W>
MECHLAB_INLINE void axpy_rows(const T* x, int64_t ldx, int64_t m, const T* r, int64_t O, T* g, int64_t d) {
  for (int64_t k0 = 0; k0 < O; k0 += kMaxTile) {
    const T* rk = r + k0;
    T* gk = g + k0 * d;
    switch (min_of(kMaxTile, O - k0)) {
      case 1: axpy_tile<T, W, 1>(x, ldx, m, rk, O, gk, d); break;
      case 2: axpy_tile<T, W, 2>(x, ldx, m, rk, O, gk, d); break;
      case 3: axpy_tile<T, W, 3>(x, ldx, m, rk, O, gk, d); break;
      case 4: axpy_tile<T, W, 4>(x, ldx, m, rk, O, gk, d); break;
      default: axpy_tile<T, W, 5>(x, ldx, m, rk, O, gk, d); break;
    }
  }
}

// Loss of the m rows of a block (returned, float64) and their residual,
// written over their logits z [m, O]; rs [O] += the residuals.
template <typename T>
MECHLAB_INLINE double loss_and_residual(const RowProblem<T>& pr, int64_t row0, int64_t m, int64_t O, RowLoss loss,
                                        T* z, double* rs) {
  double total = 0;
  if (loss == RowLoss::multinomial_logistic) {
    for (int64_t j = 0; j < m; ++j) {
      T* zj = z + j * O;
      T top = zj[0] + pr.b[0];
      for (int64_t k = 0; k < O; ++k) {
        zj[k] += pr.b[k];
        top = max_of(top, zj[k]);
      }
      const int64_t c = pr.cls[(row0 + j) * pr.ldy];
      const T zc = zj[c];
      T sum = 0;
      for (int64_t k = 0; k < O; ++k) {
        zj[k] = std::exp(zj[k] - top);
        sum += zj[k];
      }
      // loss = logsumexp(z) - z_c; residual = softmax(z) - onehot(c).
      total += static_cast<double>(top + std::log(sum) - zc);
      const T inv = T(1) / sum;
      for (int64_t k = 0; k < O; ++k) {
        zj[k] = zj[k] * inv - (k == c ? T(1) : T(0));
        rs[k] += static_cast<double>(zj[k]);
      }
    }
    return total;
  }
  const T b = pr.b[0];
  double rsum = 0;
  for (int64_t j = 0; j < m; ++j) {
    const T zz = z[j] + b;
    const T yy = pr.y[(row0 + j) * pr.ldy];
    T r;
    if (loss == RowLoss::squared) {
      r = zz - yy;
      total += 0.5 * static_cast<double>(r) * static_cast<double>(r);
    } else {
      // softplus(z) - y z with softplus(z) = max(z, 0) + log1p(exp(-|z|));
      // residual sigmoid(z) - y from the same exp(-|z|).
      const T e = std::exp(-std::fabs(zz));
      total += static_cast<double>(max_of(zz, T(0)) + std::log1p(e) - yy * zz);
      const T sig = zz >= 0 ? T(1) / (T(1) + e) : e / (T(1) + e);
      r = sig - yy;
    }
    z[j] = r;
    rsum += static_cast<double>(r);
  }
  rs[0] += rsum;
  return total;
}

// Rows [row0, row1) of one problem: the chunk one task evaluates. g [O, d]
// and rs [O] start at zero; z is scratch of kBlockRows * O.
template <typename T, int W>
MECHLAB_INLINE void chunk_body(const RowProblem<T>& pr, int64_t row0, int64_t row1, int64_t d, int64_t O,
                               RowLoss loss, bool need_grad, T* g, double* rs, double* loss_out, T* z) {
  double total = 0;
  for (int64_t a = row0; a < row1; a += kBlockRows) {
    const int64_t m = min_of(kBlockRows, row1 - a);
    const T* xb = pr.x + a * pr.ldx;
    int64_t j = 0;
    for (; j + 2 <= m; j += 2) dot_rows<T, W, 2>(xb + j * pr.ldx, pr.ldx, pr.w, d, z + j * O, O);
    if (j < m) dot_rows<T, W, 1>(xb + j * pr.ldx, pr.ldx, pr.w, d, z + j * O, O);
    total += loss_and_residual(pr, a, m, O, loss, z, rs);
    if (need_grad) axpy_rows<T, W>(xb, pr.ldx, m, z, O, g, d);
  }
  *loss_out = total;
}

// Running (count, mean, m2) of the rows [row0, row1) of one probe, per
// block of kMomentRows rows: the block's mean, then its squared deviations
// from that mean while the block is in cache, merged into mean and m2
// (float64, [d]). s and q are scratch [d]. Plain loops over the features,
// which the compiler vectorises for each instruction set.
template <typename T>
MECHLAB_INLINE void moments_body(const T* x, int64_t ldx, int64_t row0, int64_t row1, int64_t d, double* mean,
                                 double* m2, T* s, T* q) {
  int64_t count = 0;
  for (int64_t i = 0; i < d; ++i) mean[i] = m2[i] = 0;
  for (int64_t a = row0; a < row1; a += kMomentRows) {
    const int64_t m = min_of(kMomentRows, row1 - a);
    for (int64_t i = 0; i < d; ++i) s[i] = q[i] = T(0);
    for (int64_t j = 0; j < m; ++j) {
      const T* xr = x + (a + j) * ldx;
      for (int64_t i = 0; i < d; ++i) s[i] += xr[i];
    }
    const T inv = T(1) / static_cast<T>(m);
    for (int64_t i = 0; i < d; ++i) s[i] *= inv;
    for (int64_t j = 0; j < m; ++j) {
      const T* xr = x + (a + j) * ldx;
      for (int64_t i = 0; i < d; ++i) {
        const T dev = xr[i] - s[i];
        q[i] += dev * dev;
      }
    }
    const double na = static_cast<double>(count), nb = static_cast<double>(m), nab = na + nb;
    for (int64_t i = 0; i < d; ++i) {
      const double delta = static_cast<double>(s[i]) - mean[i];
      mean[i] += delta * (nb / nab);
      m2[i] += static_cast<double>(q[i]) + delta * delta * (na * nb / nab);
    }
    count += m;
  }
}

// Ridge's Gram (standardized_gram): a task owns a range of register tiles
// [tile0, tile1) of the upper triangle, in the order of gram_tiles. Each
// block of kGramRows rows is standardised into the task's panels (panel q
// holds columns [q * PW, q * PW + PW), row j at pk + (q * kGramRows + j) * PW,
// zero past d; PW = 3 vectors), in cache for the tiles that follow. Every
// task packs the panels its tiles read (a task's share of the packing is
// d * rows against its d^2 / 2 * rows / tasks of tile work).
template <int W, int MR>
struct GramShape {
  static constexpr int64_t PW = 3 * W;  // columns per panel: 3 vectors
  static_assert(PW % MR == 0, "a register tile must not straddle two panels");
};
static_assert(kGramFlushRows % kGramRows == 0, "a float64 flush ends a block");

// The tiles of the upper triangle in order: panel qb of columns, then the
// MR-row tiles that reach its columns (rows i0 < min(d, (qb + 1) * PW)).
// Calls f(qb, i0) for tiles [tile0, tile1) and returns the total count.
template <typename F>
int64_t gram_tiles(int64_t d, int64_t PW, int64_t MR, int64_t tile0, int64_t tile1, F&& f) {
  int64_t t = 0;
  for (int64_t qb = 0; qb * PW < d; ++qb) {
    const int64_t rows = min_of(d, (qb + 1) * PW);
    for (int64_t i0 = 0; i0 < rows; i0 += MR, ++t) {
      if (t >= tile0 && t < tile1) f(qb, i0);
    }
  }
  return t;
}

// acc [MR, PW] = sum over the block's m rows of a[j, 0:MR]^T b[j, 0:PW]
// (a and b rows PW apart), added to the tile's float partial ct (or written
// to it when `first`). MR * 3 accumulators stay in registers while the
// block's rows stream past them.
template <typename T, int W, int MR>
MECHLAB_INLINE void gram_tile(const T* a, const T* b, int64_t m, T* ct, bool first) {
  using V = typename Vec<T, W>::type;
  constexpr int64_t PW = GramShape<W, MR>::PW;
  V acc[MR][3];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = acc[r][2] = V{};
  for (int64_t j = 0; j < m; ++j) {
    V b0, b1, b2;
    std::memcpy(&b0, b + j * PW, sizeof(V));
    std::memcpy(&b1, b + j * PW + W, sizeof(V));
    std::memcpy(&b2, b + j * PW + 2 * W, sizeof(V));
    const T* aj = a + j * PW;
    for (int r = 0; r < MR; ++r) {
      // aj[r] in every lane, as one broadcast load: x - 0 is x for every x,
      // so the subtraction folds away (0 + x does not: -0 + 0 is +0).
      const V s = aj[r] - V{};
      acc[r][0] += s * b0;
      acc[r][1] += s * b1;
      acc[r][2] += s * b2;
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < 3; ++v) {
      T* c = ct + r * PW + v * W;
      V old = V{};
      if (!first) std::memcpy(&old, c, sizeof(V));
      old += acc[r][v];
      std::memcpy(c, &old, sizeof(V));
    }
  }
}

template <typename T, int W, int MR>
MECHLAB_INLINE void gram_task_body(const GramProblem<T>* problems, int64_t P, int64_t n, int64_t d, int64_t tile0,
                                   int64_t tile1) {
  constexpr int64_t PW = GramShape<W, MR>::PW;
  std::vector<std::pair<int64_t, int64_t>> tiles;  // (panel qb, first row i0)
  gram_tiles(d, PW, MR, tile0, tile1, [&](int64_t qb, int64_t i0) { tiles.emplace_back(qb, i0); });
  if (tiles.empty()) return;
  const int64_t panels = tiles.back().first + 1;  // the panels read: 0 .. the last tile's
  // R's columns belong to the task that owns their panel's first tile.
  std::vector<char> owns_r(static_cast<size_t>(panels), 0);
  for (const auto& t : tiles) {
    if (t.second == 0) owns_r[static_cast<size_t>(t.first)] = 1;
  }
  std::unique_ptr<T[]> pk(new T[static_cast<size_t>(panels * kGramRows * PW)]);  // [panels, kGramRows, PW]
  std::unique_ptr<T[]> ct(new T[tiles.size() * MR * PW]);                        // [tiles, MR, PW]
  std::unique_ptr<T[]> rf(new T[static_cast<size_t>(panels * PW)]);             // [panels * PW]
  for (int64_t p = 0; p < P; ++p) {
    const GramProblem<T>& pr = problems[p];
    for (int64_t row0 = 0; row0 < n; row0 += kGramRows) {
      const int64_t m = min_of(kGramRows, n - row0);
      const bool first = row0 % kGramFlushRows == 0;
      const bool last = row0 + m == n || (row0 + m) % kGramFlushRows == 0;
      const bool first_flush = row0 < kGramFlushRows;
      // Standardise the block into the panels; R's float partial for the
      // owned panels.
      for (int64_t q = 0; q < panels; ++q) {
        const int64_t c0 = q * PW, w = min_of(PW, d - c0);
        const T* sc = pr.scale + c0;
        const T* sh = pr.shift + c0;
        T* dst = pk.get() + q * kGramRows * PW;
        T* r = rf.get() + c0;
        const bool own = owns_r[static_cast<size_t>(q)] != 0;
        if (own && first) {
          for (int64_t c = 0; c < PW; ++c) r[c] = T(0);
        }
        for (int64_t j = 0; j < m; ++j) {
          const T* xr = pr.x + (row0 + j) * pr.ldx + c0;
          T* o = dst + j * PW;
          for (int64_t c = 0; c < w; ++c) o[c] = xr[c] * sc[c] + sh[c];
          for (int64_t c = w; c < PW; ++c) o[c] = T(0);
          if (own) {
            const T yj = pr.y[(row0 + j) * pr.ldy];
            for (int64_t c = 0; c < w; ++c) r[c] += o[c] * yj;
          }
        }
        if (own && last) {
          for (int64_t c = 0; c < w; ++c) {
            pr.R[c0 + c] = (first_flush ? 0.0 : pr.R[c0 + c]) + static_cast<double>(r[c]);
          }
        }
      }
      for (size_t k = 0; k < tiles.size(); ++k) {
        const int64_t qb = tiles[k].first, i0 = tiles[k].second;
        const T* a = pk.get() + (i0 / PW) * kGramRows * PW + i0 % PW;
        const T* b = pk.get() + qb * kGramRows * PW;
        T* c = ct.get() + k * MR * PW;
        gram_tile<T, W, MR>(a, b, m, c, first);
        if (!last) continue;
        // The float partial of up to kGramFlushRows rows into float64.
        for (int64_t r = 0; r < MR && i0 + r < d; ++r) {
          double* g = pr.G + (i0 + r) * d + qb * PW;
          const T* cr = c + r * PW;
          for (int64_t col = 0; col < PW && qb * PW + col < d; ++col) {
            g[col] = (first_flush ? 0.0 : g[col]) + static_cast<double>(cr[col]);
          }
        }
      }
    }
  }
}

template <typename T>
using MomentsFn = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, double*, double*, T*, T*);

#define MECHLAB_MOMENTS_FN(name, attr, T)                                                                  \
  attr void name(const T* x, int64_t ldx, int64_t row0, int64_t row1, int64_t d, double* mean, double* m2, \
                 T* s, T* q) {                                                                             \
    moments_body<T>(x, ldx, row0, row1, d, mean, m2, s, q);                                                \
  }

template <typename T>
using ChunkFn = void (*)(const RowProblem<T>&, int64_t, int64_t, int64_t, int64_t, RowLoss, bool, T*, double*,
                         double*, T*);

#define MECHLAB_CHUNK_FN(name, attr, T, W)                                                                 \
  attr void name(const RowProblem<T>& pr, int64_t row0, int64_t row1, int64_t d, int64_t O, RowLoss loss, \
                 bool need_grad, T* g, double* rs, double* loss_out, T* z) {                               \
    chunk_body<T, W>(pr, row0, row1, d, O, loss, need_grad, g, rs, loss_out, z);                           \
  }

template <typename T>
using GramFn = void (*)(const GramProblem<T>*, int64_t, int64_t, int64_t, int64_t, int64_t);

// A Gram kernel compiled for one instruction set, with its register tile
// (W lanes, MR rows), which standardized_gram needs to share out the tiles.
template <typename T>
struct GramKernel {
  GramFn<T> fn;
  int64_t W, MR;
};

#define MECHLAB_GRAM_FN(name, attr, T, W, MR)                                                           \
  attr void name(const GramProblem<T>* problems, int64_t P, int64_t n, int64_t d, int64_t tile0,        \
                 int64_t tile1) {                                                                       \
    gram_task_body<T, W, MR>(problems, P, n, d, tile0, tile1);                                          \
  }                                                                                                     \
  const GramKernel<T> name##_kernel{name, W, MR};

// 16-byte vectors: SSE2 on any x86-64, NEON elsewhere.
MECHLAB_CHUNK_FN(chunk_portable_f, , float, 4)
MECHLAB_CHUNK_FN(chunk_portable_d, , double, 2)
MECHLAB_MOMENTS_FN(moments_portable_f, , float)
MECHLAB_MOMENTS_FN(moments_portable_d, , double)
// Register tiles: MR rows x 3 vectors, MR * 3 accumulators (24 of
// AVX-512's 32 registers; 12 of AVX2's and SSE's 16).
MECHLAB_GRAM_FN(gram_portable_f, , float, 4, 4)
MECHLAB_GRAM_FN(gram_portable_d, , double, 2, 2)
#if defined(__x86_64__)
#define MECHLAB_HAVE_X86_CLONES 1
MECHLAB_MOMENTS_FN(moments_avx2_f, __attribute__((target("avx2,fma"))), float)
MECHLAB_MOMENTS_FN(moments_avx2_d, __attribute__((target("avx2,fma"))), double)
MECHLAB_MOMENTS_FN(moments_avx512_f, __attribute__((target("avx512f"))), float)
MECHLAB_MOMENTS_FN(moments_avx512_d, __attribute__((target("avx512f"))), double)
MECHLAB_CHUNK_FN(chunk_avx2_f, __attribute__((target("avx2,fma"))), float, 8)
MECHLAB_CHUNK_FN(chunk_avx2_d, __attribute__((target("avx2,fma"))), double, 4)
MECHLAB_CHUNK_FN(chunk_avx512_f, __attribute__((target("avx512f"))), float, 16)
MECHLAB_CHUNK_FN(chunk_avx512_d, __attribute__((target("avx512f"))), double, 8)
MECHLAB_GRAM_FN(gram_avx2_f, __attribute__((target("avx2,fma"))), float, 8, 4)
MECHLAB_GRAM_FN(gram_avx2_d, __attribute__((target("avx2,fma"))), double, 4, 4)
MECHLAB_GRAM_FN(gram_avx512_f, __attribute__((target("avx512f"))), float, 16, 8)
MECHLAB_GRAM_FN(gram_avx512_d, __attribute__((target("avx512f"))), double, 8, 8)
#endif

enum class Isa { portable, avx2, avx512 };

const char* name_of(Isa i) {
  switch (i) {
    case Isa::portable: return "portable";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

std::vector<Isa> supported() {
  std::vector<Isa> out;
#if defined(MECHLAB_HAVE_X86_CLONES)
  // __builtin_cpu_supports also asks the OS (XGETBV) whether it saves the
  // wide registers.
  if (__builtin_cpu_supports("avx512f")) out.push_back(Isa::avx512);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back(Isa::avx2);
#endif
  out.push_back(Isa::portable);
  return out;
}

Isa& forced_isa() {
  static Isa isa = supported().front();
  return isa;
}

// The instantiation of kernel `stem` for an instruction set and an element
// type suffix `t`, e.g. MECHLAB_BY_ISA(isa, chunk, f) is chunk_avx512_f on
// AVX-512.
#if defined(MECHLAB_HAVE_X86_CLONES)
#define MECHLAB_BY_ISA(isa, stem, t) \
  ((isa) == Isa::avx512 ? stem##_avx512_##t : (isa) == Isa::avx2 ? stem##_avx2_##t : stem##_portable_##t)
#else
#define MECHLAB_BY_ISA(isa, stem, t) ((void)(isa), stem##_portable_##t)
#endif

ChunkFn<float> chunk_fn(Isa isa, float*) { return MECHLAB_BY_ISA(isa, chunk, f); }
ChunkFn<double> chunk_fn(Isa isa, double*) { return MECHLAB_BY_ISA(isa, chunk, d); }
MomentsFn<float> moments_fn(Isa isa, float*) { return MECHLAB_BY_ISA(isa, moments, f); }
MomentsFn<double> moments_fn(Isa isa, double*) { return MECHLAB_BY_ISA(isa, moments, d); }
GramKernel<float> gram_kernel(Isa isa, float*) { return MECHLAB_BY_ISA(isa, gram, f_kernel); }
GramKernel<double> gram_kernel(Isa isa, double*) { return MECHLAB_BY_ISA(isa, gram, d_kernel); }

}  // namespace

std::vector<std::string> fused_objective_isas() {
  std::vector<std::string> out;
  for (Isa i : supported()) out.push_back(name_of(i));
  return out;
}

std::string fused_objective_isa() { return name_of(forced_isa()); }

void force_fused_objective_isa(const std::string& isa) {
  if (isa.empty()) {
    forced_isa() = supported().front();
    return;
  }
  std::string known;
  for (Isa i : supported()) {
    if (isa == name_of(i)) {
      forced_isa() = i;
      return;
    }
    known += (known.empty() ? "" : ", ") + std::string(name_of(i));
  }
  throw Error(str_cat("fused probe objective: instruction set '", isa, "' is not available here; use one of ",
                      known));
}

template <typename T>
void fused_objective(const std::vector<RowProblem<T>>& problems, int64_t n, int64_t d, int64_t O, RowLoss loss,
                     bool need_grad) {
  const int64_t P = static_cast<int64_t>(problems.size());
  if (P == 0) return;
  const int64_t chunks = n == 0 ? 0 : (n + kChunkRows - 1) / kChunkRows;
  const int64_t tasks = P * chunks;
  const int64_t gsize = need_grad ? O * d : 0;
  // Per-task partial sums, each written by its task alone (zeroed there, so
  // the first touch is the thread's own).
  std::unique_ptr<T[]> gpart(new T[static_cast<size_t>(tasks * gsize)]);
  std::unique_ptr<double[]> rpart(new double[static_cast<size_t>(tasks * O)]);
  std::unique_ptr<double[]> lpart(new double[static_cast<size_t>(tasks)]);
  const ChunkFn<T> fn = chunk_fn(forced_isa(), static_cast<T*>(nullptr));
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<T[]> z(new T[static_cast<size_t>(kBlockRows * O)]);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = t / chunks, c = t % chunks;
      const int64_t row0 = c * kChunkRows, row1 = min_of(n, row0 + kChunkRows);
      T* g = gpart.get() + t * gsize;
      double* rs = rpart.get() + t * O;
      for (int64_t e = 0; e < gsize; ++e) g[e] = T(0);
      for (int64_t k = 0; k < O; ++k) rs[k] = 0;
      fn(problems[static_cast<size_t>(p)], row0, row1, d, O, loss, need_grad, g, rs, &lpart[t], z.get());
    }
  });
  // The partials in chunk order, in float64: the same sums whatever the
  // number of threads.
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<double[]> acc(new double[static_cast<size_t>(gsize > 0 ? gsize : 1)]);  // [O * d]
    for (int64_t p = begin; p < end; ++p) {
      const RowProblem<T>& pr = problems[static_cast<size_t>(p)];
      double l = 0;
      for (int64_t c = 0; c < chunks; ++c) l += lpart[p * chunks + c];
      *pr.loss = l;
      if (!need_grad) continue;
      for (int64_t k = 0; k < O; ++k) {
        double s = 0;
        for (int64_t c = 0; c < chunks; ++c) s += rpart[(p * chunks + c) * O + k];
        pr.rsum[k] = static_cast<T>(s);
      }
      for (int64_t e = 0; e < gsize; ++e) acc[e] = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        const T* g = gpart.get() + (p * chunks + c) * gsize;
        for (int64_t e = 0; e < gsize; ++e) acc[e] += static_cast<double>(g[e]);
      }
      for (int64_t e = 0; e < gsize; ++e) pr.grad[e] = static_cast<T>(acc[e]);
    }
  });
}

template <typename T>
void column_moments(const std::vector<const T*>& x, int64_t ldx, int64_t n, int64_t d, double* mean, double* var) {
  const int64_t P = static_cast<int64_t>(x.size());
  if (P == 0 || n == 0) return;
  const int64_t chunks = (n + kChunkRows - 1) / kChunkRows, tasks = P * chunks;
  std::unique_ptr<double[]> mpart(new double[static_cast<size_t>(tasks * d)]);
  std::unique_ptr<double[]> qpart(new double[static_cast<size_t>(tasks * d)]);
  const MomentsFn<T> fn = moments_fn(forced_isa(), static_cast<T*>(nullptr));
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<T[]> scratch(new T[static_cast<size_t>(2 * d)]);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = t / chunks, c = t % chunks;
      fn(x[static_cast<size_t>(p)], ldx, c * kChunkRows, min_of(n, (c + 1) * kChunkRows), d, mpart.get() + t * d,
         qpart.get() + t * d, scratch.get(), scratch.get() + d);
    }
  });
  // Chunks merged in order (Chan et al.), per probe.
  for (int64_t p = 0; p < P; ++p) {
    double* mu = mean + p * d;
    double* m2 = var + p * d;
    for (int64_t i = 0; i < d; ++i) mu[i] = m2[i] = 0;
    double count = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const double nb = static_cast<double>(min_of(n, (c + 1) * kChunkRows) - c * kChunkRows);
      const double nab = count + nb;
      const double* mb = mpart.get() + (p * chunks + c) * d;
      const double* qb = qpart.get() + (p * chunks + c) * d;
      for (int64_t i = 0; i < d; ++i) {
        const double delta = mb[i] - mu[i];
        mu[i] += delta * (nb / nab);
        m2[i] += qb[i] + delta * delta * (count * nb / nab);
      }
      count = nab;
    }
    for (int64_t i = 0; i < d; ++i) m2[i] /= static_cast<double>(n);
  }
}

template <typename T>
void standardized_gram(const std::vector<GramProblem<T>>& problems, int64_t n, int64_t d) {
  const int64_t P = static_cast<int64_t>(problems.size());
  if (P == 0 || d == 0) return;
  if (n == 0) {
    for (const GramProblem<T>& pr : problems) {
      std::fill(pr.G, pr.G + d * d, 0.0);
      std::fill(pr.R, pr.R + d, 0.0);
    }
    return;
  }
  const GramKernel<T> k = gram_kernel(forced_isa(), static_cast<T*>(nullptr));
  const int64_t tiles = gram_tiles(d, 3 * k.W, k.MR, 0, 0, [](int64_t, int64_t) {});
  // One task per thread, each an equal share of the tiles (equal work).
  const int64_t tasks = std::max<int64_t>(1, min_of(tiles, at::get_num_threads()));
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      k.fn(problems.data(), P, n, d, t * tiles / tasks, (t + 1) * tiles / tasks);
    }
  });
  // The lower triangle from the upper one.
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      double* G = problems[static_cast<size_t>(p)].G;
      for (int64_t i = 1; i < d; ++i) {
        for (int64_t j = 0; j < i; ++j) G[i * d + j] = G[j * d + i];
      }
    }
  });
}

template void standardized_gram<float>(const std::vector<GramProblem<float>>&, int64_t, int64_t);
template void standardized_gram<double>(const std::vector<GramProblem<double>>&, int64_t, int64_t);

template void column_moments<float>(const std::vector<const float*>&, int64_t, int64_t, int64_t, double*, double*);
template void column_moments<double>(const std::vector<const double*>&, int64_t, int64_t, int64_t, double*,
                                     double*);

template void fused_objective<float>(const std::vector<RowProblem<float>>&, int64_t, int64_t, int64_t, RowLoss,
                                     bool);
template void fused_objective<double>(const std::vector<RowProblem<double>>&, int64_t, int64_t, int64_t, RowLoss,
                                      bool);

}  // namespace mechlab::probes::detail
