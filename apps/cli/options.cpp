#include "apps/cli/commands.h"
#include "core/error.h"

#include <ATen/ATen.h>

#include <cstdio>

namespace mechlab::cli {

at::Device parse_device(const std::string& text) {
  if (text == "auto") return at::hasCUDA() ? at::Device("cuda") : at::Device("cpu");
  at::Device d("cpu");
  try {
    d = at::Device(text);
  } catch (const std::exception&) {
    throw Error(str_cat("unknown device \"", text, "\"; use cpu, cuda, cuda:N or auto"));
  }
  MECHLAB_CHECK(!d.is_cuda() || at::hasCUDA(), "device \"", text,
                "\" asked for, but no CUDA GPU is available here; use --device cpu");
  return d;
}

at::ScalarType parse_dtype(const std::string& text) {
  if (text == "f32" || text == "float32") return at::kFloat;
  if (text == "bf16" || text == "bfloat16") return at::kBFloat16;
  if (text == "f16" || text == "float16") return at::kHalf;
  throw Error(str_cat("unknown dtype \"", text, "\"; use f32, bf16 or f16"));
}

std::string human_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

}  // namespace mechlab::cli
