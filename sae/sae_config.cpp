#include "sae/sae_config.h"

#include "core/util/error.h"

#include <algorithm>
#include <cmath>

namespace mechlab::sae {

const std::vector<std::string>& architectures() {
  static const std::vector<std::string> names{"relu", "topk", "batchtopk", "jumprelu", "gated"};
  return names;
}

void validate(const SaeConfig& cfg) {
  const auto& names = architectures();
  MECHLAB_CHECK(std::find(names.begin(), names.end(), cfg.architecture()) != names.end(),
                "unknown SAE architecture \"", cfg.architecture(),
                "\"; use relu, topk, batchtopk, jumprelu or gated");
  MECHLAB_CHECK(cfg.d_in() >= 1, "SAE d_in must be at least 1, got ", cfg.d_in());
  MECHLAB_CHECK(cfg.d_sae() >= 1, "SAE d_sae must be at least 1, got ", cfg.d_sae());
  MECHLAB_CHECK(cfg.normalize_activations() == "none" ||
                    cfg.normalize_activations() == "constant_norm_rescale",
                "SAE normalize_activations \"", cfg.normalize_activations(),
                "\" is not supported; use none or constant_norm_rescale (fold a fixed scaling "
                "factor into the weights first)");
  MECHLAB_CHECK(cfg.reshape_activations() == "none" || cfg.reshape_activations() == "hook_z",
                "SAE reshape_activations \"", cfg.reshape_activations(), "\" is not supported; use none or hook_z");
  if (cfg.reshape_activations() == "hook_z") {
    const std::string& h = cfg.hook_name();
    MECHLAB_CHECK(h.empty() || (h.size() >= 2 && h.compare(h.size() - 2, 2, "_z") == 0),
                  "SAE reshape_activations \"hook_z\" reads attention outputs, but hook_name is \"", h,
                  "\"; use a blocks.L.attn.hook_z hook or reshape_activations none");
  }
  if (cfg.architecture() == "topk" || cfg.architecture() == "batchtopk") {
    MECHLAB_CHECK(cfg.k() >= 1 && cfg.k() <= static_cast<double>(cfg.d_sae()), "SAE k = ", cfg.k(),
                  " must lie in [1, d_sae = ", cfg.d_sae(), "]; use a smaller k or a larger d_sae");
    MECHLAB_CHECK(cfg.architecture() != "topk" || cfg.k() == std::floor(cfg.k()),
                  "TopK SAE k = ", cfg.k(), " must be a whole number");
    MECHLAB_CHECK(std::isfinite(cfg.topk_threshold()) && cfg.topk_threshold() >= 0,
                  "BatchTopK topk_threshold must be finite and >= 0, got ", cfg.topk_threshold());
  }
  if (cfg.architecture() == "jumprelu") {
    MECHLAB_CHECK(cfg.jumprelu_bandwidth() > 0, "JumpReLU jumprelu_bandwidth must be > 0, got ",
                  cfg.jumprelu_bandwidth());
    const std::string& mode = cfg.jumprelu_sparsity_loss_mode();
    MECHLAB_CHECK(mode == "step" || mode == "tanh" || mode == "quadratic",
                  "unknown JumpReLU jumprelu_sparsity_loss_mode \"", mode, "\"; use step, tanh or quadratic");
    if (mode == "quadratic") {
      MECHLAB_CHECK(cfg.target_l0().has_value() && *cfg.target_l0() > 0 &&
                        *cfg.target_l0() <= static_cast<double>(cfg.d_sae()),
                    "the quadratic JumpReLU sparsity loss needs target_l0 in (0, d_sae = ", cfg.d_sae(),
                    "]; set target_l0");
    }
  }
}

}  // namespace mechlab::sae
