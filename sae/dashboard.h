// SAE latent dashboards (the SAEDashboard / Neuronpedia feature page, static):
// for each chosen latent of an SAE spliced at its hook,
//   - the top-k contexts: the k prompts where the latent's largest activation
//     is largest (ties: the earlier prompt first; within a prompt, the first
//     position of its largest activation), each as a window of tokens around that position with the
//     latent's activation on every token of the window;
//   - the activation histogram: equal-width bins over (0, max] of the
//     latent's nonzero activations on every token;
//   - its density (share of tokens it fires on);
//   - the top positive and negative logit effects: the entries of
//     W_dec[latent] @ W_U [d_vocab] (the direct path of the decoder direction
//     to the logits, no final norm, as SAEDashboard's logit tables), only when
//     the hook's width is d_model (a residual-stream-shaped hook); for a
//     hook_z SAE at blocks.L.attn.hook_z, W_dec[latent] (as [head, d_head])
//     through layer L's W_O first: sum_h W_dec[latent, h] @ W_O[h] @ W_U.
// The latents are read from the splice's "<hook>.sae.hook_sae_acts_post" (with
// the error term, so the model downstream of the hook is the clean one).
//
// Stored in one HDF5 group (write_dashboard / read_dashboard; see the field
// comments for the datasets) and rendered as one self-contained HTML page
// (inline CSS, SVG and script; nothing fetched): dashboard_html.
//
// Memory: the chosen latents' activations on every token are kept on the CPU
// for the histograms, tokens x latents x 4 bytes.
//
// Example:
//   auto d = mechlab::sae::compute_dashboard(model, sae, "", tokens,
//                                            DashboardOptions().latents({0, 5, 9}).top_k(5));
//   mechlab::sae::write_dashboard(d, "dash.h5");
//   mechlab::core::write_text_file("dash.html", mechlab::sae::dashboard_html(d, "my SAE"));
#pragma once

#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "sae/sae.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mechlab::sae {

struct DashboardOptions {
  /// Latent indices; empty = every latent.
  MECHLAB_OPTION(DashboardOptions, std::vector<int64_t>, latents, {})
  /// Contexts per latent.
  MECHLAB_OPTION(DashboardOptions, int64_t, top_k, 8)
  /// Tokens shown before and after the top token of a context.
  MECHLAB_OPTION(DashboardOptions, int64_t, window_before, 8)
  MECHLAB_OPTION(DashboardOptions, int64_t, window_after, 4)
  MECHLAB_OPTION(DashboardOptions, int64_t, histogram_bins, 24)
  /// Logit effects listed each way.
  MECHLAB_OPTION(DashboardOptions, int64_t, top_logits, 8)
  /// Prompts per forward pass.
  MECHLAB_OPTION(DashboardOptions, int64_t, batch_size, 8)
};

/// L latents, K contexts, W = window_before + 1 + window_after tokens,
/// B bins, T logit effects. Empty slots: prompt -1, token -1, activation 0.
struct Dashboard {
  std::string hook;
  int64_t d_sae = 0;
  int64_t n_prompts = 0, n_tokens = 0;
  at::Tensor latents;       ///< [L] int64
  at::Tensor density;       ///< [L] float64, share of tokens with a nonzero activation
  at::Tensor max_act;       ///< [L] float32, largest activation (0 when it never fires)
  at::Tensor top_acts;      ///< [L, K] float32, each context's largest activation, descending
  at::Tensor top_prompt;    ///< [L, K] int64, the context's prompt index
  at::Tensor top_pos;       ///< [L, K] int64, the position of its largest activation
  at::Tensor ctx_tokens;    ///< [L, K, W] int64, the window's token ids (top token at window_before)
  at::Tensor ctx_acts;      ///< [L, K, W] float32, the latent's activation on each
  at::Tensor hist_counts;   ///< [L, B] int64, nonzero activations per bin
  at::Tensor hist_max;      ///< [L] float32, the bins split (0, hist_max] evenly
  at::Tensor logit_pos_ids, logit_pos;  ///< [L, T] int64 / float32, largest W_dec W_U entries
  at::Tensor logit_neg_ids, logit_neg;  ///< [L, T], smallest first; all four empty without logit effects
  int64_t window_before = 0;
  std::map<int64_t, std::string> token_text;  ///< every token id shown, as text
};

/// The dashboard of `sae` at `hook` ("" = its cfg().hook_name()) on tokens
/// [n, pos]. Refuses latents outside [0, d_sae), top_k, bins, top_logits,
/// batch_size < 1, windows < 0, and what splicing refuses.
Dashboard compute_dashboard(hooks::HookedTransformer& model, const std::shared_ptr<Sae>& sae,
                            const std::string& hook, const at::Tensor& tokens,
                            const DashboardOptions& opts = {});

/// Writes the dashboard as group "/dashboard" of a new HDF5 file at `path`
/// (mechlab_format "sae_dashboard"; atomically: a reader never sees half a
/// file); refuses an existing file unless `overwrite`, and a mechlab file of
/// another kind always.
void write_dashboard(const Dashboard& d, const std::string& path, bool overwrite = false);
/// Reads what write_dashboard wrote; refuses a file without a dashboard.
Dashboard read_dashboard(const std::string& path);

/// One static HTML page: a panel per latent (id "latent-<index>", class
/// "latent") with its histogram (inline SVG), logit tables and contexts
/// (each token shaded by its activation, the value in its tooltip), a filter
/// box. No network, no external file.
std::string dashboard_html(const Dashboard& d, const std::string& title);

}  // namespace mechlab::sae
