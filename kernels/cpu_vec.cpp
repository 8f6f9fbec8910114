#include "kernels/cpu_vec.h"

namespace mechlab::kernels::detail {
namespace {

template <typename T>
inline void axpy_t(int64_t n, T a, const T* __restrict x, T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <typename T>
inline T dot_t(int64_t n, const T* __restrict a, const T* __restrict b) {
  // 16 independent partial sums: the compiler keeps them in vector registers
  // (a strict left-to-right sum cannot be vectorised without -ffast-math).
  T acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int l = 0; l < 16; ++l) acc[l] += a[i + l] * b[i + l];
  }
  T s = 0;
  for (int l = 0; l < 16; ++l) s += acc[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

MECHLAB_VEC_CLONES void axpy(int64_t n, float a, const float* x, float* y) { axpy_t(n, a, x, y); }
MECHLAB_VEC_CLONES void axpy(int64_t n, double a, const double* x, double* y) { axpy_t(n, a, x, y); }
MECHLAB_VEC_CLONES float dot(int64_t n, const float* a, const float* b) { return dot_t(n, a, b); }
MECHLAB_VEC_CLONES double dot(int64_t n, const double* a, const double* b) { return dot_t(n, a, b); }

}  // namespace mechlab::kernels::detail
