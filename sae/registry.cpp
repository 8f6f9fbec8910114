#include "sae/registry.h"

#include "sae/batchtopk_sae.h"
#include "sae/gated_sae.h"
#include "sae/jumprelu_sae.h"
#include "sae/relu_sae.h"
#include "sae/topk_sae.h"

namespace mechlab::sae {

std::shared_ptr<Sae> make_sae(const SaeConfig& cfg) {
  validate(cfg);
  const std::string& a = cfg.architecture();
  if (a == "topk") return std::make_shared<TopKSae>(cfg);
  if (a == "batchtopk") return std::make_shared<BatchTopKSae>(cfg);
  if (a == "jumprelu") return std::make_shared<JumpReluSae>(cfg);
  if (a == "gated") return std::make_shared<GatedSae>(cfg);
  return std::make_shared<ReluSae>(cfg);  // validate() admitted only "relu" besides
}

}  // namespace mechlab::sae
