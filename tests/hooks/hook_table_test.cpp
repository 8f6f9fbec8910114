// The site table (core/model/hook_site.h) against the forward pass: for every
// preset (and variants that switch off norms, the final norm, positions), the
// sites the table says exist are exactly the sites the forward fires, with
// the table's shapes. The forward is the independent witness: it is checked
// number for number against TransformerLens fixtures (transformerlens_test).
#include "core/model/hook_dispatch.h"
#include "core/model/hook_site.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "hooks/hooked_transformer.h"

#include <gmock/gmock.h>

#include <map>
#include <set>

using mechlab::core::all_sites;
using mechlab::core::HookKind;
using mechlab::core::HookSite;
using mechlab::core::ModelConfig;
using mechlab::core::site_info;
using mechlab::core::site_table;

namespace {

// Listens at every dense index it is told to and records what fires there.
class RecordingDispatch : public mechlab::core::HookDispatch {
 public:
  RecordingDispatch(const ModelConfig& cfg, bool with_opt_in) {
    const int n = mechlab::core::site_count(cfg.n_layers);
    active_.assign(static_cast<size_t>(n), 1);
    if (with_opt_in) return;
    for (int layer = 0; layer < cfg.n_layers; ++layer) {
      for (const auto& info : site_table()) {
        if (info.stage == mechlab::core::SiteStage::block && info.opt_in) {
          active_[static_cast<size_t>(HookSite{info.kind, layer}.index())] = 0;
        }
      }
    }
  }
  void fire(const HookSite& site, at::Tensor& act) override {
    fired[site.name()] = act.sizes().vec();  // split-mode ln1 fires thrice; the last stays
  }
  std::map<std::string, std::vector<int64_t>> fired;
};

std::vector<ModelConfig> configs() {
  std::vector<ModelConfig> out;
  for (const auto& name : mechlab::core::preset_names()) {
    ModelConfig cfg = mechlab::core::preset(name);
    // gpt2-small's shape with 2 of its 12 layers and a small vocabulary:
    // neither changes which sites exist, and a test should not allocate 124M
    // parameters.
    if (name == "gpt2-small") cfg.n_layers = 2, cfg.d_vocab = 512;
    out.push_back(cfg);
  }
  ModelConfig no_norm = mechlab::core::preset("tiny");
  no_norm.name = "tiny-no-norm";
  no_norm.norm = mechlab::core::NormKind::none;
  out.push_back(no_norm);
  ModelConfig no_final = mechlab::core::preset("tiny");
  no_final.name = "tiny-no-final-norm";
  no_final.final_norm = false;
  no_final.positional = mechlab::core::Positional::none;
  out.push_back(no_final);
  return out;
}

// The table's view: existing sites (opt-in ones only if asked) with sizes.
std::map<std::string, std::vector<int64_t>> from_table(const ModelConfig& cfg, bool with_opt_in,
                                                       int64_t batch, int64_t pos) {
  std::map<std::string, std::vector<int64_t>> out;
  for (const HookSite& s : all_sites(cfg)) {
    if (!with_opt_in && site_info(s.kind).opt_in) continue;
    out[s.name()] = mechlab::core::site_sizes(cfg, s, batch, pos);
  }
  return out;
}

TEST(SiteTable, IsIndexedByKindAndSelfConsistent) {
  ASSERT_EQ(site_table().size(),
            static_cast<size_t>(mechlab::core::kModelKinds + mechlab::core::kLayerKinds));
  for (size_t i = 0; i < site_table().size(); ++i) {
    const auto& info = site_table()[i];
    EXPECT_EQ(static_cast<size_t>(info.kind), i);
    const bool block = info.stage == mechlab::core::SiteStage::block;
    EXPECT_EQ(HookSite({info.kind, 0}).per_layer(), block);
    if (info.head_axis >= 0) {
      const auto d = info.dims.at(static_cast<size_t>(info.head_axis));
      EXPECT_TRUE(d == mechlab::core::Dim::head || d == mechlab::core::Dim::kv_head) << info.suffix;
    }
    EXPECT_EQ(info.attention_map, info.head_axis == 1) << info.suffix;
  }
}

TEST(SiteTable, ExistenceAndShapesMatchTheForwardOfEveryPreset) {
  const int64_t batch = 2, pos = 5;
  for (const ModelConfig& cfg : configs()) {
    SCOPED_TRACE(cfg.name);
    mechlab::core::Transformer model(cfg, /*seed=*/1);
    at::Tensor tokens = at::arange(batch * pos, at::kLong).remainder(cfg.d_vocab).view({batch, pos});
    // Default mode: every site but the opt-in ones.
    {
      RecordingDispatch rec(cfg, /*with_opt_in=*/false);
      mechlab::core::ForwardOptions f;
      f.hooks(&rec);
      model.forward(tokens, f);
      EXPECT_EQ(rec.fired, from_table(cfg, false, batch, pos));
    }
    // Everything, opt-in sites included: the names are the table's, and the
    // opt-in sites have the table's shapes (ln1 gains a head axis in this
    // split mode, as in TransformerLens, so only opt-in shapes are compared).
    {
      RecordingDispatch rec(cfg, /*with_opt_in=*/true);
      mechlab::core::ForwardOptions f;
      f.hooks(&rec);
      model.forward(tokens, f);
      const auto expected = from_table(cfg, true, batch, pos);
      std::set<std::string> fired_names, table_names;
      for (const auto& [n, shape] : rec.fired) fired_names.insert(n);
      for (const auto& [n, shape] : expected) table_names.insert(n);
      EXPECT_EQ(fired_names, table_names);
      for (const HookSite& s : all_sites(cfg)) {
        if (site_info(s.kind).opt_in) {
          EXPECT_EQ(rec.fired[s.name()], expected.at(s.name())) << s.name();
        }
      }
    }
    // The user-facing path: run_with_cache's default cache and hook_names().
    mechlab::hooks::HookedTransformer hooked(std::move(model));
    auto [logits, cache] = hooked.run_with_cache(tokens);
    std::map<std::string, std::vector<int64_t>> cached;
    for (const auto& n : cache.keys()) cached[n] = cache[n].sizes().vec();
    EXPECT_EQ(cached, from_table(cfg, false, batch, pos));
    EXPECT_EQ(hooked.hook_names().size(), all_sites(cfg).size());
  }
}

TEST(SiteTable, NamesRoundTripThroughTheParser) {
  for (const ModelConfig& cfg : configs()) {
    for (int layer = -1; layer < cfg.n_layers; ++layer) {
      for (const auto& info : site_table()) {
        const HookSite s{info.kind, info.stage == mechlab::core::SiteStage::block ? layer : -1};
        if (s.per_layer() != (layer >= 0)) continue;
        HookSite parsed;
        ASSERT_TRUE(mechlab::core::parse_site(s.name(), cfg.n_layers, &parsed)) << s.name();
        EXPECT_TRUE(parsed == s) << s.name();
        EXPECT_EQ(parsed.name(), s.name());
      }
    }
    HookSite unused;
    EXPECT_FALSE(mechlab::core::parse_site("blocks." + std::to_string(cfg.n_layers) + ".hook_resid_pre",
                                           cfg.n_layers, &unused));
  }
}

TEST(SiteTable, ShapeNamesFollowTheGlossary) {
  const ModelConfig llama = mechlab::core::preset("llama-tiny");  // GQA
  const ModelConfig tiny = mechlab::core::preset("tiny");
  ASSERT_NE(llama.kv_heads(), llama.n_heads);
  EXPECT_EQ(mechlab::core::site_shape(llama, {HookKind::k, 0}), "[batch, pos, kv_head, d_head]");
  EXPECT_EQ(mechlab::core::site_shape(tiny, {HookKind::k, 0}), "[batch, pos, head, d_head]");
  EXPECT_EQ(mechlab::core::site_shape(tiny, {HookKind::pattern, 1}), "[batch, head, q_pos, k_pos]");
  EXPECT_EQ(mechlab::core::site_shape(tiny, {HookKind::ln_final_scale, -1}), "[batch, pos, 1]");
}

}  // namespace
