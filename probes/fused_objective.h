// The CPU kernels of the probes' data terms (docs/ARCHITECTURE.md, "Probes",
// "Speed against scikit-learn"): the objective, the standardisation
// moments and ridge's Gram (column_moments and standardized_gram below).
//
// The objective: one pass over the rows computes
// the logits, the loss, the residual and the gradient, block by block, so
// that each row is read from memory once per evaluation (ATen's two GEMMs,
// x @ w then r^T @ x, read it twice).
//
// For one probe with rows x [n, d], weights w [O, d] and bias b [O]:
//   z_i   = w x_i + b                                   [O]
//   loss  = sum_i l(z_i, y_i)                           (float64)
//   r_i   = dl/dz_i                                     [O]
//   grad  = sum_i r_i x_i^T                             [O, d]
//   rsum  = sum_i r_i                                   [O]
// with l the binary logistic loss (O = 1, y in {0, 1} as floating point:
// softplus(z) - y z), the multinomial one (O = K classes, y a class index:
// logsumexp(z) - z_y) or the squared one (O = 1: (z - y)^2 / 2).
//
// Rows are split into chunks of kChunkRows (a constant, not the thread
// count); each (probe, chunk) is one task of at::parallel_for with its own
// partial sums, and the partials are added in chunk order in float64, so the
// result does not depend on the number of threads or their scheduling.
// Within a chunk, blocks of kBlockRows rows are read once from memory for the
// logits and again from cache for the gradient.
//
// The inner loops are GCC/Clang vector extensions compiled three times (for
// AVX-512, for AVX2 + FMA, and portable 128-bit vectors) and chosen when the
// program runs (`fused_objective_isa`); any C++17 compiler with vector
// extensions builds it, on any x86-64 or other CPU (there only the portable
// version exists). Internal to probes/ (linear_probe.cpp calls it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::probes::detail {

enum class RowLoss { binary_logistic, multinomial_logistic, squared };

/// One probe's inputs and outputs. Pointers are the caller's (no copies);
/// strides are in elements.
template <typename T>
struct RowProblem {
  const T* x = nullptr;          ///< row i of [n, d] at x + i * ldx (features contiguous)
  int64_t ldx = 0;
  const T* w = nullptr;          ///< [O, d], row-major contiguous
  const T* b = nullptr;          ///< [O]
  const T* y = nullptr;          ///< binary / squared: y[i * ldy]
  const int64_t* cls = nullptr;  ///< multinomial: class of row i at cls[i * ldy], in [0, O)
  int64_t ldy = 1;
  T* grad = nullptr;      ///< out [O, d] (written when the gradient is asked for)
  T* rsum = nullptr;      ///< out [O] (likewise)
  double* loss = nullptr; ///< out: the summed loss
};

/// Rows per task of the parallel loop and per block kept in cache.
constexpr int64_t kChunkRows = 4096;
constexpr int64_t kBlockRows = 32;

/// Evaluates every problem (all with n rows of d features and O outputs).
/// T is float or double.
template <typename T>
void fused_objective(const std::vector<RowProblem<T>>& problems, int64_t n, int64_t d, int64_t O, RowLoss loss,
                     bool need_grad);

/// StandardScaler's statistics of P probes' rows in one read: mean [P, d]
/// and population variance [P, d] (float64, row-major) of the n rows of
/// each x[p] (row i at x[p] + i * ldx). Per block of kMomentRows rows (in
/// cache) the block's mean and sum of squared deviations, merged in float64
/// (Chan, Golub & LeVeque's pairwise update) within a chunk and then over the
/// chunks in order: the same result whatever the thread count, and no
/// cancellation for features with a large mean. NaN or inf rows give NaN.
constexpr int64_t kMomentRows = 64;
template <typename T>
void column_moments(const std::vector<const T*>& x, int64_t ldx, int64_t n, int64_t d, double* mean, double* var);

/// Ridge's normal equations (the closed form's data term) of P probes in one
/// read of their rows: with z_i = x_i * scale + shift (per feature: the
/// standardised, centred rows) and y_i the centred target,
///   G = sum_i z_i z_i^T   [d, d]    R = sum_i y_i z_i   [d]   (float64, written)
/// Blocks of kGramRows rows are standardised into column panels of three
/// vectors (in cache), and register tiles of MR rows x one panel (MR = 8 on
/// AVX-512, 4 on AVX2) accumulate over each block; only the tiles that reach
/// the upper triangle are computed (d^2 / 2 multiply-adds per row), and the
/// lower triangle is copied from it. The tiles are shared out over the
/// threads, and every sum adds the rows in order, in float32 over
/// kGramFlushRows rows and then in float64: the same sums whatever the thread
/// count. Why not at::mm: MKL runs its AVX2 code on AMD CPUs, and computes
/// both triangles.
constexpr int64_t kGramRows = 256;
constexpr int64_t kGramFlushRows = 4096;
template <typename T>
struct GramProblem {
  const T* x = nullptr;  ///< row i of [n, d] at x + i * ldx
  int64_t ldx = 0;
  const T* scale = nullptr;  ///< [d]
  const T* shift = nullptr;  ///< [d]
  const T* y = nullptr;      ///< centred target of row i at y[i * ldy]
  int64_t ldy = 1;
  double* G = nullptr;  ///< out [d, d], row-major
  double* R = nullptr;  ///< out [d]
};
template <typename T>
void standardized_gram(const std::vector<GramProblem<T>>& problems, int64_t n, int64_t d);

/// The instruction sets this machine can run the kernel with, best first
/// ("avx512", "avx2", "portable"), and the one it uses.
std::vector<std::string> fused_objective_isas();
std::string fused_objective_isa();
/// Forces one of fused_objective_isas() (tests, benchmarks); "" restores the
/// best. Not thread-safe: call it before fitting. An ISA the machine cannot
/// run is refused naming the ones it can.
void force_fused_objective_isa(const std::string& isa);

}  // namespace mechlab::probes::detail
