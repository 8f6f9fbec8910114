#include "core/model/presets.h"

#include "core/util/error.h"

namespace mechlab::core {

std::vector<std::string> preset_names() {
  return {"gpt2-small", "tiny", "attn-only-2l", "llama-tiny", "neox-tiny"};
}

ModelConfig preset(const std::string& name) {
  ModelConfig c;
  c.name = name;
  if (name == "gpt2-small") {
    c.n_layers = 12, c.d_model = 768, c.n_heads = 12, c.d_head = 64, c.d_mlp = 3072;
    c.d_vocab = 50257, c.n_ctx = 1024;
  } else if (name == "tiny") {
    c.n_layers = 2, c.d_model = 64, c.n_heads = 4, c.d_head = 16, c.d_mlp = 256;
    c.d_vocab = 512, c.n_ctx = 128;
  } else if (name == "attn-only-2l") {
    c.n_layers = 2, c.d_model = 64, c.n_heads = 4, c.d_head = 16, c.mlp = MlpKind::none;
    c.d_vocab = 512, c.n_ctx = 128;
  } else if (name == "llama-tiny") {
    c.n_layers = 2, c.d_model = 64, c.n_heads = 4, c.n_kv_heads = 2, c.d_head = 16, c.d_mlp = 172;
    c.d_vocab = 512, c.n_ctx = 128, c.positional = Positional::rotary, c.norm = NormKind::rmsnorm;
    c.act = Activation::silu, c.mlp = MlpKind::gated, c.norm_eps = 1e-6;
  } else if (name == "neox-tiny") {
    c.n_layers = 2, c.d_model = 64, c.n_heads = 4, c.d_head = 16, c.d_mlp = 256;
    c.d_vocab = 512, c.n_ctx = 128, c.positional = Positional::rotary, c.rotary_dim = 4;
    c.act = Activation::gelu, c.parallel_attn_mlp = true;
  } else {
    std::string all;
    for (const auto& n : preset_names()) all += (all.empty() ? "" : ", ") + n;
    throw Error(str_cat("unknown preset \"", name, "\"; choose one of: ", all));
  }
  c.validate();
  return c;
}

}  // namespace mechlab::core
