// Small vector loops for the CPU kernels of kernels/, compiled for AVX-512,
// AVX2 and plain x86-64 and chosen when the program starts (GCC's
// target_clones): the build targets plain x86-64, and these loops run at the
// width of the machine they find. For the CPU kernels of kernels/ and the
// sparse SAE loops of sae/sparse_ops.cpp (mechlab_sae depends on mechlab_kernels).
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MECHLAB_VEC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MECHLAB_VEC_CLONES
#endif

namespace mechlab::kernels::detail {

/// y[i] += a * x[i], i < n.
void axpy(int64_t n, float a, const float* x, float* y);
void axpy(int64_t n, double a, const double* x, double* y);
/// sum_i a[i] * b[i], in 16 interleaved partial sums.
float dot(int64_t n, const float* a, const float* b);
double dot(int64_t n, const double* a, const double* b);

}  // namespace mechlab::kernels::detail
