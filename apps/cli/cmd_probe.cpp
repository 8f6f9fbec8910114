// mechlab probe: a linear-probe sweep over hooks, from an activation store or
// a model run over a dataset (probes/probe_run.h): results in HDF5 and a
// picture of accuracy and selectivity against depth.
#include "apps/cli/commands.h"
#include "core/formats/output_file.h"
#include "core/util/error.h"
#include "probes/batched_solvers.h"
#include "probes/probe_run.h"
#include "sae/saelens_io.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>

namespace mechlab::cli {

void add_probe_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "probe",
      "Fit one logistic probe per hook (all at once) from an activation store or a model's\n"
      "activations on a dataset, and score them on held-out rows: accuracy with a bootstrap\n"
      "confidence interval, a control task (Hewitt & Liang 2019: each token type gets a random\n"
      "label) and selectivity = accuracy - control accuracy, and AUROC (binary, or one-vs-rest macro\n"
      "for more classes) with its interval. Train and test hold whole prompts and the intervals\n"
      "resample prompts (--split-by). Writes OUT/probes.h5 (weights, metrics, intervals, config)\n"
      "and OUT/probes.svg (accuracy and selectivity against depth, or with --split-heads a grid of\n"
      "hooks by heads).");
  struct Args {
    std::string source, dataset, label = "labels", out, penalty = "l2", split_by = "example", device = "cpu",
                solver = "auto";
    std::vector<std::string> hooks, saes;
    double test_fraction = 0.2, C = 1.0, confidence = 0.95, tol = 1e-4;
    int64_t seed = 0, max_iter = 100, resamples = 1000, batch_size = 8, max_examples = 0, ablate_examples = 32,
            position = 0, epochs = 50;
    bool overwrite = false, ablate = false, split_heads = false;
    probes::ProbeRunOptions options;  // from the flags, once parsing completes
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("source", a->source,
                  "Activation store (.h5 from `mechlab cache`, or a store set's .json) or a model "
                  "(mechlab checkpoint .h5 or Hugging Face folder) to run over DATASET")
      ->required();
  cmd->add_option("dataset", a->dataset,
                  "mechlab dataset (.h5): the one the store was cached from, or the prompts the model "
                  "runs on; its tokens (and /labels) give the labels")
      ->required();
  cmd->add_option("--hooks", a->hooks,
                  "Hooks to probe, names or globs (e.g. hook_embed 'blocks.*.hook_resid_post'); "
                  "one probe per hook")
      ->required();
  cmd->add_option("--sae", a->saes,
                  "With a model: an SAE in a SAELens folder (`mechlab sae train` writes OUT/sae), attached at its "
                  "hook_name with its error term on, so the model computes as without it and the SAE's points "
                  "can be probed, e.g. --hooks blocks.0.hook_resid_post.sae.hook_sae_acts_post (repeatable)");
  cmd->add_flag("--split-heads", a->split_heads,
                "One probe per head of hooks with a head axis (attn.hook_z, hook_q/k/v, hook_result), "
                "named '<hook> head h'; every hook must have one, and one width (hook_z and hook_result do not "
                "mix). probes.svg is then a grid of hooks by heads");
  cmd->add_option("--label", a->label,
                  "What to predict per token: labels (the dataset's /labels, per token or per "
                  "example; -1 = none) or repeated (1 where the token already occurred earlier in "
                  "its prompt)")
      ->capture_default_str();
  CLI::Option* position =
      cmd->add_option("--position", a->position,
                      "Probe one token per prompt: the one at this position (0 = the first), or, negative, this "
                      "many from the end of the prompt's real tokens (-1 = the last, as a sequence classifier "
                      "reads); prompts without it are left out. Default: every token");
  cmd->add_option("--out", a->out, "Output folder (created): probes.h5 and probes.svg")->required();
  cmd->add_flag("--overwrite", a->overwrite, "Replace probes.h5 and probes.svg in --out");
  // Ranges are checked by the library (check_probe_run_options), so every
  // refusal is one line with exit code 1, the flag named.
  cmd->add_option("--test-fraction", a->test_fraction,
                  "Share of the prompts (or, with --split-by token, of the labelled tokens) held out for "
                  "scoring, in (0, 1), exclusive")
      ->capture_default_str();
  cmd->add_option("--split-by", a->split_by,
                  "example: train and test hold whole prompts and the bootstrap resamples prompts "
                  "(scikit-learn's GroupShuffleSplit, a cluster bootstrap); token: tokens independently "
                  "(a prompt's tokens on both sides: optimistic)")
      ->capture_default_str();
  add_count_option(cmd, "--seed", a->seed, "Seed of the split, the control labels and the bootstrap", 0);
  cmd->add_option("--C", a->C, "Inverse regularisation strength (scikit-learn's C), > 0")->capture_default_str();
  cmd->add_option("--penalty", a->penalty, "l2, l1 or none")->capture_default_str();
  cmd->add_option("--solver", a->solver,
                  "auto (lbfgs, or fista for l1), lbfgs (full batch, scikit-learn's default), fista (l1), or adam "
                  "(mini-batches of 1024 rows with early stopping on 10% of the train rows, for row counts "
                  "that full-batch fits handle slowly)")
      ->capture_default_str();
  CLI::Option* max_iter =
      add_count_option(cmd, "--max-iter", a->max_iter, "lbfgs and fista: iterations at most (scikit-learn's max_iter)");
  CLI::Option* tol = cmd->add_option("--tol", a->tol,
                  "lbfgs: stop at max |gradient| <= tol (scikit-learn's tol); fista: the gradient mapping's; >= 0")
      ->capture_default_str();
  CLI::Option* epochs = add_count_option(cmd, "--epochs", a->epochs, "adam: passes over the train rows at most");
  add_count_option(cmd, "--resamples", a->resamples,
                   "Bootstrap resamples (>= 2) of the test prompts (or tokens, with --split-by token)");
  cmd->add_option("--confidence", a->confidence, "Confidence of the bootstrap intervals, in (0, 1), exclusive")
      ->capture_default_str();
  add_count_option(cmd, "--batch-size", a->batch_size, "With a model: prompts per forward");
  add_count_option(cmd, "--max-examples", a->max_examples, "Use at most this many prompts (0 = all)", 0);
  cmd->add_flag("--ablate", a->ablate,
                "With a model: also project what each probe reads out of its hook during a forward (a "
                "binary probe's direction; for K classes the span of its K-1 weight differences) at every "
                "position (also with --position) and report the next-token loss without and with (does the "
                "model use what the probe reads?)");
  add_count_option(cmd, "--ablate-examples", a->ablate_examples, "Prompts the --ablate loss is measured on");
  cmd->add_option("--device", a->device,
                  "Where the model's forwards and the probes' fits run: cpu, cuda, cuda:N or auto (cuda "
                  "when there is a GPU); the bootstrap runs on the CPU")
      ->capture_default_str();
  add_threads_option(cmd, "The CPU's work (with --device cpu: the forwards and fits too; always the bootstrap)");
  // The options from the flags, checked, the SAE folders read, when parsing
  // completes: so that a job file's probe step with a bad value is refused
  // before any step runs (discover parses every step first, work skipped).
  auto options_of = [a, position] {
    // The probes are logistic: exact (ridge) is not among the choices.
    MECHLAB_CHECK(a->solver == "auto" || a->solver == "lbfgs" || a->solver == "fista" || a->solver == "adam",
                  "unknown --solver '", a->solver, "'; use auto, lbfgs, fista or adam");
    probes::ProbeRunOptions o =
        probes::ProbeRunOptions()
            .hooks(a->hooks)
            .split_heads(a->split_heads)
            .label(a->label)
            .position(position->count() > 0 ? std::optional<int64_t>(a->position) : std::nullopt)
            .test_fraction(a->test_fraction)
            .split_by(a->split_by)
            .seed(static_cast<uint64_t>(a->seed))
            .probe(probes::ProbeOptions()
                       .C(a->C)
                       .penalty(probes::parse_penalty(a->penalty))
                       .solver(probes::parse_solver(a->solver))
                       .max_iter(a->max_iter)
                       .tol(a->tol)
                       .epochs(a->epochs))
            .resamples(a->resamples)
            .confidence(a->confidence)
            .batch_size(a->batch_size)
            .max_examples(a->max_examples)
            .ablate(a->ablate)
            .ablate_examples(a->ablate_examples)
            .device(parse_device(a->device));
    const at::Device device = o.device();
    std::vector<probes::ProbeAttachment> attach;
    for (const std::string& dir : a->saes) {
      std::shared_ptr<sae::Sae> s = sae::import_saelens(dir);
      MECHLAB_CHECK(!s->cfg().hook_name().empty(), "--sae ", dir, " records no hook_name; give an SAE whose ",
                    "cfg.json names the hook it was trained on");
      for (const probes::ProbeAttachment& other : attach) {
        MECHLAB_CHECK(other.host != s->cfg().hook_name(), "--sae ", other.source, " and ", dir, " both attach at ",
                      other.host, "; give one SAE per hook");
      }
      s->use_error_term(true);
      s->to(device, at::kFloat);
      attach.push_back({s->cfg().hook_name(), s, dir});
    }
    o.attach(attach);
    probes::check_probe_run_options(o);
    return o;
  };
  cmd->parse_complete_callback([a, options_of] { a->options = options_of(); });  // the SAEs read once
  cmd->callback([a, max_iter, tol, epochs] {
    const probes::ProbeRunOptions& o = a->options;
    // Options the chosen solver does not read are said, not silently dropped.
    const bool adam = a->solver == "adam";
    for (const CLI::Option* given : {max_iter, tol, epochs}) {
      if (given->count() == 0 || (given == epochs) == adam) continue;
      std::fprintf(stderr, "mechlab: warning: %s is not read by --solver %s; %s\n", given->get_name().c_str(),
                   a->solver.c_str(), adam ? "adam stops by --epochs and its validation rows" :
                                             "--epochs is adam's");
    }
    for (const std::string& f : {probes::probe_results_path(a->out), probes::probe_plot_path(a->out)}) {
      core::require_not_same_file(f, "--out", a->source, "the source");
      core::require_not_same_file(f, "--out", a->dataset, "the dataset");
    }
    probes::check_probe_output(a->out, a->overwrite);
    handle_interrupts(/*polled=*/false, "nothing was written");
    const probes::ProbeRunResult r = probes::run_probes(a->source, a->dataset, o);
    probes::write_probe_results(a->out, r, a->overwrite);
    const int pct = static_cast<int>(a->confidence * 100 + 0.5);
    // The labels the classes stand for, where they are not 0..K-1.
    std::string labels;
    if (!at::equal(r.classes, at::arange(r.num_classes, at::kLong))) {
      for (int64_t k = 0; k < r.num_classes; ++k) {
        labels += str_cat(k ? ", " : " (labels ", r.classes[k].item<int64_t>());
      }
      labels += ")";
    }
    std::printf("%lld probes for '%s': %lld tokens (%lld train, %lld test; %lld and %lld prompts, split by %s), "
                "%lld classes%s, majority class %.3f\n",
                static_cast<long long>(r.names.size()), printable(r.label).c_str(), static_cast<long long>(r.rows),
                static_cast<long long>(r.train_rows), static_cast<long long>(r.test_rows),
                static_cast<long long>(r.train_examples), static_cast<long long>(r.test_examples),
                r.split_by.c_str(), static_cast<long long>(r.num_classes), labels.c_str(), r.majority.item<double>());
    if (r.position_missing > 0) {
      std::printf("%lld prompts have no token at --position %lld and are left out\n",
                  static_cast<long long>(r.position_missing), static_cast<long long>(a->position));
    }
    std::fflush(stdout);  // the summary line before the warnings about it
    if (r.split_by == "example" && r.test_examples < 5) {
      std::fprintf(stderr, "mechlab: warning: only %lld test prompts: the intervals resample them and say little; "
                   "use more prompts or a larger --test-fraction\n", static_cast<long long>(r.test_examples));
    }
    if (r.control_classes < 2) {
      std::fprintf(stderr, "mechlab: warning: the probed tokens are all of one type, so the control task has one "
                   "label: control accuracy is 1 and selectivity says nothing here\n");
    }
    int w = 36;  // the hook column: as wide as the longest name
    for (const std::string& n : r.names) w = std::max(w, static_cast<int>(printable(n).size()));
    std::printf("  %-*s %-24s %-8s %-27s %s\n", w, "hook", str_cat("accuracy [", pct, "% CI]").c_str(), "control",
                str_cat("selectivity [", pct, "% CI]").c_str(),
                str_cat(r.num_classes > 2 ? "AUROC one-vs-rest [" : "AUROC [", pct, "% CI]").c_str());
    for (size_t i = 0; i < r.names.size(); ++i) {
      const int64_t p = static_cast<int64_t>(i);
      std::printf("  %-*s %.3f [%.3f, %.3f]     %.3f    %6.3f [%6.3f, %6.3f]    %.3f [%.3f, %.3f]\n", w,
                  printable(r.names[i]).c_str(), r.accuracy[p].item<double>(), r.accuracy_ci.lower[p].item<double>(),
                  r.accuracy_ci.upper[p].item<double>(), r.control_accuracy[p].item<double>(),
                  r.selectivity[p].item<double>(), r.selectivity_ci.lower[p].item<double>(),
                  r.selectivity_ci.upper[p].item<double>(), r.auroc[p].item<double>(),
                  r.auroc_ci.lower[p].item<double>(), r.auroc_ci.upper[p].item<double>());
    }
    const int64_t skipped = a->resamples - r.auroc_ci.defined.min().item<int64_t>();
    if (std::isnan(r.auroc.sum().item<double>())) {
      std::printf("AUROC is nan: the test tokens lack a class (one-vs-rest needs every class); use more examples\n");
    } else if (skipped > 0) {
      std::printf("AUROC intervals leave out up to %lld resamples that lack a class\n", static_cast<long long>(skipped));
    }
    // As scikit-learn's ConvergenceWarning: a probe stopped by --max-iter
    // (or a failed line search) is not the minimiser its options define, and
    // its scores can move with anything that moves its path.
    auto warn_unconverged = [&](const probes::LinearProbes& p, const char* which) {
      for (size_t i = 0; i < r.names.size(); ++i) {
        const int64_t k = static_cast<int64_t>(i);
        if (p.converged[k].item<bool>()) continue;
        if (p.solver == probes::Solver::adam) {
          std::fprintf(stderr, "mechlab: warning: the %s of %s was still improving on its validation rows "
                       "after %lld epochs (best at epoch %lld); raise --epochs\n",
                       which, printable(r.names[i]).c_str(), static_cast<long long>(a->epochs),
                       static_cast<long long>(p.iterations[k].item<int64_t>()));
          continue;
        }
        const bool line_search =
            p.stop_reason[k].item<int64_t>() == static_cast<int64_t>(probes::StopReason::line_search);
        std::fprintf(stderr, "mechlab: warning: the %s of %s did not converge (%s after %lld iterations); %s\n",
                     which, printable(r.names[i]).c_str(),
                     line_search ? "its line search failed" : "stopped by --max-iter",
                     static_cast<long long>(p.iterations[k].item<int64_t>()),
                     line_search ? "its fit is where the loss stopped decreasing in float precision"
                                 : "raise --max-iter");
      }
    };
    warn_unconverged(r.probes, "probe");
    warn_unconverged(r.control_probes, "control probe");
    if (r.ablated_loss.defined()) {
      std::printf("next-token loss on up to %lld prompts: %.4f without ablation; with each probe's direction%s "
                  "ablated at every position:\n",
                  static_cast<long long>(a->ablate_examples), r.clean_loss, r.num_classes > 2 ? "s" : "");
      for (size_t i = 0; i < r.names.size(); ++i) {
        const int64_t p = static_cast<int64_t>(i);
        const double l = r.ablated_loss[p].item<double>();
        const double change = std::fabs(l - r.clean_loss) < 5e-5 ? 0.0 : l - r.clean_loss;  // no "-0.0000"
        std::printf("  %-*s %.4f (%+.4f), %lld dimension%s\n", w, printable(r.names[i]).c_str(), l, change,
                    static_cast<long long>(r.ablated_dims[p].item<int64_t>()),
                    r.ablated_dims[p].item<int64_t>() == 1 ? "" : "s");
      }
    }
    std::printf("wrote %s and %s\n", printable(probes::probe_results_path(a->out)).c_str(),
                printable(probes::probe_plot_path(a->out)).c_str());
  });
}

}  // namespace mechlab::cli
