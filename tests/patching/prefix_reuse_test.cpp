// Prefix reuse (patching/bulk_patcher.h, 5.; core::KVPrefix): a forward that
// runs only the positions after a prefix, attending to the prefix's cached
// keys and values, must give what the full forward gives at those positions,
// and the bulk patcher's sweeps with prefix reuse must equal the full restart
// (reuse_prefix(false)) on every site kind, on all four fixture architectures
// (learned positions, attention-only, rotary + GQA, partial rotary + parallel
// attention/MLP), with and without padding. The full restart itself is checked
// against TransformerLens in transformerlens_patching_test.cpp.
#include "core/formats/hdf5_file.h"
#include "core/model/kv_cache.h"
#include "core/model/transformer.h"
#include "hooks/act_name.h"
#include "hooks/hooked_transformer.h"
#include "hooks/steering_vector.h"
#include "patching/bulk_patcher.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/sweeps.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/patching/patching_fixtures.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

using mechlab::core::H5File;
using mechlab::core::HookKind;
using mechlab::core::HookSite;
using mechlab::core::KVPrefix;
using mechlab::hooks::HookedTransformer;
using mechlab::testing::close;
using mechlab::testing::error_of;
using namespace mechlab::patching;

namespace {

constexpr auto kTol = mechlab::testing::kF32Tol;

class PrefixReuse : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    H5File ref = H5File::open_read(mechlab::testing::test_data_h5("patching", GetParam()));
    model_ = std::make_unique<HookedTransformer>(
        HookedTransformer::load(mechlab::testing::runtime_model(GetParam())));
    data_ = mechlab::testing::read_fixture_inputs(ref);
  }

  // Left-pads prompt 0 by two positions (token 0, mask 0).
  void pad_first_prompt() {
    const int64_t b = data_.batch(), t = data_.seq_len();
    data_.attention_mask = at::ones({b, t}, at::kLong);
    data_.attention_mask[0][0] = 0, data_.attention_mask[0][1] = 0;
    data_.clean_tokens = data_.clean_tokens.clone(), data_.corrupted_tokens = data_.corrupted_tokens.clone();
    for (at::Tensor* x : {&data_.clean_tokens, &data_.corrupted_tokens}) {
      (*x)[0][0] = 0, (*x)[0][1] = 0;
    }
  }

  // The run's keys (after rotary) and values per layer, from hooks of a full forward.
  KVPrefix prefix_of(const at::Tensor& tokens, const at::Tensor& mask) {
    const auto& cfg = model_->cfg();
    const HookKind key = cfg.positional == mechlab::core::Positional::rotary ? HookKind::rot_k
                                                                             : HookKind::k;
    std::vector<std::string> names;
    for (int l = 0; l < cfg.n_layers; ++l) {
      names.push_back(HookSite{key, l}.name());
      names.push_back(HookSite{HookKind::v, l}.name());
    }
    mechlab::hooks::RunOptions ro;
    ro.attention_mask(mask);
    auto [unused, cache] = model_->run_with_cache(tokens, mechlab::hooks::NamesFilter(names), ro);
    KVPrefix p;
    for (int l = 0; l < cfg.n_layers; ++l) {
      p.keys.push_back(cache[HookSite{key, l}.name()]);
      p.values.push_back(cache[HookSite{HookKind::v, l}.name()]);
    }
    if (mask.defined()) p.key_mask = mask.ne(0);
    return p;
  }

  // The leaf sweeps this model has hooks for (every single-hook sweep but resid_mid /
  // mlp_out where the architecture lacks them).
  std::vector<std::string> leaf_sweeps() const {
    std::vector<std::string> out;
    for (const SweepSpec& s : sweep_specs()) {
      if (!s.parts.empty()) continue;
      HookSite site;
      const bool known = mechlab::core::parse_site(mechlab::hooks::act_name(s.act, 0),
                                                   model_->cfg().n_layers, &site);
      EXPECT_TRUE(known) << s.name;
      if (known && mechlab::core::site_exists(model_->cfg(), site)) out.push_back(s.name);
    }
    return out;
  }

  // Every sweep with prefix reuse against the full restart; every config runs.
  void check_sweeps(const Metric& metric, Direction direction, const std::string& what) {
    const std::vector<std::string> sweeps = leaf_sweeps();
    ASSERT_GE(sweeps.size(), 12u);
    SweepOptions full, reuse;
    full.direction(direction).bulk(BulkOptions().skip_identical(false).reuse_prefix(false));
    reuse.direction(direction).bulk(BulkOptions().skip_identical(false).max_copies(4));
    auto expected = run_sweeps(*model_, data_, sweeps, metric, full);
    auto got = run_sweeps(*model_, data_, sweeps, metric, reuse);
    ASSERT_EQ(got.size(), sweeps.size());
    EXPECT_EQ(expected[0].config["bulk"]["prefix_forwards"].get<int64_t>(), 0);
    EXPECT_GT(got[0].config["bulk"]["prefix_forwards"].get<int64_t>(), 0) << what;
    EXPECT_GT(got[0].config["bulk"]["reused_positions"].get<int64_t>(), 0) << what;
    for (size_t i = 0; i < sweeps.size(); ++i) {
      EXPECT_TRUE(close(got[i].values, expected[i].values, kTol,
                        GetParam() + " " + what + " " + sweeps[i]));
    }
  }

  std::unique_ptr<HookedTransformer> model_;
  PatchingData data_;
};

// A metric that reads every position's logits (the patcher then evaluates the
// full logits, the prefix's copied from the run): the answer logit
// difference plus a small multiple of the mean logit over all positions, so
// that a wrong logit at any position shows.
Metric all_positions_metric(const AnswerSpec& a) {
  return Metric::custom("diff_plus_mean", [a](const at::Tensor& logits) {
    at::Tensor rows = at::arange(logits.size(0));
    at::Tensor l = logits.index({rows, a.answer_pos});  // [batch, d_vocab]
    return (l.gather(-1, a.answer_tokens) - l.gather(-1, a.wrong_tokens)).mean() +
           0.1 * logits.to(at::kFloat).mean();
  });
}

TEST_P(PrefixReuse, ForwardAfterAPrefixEqualsTheFullForwardAtTheSamePositions) {
  // From tokens and from a residual (start_at_layer 1), two stacked copies of
  // the batch, every prefix length, with and without left padding.
  at::InferenceMode guard;
  for (bool padded : {false, true}) {
    if (padded) pad_first_prompt();
    const at::Tensor& tokens = data_.clean_tokens;
    const at::Tensor mask = data_.attention_mask;
    const int64_t b = tokens.size(0), t = tokens.size(1);
    mechlab::hooks::RunOptions ro;
    ro.attention_mask(mask);
    auto [full_logits, cache] =
        model_->run_with_cache(tokens, mechlab::hooks::NamesFilter({"blocks.1.hook_resid_pre"}), ro);
    const KVPrefix all = prefix_of(tokens, mask);
    for (int64_t p = 1; p < t; ++p) {
      const KVPrefix prefix = all.first(p);
      for (int start : {0, 1}) {
        mechlab::core::ForwardOptions fo;
        fo.prefix(&prefix).start_at_layer(start);
        if (mask.defined()) fo.attention_mask(mask.narrow(1, p, t - p).repeat({2, 1}));
        at::Tensor input = start == 0
                               ? tokens.narrow(1, p, t - p).repeat({2, 1})  // [2 * batch, t - p]
                               : cache["blocks.1.hook_resid_pre"].narrow(1, p, t - p).repeat({2, 1, 1});
        at::Tensor got = model_->model().forward(input, fo);  // [2 * batch, t - p, d_vocab]
        at::Tensor want = full_logits.narrow(1, p, t - p).repeat({2, 1, 1});
        if (padded) {
          // Prompt 0's padding positions (0, 1) are never read; compare real tokens only.
          got = got.narrow(1, std::max<int64_t>(0, 2 - p), t - std::max<int64_t>(p, 2));
          want = want.narrow(1, std::max<int64_t>(0, 2 - p), t - std::max<int64_t>(p, 2));
        }
        EXPECT_TRUE(close(got, want, kTol,
                          GetParam() + (padded ? " padded" : "") + " p=" + std::to_string(p) +
                              " start=" + std::to_string(start)));
      }
    }
    EXPECT_EQ(all.batch(), b);
    EXPECT_EQ(all.length(), t);
  }
}

TEST_P(PrefixReuse, BadPrefixesAreRefused) {
  at::InferenceMode guard;
  const at::Tensor& tokens = data_.clean_tokens;  // [batch, pos]
  const int64_t b = tokens.size(0), t = tokens.size(1);
  const KVPrefix prefix = prefix_of(tokens, {}).first(2);
  mechlab::core::ForwardOptions fo;
  fo.prefix(&prefix);
  // Rows that are not whole copies of the prefix's batch.
  EXPECT_EQ(error_of([&] { model_->model().forward(tokens.narrow(0, 0, b - 1).narrow(1, 2, t - 2), fo); }),
            "the key/value prefix holds " + std::to_string(b) + " sequences, which do not divide the "
            "input's " + std::to_string(b - 1) + " rows; stack whole copies of the prefix's batch");
  // A prefix and a KV cache at once.
  mechlab::core::KVCache kv(model_->cfg(), b, t, model_->model().weights().W_E.options());
  fo.kv_cache(&kv);
  EXPECT_EQ(error_of([&] { model_->model().forward(tokens.narrow(1, 2, t - 2), fo); }),
            "a forward takes a KV cache or a key/value prefix, not both");
  // Layers missing from the prefix.
  KVPrefix short_prefix = prefix;
  short_prefix.keys.pop_back();
  mechlab::core::ForwardOptions f2;
  f2.prefix(&short_prefix);
  EXPECT_NE(error_of([&] { model_->model().forward(tokens.narrow(1, 2, t - 2), f2); })
                .find("the key/value prefix has "),
            std::string::npos);
}

TEST_P(PrefixReuse, EverySweepEqualsTheFullRestart) {
  check_sweeps(logit_diff(data_.answers()), Direction::denoising, "denoising logit_diff");
  check_sweeps(logit_diff(data_.answers()), Direction::noising, "noising logit_diff");
  check_sweeps(all_positions_metric(data_.answers()), Direction::denoising, "all-positions metric");
}

TEST_P(PrefixReuse, EverySweepEqualsTheFullRestartWithPadding) {
  pad_first_prompt();
  check_sweeps(logit_diff(data_.answers()), Direction::denoising, "padded logit_diff");
  check_sweeps(all_positions_metric(data_.answers()), Direction::noising, "padded all-positions");
}

TEST_P(PrefixReuse, EveryHookPointEqualsTheFullRestart) {
  // Every hook point of the model (embeddings, split q/k/v inputs, rotary
  // q/k, attention scores, ln scales, ln_final, ...) patched at single
  // positions (head 0 where the hook has heads; one source position of the
  // attention maps), in one sweep: equals the full restart.
  const auto& cfg = model_->cfg();
  const int64_t t = data_.seq_len();
  // Listening to hook_q/k/v_input switches attention to split mode, where
  // ln1's hooks see per-head copies: cache those inputs in a run of their own.
  std::vector<std::string> split, rest;
  for (const std::string& name : model_->hook_names()) {
    const bool input = name.find("_input") != std::string::npos;
    (input ? split : rest).push_back(name);
  }
  ASSERT_EQ(split.size(), 3u * static_cast<size_t>(cfg.n_layers));
  auto [unused_rest, rest_cache] =
      model_->run_with_cache(data_.clean_tokens, mechlab::hooks::NamesFilter(rest));
  auto [unused_split, split_cache] =
      model_->run_with_cache(data_.clean_tokens, mechlab::hooks::NamesFilter(split));
  std::map<std::string, at::Tensor> values = rest_cache.items();
  for (const auto& [name, v] : split_cache.items()) values[name] = v;
  // One sweep per group: a forward that patches a split input runs every
  // layer's ln1 per head, which the other hooks' values do not fit.
  for (const std::vector<std::string>* names : {&rest, &split}) {
    std::vector<PatchConfig> configs;
    for (const std::string& name : *names) {
      for (int64_t p : {int64_t{1}, t / 2, t - 1}) {
        PatchTarget target = PatchTarget::at(name, cfg).with_pos(p);
        if (has_head_axis(target.site.kind) || is_attention_map(target.site.kind)) target.with_head(0);
        if (is_attention_map(target.site.kind)) target.with_src_pos(p / 2);
        configs.push_back(PatchConfig{{target}});
      }
    }
    for (const Metric& m : {logit_diff(data_.answers()), all_positions_metric(data_.answers())}) {
      BulkPatcher full(*model_, data_.corrupted_tokens, {}, m,
                       BulkOptions().skip_identical(false).reuse_prefix(false));
      BulkPatcher reuse(*model_, data_.corrupted_tokens, {}, m, BulkOptions().skip_identical(false));
      at::Tensor want = full.run(configs, values);
      at::Tensor got = reuse.run(configs, values);
      EXPECT_GT(reuse.stats().prefix_forwards, 0);
      EXPECT_EQ(full.stats().prefix_forwards, 0);
      for (size_t i = 0; i < configs.size(); ++i) {
        EXPECT_NEAR(got[i].item<double>(), want[i].item<double>(),
                    1e-5 * std::max(1.0, std::abs(want[i].item<double>())))
            << GetParam() << " " << m.name() << " " << configs[i].targets[0].describe();
      }
      // Not vacuous: many of these patches change the metric.
      EXPECT_GT((got - full.baseline()).abs().gt(1e-4).sum().item<int64_t>(),
                static_cast<int64_t>(configs.size()) / 4);
    }
  }
  EXPECT_GE(rest.size(), 20u);
}

TEST_P(PrefixReuse, AnswerPositionsBeforeThePatchBoundThePrefix) {
  // Prompts answer at different positions, some before the patched one: the
  // reused prefix stops at the first answer position, and each value equals
  // one hooked forward per configuration (TransformerLens's way).
  const auto& cfg = model_->cfg();
  const int64_t b = data_.batch(), t = data_.seq_len();
  data_.answer_pos = at::full({b}, t - 1, at::kLong);
  data_.answer_pos[0] = 2;
  const Metric m = logit_diff(data_.answers());
  const std::string hook = mechlab::hooks::act_name("z", cfg.n_layers - 1);
  auto [unused, clean] = model_->run_with_cache(data_.clean_tokens, mechlab::hooks::NamesFilter({hook}));
  std::vector<PatchConfig> configs;
  for (int64_t p = 1; p < t; ++p) {
    configs.push_back(PatchConfig{{PatchTarget::at(hook, cfg).with_pos(p).with_head(0)}});
  }
  BulkPatcher reuse(*model_, data_.corrupted_tokens, {}, m, BulkOptions().skip_identical(false));
  at::Tensor got = reuse.run(configs, clean.items());
  EXPECT_EQ(reuse.stats().reused_positions, 1 * 1 + 2 * static_cast<int64_t>(t - 2));
  const at::Tensor& clean_z = clean[hook];  // [batch, pos, head, d_head]
  for (size_t i = 0; i < configs.size(); ++i) {
    const int64_t p = static_cast<int64_t>(i) + 1;
    at::Tensor logits = model_->run_with_hooks(
        data_.corrupted_tokens, {{hook, [&](at::Tensor& z, const mechlab::hooks::HookPoint&) {
                                    z = z.clone();
                                    z.select(1, p).select(1, 0).copy_(clean_z.select(1, p).select(1, 0));
                                  }}});
    EXPECT_NEAR(got[static_cast<int64_t>(i)].item<double>(), m(logits).item<double>(), 1e-5)
        << GetParam() << " pos " << p;
  }
}

TEST_P(PrefixReuse, CallerHooksTurnPrefixReuseOff) {
  // A hook of the caller's might index positions: with one on the model, every
  // forward runs every position (the hook sees them all) and the values stay.
  const auto& cfg = model_->cfg();
  const int64_t t = data_.seq_len();
  const Metric m = logit_diff(data_.answers());
  const std::string hook = mechlab::hooks::act_name("resid_post", 0);
  auto [unused, clean] = model_->run_with_cache(data_.clean_tokens, mechlab::hooks::NamesFilter({hook}));
  std::vector<PatchConfig> configs = {PatchConfig{{PatchTarget::at(hook, cfg).with_pos(t - 2)}}};
  BulkPatcher plain(*model_, data_.corrupted_tokens, {}, m, BulkOptions().skip_identical(false));
  const double want = plain.run(configs, clean.items())[0].item<double>();
  EXPECT_EQ(plain.stats().prefix_forwards, 1);
  int64_t seen = -1;
  mechlab::hooks::HookScope scope(model_->hooks());
  scope.add(mechlab::hooks::act_name("resid_pre", cfg.n_layers - 1),
            [&seen](at::Tensor& act, const mechlab::hooks::HookPoint&) { seen = act.size(1); });
  BulkPatcher hooked(*model_, data_.corrupted_tokens, {}, m, BulkOptions().skip_identical(false));
  EXPECT_NEAR(hooked.run(configs, clean.items())[0].item<double>(), want, 1e-5);
  EXPECT_EQ(hooked.stats().prefix_forwards, 0);
  EXPECT_EQ(seen, t);
}

TEST_P(PrefixReuse, AModuleAtAValueHookTurnsPrefixReuseOffOneElsewhereDoesNot) {
  // Hooks capture the run's keys and values before attached modules act, so
  // a module at hook_v would leave the prefix without its edit: the patcher
  // then runs every position. A module at another hook keeps prefix reuse,
  // and both equal the full restart with the module in place.
  const auto& cfg = model_->cfg();
  const int64_t t = data_.seq_len();
  const Metric m = logit_diff(data_.answers());
  const std::string hook = mechlab::hooks::act_name("z", cfg.n_layers - 1);
  std::vector<PatchConfig> configs;
  for (int64_t p = 1; p < t; ++p) {
    configs.push_back(PatchConfig{{PatchTarget::at(hook, cfg).with_pos(p).with_head(0)}});
  }
  for (const std::string& host : {mechlab::hooks::act_name("v", 0), mechlab::hooks::act_name("resid_post", 0)}) {
    const int64_t d = host == mechlab::hooks::act_name("v", 0) ? cfg.d_head : cfg.d_model;
    model_->attach(host, std::make_shared<mechlab::hooks::SteeringVector>(at::ones({d}), 0.7));
    auto [unused, clean] = model_->run_with_cache(data_.clean_tokens, mechlab::hooks::NamesFilter({hook}));
    BulkPatcher full(*model_, data_.corrupted_tokens, {}, m,
                     BulkOptions().skip_identical(false).reuse_prefix(false));
    BulkPatcher reuse(*model_, data_.corrupted_tokens, {}, m, BulkOptions().skip_identical(false));
    EXPECT_TRUE(close(reuse.run(configs, clean.items()), full.run(configs, clean.items()), kTol,
                      GetParam() + " module at " + host));
    EXPECT_EQ(reuse.stats().prefix_forwards > 0, host != mechlab::hooks::act_name("v", 0)) << host;
    model_->detach(host, "steer");
  }
}

INSTANTIATE_TEST_SUITE_P(Models, PrefixReuse,
                         ::testing::Values("gpt2_like", "attn_only", "llama_like", "neox_like"));

}  // namespace
