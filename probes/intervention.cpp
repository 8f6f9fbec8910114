#include "probes/intervention.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

namespace mechlab::probes {

InterventionMode parse_intervention_mode(const std::string& name) {
  if (name == "ablate") return InterventionMode::ablate;
  if (name == "steer") return InterventionMode::steer;
  throw Error(str_cat("unknown intervention '", name, "'; use ablate or steer"));
}

std::string to_string(InterventionMode mode) {
  return mode == InterventionMode::ablate ? "ablate" : "steer";
}

namespace {

// Orthonormal basis [d, r] of the span of the columns of a [d, k] (float64):
// modified Gram-Schmidt, each column orthogonalised twice ("twice is
// enough", Giraud et al. 2005); a column whose remainder is <= 1e-10 of the
// largest column's norm lies in the span already and is dropped. Entries
// where every column is zero stay exactly zero, so coordinates outside the
// span are left bit for bit.
at::Tensor orthonormal_basis(const at::Tensor& a) {
  const double scale = a.norm(2, {0}).max().item<double>();
  std::vector<at::Tensor> q;
  for (int64_t j = 0; j < a.size(1); ++j) {
    at::Tensor v = a.select(1, j).clone();  // [d]
    for (int pass = 0; pass < 2; ++pass) {
      for (const at::Tensor& u : q) v -= v.dot(u) * u;
    }
    const double n = v.norm().item<double>();
    if (n > 1e-10 * scale) q.push_back(v / n);
  }
  return at::stack(q, 1);  // [d, r]
}

}  // namespace

ProbeIntervention::ProbeIntervention(at::Tensor direction, InterventionMode mode, double alpha, int64_t head)
    : mode_(mode), alpha_(alpha), head_(head) {
  MECHLAB_CHECK(head >= -1, "`head` of a probe intervention must be a head index or -1 (every head), got ", head);
  MECHLAB_CHECK(direction.defined() && (direction.dim() == 1 || direction.dim() == 2),
                "a probe direction must be [d] or [d, k] (k directions as columns), got ",
                direction.defined() ? c10::str(direction.sizes()) : std::string("an undefined tensor"));
  at::Tensor d = direction.detach().to(at::kCPU, at::kDouble);  // [d] or [d, k]
  if (d.dim() == 1) d = d.unsqueeze(1);                          // [d, k]
  MECHLAB_CHECK(d.size(1) >= 1, "a probe direction set has no columns; give at least one direction");
  MECHLAB_CHECK(at::isfinite(d).all().item<bool>(), "the probe direction has NaN or inf entries");
  MECHLAB_CHECK(d.abs().max().item<double>() > 0, "the probe direction is zero; use the weight vector of a fitted probe");
  MECHLAB_CHECK(mode == InterventionMode::ablate || d.size(1) == 1, "steering adds one direction, but ",
                d.size(1), " were given; steer along one of them or ablate their span");
  MECHLAB_CHECK(std::isfinite(alpha), "`alpha` of a probe intervention must be finite, got ", alpha);
  u_ = orthonormal_basis(d);
}

std::vector<hooks::ModulePoint> ProbeIntervention::hook_points(const core::ModelConfig& cfg,
                                                               core::HookSite host) const {
  const core::SiteInfo& info = core::site_info(host.kind);
  const std::string where = host.name() + " " + core::site_shape(cfg, host);
  MECHLAB_CHECK(!info.attention_map, "a probe intervention cannot attach at ", where,
                ": attention maps have no per-token vector; attach at the hook the probe was fitted on");
  const int64_t width = core::dim_size(cfg, info.dims.back(), 0, 0);
  // A probe of a whole per-head hook read its heads' vectors concatenated.
  const int64_t heads = info.head_axis == 2 ? core::dim_size(cfg, info.dims[2], 0, 0) : 0;
  MECHLAB_CHECK(u_.size(0) == width || (head_ < 0 && u_.size(0) == heads * width), "probe direction of width ",
                u_.size(0), " does not fit ", where, ", whose last axis is ", width,
                heads > 0 && head_ < 0 ? str_cat(" (", heads * width, " for all heads)") : std::string(),
                "; attach at the hook the probe was fitted on");
  if (head_ >= 0) {
    MECHLAB_CHECK(info.head_axis == 2, "a probe intervention of head ", head_, " cannot attach at ", where,
                  ": it has no head axis; attach at the per-head hook the probe was fitted on (e.g. attn.hook_z)");
    MECHLAB_CHECK(head_ < heads, "a probe intervention of head ", head_, " cannot attach at ", where, ", which has ",
                  heads, " heads");
  }
  return {{"hook_probe_in", info.dims}, {"hook_probe_out", info.dims}};
}

at::Tensor ProbeIntervention::apply(const at::Tensor& x) const {
  if (head_ < 0 && x.dim() >= 2 && x.size(-1) != u_.size(0) && x.size(-1) * x.size(-2) == u_.size(0)) {
    return apply_to_vectors(x.flatten(-2)).view(x.sizes());  // [..., heads * d] read as one vector
  }
  if (head_ < 0) return apply_to_vectors(x);
  MECHLAB_CHECK(x.dim() >= 2 && head_ < x.size(-2), "a probe intervention of head ", head_,
                " needs an activation [..., heads, d] with that head, got ", x.sizes());
  at::Tensor out = x.clone();
  out.select(-2, head_).copy_(apply_to_vectors(x.select(-2, head_)));  // the other heads bit for bit
  return out;
}

at::Tensor ProbeIntervention::apply_to_vectors(const at::Tensor& x) const {
  // The projection is computed in float64 and cast back, so that a float32
  // or bfloat16 activation ends orthogonal to u up to its own rounding.
  const at::Tensor u = u_.to(x.device());             // [d, r]
  const at::Tensor xd = x.to(at::kDouble);            // [..., d]
  at::Tensor out;
  if (mode_ == InterventionMode::ablate) {
    const at::Tensor along = at::matmul(xd, u);       // [..., r]: U^T x per position
    out = xd - at::matmul(along, u.t());              // [..., d]
  } else {
    out = xd + u.select(1, 0) * alpha_;               // [..., d]
  }
  return out.to(x.scalar_type());
}

at::Tensor ProbeIntervention::forward(const at::Tensor& x, hooks::ModuleHooks& hooks) {
  at::Tensor in = x;  // [batch, pos, ..., d]
  hooks("hook_probe_in", in);
  at::Tensor out = apply(in);  // [batch, pos, ..., d]
  hooks("hook_probe_out", out);
  return out;
}

at::Tensor probe_directions(const LinearProbes& probes, int64_t p) {
  MECHLAB_CHECK(probes.weight.defined() && probes.loss == ProbeLoss::logistic,
                "probe_directions: needs fitted logistic probes");
  MECHLAB_CHECK(p >= 0 && p < probes.num_probes(), "probe_directions: probe ", p, " of ", probes.num_probes());
  const at::Tensor w = probes.weight[p].to(at::kDouble);  // [D, O] on raw features
  if (w.size(1) == 1) return w;                           // binary: the positive logit's weights
  // Softmax is invariant to a shift shared by all logits: only w_k - w_0 matter.
  return w.narrow(1, 1, w.size(1) - 1) - w.narrow(1, 0, 1);  // [D, K - 1]
}

namespace {

double metric_value(const LogitsMetric& metric, const at::Tensor& logits) {
  const at::Tensor v = metric(logits);
  MECHLAB_CHECK(v.defined() && v.numel() == 1, "the intervention metric must return one value, got ",
                v.defined() ? c10::str(v.sizes()) : std::string("an undefined tensor"));
  return v.item<double>();
}

// Detaches the module however the intervened forward ends.
struct Attached {
  hooks::HookedTransformer& model;
  std::string host, name;
  ~Attached() {
    try {
      model.detach(host, name);
    } catch (...) {
    }
  }
};

}  // namespace

InterventionEffect intervention_effect(hooks::HookedTransformer& model, const std::string& host,
                                       const std::shared_ptr<ProbeIntervention>& module, const at::Tensor& tokens,
                                       const LogitsMetric& metric, const at::Tensor& attention_mask) {
  MECHLAB_CHECK(module != nullptr, "`module` of intervention_effect is null");
  MECHLAB_CHECK(static_cast<bool>(metric), "`metric` of intervention_effect is empty");
  const hooks::RunOptions run = hooks::RunOptions().attention_mask(attention_mask);
  InterventionEffect e;
  e.baseline = metric_value(metric, model.forward(tokens, run));  // logits [batch, pos, d_vocab]
  {
    model.attach(host, module);
    Attached guard{model, host, module->name()};
    e.intervened = metric_value(metric, model.forward(tokens, run));
  }
  e.change = e.intervened - e.baseline;
  return e;
}

}  // namespace mechlab::probes
