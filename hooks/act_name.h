// act_name: TransformerLens's get_act_name, so that short names researchers
// type work here too.
//   act_name("resid_pre", 5)   -> "blocks.5.hook_resid_pre"
//   act_name("k6")             -> "blocks.6.attn.hook_k"
//   act_name("pattern", 1)     -> "blocks.1.attn.hook_pattern"
//   act_name("scale", 2, "ln1")-> "blocks.2.ln1.hook_scale"
//   act_name("embed")          -> "hook_embed"
//   act_name("scale")          -> "ln_final.hook_scale"
// Aliases as in TransformerLens: attn -> pattern, attn_logits -> attn_scores,
// key/query/value -> k/q/v, mlp_pre/mlp_post -> pre/post; layer types a/attention,
// m/mlp, b/block.
#pragma once

#include <string>

namespace mechlab::hooks {

std::string act_name(const std::string& name, int layer = -1, const std::string& layer_type = "");

}  // namespace mechlab::hooks
