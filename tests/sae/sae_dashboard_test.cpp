// SAE dashboards on the shipped gpt2_like model with SAELens's saved topk
// SAE: every field against a naive loop over the latents of a plain
// run_with_cache + Sae::encode (top contexts, windows, histograms, logit
// effects W_dec W_U), the HDF5 round trip, refusals, the HTML page (one
// panel per latent, escaped text, nothing outside the page), and the page
// in headless Chromium (scripts/check_dashboard.sh: no console errors, every
// panel in the DOM, a screenshot). The Chromium test fails, not skips, on a
// machine without chromium: scripts/setup.sh installs it.
#include "core/formats/hdf5_file.h"
#include "core/formats/text_file.h"
#include "hooks/hooked_transformer.h"
#include "sae/dashboard.h"
#include "sae/saelens_io.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using mechlab::testing::error_of;
using mechlab::testing::temp_path;

const std::string kData = std::string(MECHLAB_TEST_DATA);
const char* kHook = "blocks.0.hook_resid_post";

struct Fixture {
  hooks::HookedTransformer model = hooks::HookedTransformer::load(kData + "/runtime/gpt2_like.h5");
  std::shared_ptr<Sae> sae = import_saelens(kData + "/sae/saved/topk");
  at::Tensor tokens = core::H5File::open_read(kData + "/sae/sae_eval.h5").read_tensor("tokens");  // [8, 12]
};

DashboardOptions small_options() {
  return DashboardOptions().latents({0, 3, 17, 64, 127}).top_k(3).window_before(3).window_after(2)
      .histogram_bins(6).top_logits(4).batch_size(3);
}

TEST(SaeDashboard, EveryFieldMatchesANaiveLoop) {
  Fixture fx;
  const DashboardOptions opts = small_options();
  const Dashboard d = compute_dashboard(fx.model, fx.sae, "", fx.tokens, opts);
  auto [logits, cache] = fx.model.run_with_cache(fx.tokens, hooks::NamesFilter::glob(kHook));
  const at::Tensor acts = fx.sae->encode(cache[kHook]);  // [n, pos, d_sae]
  const int64_t n = fx.tokens.size(0), pos = fx.tokens.size(1);
  EXPECT_EQ(d.hook, kHook);
  EXPECT_EQ(d.n_tokens, n * pos);
  const at::Tensor W_U = fx.model.model().weights().W_U;  // [d_model, d_vocab]
  for (int64_t l = 0; l < 5; ++l) {
    const int64_t lat = opts.latents()[l];
    EXPECT_EQ(d.latents[l].item<int64_t>(), lat);
    // Per prompt: the largest activation and where (first position on ties).
    std::vector<std::tuple<float, int64_t, int64_t>> best;  // (act, prompt, pos)
    int64_t fired = 0;
    float mx = 0;
    std::vector<float> positive;
    for (int64_t p = 0; p < n; ++p) {
      float v = -1;
      int64_t at_q = -1;
      for (int64_t q = 0; q < pos; ++q) {
        const float a = acts[p][q][lat].item<float>();
        if (a != 0) ++fired;
        if (a > 0) positive.push_back(a);
        mx = std::max(mx, a);
        if (a > v) v = a, at_q = q;
      }
      if (v > 0) best.emplace_back(v, p, at_q);
    }
    // Descending, the earlier prompt first on ties (every prompt starts with
    // token 0, so position 0 ties across prompts).
    std::stable_sort(best.begin(), best.end(), [](auto& a, auto& b) { return std::get<0>(a) > std::get<0>(b); });
    EXPECT_NEAR(d.density[l].item<double>(), static_cast<double>(fired) / static_cast<double>(n * pos), 1e-12);
    EXPECT_FLOAT_EQ(d.max_act[l].item<float>(), mx);
    for (int64_t k = 0; k < 3; ++k) {
      if (k >= static_cast<int64_t>(best.size())) {
        EXPECT_EQ(d.top_prompt[l][k].item<int64_t>(), -1) << lat;
        continue;
      }
      const auto [v, p, q] = best[static_cast<size_t>(k)];
      EXPECT_FLOAT_EQ(d.top_acts[l][k].item<float>(), v) << lat << " " << k;
      EXPECT_EQ(d.top_prompt[l][k].item<int64_t>(), p) << lat << " " << k;
      EXPECT_EQ(d.top_pos[l][k].item<int64_t>(), q) << lat << " " << k;
      for (int64_t w = 0; w < 6; ++w) {
        const int64_t src = q - 3 + w;
        const bool inside = src >= 0 && src < pos;
        EXPECT_EQ(d.ctx_tokens[l][k][w].item<int64_t>(), inside ? fx.tokens[p][src].item<int64_t>() : -1);
        EXPECT_FLOAT_EQ(d.ctx_acts[l][k][w].item<float>(), inside ? acts[p][src][lat].item<float>() : 0.f);
      }
    }
    // Histogram: 6 equal bins over (0, max], the max in the last.
    std::vector<int64_t> counts(6, 0);
    for (float a : positive) ++counts[static_cast<size_t>(std::min<int64_t>(5, static_cast<int64_t>(a / mx * 6)))];
    for (int64_t b = 0; b < 6; ++b) EXPECT_EQ(d.hist_counts[l][b].item<int64_t>(), counts[b]) << lat << " bin " << b;
    // Logit effects: W_dec[lat] . W_U[:, v], the four largest and smallest.
    std::vector<std::pair<double, int64_t>> eff;
    for (int64_t v = 0; v < W_U.size(1); ++v) {
      double s = 0;
      for (int64_t i = 0; i < W_U.size(0); ++i) {
        s += fx.sae->param("W_dec")[lat][i].item<double>() * W_U[i][v].item<double>();
      }
      eff.emplace_back(s, v);
    }
    std::sort(eff.begin(), eff.end());
    for (int64_t t = 0; t < 4; ++t) {
      const auto& hi = eff[eff.size() - 1 - static_cast<size_t>(t)];
      EXPECT_EQ(d.logit_pos_ids[l][t].item<int64_t>(), hi.second) << lat;
      EXPECT_NEAR(d.logit_pos[l][t].item<double>(), hi.first, 1e-5);
      EXPECT_EQ(d.logit_neg_ids[l][t].item<int64_t>(), eff[static_cast<size_t>(t)].second) << lat;
      EXPECT_NEAR(d.logit_neg[l][t].item<double>(), eff[static_cast<size_t>(t)].first, 1e-5);
    }
  }
  // The model without a tokenizer shows ids.
  EXPECT_EQ(d.token_text.at(d.ctx_tokens[0][0][3].item<int64_t>()),
            "[" + std::to_string(d.ctx_tokens[0][0][3].item<int64_t>()) + "]");
  // Nothing stays attached.
  EXPECT_EQ(fx.model.hook_names().size(), Fixture().model.hook_names().size());
}

TEST(SaeDashboard, RoundTripsThroughHdf5AndRefusesBadInput) {
  Fixture fx;
  const Dashboard d = compute_dashboard(fx.model, fx.sae, kHook, fx.tokens, small_options());
  const std::string path = temp_path("sae_dashboard", "dash.h5");
  fs::remove(path);
  write_dashboard(d, path);
  const Dashboard back = read_dashboard(path);
  EXPECT_EQ(back.hook, d.hook);
  EXPECT_EQ(back.window_before, 3);
  EXPECT_EQ(back.token_text, d.token_text);
  for (auto [a, b] : {std::pair{&d.ctx_acts, &back.ctx_acts}, {&d.ctx_tokens, &back.ctx_tokens},
                      {&d.hist_counts, &back.hist_counts}, {&d.logit_neg_ids, &back.logit_neg_ids},
                      {&d.density, &back.density}, {&d.top_acts, &back.top_acts}}) {
    EXPECT_TRUE(at::equal(*a, *b));
  }
  EXPECT_THAT(error_of([&] { write_dashboard(d, path); }), HasSubstr("already exists; pass `overwrite` to replace it"));
  write_dashboard(d, path, /*overwrite=*/true);
  EXPECT_THAT(error_of([&] { read_dashboard(kData + "/sae/sae_eval.h5"); }),
              HasSubstr("holds no /dashboard group; it is not an SAE dashboard file"));
  EXPECT_THAT(error_of([&] {
                compute_dashboard(fx.model, fx.sae, "", fx.tokens, DashboardOptions().latents({128}));
              }),
              HasSubstr("latent 128 is outside [0, d_sae = 128); choose latents of this SAE"));
  EXPECT_THAT(error_of([&] {
                compute_dashboard(fx.model, fx.sae, "blocks.0.hook_mlp_out.x", fx.tokens);
              }),
              HasSubstr("blocks.0.hook_mlp_out.x"));
  fs::remove(path);
}

TEST(SaeDashboard, HtmlHasOnePanelPerLatentEscapedAndSelfContained) {
  Fixture fx;
  Dashboard d = compute_dashboard(fx.model, fx.sae, "", fx.tokens, small_options());
  const int64_t t = d.ctx_tokens[0][0][3].item<int64_t>();
  d.token_text[t] = "<b>&\"x";
  const std::string html = dashboard_html(d, "topk <SAE>");
  for (int64_t lat : {0, 3, 17, 64, 127}) {
    EXPECT_THAT(html, HasSubstr("<section class=\"latent\" id=\"latent-" + std::to_string(lat) + "\""));
  }
  size_t panels = 0;
  for (size_t at = html.find("<section class=\"latent\""); at != std::string::npos;
       at = html.find("<section class=\"latent\"", at + 1)) ++panels;
  EXPECT_EQ(panels, 5u);
  EXPECT_THAT(html, HasSubstr("&lt;b&gt;&amp;&quot;x"));
  EXPECT_EQ(html.find("<b>&"), std::string::npos);
  EXPECT_THAT(html, HasSubstr("<title>topk &lt;SAE&gt;</title>"));
  for (const char* outside : {"src=", "href=", "url(", "@import", "http"}) {
    EXPECT_EQ(html.find(outside), std::string::npos) << outside;
  }
}

TEST(SaeDashboard, PageLoadsInHeadlessChromiumWithEveryPanel) {
  ASSERT_EQ(std::system("command -v chromium >/dev/null 2>&1"), 0)
      << "chromium is not installed; scripts/setup.sh installs it";
  Fixture fx;
  const Dashboard d = compute_dashboard(fx.model, fx.sae, "", fx.tokens, small_options());
  const std::string dir = temp_path("sae_dashboard", "page");
  fs::create_directories(dir);
  core::write_text_file(dir + "/dash.html", dashboard_html(d, "topk"));
  const std::string script = std::string(MECHLAB_SOURCE_DIR) + "/scripts/check_dashboard.sh";
  const auto ok = mechlab::testing::run_program("bash " + script + " " + dir + "/dash.html " + dir +
                                                "/dash.png 0 3 17 64 127");
  EXPECT_EQ(ok.rc, 0) << ok.output;
  EXPECT_GT(fs::file_size(dir + "/dash.png"), 1000u);
  // The check can fail: a latent with no panel, and a page whose script throws.
  const auto missing = mechlab::testing::run_program("bash " + script + " " + dir + "/dash.html " + dir +
                                                     "/dash2.png 0 3 17 64 127 5");
  EXPECT_NE(missing.rc, 0);
  EXPECT_THAT(missing.output, HasSubstr("no panel for latent 5"));
  std::string broken = dashboard_html(d, "topk");
  broken.replace(broken.find("box.addEventListener"), 3, "nox");
  core::write_text_file(dir + "/broken.html", broken);
  const auto err = mechlab::testing::run_program("bash " + script + " " + dir + "/broken.html " + dir +
                                                 "/broken.png 0 3 17 64 127");
  EXPECT_NE(err.rc, 0);
  EXPECT_THAT(err.output, HasSubstr("Uncaught ReferenceError"));
}

}  // namespace
}  // namespace mechlab::sae
