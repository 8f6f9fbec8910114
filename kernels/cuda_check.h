// Checking raw CUDA runtime calls. Every cudaXxx call in kernels/ goes through
// MECHLAB_CUDA_CHECK, which throws mechlab::Error naming the call, the CUDA
// error and the file and line, so that a failure on a lent GPU machine says
// where it happened. Include only from CUDA code (.cu files, and .cpp files
// inside `#ifdef MECHLAB_HAVE_CUDA`).
#pragma once

#include "core/util/error.h"

#include <cuda_runtime_api.h>

namespace mechlab::kernels::detail {

inline void cuda_check(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  // A launch error stays "sticky" until read; read it so that the next
  // check reports its own call, not this one.
  (void)cudaGetLastError();
  throw ::mechlab::Error(::mechlab::str_cat("CUDA error ", cudaGetErrorName(err), " (",
                                            cudaGetErrorString(err), ") in ", call, " at ", file,
                                            ":", line));
}

}  // namespace mechlab::kernels::detail

/// Throws mechlab::Error unless the CUDA runtime call `expr` returns cudaSuccess.
#define MECHLAB_CUDA_CHECK(expr) \
  ::mechlab::kernels::detail::cuda_check((expr), #expr, __FILE__, __LINE__)

/// After a <<<...>>> launch: checks the launch configuration (not the run,
/// which is asynchronous; compute-sanitizer and the next synchronising call see that).
#define MECHLAB_CUDA_CHECK_LAUNCH() MECHLAB_CUDA_CHECK(cudaGetLastError())
