#include "patching/sender_delta.h"

#include "core/util/error.h"
#include "hooks/act_name.h"

#include <ATen/ATen.h>

namespace mechlab::patching {

namespace {

const at::Tensor& need(const std::map<std::string, at::Tensor>& acts, const std::string& hook) {
  auto it = acts.find(hook);
  MECHLAB_ASSERT(it != acts.end() && it->second.defined());
  return it->second;
}

}  // namespace

std::vector<std::string> sender_hooks(const core::ModelConfig& cfg) {
  std::vector<std::string> out = {"blocks.0.hook_resid_pre"};
  for (int l = 0; l < cfg.n_layers; ++l) {
    out.push_back(hooks::act_name("z", l));
    if (cfg.has_mlp()) out.push_back(hooks::act_name("mlp_out", l));
  }
  return out;
}

at::Tensor head_output_delta(const hooks::HookedTransformer& model, int layer, const at::Tensor& z_base,
                             const at::Tensor& z_source, at::ScalarType dtype) {
  const at::Tensor& W_O = model.model().weights().blocks[static_cast<size_t>(layer)].W_O;  // [head, d_head, d_model]
  at::Tensor dz = z_source.to(dtype) - z_base.to(dtype);                  // [batch, pos, head, d_head]
  return at::einsum("bphe,hem->hbpm", {dz, W_O.to(dz.device(), dtype)});  // [head, batch, pos, d_model]
}

at::Tensor sender_delta(const hooks::HookedTransformer& model, const CircuitNode& s,
                        const std::map<std::string, at::Tensor>& base,
                        const std::map<std::string, at::Tensor>& source, at::ScalarType dtype) {
  using Kind = CircuitNode::Kind;
  switch (s.kind) {
    case Kind::input: {
      const std::string h = "blocks.0.hook_resid_pre";
      return need(source, h).to(dtype) - need(base, h).to(dtype);
    }
    case Kind::head: {
      const std::string h = hooks::act_name("z", s.layer);
      const at::Tensor& W_O = model.model().weights().blocks[static_cast<size_t>(s.layer)].W_O;
      at::Tensor dz = need(source, h).select(2, s.head).to(dtype) -
                      need(base, h).select(2, s.head).to(dtype);  // [batch, pos, d_head]
      return at::matmul(dz, W_O[s.head].to(dz.device(), dtype));           // [batch, pos, d_model]
    }
    case Kind::mlp: {
      const std::string h = hooks::act_name("mlp_out", s.layer);
      return need(source, h).to(dtype) - need(base, h).to(dtype);
    }
    case Kind::output: break;
  }
  throw Error("\"output\" is not a sender: it writes nothing to the residual stream");
}

}  // namespace mechlab::patching
