#include "core/model/generate.h"

#include "core/util/error.h"
#include "core/model/kv_cache.h"
#include "core/util/rng.h"
#include "core/model/sampling.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace mechlab::core {
namespace {

// The real ids of each row of tokens [batch, pos], padding (attention_mask 0)
// removed; refuses padding between real tokens, which no left/right padding
// produces and which would leave the next position ambiguous.
std::vector<std::vector<int64_t>> real_rows(const at::Tensor& tokens, const at::Tensor& mask) {
  MECHLAB_CHECK(tokens.defined(), "the prompt tokens are empty (undefined tensor)");
  MECHLAB_CHECK(tokens.scalar_type() == at::kLong || tokens.scalar_type() == at::kInt,
                "prompt tokens must be int64 or int32, got ", tokens.scalar_type());
  MECHLAB_CHECK(tokens.dim() == 1 || tokens.dim() == 2,
                "prompt tokens must have shape [batch, pos] or [pos], got ", tokens.sizes());
  at::Tensor t =
      (tokens.dim() == 1 ? tokens.unsqueeze(0) : tokens).to(at::kCPU, at::kLong).contiguous();
  at::Tensor m;
  if (mask.defined()) {
    m = mask.dim() == 1 ? mask.unsqueeze(0) : mask;
    check_attention_mask(m, t.sizes());
    m = m.to(at::kCPU, at::kLong).contiguous();
  }
  std::vector<std::vector<int64_t>> rows(t.size(0));
  auto ids = t.accessor<int64_t, 2>();
  const int64_t* real_flags = m.defined() ? m.data_ptr<int64_t>() : nullptr;
  for (int64_t b = 0; b < t.size(0); ++b) {
    int runs = 0;  // runs of real tokens in the row
    bool prev = false;
    for (int64_t i = 0; i < t.size(1); ++i) {
      const bool real = real_flags == nullptr || real_flags[b * t.size(1) + i] != 0;
      if (real) rows[b].push_back(ids[b][i]);
      runs += real && !prev;
      prev = real;
    }
    MECHLAB_CHECK(runs <= 1, "row ", b,
                  " of attention_mask has padding between real tokens; "
                  "generation continues after each row's last real token, so pad on the left or "
                  "on the right only");
  }
  return rows;
}

void check_options(const ModelConfig& cfg, const GenerateOptions& o, int64_t prompt_length) {
  MECHLAB_CHECK(o.max_new_tokens() >= 0, "max_new_tokens must be >= 0, got ", o.max_new_tokens());
  MECHLAB_CHECK(prompt_length + o.max_new_tokens() <= cfg.n_ctx, "the longest prompt (",
                prompt_length, " tokens) plus max_new_tokens = ", o.max_new_tokens(), " is ",
                prompt_length + o.max_new_tokens(),
                " positions, more than the model's ", cfg.describe_n_ctx(),
                "; lower max_new_tokens to at most ",
                std::max<int64_t>(0, cfg.n_ctx - prompt_length), " or shorten the prompt");
  MECHLAB_CHECK(std::isfinite(o.temperature()) && o.temperature() >= 0,
                "temperature must be >= 0 (0 = greedy), got ", o.temperature());
  MECHLAB_CHECK(o.top_k() >= 0, "top_k must be >= 0 (0 = off), got ", o.top_k());
  MECHLAB_CHECK(o.top_p() > 0 && o.top_p() <= 1, "top_p must be in (0, 1] (1 = off), got ", o.top_p());
  for (int64_t id : o.stop_tokens()) {
    MECHLAB_CHECK(id >= 0 && id < cfg.d_vocab, "stop token ", id,
                  " is outside the model's vocabulary [0, ", cfg.d_vocab, ")");
  }
  MECHLAB_CHECK(o.pad_token_id() >= 0 && o.pad_token_id() < cfg.d_vocab, "pad_token_id ",
                o.pad_token_id(), " is outside the model's vocabulary [0, ", cfg.d_vocab, ")");
}

void check_prompts(const ModelConfig& cfg, const std::vector<std::vector<int64_t>>& prompts) {
  MECHLAB_CHECK(!prompts.empty(), "no prompts to generate from");
  for (size_t b = 0; b < prompts.size(); ++b) {
    MECHLAB_CHECK(!prompts[b].empty(), "prompt ", b,
                  " has no tokens; generation needs at least one (e.g. a BOS token)");
    for (size_t i = 0; i < prompts[b].size(); ++i) {
      const int64_t id = prompts[b][i];
      MECHLAB_CHECK(id >= 0 && id < cfg.d_vocab, "prompt ", b, " has token id ", id,
                    " at position ", i, ", outside the model's vocabulary [0, ", cfg.d_vocab,
                    ") (tokenizer and model mismatch?)");
    }
  }
}

}  // namespace

std::pair<at::Tensor, at::Tensor> left_pad(const std::vector<std::vector<int64_t>>& prompts,
                                           int64_t pad_id) {
  size_t width = 0;
  for (const auto& p : prompts) width = std::max(width, p.size());
  const int64_t batch = static_cast<int64_t>(prompts.size());
  at::Tensor tokens = at::full({batch, static_cast<int64_t>(width)}, pad_id, at::kLong);
  at::Tensor mask = at::zeros({batch, static_cast<int64_t>(width)}, at::kLong);
  auto t = tokens.accessor<int64_t, 2>();
  auto m = mask.accessor<int64_t, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    const size_t offset = width - prompts[b].size();
    for (size_t i = 0; i < prompts[b].size(); ++i) {
      t[b][offset + i] = prompts[b][i];
      m[b][offset + i] = 1;
    }
  }
  return {tokens, mask};
}

GenerateResult generate(const Transformer& model, const at::Tensor& tokens,
                        const GenerateOptions& opts, HookDispatch* hooks) {
  GenerateOptions rest = opts;
  rest.attention_mask(at::Tensor());
  return generate(model, real_rows(tokens, opts.attention_mask()), rest, hooks);
}

GenerateResult generate(const Transformer& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& opts, HookDispatch* hooks) {
  const ModelConfig& cfg = model.config();
  MECHLAB_CHECK(!opts.attention_mask().defined(),
                "attention_mask is for a padded tokens tensor; prompts given as lists of ids are "
                "padded by generate itself");
  check_prompts(cfg, prompts);
  auto [prompt, prompt_mask] = left_pad(prompts, opts.pad_token_id());  // [batch, P] each, CPU
  const int64_t batch = prompt.size(0), P = prompt.size(1);
  check_options(cfg, opts, P);
  const bool sample = !opts.greedy() && opts.temperature() > 0;
  const bool padded = prompt_mask.min().item<int64_t>() == 0;

  at::NoGradGuard no_grad;
  const at::Device device = model.device();
  std::optional<KVCache> cache;
  if (opts.use_kv_cache() && opts.max_new_tokens() > 0) {
    // The last token drawn is never fed back, so P + max_new_tokens - 1 positions suffice.
    cache.emplace(cfg, batch, P + opts.max_new_tokens() - 1, model.weights().W_E.options());
  }
  Rng rng(opts.seed());

  std::vector<at::Tensor> columns;       // per step [batch] int64 CPU: the tokens drawn
  std::vector<at::Tensor> mask_columns;  // per step [batch] int64 CPU: 1 = real token
  std::vector<at::Tensor> step_logits;   // per step [batch, d_vocab] float32 CPU
  GenerateResult out;
  out.new_tokens.resize(batch);
  out.stopped.assign(batch, false);
  at::Tensor fed = prompt, fed_mask = prompt_mask;  // what the next forward reads
  for (int64_t step = 0; step < opts.max_new_tokens(); ++step) {
    ForwardOptions f;
    f.hooks(hooks);
    f.kv_cache(cache ? &*cache : nullptr);
    // Without padding anywhere the mask is left out, so the forward takes its
    // fastest path (causal attention without a mask tensor).
    const bool masked =
        padded || std::any_of(out.stopped.begin(), out.stopped.end(), [](bool s) { return s; });
    if (masked) f.attention_mask(fed_mask.to(device));
    at::Tensor logits = model.forward(fed.to(device), f).select(1, -1);  // [batch, d_vocab]
    if (opts.return_logits()) step_logits.push_back(logits.to(at::kCPU, at::kFloat));

    at::Tensor next;  // [batch] int64 CPU
    if (sample) {
      at::Tensor l = logits.to(at::kFloat);
      if (opts.temperature() != 1) l = apply_temperature(l, opts.temperature());
      if (opts.top_k() > 0) l = top_k_filter(l, opts.top_k());
      if (opts.top_p() < 1) l = top_p_filter(l, opts.top_p());
      next = sample_from_logits(l, rng);
    } else {
      next = logits.argmax(-1).to(at::kCPU);
    }
    at::Tensor real = at::ones({batch}, at::kLong);
    auto n = next.accessor<int64_t, 1>();
    auto r = real.accessor<int64_t, 1>();
    for (int64_t b = 0; b < batch; ++b) {
      if (out.stopped[b]) {
        n[b] = opts.pad_token_id();
        r[b] = 0;
        continue;
      }
      out.new_tokens[b].push_back(n[b]);
      const auto& stops = opts.stop_tokens();
      out.stopped[b] = std::find(stops.begin(), stops.end(), n[b]) != stops.end();
    }
    columns.push_back(next);
    mask_columns.push_back(real);
    if (std::all_of(out.stopped.begin(), out.stopped.end(), [](bool s) { return s; })) break;
    if (cache) {
      fed = next.unsqueeze(1);       // [batch, 1]
      fed_mask = real.unsqueeze(1);  // [batch, 1]
    } else {
      fed = at::cat({fed, next.unsqueeze(1)}, 1);
      fed_mask = at::cat({fed_mask, real.unsqueeze(1)}, 1);
    }
  }

  out.prompt_length = P;
  out.tokens = columns.empty() ? prompt : at::cat({prompt, at::stack(columns, 1)}, 1);
  out.attention_mask =
      columns.empty() ? prompt_mask : at::cat({prompt_mask, at::stack(mask_columns, 1)}, 1);
  if (opts.return_logits()) {
    out.logits = step_logits.empty() ? at::empty({0, batch, cfg.d_vocab}) : at::stack(step_logits);
  }
  return out;
}

}  // namespace mechlab::core
