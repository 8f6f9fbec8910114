#include "apps/cli/commands.h"
#include "core/util/error.h"

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

core::ProcessOptions ProcessFlags::options() const {
  // Individually named steps are strict (an inapplicable one is an error);
  // --process adds every step and skips those the model cannot take.
  if (all) return core::ProcessOptions::all();
  return core::ProcessOptions()
      .fold_ln(fold_ln)
      .center_writing_weights(center_writing_weights)
      .center_unembed(center_unembed)
      .fold_value_biases(fold_value_biases);
}

void add_process_flags(CLI::App* cmd, ProcessFlags& flags) {
  const char* group = "Weight processing (TransformerLens's process_weights_; default: none)";
  cmd->add_flag("--process", flags.all,
                "All four steps below, skipping (with a warning) those the model cannot take, "
                "as TransformerLens's from_pretrained")
      ->group(group);
  cmd->add_flag("--fold-ln", flags.fold_ln,
                "Fold norm weights into the next layers; norms become LNPre/RMSPre")
      ->group(group);
  cmd->add_flag("--center-writing-weights", flags.center_writing_weights,
                "Remove the d_model mean of W_E, W_pos, W_O, b_O, W_out, b_out (LayerNorm only)")
      ->group(group);
  cmd->add_flag("--center-unembed", flags.center_unembed,
                "Remove the vocabulary mean of W_U and b_U (log-probs unchanged)")
      ->group(group);
  cmd->add_flag("--fold-value-biases", flags.fold_value_biases, "Fold b_V through W_O into b_O")
      ->group(group);
}

}  // namespace mechlab::cli
