#include "sae/toy_superposition.h"

#include "core/util/error.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace mechlab::sae {

ToySuperposition::ToySuperposition(ToyOptions options) : options_(std::move(options)) {
  MECHLAB_CHECK(options_.n_features() >= 1, "toy superposition: n_features must be >= 1, got ",
                options_.n_features());
  MECHLAB_CHECK(options_.d() >= 1, "toy superposition: d must be >= 1, got ", options_.d());
  MECHLAB_CHECK(options_.p_active() > 0 && options_.p_active() <= 1,
                "toy superposition: p_active must be in (0, 1], got ", options_.p_active());
  MECHLAB_CHECK(options_.max_magnitude() > 0 && std::isfinite(options_.max_magnitude()),
                "toy superposition: max_magnitude must be positive, got ", options_.max_magnitude());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options_.seed());
  at::Tensor f = at::randn({options_.n_features(), options_.d()}, gen, at::kFloat);  // [F, d]
  features_ = f / f.norm(2, {1}, /*keepdim=*/true);
}

at::Tensor ToySuperposition::sample_coefficients(int64_t n, at::Generator& gen) const {
  MECHLAB_CHECK(n >= 1, "toy superposition: the sample count must be >= 1, got ", n);
  const int64_t F = options_.n_features();
  at::Tensor active = at::rand({n, F}, gen, at::kFloat).lt(options_.p_active());  // [n, F] bool
  at::Tensor magnitude = at::rand({n, F}, gen, at::kFloat) * options_.max_magnitude();
  return magnitude * active;  // [n, F]
}

at::Tensor ToySuperposition::sample(int64_t n, at::Generator& gen) const {
  return sample_coefficients(n, gen).matmul(features_);  // [n, d]
}

double mean_max_cosine_similarity(const at::Tensor& truth, const at::Tensor& learned) {
  MECHLAB_CHECK(truth.dim() == 2 && learned.dim() == 2 && truth.size(1) == learned.size(1),
                "MMCS needs [F, d] true and [m, d] learned directions of one d, got ", truth.sizes(),
                " and ", learned.sizes());
  at::NoGradGuard no_grad;
  auto unit = [](const at::Tensor& t) {
    at::Tensor x = t.detach().to(at::kCPU, at::kDouble);  // a decoder trained on a GPU, truth on the CPU
    return x / x.norm(2, {1}, true).clamp_min(1e-30);
  };
  at::Tensor cos = unit(truth).matmul(unit(learned).t());  // [F, m]
  return std::get<0>(cos.max(1)).mean().item<double>();
}

}  // namespace mechlab::sae
