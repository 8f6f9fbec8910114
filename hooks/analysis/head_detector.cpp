#include "hooks/analysis/head_detector.h"

#include "core/util/error.h"

#include <cmath>

namespace mechlab::analysis {

HeadType parse_head_type(const std::string& name) {
  std::string n = name;
  const std::string suffix = "_head";
  if (n.size() > suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
    n.resize(n.size() - suffix.size());
  }
  if (n == "previous_token") return HeadType::previous_token;
  if (n == "duplicate_token") return HeadType::duplicate_token;
  if (n == "induction") return HeadType::induction;
  throw Error(str_cat("unknown head type \"", name,
                      "\"; choose previous_token, duplicate_token or induction"));
}

const char* to_string(HeadType type) {
  switch (type) {
    case HeadType::previous_token: return "previous_token";
    case HeadType::duplicate_token: return "duplicate_token";
    case HeadType::induction: return "induction";
  }
  return "?";
}

at::Tensor detection_pattern(HeadType type, const at::Tensor& tokens) {
  MECHLAB_CHECK(tokens.dim() == 1 || tokens.dim() == 2,
                "head detector: tokens must be [pos] or [batch, pos], got ", tokens.sizes());
  if (tokens.dim() == 1) return detection_pattern(type, tokens.unsqueeze(0)).squeeze(0);
  const int64_t batch = tokens.size(0), pos = tokens.size(1);
  const auto opts = tokens.options().dtype(at::kFloat);
  at::Tensor causal_strict = at::ones({pos, pos}, opts).tril(-1);  // k < q
  if (type == HeadType::previous_token) {
    return at::eye(pos, opts).roll(1, 0).tril(-1).expand({batch, pos, pos}).contiguous();
  }
  // same[b, q, k] = t[q] == t[k], for k < q.
  at::Tensor same = tokens.unsqueeze(2).eq(tokens.unsqueeze(1)).to(at::kFloat) * causal_strict;
  if (type == HeadType::duplicate_token) return same;
  // induction: D[q, k] = same[q, k - 1] for k >= 1 (shift right by one key).
  at::Tensor shifted = at::zeros_like(same);
  shifted.narrow(2, 1, pos - 1).copy_(same.narrow(2, 0, pos - 1));
  return shifted.tril();
}

at::Tensor head_similarity_score(const at::Tensor& pattern_in, const at::Tensor& detection,
                                 const HeadDetectorOptions& options) {
  MECHLAB_CHECK(pattern_in.dim() >= 2 && pattern_in.size(-1) == pattern_in.size(-2),
                "head detector: attention patterns must be [..., pos, pos], got ",
                pattern_in.sizes());
  const int64_t pos = pattern_in.size(-1);
  MECHLAB_CHECK(detection.dim() >= 2 && detection.size(-1) == pos && detection.size(-2) == pos,
                "head detector: the detection pattern must be [pos, pos] with pos = ", pos,
                ", got ", detection.sizes());
  at::Tensor pattern = pattern_in.to(at::kFloat);
  at::Tensor det = detection.to(pattern.device(), at::kFloat);
  at::Tensor keep = at::ones({pos, pos}, pattern.options());  // entries that count
  if (options.exclude_bos()) keep.select(1, 0).zero_();
  if (options.exclude_current_token()) keep.fill_diagonal_(0);
  if (options.error_measure() == ErrorMeasure::mul) {
    pattern = pattern * keep;
    return (pattern * det).sum({-2, -1}) / pattern.sum({-2, -1});
  }
  at::Tensor err = ((pattern - det).abs() * keep).sum({-2, -1}) / static_cast<double>(pos);
  return 1.0 - at::round(err, /*decimals=*/3);
}

at::Tensor detect_head(hooks::HookedTransformer& model, const at::Tensor& tokens_in,
                       const at::Tensor& detection, const HeadDetectorOptions& options) {
  at::Tensor tokens = tokens_in.dim() == 1 ? tokens_in.unsqueeze(0) : tokens_in;
  MECHLAB_CHECK(tokens.dim() == 2 && tokens.size(1) >= 2,
                "head detector: tokens must be [batch, pos] with pos >= 2, got ", tokens_in.sizes());
  at::Tensor det = detection.dim() == 2 ? detection.unsqueeze(0) : detection;
  MECHLAB_CHECK(det.dim() == 3 && (det.size(0) == 1 || det.size(0) == tokens.size(0)),
                "head detector: detection patterns must be [pos, pos] or [batch, pos, pos] "
                "matching the tokens ", tokens.sizes(), ", got ", detection.sizes());
  MECHLAB_CHECK(at::equal(det, det.tril()), "head detector: the detection pattern must be lower "
                "triangular (a head cannot attend to later positions)");
  const auto [logits, cache] = model.run_with_cache(tokens, hooks::NamesFilter::glob("*hook_pattern"));
  (void)logits;
  std::vector<at::Tensor> layers;
  for (int layer = 0; layer < model.cfg().n_layers; ++layer) {
    at::Tensor pattern = cache.get("pattern", layer);  // [batch, head, q_pos, k_pos]
    at::Tensor score = head_similarity_score(pattern, det.unsqueeze(1), options);  // [batch, head]
    layers.push_back(score.mean(0));
  }
  return at::stack(layers).cpu();  // [n_layers, n_heads]
}

at::Tensor detect_head(hooks::HookedTransformer& model, const at::Tensor& tokens, HeadType type,
                       const HeadDetectorOptions& options) {
  return detect_head(model, tokens, detection_pattern(type, tokens.cpu()), options);
}

}  // namespace mechlab::analysis
