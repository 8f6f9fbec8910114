#include "sae/dashboard.h"

#include "core/formats/hdf5_file.h"
#include "core/formats/output_file.h"
#include "core/util/error.h"
#include "sae/splice.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <sstream>

namespace mechlab::sae {

namespace {

const char* kGroup = "dashboard";
const char* kFormat = "sae_dashboard";

std::string token_text_of(const hooks::HookedTransformer& model, int64_t id) {
  if (model.tokenizer() == nullptr) return "[" + std::to_string(id) + "]";
  return model.to_str_tokens(at::tensor({id}, at::kLong))[0];
}

}  // namespace

Dashboard compute_dashboard(hooks::HookedTransformer& model, const std::shared_ptr<Sae>& sae,
                            const std::string& hook, const at::Tensor& tokens,
                            const DashboardOptions& opts) {
  MECHLAB_CHECK(sae, "compute_dashboard: the SAE is null; give a loaded SAE");
  const std::string host = hook.empty() ? sae->cfg().hook_name() : hook;
  MECHLAB_CHECK(!host.empty(), "the SAE's config has no hook_name; give the hook to splice it at");
  MECHLAB_CHECK(tokens.defined() && tokens.dim() == 2 && tokens.size(0) >= 1 && tokens.size(1) >= 1,
                "a dashboard needs tokens [prompts, pos]; give at least one prompt");
  MECHLAB_CHECK(opts.top_k() >= 1, "dashboard top_k ", opts.top_k(), " must be at least 1");
  MECHLAB_CHECK(opts.histogram_bins() >= 1, "dashboard histogram_bins ", opts.histogram_bins(),
                " must be at least 1");
  MECHLAB_CHECK(opts.top_logits() >= 1, "dashboard top_logits ", opts.top_logits(), " must be at least 1");
  MECHLAB_CHECK(opts.batch_size() >= 1, "dashboard batch_size ", opts.batch_size(), " must be at least 1");
  MECHLAB_CHECK(opts.window_before() >= 0 && opts.window_after() >= 0,
                "dashboard windows must be >= 0 tokens, got ", opts.window_before(), " before and ",
                opts.window_after(), " after");
  const int64_t d_sae = sae->d_sae();
  std::vector<int64_t> chosen = opts.latents();
  if (chosen.empty()) {
    for (int64_t i = 0; i < d_sae; ++i) chosen.push_back(i);
  }
  for (size_t a = 0; a < chosen.size(); ++a) {
    const int64_t i = chosen[a];
    MECHLAB_CHECK(i >= 0 && i < d_sae, "latent ", i, " is outside [0, d_sae = ", d_sae,
                  "); choose latents of this SAE");
    // A latent twice would give two panels with one HTML id.
    MECHLAB_CHECK(std::find(chosen.begin(), chosen.begin() + static_cast<std::ptrdiff_t>(a), i) ==
                      chosen.begin() + static_cast<std::ptrdiff_t>(a),
                  "dashboard latents list latent ", i, " twice; list each latent once");
  }
  at::NoGradGuard no_grad;
  const int64_t L = static_cast<int64_t>(chosen.size());
  const int64_t n = tokens.size(0), pos = tokens.size(1);
  const at::Tensor tok = tokens.to(at::kCPU, at::kLong).contiguous();  // [n, pos]
  const at::Tensor lat = at::tensor(chosen, at::kLong);                // [L]
  const std::string acts_name = host + ".sae.hook_sae_acts_post";

  std::vector<at::Tensor> per_batch;  // each [b * pos, L]
  at::Tensor best_v = at::empty({0, L}, at::kFloat), best_p = at::empty({0, L}, at::kLong),
             best_q = at::empty({0, L}, at::kLong);  // [<= K, L]
  for (int64_t b0 = 0; b0 < n; b0 += opts.batch_size()) {
    const int64_t b1 = std::min(n, b0 + opts.batch_size());
    const at::Tensor t = tok.slice(0, b0, b1).to(model.model().device());  // [b, pos]
    at::Tensor a;
    {
      SaeSplice splice(model, {{host, sae}}, /*use_error_term=*/true);
      auto [logits, cache] = model.run_with_cache(t, hooks::NamesFilter::glob(acts_name));
      a = cache[acts_name];  // [b, pos, d_sae]
    }
    a = a.index_select(-1, lat.to(a.device())).to(at::kCPU, at::kFloat);  // [b, pos, L]
    per_batch.push_back(a.reshape({-1, L}));
    auto [mx, arg] = a.max(1);                                                  // [b, L]
    const at::Tensor prompt = at::arange(b0, b1, at::kLong).unsqueeze(1).expand({b1 - b0, L});
    const at::Tensor v = at::cat({best_v, mx}), p = at::cat({best_p, prompt}), q = at::cat({best_q, arg});
    // A stable sort: equal activations (the same first token gives every
    // prompt the same position-0 activation) keep the earlier prompt first.
    auto [sv, si] = v.sort(/*stable=*/true, 0, /*descending=*/true);  // [k' + b, L]
    const int64_t keep = std::min<int64_t>(opts.top_k(), v.size(0));
    const at::Tensor tv = sv.slice(0, 0, keep), ti = si.slice(0, 0, keep);  // [k', L]
    best_v = tv;
    best_p = p.gather(0, ti);
    best_q = q.gather(0, ti);
  }
  const at::Tensor acts = at::cat(per_batch);  // [n * pos, L]

  Dashboard d;
  d.hook = host;
  d.d_sae = d_sae;
  d.n_prompts = n;
  d.n_tokens = n * pos;
  d.window_before = opts.window_before();
  d.latents = lat;
  d.density = (acts != 0).sum(0).to(at::kDouble) / static_cast<double>(acts.size(0));
  d.max_act = std::get<0>(acts.max(0)).clamp_min(0);  // [L]

  const int64_t K = opts.top_k(), W = opts.window_before() + 1 + opts.window_after();
  d.top_acts = at::zeros({L, K}, at::kFloat);
  d.top_prompt = at::full({L, K}, -1, at::kLong);
  d.top_pos = at::full({L, K}, -1, at::kLong);
  d.ctx_tokens = at::full({L, K, W}, -1, at::kLong);
  d.ctx_acts = at::zeros({L, K, W}, at::kFloat);
  auto tk = tok.accessor<int64_t, 2>();
  auto ac = acts.accessor<float, 2>();
  auto bv = best_v.accessor<float, 2>();
  auto bp = best_p.accessor<int64_t, 2>();
  auto bq = best_q.accessor<int64_t, 2>();
  auto ta = d.top_acts.accessor<float, 2>();
  auto tp = d.top_prompt.accessor<int64_t, 2>();
  auto tq = d.top_pos.accessor<int64_t, 2>();
  auto ct = d.ctx_tokens.accessor<int64_t, 3>();
  auto ca = d.ctx_acts.accessor<float, 3>();
  std::set<int64_t> shown;
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t k = 0; k < best_v.size(0); ++k) {
      if (!(bv[k][l] > 0)) break;  // descending: the rest never fired either
      ta[l][k] = bv[k][l];
      tp[l][k] = bp[k][l];
      tq[l][k] = bq[k][l];
      for (int64_t w = 0; w < W; ++w) {
        const int64_t src = bq[k][l] - opts.window_before() + w;
        if (src < 0 || src >= pos) continue;
        ct[l][k][w] = tk[bp[k][l]][src];
        ca[l][k][w] = ac[bp[k][l] * pos + src][l];
        shown.insert(tk[bp[k][l]][src]);
      }
    }
  }

  // Histograms of the positive activations, bins over (0, max].
  const int64_t B = opts.histogram_bins();
  d.hist_counts = at::zeros({L, B}, at::kLong);
  d.hist_max = d.max_act.clone();
  for (int64_t l = 0; l < L; ++l) {
    const double top = d.hist_max[l].item<double>();
    if (!(top > 0)) continue;
    const at::Tensor col = acts.select(1, l);
    const at::Tensor positive = col.masked_select(col > 0);
    d.hist_counts[l].copy_(at::histc(positive, B, 0, top).round().to(at::kLong));
  }

  // Direct logit effects of each decoder direction: a residual-stream-wide
  // direction straight through W_U; a hook_z SAE's direction [head, d_head]
  // through its layer's W_O first (the direct path of an attention-output
  // feature, Kissane et al. 2024). Other widths have none.
  const core::TransformerWeights& w = model.model().weights();
  const std::string z_suffix = ".attn.hook_z";
  const bool at_hook_z = sae->cfg().reshape_activations() == "hook_z" && host.rfind("blocks.", 0) == 0 &&
                         host.size() > z_suffix.size() &&
                         host.compare(host.size() - z_suffix.size(), z_suffix.size(), z_suffix) == 0;
  if (at_hook_z || (sae->cfg().reshape_activations() == "none" && sae->d_in() == model.cfg().d_model)) {
    const at::Tensor W_U = model.cfg().tied_embeddings ? w.W_E.t() : w.W_U;  // [d_model, d_vocab]
    at::Tensor dirs = sae->param("W_dec").detach().index_select(0, lat.to(sae->param("W_dec").device()));  // [L, d_in]
    dirs = dirs.to(W_U.device(), W_U.scalar_type());
    if (at_hook_z) {
      const at::Tensor& W_O = w.blocks.at(static_cast<size_t>(std::stoi(host.substr(7)))).W_O;  // [head, d_head, d_model]
      // d_in is (head, d_head) flattened head-major, as W_O's first two axes.
      dirs = at::matmul(dirs, W_O.reshape({W_O.size(0) * W_O.size(1), W_O.size(2)}));  // [L, d_model]
    }
    const at::Tensor eff = at::matmul(dirs, W_U).to(at::kCPU, at::kFloat);  // [L, d_vocab]
    const int64_t T = std::min<int64_t>(opts.top_logits(), eff.size(1));
    auto [pv, pi] = eff.topk(T, 1, /*largest=*/true);
    auto [nv, ni] = eff.topk(T, 1, /*largest=*/false);
    d.logit_pos = pv;
    d.logit_pos_ids = pi;
    d.logit_neg = nv;
    d.logit_neg_ids = ni;
    for (const at::Tensor& ids : {pi, ni}) {
      const at::Tensor flat = ids.flatten().contiguous();
      for (int64_t i = 0; i < flat.numel(); ++i) shown.insert(flat.data_ptr<int64_t>()[i]);
    }
  }
  for (int64_t id : shown) d.token_text[id] = token_text_of(model, id);
  return d;
}

void write_dashboard(const Dashboard& d, const std::string& path, bool overwrite) {
  core::require_replaceable(path, kFormat, overwrite, "`overwrite`");
  core::H5File::write_atomically(path, [&](core::H5File& f) {
    f.write_attr("", "mechlab_format", kFormat);
    const std::string g = kGroup;
    f.ensure_group(g);
    f.write_attr(g, "hook", d.hook);
    f.write_attr(g, "d_sae", d.d_sae);
    f.write_attr(g, "n_prompts", d.n_prompts);
    f.write_attr(g, "n_tokens", d.n_tokens);
    f.write_attr(g, "window_before", d.window_before);
    nlohmann::json text = nlohmann::json::object();
    for (const auto& [id, s] : d.token_text) text[std::to_string(id)] = s;
    f.write_attr(g, "token_text", text.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    const std::pair<const char*, const at::Tensor*> tensors[] = {
        {"latents", &d.latents},       {"density", &d.density},         {"max_act", &d.max_act},
        {"top_acts", &d.top_acts},     {"top_prompt", &d.top_prompt},   {"top_pos", &d.top_pos},
        {"ctx_tokens", &d.ctx_tokens}, {"ctx_acts", &d.ctx_acts},       {"hist_counts", &d.hist_counts},
        {"hist_max", &d.hist_max},     {"logit_pos_ids", &d.logit_pos_ids}, {"logit_pos", &d.logit_pos},
        {"logit_neg_ids", &d.logit_neg_ids}, {"logit_neg", &d.logit_neg}};
    for (const auto& [name, t] : tensors) {
      if (t->defined()) f.write_tensor(g + "/" + name, *t);
    }
  });
}

Dashboard read_dashboard(const std::string& path) {
  MECHLAB_CHECK(std::filesystem::exists(path), "dashboard file ", path,
                ": no such file; write one with `mechlab sae dashboard`");
  const core::H5File f = core::H5File::open_read(path);
  const std::string g = kGroup;
  MECHLAB_CHECK(f.is_group(g), path, " holds no /dashboard group; it is not an SAE dashboard file");
  Dashboard d;
  d.hook = f.read_attr_string(g, "hook");
  d.d_sae = f.read_attr_int(g, "d_sae");
  d.n_prompts = f.read_attr_int(g, "n_prompts");
  d.n_tokens = f.read_attr_int(g, "n_tokens");
  d.window_before = f.read_attr_int(g, "window_before");
  const nlohmann::json text = nlohmann::json::parse(f.read_attr_string(g, "token_text"));
  for (auto it = text.begin(); it != text.end(); ++it) d.token_text[std::stoll(it.key())] = it.value().get<std::string>();
  const std::pair<const char*, at::Tensor*> tensors[] = {
      {"latents", &d.latents},       {"density", &d.density},         {"max_act", &d.max_act},
      {"top_acts", &d.top_acts},     {"top_prompt", &d.top_prompt},   {"top_pos", &d.top_pos},
      {"ctx_tokens", &d.ctx_tokens}, {"ctx_acts", &d.ctx_acts},       {"hist_counts", &d.hist_counts},
      {"hist_max", &d.hist_max},     {"logit_pos_ids", &d.logit_pos_ids}, {"logit_pos", &d.logit_pos},
      {"logit_neg_ids", &d.logit_neg_ids}, {"logit_neg", &d.logit_neg}};
  for (const auto& [name, t] : tensors) {
    const bool optional = std::string(name).rfind("logit_", 0) == 0;
    MECHLAB_CHECK(optional || f.exists(g + "/" + name), path, " has no dashboard/", name,
                  "; rewrite it with `mechlab sae dashboard`");
    if (f.exists(g + "/" + name)) *t = f.read_tensor(g + "/" + name);
  }
  return d;
}

// ---------------------------------------------------------------- HTML

namespace {

std::string esc(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string num(double v, const char* fmt = "%.4g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string text_of(const Dashboard& d, int64_t id) {
  auto it = d.token_text.find(id);
  return it == d.token_text.end() ? "[" + std::to_string(id) + "]" : it->second;
}

std::string histogram_svg(const Dashboard& d, int64_t l) {
  const at::Tensor c = d.hist_counts[l];  // [B]
  const int64_t B = c.size(0);
  const double top = std::max<double>(1.0, static_cast<double>(c.max().item<int64_t>()));
  const double W = 320, H = 90, bw = W / static_cast<double>(B);
  std::ostringstream s;
  s << "<svg class=\"hist\" width=\"" << W << "\" height=\"" << H + 16 << "\" viewBox=\"0 0 " << W << " "
    << H + 16 << "\" role=\"img\" aria-label=\"activation histogram\">";
  const double hmax = d.hist_max[l].item<double>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t cnt = c[b].item<int64_t>();
    const double h = static_cast<double>(cnt) / top * H;
    s << "<rect x=\"" << num(static_cast<double>(b) * bw, "%.2f") << "\" y=\"" << num(H - h, "%.2f")
      << "\" width=\"" << num(std::max(1.0, bw - 1), "%.2f") << "\" height=\"" << num(h, "%.2f")
      << "\"><title>" << num(hmax * static_cast<double>(b) / static_cast<double>(B)) << " to "
      << num(hmax * static_cast<double>(b + 1) / static_cast<double>(B)) << ": " << cnt << "</title></rect>";
  }
  s << "<text x=\"0\" y=\"" << H + 13 << "\">0</text><text x=\"" << W << "\" y=\"" << H + 13
    << "\" text-anchor=\"end\">" << num(hmax) << "</text></svg>";
  return s.str();
}

std::string logit_table(const Dashboard& d, int64_t l, bool positive) {
  const at::Tensor& ids = positive ? d.logit_pos_ids : d.logit_neg_ids;
  const at::Tensor& vals = positive ? d.logit_pos : d.logit_neg;
  std::ostringstream s;
  s << "<table class=\"logits " << (positive ? "pos" : "neg") << "\"><tr><th colspan=\"2\">"
    << (positive ? "positive logits" : "negative logits") << "</th></tr>";
  for (int64_t i = 0; i < ids.size(1); ++i) {
    s << "<tr><td class=\"t\">" << esc(text_of(d, ids[l][i].item<int64_t>())) << "</td><td>"
      << num(vals[l][i].item<double>(), "%+.3f") << "</td></tr>";
  }
  s << "</table>";
  return s.str();
}

}  // namespace

std::string dashboard_html(const Dashboard& d, const std::string& title) {
  std::ostringstream s;
  const int64_t L = d.latents.size(0);
  s << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" << esc(title)
    << "</title>\n<style>\n"
       "body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}\n"
       "header p{color:#555;margin:.2em 0}\n"
       "section.latent{background:#fff;border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em 1em}\n"
       "section.latent h2{font-size:1.1em;margin:.2em 0}\n"
       ".stats{color:#555;font-size:.9em}\n"
       ".row{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}\n"
       "svg.hist rect{fill:#e6550d}svg.hist text{font-size:10px;fill:#555}\n"
       "table.logits{border-collapse:collapse;font-size:.85em}table.logits td{padding:0 .5em}\n"
       "table.logits.pos td:last-child{color:#1a7f37}table.logits.neg td:last-child{color:#b42318}\n"
       ".t,.ctx{font-family:ui-monospace,monospace;white-space:pre}\n"
       // Each token boxed and spaced: adjacent spans would otherwise run
       // together ("15523" for tokens 15, 52, 3).
       ".ctx{font-size:.85em;margin:.15em 0}.ctx .tok{border-radius:2px;border:1px solid #ccc;"
       "margin-right:2px;padding:0 1px}\n"
       ".ctx .top{outline:1px solid #222}.ctx .v{color:#777;margin-right:.6em}\n"
       "#filter{margin:.5em 0;padding:.2em .4em}\n"
       "</style></head><body>\n<header><h1>"
    << esc(title) << "</h1><p>hook <code>" << esc(d.hook) << "</code>, d_sae " << d.d_sae << ", " << L
    << " latents shown, " << d.n_prompts << " prompts (" << d.n_tokens << " tokens)</p>"
    << "<p><label>latent <input id=\"filter\" type=\"search\" placeholder=\"index\"></label> "
       "<span id=\"shown\"></span></p></header>\n<main>\n";
  for (int64_t l = 0; l < L; ++l) {
    const int64_t id = d.latents[l].item<int64_t>();
    const double mx = d.max_act[l].item<double>();
    s << "<section class=\"latent\" id=\"latent-" << id << "\" data-latent=\"" << id << "\"><h2>latent " << id
      << "</h2><p class=\"stats\">density " << num(d.density[l].item<double>()) << ", max activation "
      << num(mx) << "</p><div class=\"row\"><div>" << histogram_svg(d, l) << "</div>";
    if (d.logit_pos.defined()) s << logit_table(d, l, true) << logit_table(d, l, false);
    s << "</div><div class=\"contexts\">";
    const int64_t K = d.top_acts.size(1), W = d.ctx_tokens.size(2);
    int64_t fired = 0;
    for (int64_t k = 0; k < K; ++k) {
      if (d.top_prompt[l][k].item<int64_t>() < 0) continue;
      ++fired;
      s << "<div class=\"ctx\"><span class=\"v\">" << num(d.top_acts[l][k].item<double>(), "%.3f") << "</span>";
      for (int64_t w = 0; w < W; ++w) {
        const int64_t t = d.ctx_tokens[l][k][w].item<int64_t>();
        if (t < 0) continue;
        const double a = d.ctx_acts[l][k][w].item<double>();
        const double alpha = mx > 0 ? std::clamp(a / mx, 0.0, 1.0) : 0.0;
        s << "<span class=\"tok" << (w == d.window_before ? " top" : "") << "\" style=\"background:rgba(230,85,13,"
          << num(alpha, "%.3f") << ")\" title=\"" << num(a) << "\">" << esc(text_of(d, t)) << "</span>";
      }
      s << "</div>";
    }
    if (fired == 0) s << "<p class=\"stats\">never fires on these prompts</p>";
    s << "</div></section>\n";
  }
  s << "</main>\n<script>\n"
       "(function(){\n"
       "  var panels = document.querySelectorAll('section.latent');\n"
       "  var box = document.getElementById('filter'), shown = document.getElementById('shown');\n"
       "  function update(){\n"
       "    var q = box.value.trim(), n = 0;\n"
       "    panels.forEach(function(p){\n"
       "      var on = q === '' || p.dataset.latent === q;\n"
       "      p.style.display = on ? '' : 'none';\n"
       "      if (on) n++;\n"
       "    });\n"
       "    shown.textContent = n + ' of ' + panels.length + ' panels';\n"
       "  }\n"
       "  box.addEventListener('input', update);\n"
       "  update();\n"
       "})();\n"
       "</script>\n</body></html>\n";
  return s.str();
}

}  // namespace mechlab::sae
