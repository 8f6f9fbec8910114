// A probing sweep from files to results (`mechlab probe`, the job step
// `probe`; docs/ARCHITECTURE.md, "Probes"): features of some hooks, read
// from an activation store or computed by running a model over a dataset,
// a label per token, one logistic probe per hook fitted together, scored on
// a held-out split with a Hewitt & Liang control task, selectivity and
// bootstrap confidence intervals; written as one HDF5 file and an SVG
// picture of accuracy and selectivity against depth.
//
// Labels (`label`):
//   labels     the dataset's /labels: per token [N, T] or per example [N]
//              (every token of the example carries it); -1 = no label there
//   repeated   1 where the token already occurred earlier in its sequence,
//              else 0, computed from the dataset's tokens (what an induction
//              head needs to know); the first real token (BOS in mechlab's
//              tasks) has no label, as the probe task's seen_before: nothing
//              precedes it, so its 0 says nothing about the activations
// Rows without a label (-1, padding) are left out before the split. The
// split and the bootstrap are by example (`split_by`): a prompt's tokens are
// all train or all test, and a resample draws prompts (cluster bootstrap).
//
// Output folder `out`:
//   probes.h5    mechlab_format "probes" (layout in write_probe_results)
//   probes.svg   accuracy, control accuracy and the majority-class rate with
//                the accuracy's confidence band, and selectivity with its band,
//                against depth; with split_heads, grids of hooks by heads of
//                accuracy, control accuracy and selectivity (and the ablated
//                loss's change)
//
// Example:
//   ProbeRunResult r = run_probes("induction.h5", "data.h5",
//       ProbeRunOptions().hooks({"hook_embed", "blocks.*.hook_resid_post"}).label("repeated"));
//   write_probe_results("out/", r, false);
#pragma once

#include "core/util/options.h"
#include "hooks/attached_module.h"
#include "probes/evaluation.h"
#include "probes/linear_probe.h"

#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::probes {

inline constexpr const char* kProbesFormat = "probes";
inline constexpr int64_t kProbesVersion = 1;

/// The names `ProbeRunOptions::label` accepts, comma-separated.
const char* probe_label_names();

/// A module attached to the model before its forwards: e.g. an SAE with
/// its error term on, so that its latents (`<host>.sae.hook_sae_acts_post`)
/// can be probed while the model computes as without it.
struct ProbeAttachment {
  std::string host;                               ///< a hook of the model
  std::shared_ptr<hooks::AttachedModule> module;
  std::string source;                             ///< where it came from (a folder), for the config
};

struct ProbeRunOptions {
  /// Hook names or globs ('*', '?'); with a store, among the store's hooks.
  MECHLAB_OPTION(ProbeRunOptions, std::vector<std::string>, hooks, {})
  /// One probe per head of hooks whose per-token shape is [heads, d_head]
  /// (attn.hook_z, hook_q/k/v, hook_result), named "<hook> head h"; then
  /// every hook must have heads, and the picture is a grid of hooks by heads.
  MECHLAB_OPTION(ProbeRunOptions, bool, split_heads, false)
  /// "labels" or "repeated" (probe_label_names()).
  MECHLAB_OPTION(ProbeRunOptions, std::string, label, "labels")
  /// Probe one token per example: the one at this position, or, negative,
  /// this many from the end of the example's real tokens (-1: the last, as
  /// a sequence classifier reads); examples without it are left out. Unset:
  /// every token.
  MECHLAB_OPTION(ProbeRunOptions, std::optional<int64_t>, position, std::nullopt)
  /// Share held out for scoring, in (0, 1): of the examples (`split_by`
  /// "example", ceil(fraction * examples) of them) or of the labelled rows ("token").
  MECHLAB_OPTION(ProbeRunOptions, double, test_fraction, 0.2)
  /// "example" (default): the train/test split and the bootstrap take whole
  /// examples (group_split, cluster_bootstrap_ci), so no prompt is on both
  /// sides and the intervals count prompts, not correlated tokens; "token":
  /// rows independently (random_split, bootstrap_ci), which scores a probe
  /// on tokens of prompts it was trained on.
  MECHLAB_OPTION(ProbeRunOptions, std::string, split_by, "example")
  /// Seed of the split, the control labels and the bootstrap.
  MECHLAB_OPTION(ProbeRunOptions, uint64_t, seed, 0)
  /// The probes' fit (C, penalty, solver, ...); num_classes is set from the labels.
  MECHLAB_OPTION(ProbeRunOptions, ProbeOptions, probe, {})
  /// Bootstrap resamples (>= 2) of the test examples (or rows) and the
  /// intervals' confidence, in (0, 1).
  MECHLAB_OPTION(ProbeRunOptions, int64_t, resamples, 1000)
  MECHLAB_OPTION(ProbeRunOptions, double, confidence, 0.95)
  /// With a model: examples per forward.
  MECHLAB_OPTION(ProbeRunOptions, int64_t, batch_size, 8)
  /// Use at most this many of the dataset's examples (0: all).
  MECHLAB_OPTION(ProbeRunOptions, int64_t, max_examples, 0)
  /// With a model: also ablate what each probe reads at its hook (a binary
  /// probe's direction, a K-class probe's span of K - 1 weight differences:
  /// probe_directions in probes/intervention.h) and measure the next-token
  /// loss (core::mean_loss) on the first `ablate_examples` prompts, without and with.
  MECHLAB_OPTION(ProbeRunOptions, bool, ablate, false)
  MECHLAB_OPTION(ProbeRunOptions, int64_t, ablate_examples, 32)
  /// With a model: modules attached before its forwards (their points
  /// become hooks to probe), on `device`. Not with a store.
  MECHLAB_OPTION(ProbeRunOptions, std::vector<ProbeAttachment>, attach, {})
  /// Where the model's forwards (and `ablate`'s) and the probes' fits run.
  /// The features wait on the CPU between the two, and the result is on
  /// the CPU (the metrics, the bootstrap and the fitted probes).
  MECHLAB_OPTION(ProbeRunOptions, at::Device, device, at::kCPU)
};

struct ProbeRunResult {
  std::string source, dataset, label;   ///< as given
  bool from_store = false;
  std::vector<std::string> names;       ///< one per probe, in depth order: the hook, or "<hook> head h"
  std::vector<std::string> hooks;       ///< [P] the hook each probe reads
  std::vector<int64_t> heads;           ///< [P] its head with `split_heads`, else -1
  std::vector<double> depth;            ///< [P] x of the picture (see hook_depth)
  int64_t rows = 0, train_rows = 0, test_rows = 0, num_classes = 0;
  at::Tensor classes;                   ///< [num_classes] int64: the labels present (scikit-learn's classes_),
                                        ///< in order; class k of the probes is label classes[k]
  int64_t control_classes = 0;          ///< control labels on the train rows (1: one token type, no control)
  int64_t position_missing = 0;         ///< with `position`: prompts without a token there, left out
  int64_t train_examples = 0, test_examples = 0;  ///< examples with a row on each side
  std::string split_by;                 ///< "example" or "token"
  at::Tensor row_example;               ///< [rows] int64: the example of each labelled row
  Split split;                          ///< indices into the labelled rows
  LinearProbes probes;                  ///< fitted on the train rows (on the CPU)
  LinearProbes control_probes;          ///< the control task's, same rows and options
  at::Tensor accuracy;                  ///< [P] float64, test rows
  at::Tensor control_accuracy;          ///< [P] the control task's probes on the same rows
  at::Tensor selectivity;               ///< [P] accuracy - control_accuracy
  /// [] the chance baseline: the test accuracy of always predicting the
  /// train rows' most frequent class (scikit-learn's DummyClassifier)
  at::Tensor majority;
  BootstrapInterval accuracy_ci, selectivity_ci;
  /// [P] test-row AUROC: binary, of the logit; more classes, scikit-learn's
  /// one-vs-rest macro of the class probabilities. NaN where the test rows
  /// lack a class; its interval leaves out resamples that lack one.
  at::Tensor auroc;
  BootstrapInterval auroc_ci;
  /// With `ablate`: the loss without intervention, and with each probe's
  /// directions (probe_directions) projected out at its hook [P], and the
  /// dimensions projected out [P] (1 binary, K - 1 for K classes; undefined otherwise).
  double clean_loss = 0;
  at::Tensor ablated_loss, ablated_dims;
  std::string config;                   ///< the options as JSON
};

/// Depth of a hook along the residual stream, the picture's x axis:
/// hook_embed / hook_pos_embed 0, blocks.L.hook_resid_pre L, blocks.L.*
/// L + 0.5 (attention and MLP sites, resid_mid), blocks.L.hook_resid_post
/// L + 1, ln_final.* n_layers + 0.5 (so resid_post L-1 and resid_pre L coincide).
double hook_depth(const std::string& hook);

/// Per-token labels [N, T] int64 (-1 = none) of `label` for a dataset's
/// prompts [N, T] and its /labels (undefined when absent). With an
/// attention mask [N, T] (1 = real token), "repeated" compares real tokens
/// only and leaves each row's first real token unlabelled; padding itself is
/// the caller's to drop.
at::Tensor token_labels(const std::string& label, const at::Tensor& prompts, const at::Tensor& dataset_labels,
                        const std::string& where, const at::Tensor& attention_mask = {});

/// Throws, naming the option, unless every option of `options` is in range
/// (run_probes calls it first; a caller may call it before other work).
void check_probe_run_options(const ProbeRunOptions& options);

/// `source` is an activation store (.h5 of format "activations", or a
/// store set's .json) or a model (checkpoint or Hugging Face folder);
/// `dataset` the mechlab dataset the store was cached from or the model runs
/// on. A store is refused with a dataset other than its own (the
/// `dataset_fingerprint` its job records, else its /token_ids).
ProbeRunResult run_probes(const std::string& source, const std::string& dataset, const ProbeRunOptions& options);

/// Writes `out`/probes.h5 and `out`/probes.svg, each atomically (the folder is
/// created). An existing probes.h5 is replaced only with `overwrite`.
/// probes.h5: root attributes mechlab_format, mechlab_version, source,
/// dataset, label, hooks (JSON list of the probes' names), config (JSON);
/// datasets depth [P], head [P] int64 (-1: the whole hook), classes [K]
/// (the labels the K outputs stand for), test_prompts (dataset indices of
/// the prompts with test rows, ascending: by example, the held-out ones),
/// weight [P, D, O] and bias [P, O] (raw features), coef, intercept, mean,
/// scale, converged, iterations, control_converged, control_iterations;
/// metrics/{accuracy, control_accuracy,
/// selectivity, accuracy_lower, accuracy_upper, selectivity_lower,
/// selectivity_upper, auroc, auroc_lower, auroc_upper} [P] float64,
/// metrics/auroc_resamples [P] int64 (resamples with a defined AUROC),
/// metrics/majority [], with `ablate` metrics/ablated_loss [P],
/// metrics/ablated_dims [P] and the attribute clean_loss, and as attributes
/// the row counts (rows, train_rows, test_rows, num_classes, train_examples,
/// test_examples), split_by and auroc_average ("binary" or "ovr-macro").
void write_probe_results(const std::string& out, const ProbeRunResult& result, bool overwrite);

/// Throws unless write_probe_results may write in `out`: call it before the
/// work, so a run is not wasted on an output it may not replace.
void check_probe_output(const std::string& out, bool overwrite);

/// The files write_probe_results writes in `out`.
std::string probe_results_path(const std::string& out);
std::string probe_plot_path(const std::string& out);

}  // namespace mechlab::probes
