// The SAE registry: one constructor per architecture name (sae_config.h's
// architectures()). Parameters start at zero; set them through
// Sae::param(name) or import them (saelens_io.h).
#pragma once

#include "sae/sae.h"

#include <memory>

namespace mechlab::sae {

/// A new SAE of cfg.architecture(); validates cfg first (one-line errors).
std::shared_ptr<Sae> make_sae(const SaeConfig& cfg);

}  // namespace mechlab::sae
