#include "probes/probe_run.h"

#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "core/formats/output_file.h"
#include "core/formats/text_file.h"
#include "core/model/hook_site.h"
#include "core/plot/grid_chart.h"
#include "core/plot/line_chart.h"
#include "core/store/activation_store.h"
#include "core/util/error.h"
#include "hooks/activation_capture.h"
#include "hooks/hooked_transformer.h"
#include "hooks/names_filter.h"
#include "probes/intervention.h"
#include "probes/metrics.h"
#include "probes/probe_data.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <functional>
#include <numeric>
#include <optional>
#include <regex>
#include <set>
#include <tuple>

namespace mechlab::probes {

const char* probe_label_names() { return "labels, repeated"; }

double hook_depth(const std::string& hook) {
  static const std::regex block("blocks\\.([0-9]+)\\.(.*)");
  std::smatch m;
  if (std::regex_match(hook, m, block)) {
    const double layer = std::stod(m[1]);
    const std::string rest = m[2];
    if (rest.rfind("hook_resid_pre", 0) == 0) return layer;
    if (rest.rfind("hook_resid_post", 0) == 0) return layer + 1;
    return layer + 0.5;
  }
  if (hook.rfind("ln_final", 0) == 0) return 1e6;  // placed after the last layer below
  return 0;  // hook_embed, hook_pos_embed: the stream's start
}

at::Tensor token_labels(const std::string& label, const at::Tensor& prompts, const at::Tensor& dataset_labels,
                        const std::string& where, const at::Tensor& attention_mask) {
  const int64_t N = prompts.size(0), T = prompts.size(1);
  if (label == "labels") {
    MECHLAB_CHECK(dataset_labels.defined(), "dataset ", where,
                  " has no /labels; give a dataset with labels per token or per example, or use "
                  "`ProbeRunOptions::label` repeated");
    // load_dataset has checked N (and T) against the prompts.
    if (dataset_labels.dim() == 1) return dataset_labels.to(at::kLong).unsqueeze(1).expand({N, T}).contiguous();
    return dataset_labels.to(at::kLong).contiguous();
  }
  if (label == "repeated") {
    // repeated[n, t] = exists real s < t with prompts[n, s] == prompts[n, t].
    // In chunks of examples: the comparison is [chunk, T, T].
    MECHLAB_CHECK(!attention_mask.defined() || attention_mask.sizes() == prompts.sizes(), "dataset ", where,
                  ": attention mask ", attention_mask.sizes(), " does not match the prompts ", prompts.sizes());
    const at::Tensor real = attention_mask.defined() ? attention_mask.ne(0) : at::ones({N, T}, at::kBool);
    const at::Tensor earlier = at::ones({T, T}, at::kBool).tril(-1);  // [t, s], s < t
    std::vector<at::Tensor> parts;
    const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 24) / std::max<int64_t>(1, T * T));
    for (int64_t e0 = 0; e0 < N; e0 += chunk) {
      const int64_t e1 = std::min(N, e0 + chunk);
      const at::Tensor p = prompts.slice(0, e0, e1).to(at::kLong);                     // [c, T]
      const at::Tensor s_real = real.slice(0, e0, e1).unsqueeze(1);                    // [c, 1, s]
      const at::Tensor same = p.unsqueeze(2).eq(p.unsqueeze(1)).logical_and(s_real);  // [c, t, s]
      parts.push_back(same.logical_and(earlier).any(2).to(at::kLong));                 // [c, T]
    }
    at::Tensor out = at::cat(parts, 0);
    // The first real token has nothing before it: its 0 is known without
    // looking at the activations (BOS, at the same position in every
    // prompt), so it is no data, as the probe task's seen_before marks it.
    const at::Tensor first_real = real.to(at::kLong).cumsum(1).eq(1).logical_and(real);  // [N, T]
    return out.masked_fill(first_real, -1);
  }
  throw Error(str_cat("unknown probe label '", label, "'; use one of: ", probe_label_names()));
}

namespace {

// A probe's name -> (its hook, its head): "<hook> head h" (split_heads) or
// a hook (head -1).
std::pair<std::string, int64_t> probe_site(const std::string& name) {
  static const std::regex per_head("(.*) head ([0-9]+)");
  std::smatch m;
  if (std::regex_match(name, m, per_head)) return {m[1], std::stoll(m[2])};
  return {name, -1};
}

// (stage, layer, site) of a hook in forward order: the embeddings, then each
// block's sites in the order of core's site table (resid_pre ... resid_post),
// then ln_final. A name the table does not know (an attached module's point)
// sorts after its block's known sites.
std::tuple<int, int64_t, int> forward_position(const std::string& hook) {
  static const std::regex block("blocks\\.([0-9]+)\\.(.*)");
  std::smatch m;
  const auto& table = core::site_table();
  if (std::regex_match(hook, m, block)) {
    const std::string rest = m[2];
    int site = static_cast<int>(table.size());
    for (const core::SiteInfo& info : table) {
      if (info.stage == core::SiteStage::block && rest == info.suffix) site = static_cast<int>(info.kind);
    }
    return {1, std::stoll(m[1]), site};
  }
  for (const core::SiteInfo& info : table) {
    if (hook == info.suffix) return {info.stage == core::SiteStage::output ? 2 : 0, 0, static_cast<int>(info.kind)};
  }
  return {hook.rfind("ln_final", 0) == 0 ? 2 : 0, 0, static_cast<int>(table.size())};
}

// Features [P, R, D], the label [R], the token id [R] and the example [R]
// of each row, rows in example order, positions ascending. With
// `position`, the rows are cut to that position where they are read (a
// model's forwards keep only those rows of the cache), and `examples_seen`
// counts the examples read before the cut.
struct Rows {
  ProbeFeatures f;
  at::Tensor labels, token_ids, examples;
  int64_t examples_seen = 0;
};

// A store is read with the dataset it was cached from, else its rows are
// paired with another dataset's labels: by the fingerprint its job records,
// else (older stores) by its /token_ids against the dataset's tokens at the
// rows' (example, position).
void check_store_dataset(const core::ActivationStore& store, const std::string& path, const core::Dataset& ds,
                         const std::string& dataset, const at::Tensor& src) {
  const auto job = nlohmann::json::parse(store.header().job, nullptr, /*allow_exceptions=*/false);
  if (job.is_object() && job.contains("dataset_fingerprint") && job["dataset_fingerprint"].is_string()) {
    const std::string recorded = job["dataset_fingerprint"].get<std::string>();
    const std::string given = hooks::dataset_fingerprint(ds);
    const std::string from =
        job.contains("dataset") && job["dataset"].is_string() ? job["dataset"].get<std::string>() : "another dataset";
    MECHLAB_CHECK(recorded == given, "activation store ", path, " was cached from ", from, " (dataset fingerprint ",
                  recorded, "), not from ", dataset, " (", given,
                  "); give the dataset the store was cached from, or cache this one");
    return;
  }
  const int64_t max_ex = src.select(1, 0).max().item<int64_t>(), max_pos = src.select(1, 1).max().item<int64_t>();
  MECHLAB_CHECK(max_ex < ds.size() && max_pos < ds.seq_len(), "activation store ", path, " has rows of example ",
                max_ex, " position ", max_pos, " but dataset ", dataset, " has ", ds.size(), " examples of ",
                ds.seq_len(), " tokens; give the dataset the store was cached from");
  const at::Tensor flat = src.select(1, 0) * ds.seq_len() + src.select(1, 1);
  const at::Tensor want = ds.prompts().to(at::kLong).reshape({-1}).index_select(0, flat);
  const at::Tensor have = store.token_ids(0, store.num_rows()).to(at::kLong);
  const at::Tensor differ = have.ne(want).nonzero();
  MECHLAB_CHECK(differ.numel() == 0, "activation store ", path, " holds other tokens than dataset ", dataset,
                " (first at row ", differ.numel() ? differ[0][0].item<int64_t>() : 0,
                "); give the dataset the store was cached from, or cache this one");
}

std::vector<std::string> store_hooks(const core::ActivationStore& store, const std::vector<std::string>& patterns) {
  std::vector<std::string> out;
  for (const std::string& p : patterns) {
    bool any = false;
    for (const std::string& h : store.hooks()) {
      if (!hooks::glob_match(p, h)) continue;
      any = true;
      if (std::find(out.begin(), out.end(), h) == out.end()) out.push_back(h);
    }
    std::string held;
    for (const std::string& h : store.hooks()) held += (held.empty() ? "" : ", ") + h;
    MECHLAB_CHECK(any, "hook '", p, "' is not in the activation store ", store.path(), ", which holds ", held,
                  "; probe one of those or cache the hook first");
  }
  return out;
}

Rows rows_from_store(const std::string& path, const core::Dataset& ds, const at::Tensor& labels,
                     const std::string& dataset, const ProbeRunOptions& o) {
  const core::ActivationStore store = core::ActivationStore::open(path);
  const std::vector<std::string> names = store_hooks(store, o.hooks());
  const at::Tensor src = store.row_source(0, store.num_rows()).to(at::kLong);  // [R, 2] (example, position)
  const int64_t examples = o.max_examples() > 0 ? std::min(o.max_examples(), ds.size()) : ds.size();
  check_store_dataset(store, path, ds, dataset, src);
  at::Tensor keep = src.select(1, 0).lt(examples).nonzero().squeeze(1);  // [R'] rows of the first examples
  Rows r;
  r.examples_seen = std::get<0>(at::_unique(src.index_select(0, keep).select(1, 0))).numel();
  if (o.position()) keep = keep.index_select(0, rows_at_position(src.index_select(0, keep), *o.position()));
  r.f = features_from_store(store, names, 0, -1, FeatureOptions().split_heads(o.split_heads()));  // [P, R, D]
  r.f.x = r.f.x.index_select(1, keep);
  const at::Tensor s = src.index_select(0, keep);
  const at::Tensor flat = s.select(1, 0) * ds.seq_len() + s.select(1, 1);  // [R'] index into [N * T]
  r.labels = labels.reshape({-1}).index_select(0, flat);
  r.token_ids = ds.prompts().to(at::kLong).reshape({-1}).index_select(0, flat);
  r.examples = s.select(1, 0).contiguous();
  return r;
}

Rows rows_from_model(hooks::HookedTransformer& model, const std::string& path, const core::Dataset& ds,
                     const at::Tensor& labels, const ProbeRunOptions& o) {
  ds.check_vocab(model.cfg().d_vocab, "the dataset");
  const std::vector<std::string> names = hooks::resolve_store_hooks(model, o.hooks());
  const std::set<std::string> wanted(names.begin(), names.end());
  const hooks::NamesFilter filter =
      hooks::NamesFilter::predicate([&wanted](const std::string& n) { return wanted.count(n) > 0; });
  const int64_t N = o.max_examples() > 0 ? std::min(o.max_examples(), ds.size()) : ds.size();
  const at::Tensor prompts = ds.prompts().to(at::kLong);  // [N, T]
  std::vector<at::Tensor> xs, ys, ids, exs;
  Rows r;
  r.examples_seen = N;
  for (int64_t e0 = 0; e0 < N; e0 += o.batch_size()) {
    const int64_t e1 = std::min(N, e0 + o.batch_size());
    const at::Tensor tokens = prompts.slice(0, e0, e1);  // [b, T]
    at::Tensor mask;                                     // [b, T] or undefined
    hooks::RunOptions run;
    run.cache_device(at::Device(at::kCPU));  // R rows of every hook add up; the fits take them to the device at once
    if (ds.attention_mask.defined()) {
      mask = ds.attention_mask.slice(0, e0, e1);
      run.attention_mask(mask);
    }
    at::NoGradGuard no_grad;
    auto [logits, cache] = model.run_with_cache(tokens, filter, run);
    // The rows to keep [b, T]: real tokens, and with `position` only the one
    // at P, or |P|-th from the end of the real tokens (as rows_at_position).
    at::Tensor keep = mask.defined() ? mask.to(at::kBool) : at::ones(tokens.sizes(), at::kBool);
    if (o.position()) {
      const int64_t p = *o.position();
      const at::Tensor at_p = p >= 0 ? at::arange(tokens.size(1), at::kLong).eq(p).unsqueeze(0).expand(tokens.sizes())
                                     : keep.flip(1).to(at::kLong).cumsum(1).flip(1).eq(-p);  // real tokens from t on
      keep = keep.logical_and(at_p);
    }
    ProbeFeatures f = features_from_cache(cache, names, keep, FeatureOptions().split_heads(o.split_heads()));
    MECHLAB_CHECK(at::isfinite(f.x).all().item<bool>(), "model ", path, " gives NaN or inf activations at ",
                  "one of the hooks for examples ", e0, " to ", e1 - 1, "; check the model's weights");
    const at::Tensor m = keep.reshape({-1});
    xs.push_back(f.x);
    ys.push_back(labels.slice(0, e0, e1).reshape({-1}).masked_select(m));
    ids.push_back(tokens.reshape({-1}).masked_select(m));
    exs.push_back(at::arange(e0, e1, at::kLong).unsqueeze(1).expand(tokens.sizes()).reshape({-1}).masked_select(m));
    r.f.names = f.names;
  }
  r.f.x = at::cat(xs, 1);  // [P, R, D]
  r.labels = at::cat(ys);
  r.token_ids = at::cat(ids);
  r.examples = at::cat(exs);
  return r;
}

// Accuracy of predictions [P, n] against labels [n] on the rows `rows`.
at::Tensor accuracy_on(const at::Tensor& pred, const at::Tensor& y, const at::Tensor& rows) {
  return accuracy(pred.index_select(1, rows), y.index_select(0, rows));
}

}  // namespace

void check_probe_run_options(const ProbeRunOptions& o) {
  MECHLAB_CHECK(!o.hooks().empty(), "no hooks to probe; give `ProbeRunOptions::hooks` (names or globs)");
  MECHLAB_CHECK(o.test_fraction() > 0 && o.test_fraction() < 1,
                "`ProbeRunOptions::test_fraction` must be in (0, 1), exclusive, got ", o.test_fraction());
  MECHLAB_CHECK(o.confidence() > 0 && o.confidence() < 1,
                "`ProbeRunOptions::confidence` must be in (0, 1), exclusive, got ", o.confidence());
  MECHLAB_CHECK(o.split_by() == "example" || o.split_by() == "token",
                "`ProbeRunOptions::split_by` must be example or token, got '", o.split_by(), "'");
  MECHLAB_CHECK(o.resamples() >= 2, "`ProbeRunOptions::resamples` must be >= 2 (a percentile interval needs "
                "resamples), got ", o.resamples());
  MECHLAB_CHECK(o.batch_size() >= 1, "`ProbeRunOptions::batch_size` must be >= 1, got ", o.batch_size());
  MECHLAB_CHECK(o.max_examples() >= 0, "`ProbeRunOptions::max_examples` must be >= 0 (0: all), got ",
                o.max_examples());
  MECHLAB_CHECK(o.ablate_examples() >= 1, "`ProbeRunOptions::ablate_examples` must be >= 1, got ", o.ablate_examples());
  MECHLAB_CHECK(o.probe().C() > 0, "`ProbeOptions::C` must be > 0, got ", o.probe().C());
  MECHLAB_CHECK(o.probe().max_iter() >= 1, "`ProbeOptions::max_iter` must be >= 1, got ", o.probe().max_iter());
  MECHLAB_CHECK(o.probe().tol() >= 0, "`ProbeOptions::tol` must be >= 0, got ", o.probe().tol());
  MECHLAB_CHECK(o.probe().epochs() >= 1, "`ProbeOptions::epochs` must be >= 1, got ", o.probe().epochs());
  // The run's probes are logistic: refused here, before the forwards, not by the fit.
  MECHLAB_CHECK(o.probe().solver() != Solver::exact, "`ProbeOptions::solver` exact solves ridge and least squares "
                "only; a logistic probe takes auto, lbfgs, fista or adam");
  MECHLAB_CHECK(o.probe().solver() != Solver::lbfgs || o.probe().penalty() != Penalty::l1,
                "`ProbeOptions::solver` lbfgs cannot minimise the l1 `ProbeOptions::penalty` (it is not "
                "differentiable); use fista or adam");
  MECHLAB_CHECK(o.device().is_cpu() || (o.device().is_cuda() && at::hasCUDA()), "`ProbeRunOptions::device` is ",
                o.device(), ", but ", o.device().is_cuda() ? "no CUDA GPU is available here" : "only cpu and cuda run",
                "; use cpu");
}

ProbeRunResult run_probes(const std::string& source, const std::string& dataset, const ProbeRunOptions& o) {
  check_probe_run_options(o);
  const core::Dataset ds = core::load_dataset(dataset);
  MECHLAB_CHECK(ds.prompts().defined(), "dataset ", dataset, " holds no prompts; make one with `mechlab dataset make`");
  at::Tensor labels = token_labels(o.label(), ds.prompts(), ds.labels, dataset, ds.attention_mask);  // [N, T]
  if (ds.attention_mask.defined()) labels = labels.masked_fill(ds.attention_mask.eq(0), -1);
  // " at `ProbeRunOptions::position` P" for messages about the rows.
  const std::string at_position =
      o.position() ? str_cat(" at `ProbeRunOptions::position` ", *o.position()) : std::string();
  MECHLAB_CHECK(!o.position() || (*o.position() < ds.seq_len() && *o.position() >= -ds.seq_len()), "no prompt of ",
                dataset, " has a token", at_position, " (", ds.seq_len(), " positions); give a position inside "
                "the prompts");

  ProbeRunResult r;
  r.source = source;
  r.dataset = dataset;
  r.label = o.label();
  r.split_by = o.split_by();
  r.from_store = core::mechlab_format_of(source) == core::kActivationsFormat ||
                 (source.size() > 5 && source.compare(source.size() - 5, 5, ".json") == 0);
  MECHLAB_CHECK(!o.ablate() || !r.from_store, "`ProbeRunOptions::ablate` needs a model to run, but ", source,
                " is an activation store; give the model it was cached from");
  MECHLAB_CHECK(o.attach().empty() || !r.from_store, "`ProbeRunOptions::attach` needs a model to run, but ", source,
                " is an activation store; give the model it was cached from");
  std::optional<hooks::HookedTransformer> model;
  if (!r.from_store) {
    model.emplace(hooks::HookedTransformer::from_pretrained(source, hooks::PretrainedOptions().device(o.device())));
    for (const ProbeAttachment& a : o.attach()) {
      MECHLAB_CHECK(a.module != nullptr, "`ProbeRunOptions::attach` at ", a.host, " has no module");
      try {
        model->attach(a.host, a.module);
      } catch (const Error& e) {
        throw Error(str_cat("`ProbeRunOptions::attach` of ", a.source.empty() ? a.module->name() : a.source, " at ",
                            a.host, ": ", e.what()));
      }
    }
    // An intervention sits at one of the model's own hooks, not at an
    // attached module's point: refused before the forwards.
    if (o.ablate()) {
      for (const std::string& n : hooks::resolve_store_hooks(*model, o.hooks())) {
        core::HookSite site;
        MECHLAB_CHECK(core::parse_site(n, model->cfg().n_layers, &site), "`ProbeRunOptions::ablate` projects at ",
                      "the model's own hooks, but ", n, " is a point of an attached module; probe it without "
                      "ablation");
      }
    }
  }
  Rows rows = r.from_store ? rows_from_store(source, ds, labels, dataset, o)
                           : rows_from_model(*model, source, ds, labels, o);

  if (o.position()) {  // the rows were cut to one per example where they were read
    MECHLAB_CHECK(rows.examples.numel() > 0, "no prompt of ", dataset, " has a token", at_position, " (",
                  ds.seq_len(), " positions); give a position inside the prompts");
    r.position_missing = rows.examples_seen - rows.examples.numel();
  }
  // Rows without a label are no data.
  const at::Tensor labelled = rows.labels.ge(0).nonzero().squeeze(1);  // [R]
  const at::Tensor x = rows.f.x.index_select(1, labelled);             // [P, R, D]
  // scikit-learn's classes_: the labels present, in order; the probes
  // predict their index (labels 1 and 2 at a position are a binary probe).
  at::Tensor present, y;  // [K] the labels, [R] each row's index among them
  std::tie(present, y) = at::_unique(rows.labels.index_select(0, labelled), /*sorted=*/true, /*return_inverse=*/true);
  r.classes = present;
  const at::Tensor ids = rows.token_ids.index_select(0, labelled);     // [R]
  r.row_example = rows.examples.index_select(0, labelled);             // [R]
  r.rows = y.size(0);
  MECHLAB_CHECK(r.rows >= 10, "only ", r.rows, " rows of ", dataset, " carry label '", o.label(), "'", at_position,
                "; probing needs at least 10 (",
                o.position() ? "choose a position where the label is defined, or use more examples"
                             : "use more examples", ")");
  MECHLAB_CHECK(present.numel() >= 2, "label '", o.label(), "' has one class only", at_position, " (every row of ",
                dataset, " is ", present[0].item<int64_t>(), "); a probe needs at least two classes");

  // Order the probes as the forward computes them (a store lists its hooks
  // as cached, a glob as matched): by layer, then by site within the layer.
  std::vector<int64_t> order(rows.f.names.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const auto [hook_a, head_a] = probe_site(rows.f.names[static_cast<size_t>(a)]);
    const auto [hook_b, head_b] = probe_site(rows.f.names[static_cast<size_t>(b)]);
    return std::make_pair(forward_position(hook_a), head_a) < std::make_pair(forward_position(hook_b), head_b);
  });
  const at::Tensor xo = x.index_select(0, at::tensor(order, at::kLong));  // [P, R, D]
  for (int64_t i : order) {
    const std::string& n = rows.f.names[static_cast<size_t>(i)];
    const auto [hook, head] = probe_site(n);
    r.names.push_back(n);
    r.hooks.push_back(hook);
    r.heads.push_back(head);
    const double d = hook_depth(hook);
    r.depth.push_back(d >= 1e6 ? -1 : d);  // ln_final: placed below
  }
  const double last = *std::max_element(r.depth.begin(), r.depth.end());
  for (double& d : r.depth) {
    if (d < 0) d = last + 0.5;
  }

  // By example (default): a prompt's tokens share its words, its label and
  // each other's context, so a token split scores probes on prompts they
  // were trained on (noise labels per prompt came out "significant"). As
  // scikit-learn's GroupShuffleSplit with groups = the example.
  const bool by_example = o.split_by() == "example";
  const int64_t n_examples = std::get<0>(at::_unique(r.row_example)).numel();
  MECHLAB_CHECK(!by_example || n_examples >= 2, "the labelled rows of ", dataset, " come from ", n_examples,
                " example; a split by example needs at least 2 (use more examples)");
  const SplitOptions so = SplitOptions().test_fraction(o.test_fraction()).seed(o.seed());
  r.split = by_example ? group_split(r.row_example, so) : random_split(r.rows, so);
  const Split& split = r.split;
  r.train_rows = split.train.size(0);
  r.test_rows = split.test.size(0);
  r.train_examples = std::get<0>(at::_unique(r.row_example.index_select(0, split.train))).numel();
  r.test_examples = std::get<0>(at::_unique(r.row_example.index_select(0, split.test))).numel();
  MECHLAB_CHECK(r.test_rows >= 1 && r.train_rows >= 2, "`ProbeRunOptions::test_fraction` ", o.test_fraction(), " leaves ",
                r.train_rows, " train and ", r.test_rows, " test rows of ", r.rows, "; use more examples");
  const at::Tensor y_train = y.index_select(0, split.train);
  MECHLAB_CHECK(at::bincount(y_train).gt(0).sum().item<int64_t>() >= 2, "the train rows of label '", o.label(),
                "' hold one class only; use more examples or another `ProbeRunOptions::seed`");
  r.num_classes = present.numel();
  const ProbeOptions po = ProbeOptions(o.probe()).num_classes(r.num_classes);
  // The fits and the predictions on `device`; the rest (small) on the CPU.
  const at::Device cpu(at::kCPU), dev = o.device();
  const at::Tensor x_dev = xo.to(dev);                               // [P, R, D]
  const at::Tensor x_train = x_dev.index_select(1, split.train.to(dev));  // [P, n_train, D]
  const LinearProbes probes = fit_logistic(x_train, y_train.to(dev), po);
  const at::Tensor pred = probes.predict(x_dev).to(cpu);  // [P, R]
  // What AUROC ranks: binary, the logit [P, R]; K classes, the log-probabilities [P, R, K].
  const at::Tensor auc_scores = auroc_scores(probes.decision_function(x_dev)).to(cpu);
  r.probes = probes.to(cpu);

  // Hewitt & Liang's control task: token identity -> a random label.
  const at::Tensor control = control_labels(ids, y, o.seed());  // [R]
  r.control_classes = std::get<0>(at::_unique(control.index_select(0, split.train))).numel();
  const LinearProbes control_probes = fit_logistic(x_train, control.index_select(0, split.train).to(dev), po);
  const at::Tensor cpred = control_probes.predict(x_dev).to(cpu);  // [P, R]
  r.control_probes = control_probes.to(cpu);

  const at::Tensor test = split.test;
  r.accuracy = accuracy_on(pred, y, test);
  r.control_accuracy = accuracy_on(cpred, control, test);
  r.selectivity = selectivity(r.accuracy, r.control_accuracy);
  // scikit-learn's DummyClassifier(strategy="most_frequent"): the train
  // rows' most frequent class, scored on the test rows (ties: the lowest).
  const at::Tensor train_majority = at::bincount(y_train, {}, r.num_classes).argmax();
  r.majority = y.index_select(0, test).eq(train_majority).to(at::kDouble).mean();
  // Resamples of the test rows: whole examples (cluster bootstrap) or rows;
  // the same resamples for every metric (one seed).
  const BootstrapOptions bo = BootstrapOptions().resamples(o.resamples()).confidence(o.confidence()).seed(o.seed());
  const at::Tensor test_example = r.row_example.index_select(0, test);  // [n_test]
  auto interval = [&](const std::function<at::Tensor(const at::Tensor&)>& metric) {
    return by_example ? cluster_bootstrap_ci(metric, test_example, bo) : bootstrap_ci(metric, r.test_rows, bo);
  };
  r.accuracy_ci = interval([&](const at::Tensor& b) { return accuracy_on(pred, y, test.index_select(0, b)); });
  r.selectivity_ci = interval([&](const at::Tensor& b) {
    const at::Tensor rows_b = test.index_select(0, b);
    return accuracy_on(pred, y, rows_b) - accuracy_on(cpred, control, rows_b);
  });
  // AUROC on the test rows (binary: the logit; more classes: one-vs-rest
  // macro of the log-probabilities), with the same resamples. NaN where the
  // test rows lack a class; resamples that lack one are left out.
  const ResampledAuroc auc(auc_scores.index_select(1, test), y.index_select(0, test));
  r.auroc_ci = interval([&](const at::Tensor& b) { return auc(b); });
  r.auroc = r.auroc_ci.estimate;

  if (o.ablate()) {
    const int64_t n = std::min({o.ablate_examples(), ds.size(), o.max_examples() > 0 ? o.max_examples() : ds.size()});
    const at::Tensor tokens = ds.prompts().slice(0, 0, n).to(at::kLong);  // [n, T]
    const at::Tensor mask =
        ds.attention_mask.defined() ? ds.attention_mask.slice(0, 0, n) : at::Tensor();  // [n, T] or undefined
    const LogitsMetric loss = [&](const at::Tensor& logits) { return core::mean_loss(logits, tokens, mask); };
    std::vector<double> ablated;
    std::vector<int64_t> dims;
    for (size_t p = 0; p < r.names.size(); ++p) {
      // The directions the probe reads on raw features: binary, its weight
      // vector; K classes, the span of w_k - w_0 (rank <= K - 1).
      const at::Tensor w = probe_directions(r.probes, static_cast<int64_t>(p));  // [D, r]
      const auto module = std::make_shared<ProbeIntervention>(w, InterventionMode::ablate, 0.0, r.heads[p]);
      const InterventionEffect e = intervention_effect(*model, r.hooks[p], module, tokens, loss, mask);
      r.clean_loss = e.baseline;
      ablated.push_back(e.intervened);
      dims.push_back(module->rank());
    }
    r.ablated_loss = at::tensor(ablated, at::kDouble);
    r.ablated_dims = at::tensor(dims, at::kLong);
  }

  nlohmann::json c;
  c["hooks"] = o.hooks();
  c["split_heads"] = o.split_heads();
  c["label"] = o.label();
  c["position"] = o.position() ? nlohmann::json(*o.position()) : nlohmann::json();
  c["test_fraction"] = o.test_fraction();
  c["split_by"] = o.split_by();
  c["seed"] = o.seed();
  c["C"] = o.probe().C();
  c["penalty"] = to_string(o.probe().penalty());
  c["solver"] = to_string(o.probe().solver());
  c["max_iter"] = o.probe().max_iter();
  c["tol"] = o.probe().tol();
  if (o.probe().solver() == Solver::adam) c["epochs"] = o.probe().epochs();
  c["standardize"] = o.probe().standardize();
  c["resamples"] = o.resamples();
  c["confidence"] = o.confidence();
  c["batch_size"] = o.batch_size();
  c["max_examples"] = o.max_examples();
  c["ablate"] = o.ablate();
  c["ablate_examples"] = o.ablate_examples();
  c["attach"] = nlohmann::json::array();
  for (const ProbeAttachment& a : o.attach()) {
    c["attach"].push_back({{"host", a.host}, {"module", a.module ? a.module->name() : ""}, {"source", a.source}});
  }
  c["device"] = o.device().str();
  r.config = c.dump();
  return r;
}

std::string probe_results_path(const std::string& out) { return (std::filesystem::path(out) / "probes.h5").string(); }
std::string probe_plot_path(const std::string& out) { return (std::filesystem::path(out) / "probes.svg").string(); }

namespace {

std::vector<double> values(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// The kind of a hook: its name without "blocks.L." ("hook_resid_post",
// "attn.hook_z"), so that each kind is one line across layers; hooks that
// share a depth (resid_pre L and attn_out L-1's neighbours) are then points
// of different lines, not a sawtooth of one.
std::string hook_kind(const std::string& hook) {
  static const std::regex block("blocks\\.[0-9]+\\.(.*)");
  std::smatch m;
  return std::regex_match(hook, m, block) ? std::string(m[1]) : hook;
}

std::string probe_title(const ProbeRunResult& r) {
  const nlohmann::json position = nlohmann::json::parse(r.config).value("position", nlohmann::json());
  return "probes for '" + r.label + "'" + (position.is_number() ? " at position " + position.dump() : "") + " (" +
         std::to_string(r.test_rows) + " test rows of " + std::to_string(r.test_examples) + " prompts)";
}

int confidence_percent(const ProbeRunResult& r) {
  return static_cast<int>(std::lround(nlohmann::json::parse(r.config).value("confidence", 0.95) * 100));
}

// split_heads: one row per hook, one column per head (a line per head
// would be a tangle of 12 lines per kind on GPT-2).
std::string heads_svg(const ProbeRunResult& r) {
  using core::plot::GridPanel;
  std::vector<std::string> rows;  // the hooks, in forward order
  int64_t n_heads = 0;
  for (size_t p = 0; p < r.hooks.size(); ++p) {
    if (std::find(rows.begin(), rows.end(), r.hooks[p]) == rows.end()) rows.push_back(r.hooks[p]);
    n_heads = std::max(n_heads, r.heads[p] + 1);
  }
  std::vector<std::string> columns;
  for (int64_t h = 0; h < n_heads; ++h) columns.push_back(std::to_string(h));
  const size_t cells = rows.size() * columns.size();
  auto cell = [&](size_t p) {
    const size_t row = static_cast<size_t>(std::find(rows.begin(), rows.end(), r.hooks[p]) - rows.begin());
    return row * columns.size() + static_cast<size_t>(r.heads[p]);
  };
  const std::string pct = std::to_string(confidence_percent(r)) + "% CI";
  // A panel of the metric `v` [P], with its interval in the tooltips.
  auto panel = [&](const std::string& title, const at::Tensor& v, const BootstrapInterval* ci) {
    GridPanel g{title, rows, columns, std::vector<double>(cells, NAN), std::vector<std::string>(cells)};
    const std::vector<double> all = values(v);
    const std::vector<double> lo = ci ? values(ci->lower) : std::vector<double>();
    const std::vector<double> hi = ci ? values(ci->upper) : std::vector<double>();
    for (size_t p = 0; p < r.names.size(); ++p) {
      g.values[cell(p)] = all[p];
      char tip[160];
      if (ci) {
        std::snprintf(tip, sizeof tip, "%s: %s %.3f [%.3f, %.3f] (%s)", r.names[p].c_str(), title.c_str(), all[p],
                      lo[p], hi[p], pct.c_str());
      } else {
        std::snprintf(tip, sizeof tip, "%s: %s %.4g", r.names[p].c_str(), title.c_str(), all[p]);
      }
      g.tips[cell(p)] = tip;
    }
    return g;
  };
  // Accuracies share a scale from the lowest (or the majority rate) to 1;
  // differences are centred on 0.
  const double majority = r.majority.item<double>();
  const double low = std::min({majority, r.accuracy.min().item<double>(), r.control_accuracy.min().item<double>()});
  auto symmetric = [](GridPanel& g) {
    double m = 0;
    for (double v : g.values) {
      if (std::isfinite(v)) m = std::max(m, std::fabs(v));
    }
    g.lo = -std::max(m, 1e-9), g.hi = std::max(m, 1e-9), g.diverging = true;
  };
  char majority_text[64];
  std::snprintf(majority_text, sizeof majority_text, " (majority class %.3f)", majority);
  std::vector<GridPanel> panels = {panel("accuracy", r.accuracy, &r.accuracy_ci),
                                   panel("control accuracy", r.control_accuracy, nullptr),
                                   panel("selectivity", r.selectivity, &r.selectivity_ci)};
  panels[0].title += majority_text;
  for (int k = 0; k < 2; ++k) panels[static_cast<size_t>(k)].lo = low, panels[static_cast<size_t>(k)].hi = 1;
  symmetric(panels[2]);
  if (r.ablated_loss.defined()) {
    char title[96];
    std::snprintf(title, sizeof title, "next-token loss change, ablated (not ablated: %.4f)", r.clean_loss);
    panels.push_back(panel(title, r.ablated_loss - r.clean_loss, nullptr));
    panels.back().format = "%+.3f";
    symmetric(panels.back());
  }
  return core::plot::grid_chart_svg(probe_title(r), "head", panels);
}

std::string probe_svg(const ProbeRunResult& r) {
  if (std::any_of(r.heads.begin(), r.heads.end(), [](int64_t h) { return h >= 0; })) return heads_svg(r);
  using core::plot::Panel;
  using core::plot::Series;
  std::vector<std::string> kinds;  // in the probes' (forward) order
  for (const std::string& n : r.names) {
    if (std::find(kinds.begin(), kinds.end(), hook_kind(n)) == kinds.end()) kinds.push_back(hook_kind(n));
  }
  // One series per kind of the metric `v`, with its interval as a band.
  auto per_kind = [&](const std::string& prefix, const at::Tensor& v, const BootstrapInterval* ci, bool dashed,
                      bool listed) {
    std::vector<Series> out;
    const std::vector<double> all = values(v);
    const std::vector<double> lo = ci ? values(ci->lower) : std::vector<double>();
    const std::vector<double> hi = ci ? values(ci->upper) : std::vector<double>();
    for (size_t k = 0; k < kinds.size(); ++k) {
      // The legend is 150 px wide: "ln1.normalized", not "ln1.hook_normalized".
      std::string label = kinds[k];
      for (size_t at = label.find("hook_"); at != std::string::npos; at = label.find("hook_")) label.erase(at, 5);
      Series s{listed ? prefix + label : "", {}, {}};
      for (size_t p = 0; p < r.names.size(); ++p) {
        if (hook_kind(r.names[p]) != kinds[k]) continue;
        s.x.push_back(r.depth[p]);
        s.y.push_back(all[p]);
        if (ci) {
          s.lower.push_back(lo[p]);
          s.upper.push_back(hi[p]);
        }
      }
      s.markers = true;
      s.dashed = dashed;
      s.colour = static_cast<int>(k % static_cast<size_t>(core::plot::kGrey));
      out.push_back(std::move(s));
    }
    return out;
  };
  auto append = [](std::vector<Series>& to, std::vector<Series> more) {
    for (Series& s : more) to.push_back(std::move(s));
  };
  const int pct = confidence_percent(r);
  const std::vector<double>& x = r.depth;
  std::vector<Series> acc = per_kind("", r.accuracy, &r.accuracy_ci, false, true);
  append(acc, per_kind("", r.control_accuracy, nullptr, true, false));
  Series control_key{"control (dashed)", {}, {}};
  control_key.dashed = true;
  control_key.colour = core::plot::kGrey;
  acc.push_back(control_key);
  Series chance{"majority class", x, std::vector<double>(x.size(), r.majority.item<double>())};
  chance.colour = core::plot::kGrey;
  acc.push_back(chance);
  Panel acc_panel{"accuracy, shaded " + std::to_string(pct) + "% CI", false, acc, std::make_pair(0.0, 1.0)};
  Panel sel{"selectivity, shaded " + std::to_string(pct) + "% CI", false,
            per_kind("", r.selectivity, &r.selectivity_ci, false, true), std::nullopt};
  std::vector<Panel> panels = {acc_panel, sel};
  if (r.ablated_loss.defined()) {
    std::vector<Series> loss = per_kind("", r.ablated_loss, nullptr, false, true);
    Series clean{"not ablated", x, std::vector<double>(x.size(), r.clean_loss)};
    clean.colour = core::plot::kGrey;
    loss.push_back(clean);
    panels.push_back(Panel{"next-token loss, ablated", false, loss, std::nullopt});
  }
  return core::plot::line_chart_svg(probe_title(r), "depth (resid_pre L = L, resid_post L = L + 1)", panels);
}

void write_results_file(const std::string& h5, const ProbeRunResult& r) {
  core::H5File::write_atomically(h5, [&](core::H5File& f) {
    f.write_attr("", "mechlab_format", kProbesFormat);
    f.write_attr("", "mechlab_version", kProbesVersion);
    f.write_attr("", "source", r.source);
    f.write_attr("", "dataset", r.dataset);
    f.write_attr("", "label", r.label);
    f.write_attr("", "hooks", nlohmann::json(r.names).dump());
    f.write_attr("", "config", r.config);
    f.write_attr("", "rows", r.rows);
    f.write_attr("", "train_rows", r.train_rows);
    f.write_attr("", "test_rows", r.test_rows);
    f.write_attr("", "num_classes", r.num_classes);
    f.write_attr("", "train_examples", r.train_examples);
    f.write_attr("", "test_examples", r.test_examples);
    f.write_attr("", "split_by", r.split_by);
    f.write_attr("", "from_store", static_cast<int64_t>(r.from_store));
    f.write_tensor("depth", at::tensor(r.depth, at::kDouble));
    f.write_tensor("head", at::tensor(r.heads, at::kLong));
    f.write_tensor("classes", r.classes.contiguous());
    // The prompts with test rows (dataset indices; by example, the held-out
    // prompts), so that the split can be rebuilt.
    f.write_tensor("test_prompts", std::get<0>(at::_unique(r.row_example.index_select(0, r.split.test))).contiguous());
    const LinearProbes& p = r.probes;
    f.write_tensor("weight", p.weight.contiguous());
    f.write_tensor("bias", p.bias.contiguous());
    f.write_tensor("coef", p.coef.contiguous());
    f.write_tensor("intercept", p.intercept.contiguous());
    f.write_tensor("mean", p.mean.contiguous());
    f.write_tensor("scale", p.scale.contiguous());
    f.write_tensor("converged", p.converged.to(at::kByte).contiguous());
    f.write_tensor("iterations", p.iterations.contiguous());
    f.write_tensor("control_converged", r.control_probes.converged.to(at::kByte).contiguous());
    f.write_tensor("control_iterations", r.control_probes.iterations.contiguous());
    f.write_tensor("metrics/accuracy", r.accuracy.contiguous());
    f.write_tensor("metrics/control_accuracy", r.control_accuracy.contiguous());
    f.write_tensor("metrics/selectivity", r.selectivity.contiguous());
    f.write_tensor("metrics/accuracy_lower", r.accuracy_ci.lower.contiguous());
    f.write_tensor("metrics/accuracy_upper", r.accuracy_ci.upper.contiguous());
    f.write_tensor("metrics/selectivity_lower", r.selectivity_ci.lower.contiguous());
    f.write_tensor("metrics/selectivity_upper", r.selectivity_ci.upper.contiguous());
    f.write_tensor("metrics/majority", r.majority.contiguous());
    f.write_tensor("metrics/auroc", r.auroc.contiguous());
    f.write_tensor("metrics/auroc_lower", r.auroc_ci.lower.contiguous());
    f.write_tensor("metrics/auroc_upper", r.auroc_ci.upper.contiguous());
    f.write_tensor("metrics/auroc_resamples", r.auroc_ci.defined.contiguous());
    f.write_attr("", "auroc_average", r.num_classes > 2 ? "ovr-macro" : "binary");
    if (r.ablated_loss.defined()) {
      f.write_tensor("metrics/ablated_loss", r.ablated_loss.contiguous());
      f.write_tensor("metrics/ablated_dims", r.ablated_dims.contiguous());
      f.write_attr("", "clean_loss", r.clean_loss);
    }
  });
}

}  // namespace

void check_probe_output(const std::string& out, bool overwrite) {
  MECHLAB_CHECK(!out.empty(), "no output folder given; give `out`");
  MECHLAB_CHECK(!std::filesystem::exists(out) || std::filesystem::is_directory(out), "output folder ", out,
                " is a file; give a folder (it is created when missing)");
  core::require_replaceable(probe_results_path(out), kProbesFormat, overwrite, "`overwrite`");
  MECHLAB_CHECK(overwrite || !std::filesystem::exists(probe_plot_path(out)), probe_plot_path(out),
                " already exists; pass `overwrite` to replace it or choose another output folder");
}

void write_probe_results(const std::string& out, const ProbeRunResult& r, bool overwrite) {
  const std::string h5 = probe_results_path(out), svg = probe_plot_path(out);
  check_probe_output(out, overwrite);
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  MECHLAB_CHECK(!ec, "cannot create the output folder ", out, ": ", ec.message());
  // Both files or neither: the picture is written whole beside its target
  // first, then probes.h5 (atomically: a temporary renamed into place; its
  // presence means "done" to a job step), then the picture is renamed into
  // place. A failure before that leaves whatever was there as it was.
  const std::string staged = svg + ".new";
  core::write_text_file(staged, probe_svg(r));
  try {
    write_results_file(h5, r);
  } catch (...) {
    std::filesystem::remove(staged, ec);
    throw;
  }
  if (std::rename(staged.c_str(), svg.c_str()) != 0) {
    const int err = errno;
    std::filesystem::remove(staged, ec);
    throw Error(str_cat("cannot write ", svg, ": ", core::system_error_words(err)));
  }
}

}  // namespace mechlab::probes
