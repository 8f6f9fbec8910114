// The probing run's pieces (probes/probe_run.h): the "repeated" label
// against the probe task generator's own "seen_before" labels (an
// independent implementation in core/data), per-example labels, the depth
// axis, the refusals of bad labels and options before any work, a store
// read with another dataset refused, and the split by example (noise labels
// per prompt stay at chance); on a GPU, the CPU run's result.
#include "core/data/tasks/probe.h"
#include "core/data/tasks/tasks.h"
#include "core/formats/hdf5_file.h"
#include "hooks/activation_capture.h"
#include "hooks/hooked_transformer.h"
#include "probes/metrics.h"
#include "probes/probe_data.h"
#include "probes/probe_run.h"
#include "sae/registry.h"
#include "tests/test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

namespace mechlab::probes {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

TEST(ProbeRun, RepeatedLabelsEqualTheProbeTasksSeenBefore) {
  const core::Dataset ds = core::tasks::make_probe(core::tasks::ProbeOptions().n(50).seq_len(24).pool(6).seed(4));
  const at::Tensor mine = token_labels("repeated", ds.tokens, {}, "probe task");  // [N, T]
  ASSERT_EQ(mine.sizes(), ds.labels.sizes());
  // Equal everywhere, BOS too: the generator leaves it unlabelled (-1).
  EXPECT_TRUE(at::equal(mine, ds.labels));
  EXPECT_TRUE(at::all(ds.labels.select(1, 0).eq(-1)).item<bool>());
  // Both classes are there, so the comparison is not of constants.
  EXPECT_GT(mine.sum().item<int64_t>(), 0);
  EXPECT_LT(mine.sum().item<int64_t>(), mine.numel());
}

TEST(ProbeRun, RepeatedIsComputedPerSequenceOverEarlierPositionsOnly) {
  const at::Tensor tokens = at::tensor({5, 7, 5, 9, 7, 7, 1, 2, 3, 4, 1, 2}, at::kInt).reshape({2, 6});
  // By hand; the first token has nothing before it: no label.
  const at::Tensor want = at::tensor({-1, 0, 1, 0, 1, 1, -1, 0, 0, 0, 1, 1}, at::kLong).reshape({2, 6});
  EXPECT_TRUE(at::equal(token_labels("repeated", tokens, {}, "d"), want));
  // Padding (mask 0) is no earlier token, and the first real token is the
  // one without a label: row 0 left-padded with id 7, row 1 right-padded.
  const at::Tensor padded = at::tensor({7, 7, 5, 7, 5, 9, 1, 2, 1, 3, 3, 3}, at::kInt).reshape({2, 6});
  const at::Tensor mask = at::tensor({0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, at::kByte).reshape({2, 6});
  const at::Tensor want_padded = at::tensor({0, 1, -1, 0, 1, 0, -1, 0, 1, 0, 1, 1}, at::kLong).reshape({2, 6});
  const at::Tensor got = token_labels("repeated", padded, {}, "d", mask);
  EXPECT_TRUE(at::equal(got.masked_select(mask.ne(0)), want_padded.masked_select(mask.ne(0)))) << got;
}

TEST(ProbeRun, PerExampleLabelsCoverEveryToken) {
  const at::Tensor tokens = at::zeros({3, 4}, at::kInt);
  const at::Tensor per_example = at::tensor({2, -1, 0}, at::kLong);
  const at::Tensor rows = token_labels("labels", tokens, per_example, "d");
  ASSERT_EQ(rows.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(at::equal(rows.select(1, 3), per_example));
  EXPECT_TRUE(at::equal(rows.select(1, 0), per_example));
}

TEST(ProbeRun, UnknownOrMissingLabelsAreRefusedNamingTheRemedy) {
  const at::Tensor tokens = at::zeros({2, 3}, at::kInt);
  EXPECT_EQ(error_of([&] { token_labels("seen", tokens, {}, "d.h5"); }),
            "unknown probe label 'seen'; use one of: labels, repeated");
  EXPECT_THAT(error_of([&] { token_labels("labels", tokens, {}, "d.h5"); }),
              HasSubstr("dataset d.h5 has no /labels; give a dataset with labels"));
}

TEST(ProbeRun, DepthFollowsTheResidualStream) {
  EXPECT_EQ(hook_depth("hook_embed"), 0);
  EXPECT_EQ(hook_depth("blocks.0.hook_resid_pre"), 0);
  EXPECT_EQ(hook_depth("blocks.0.attn.hook_z"), 0.5);
  EXPECT_EQ(hook_depth("blocks.0.hook_resid_post"), 1);
  EXPECT_EQ(hook_depth("blocks.1.hook_resid_pre"), 1);
  EXPECT_EQ(hook_depth("blocks.11.hook_resid_post"), 12);
}

TEST(ProbeRun, OutputThatIsAFileOrAnotherKindIsRefusedBeforeAnyWork) {
  const std::string file = mechlab::testing::temp_path("probe_run", "plain.txt");
  { std::ofstream(file) << "x"; }
  EXPECT_THAT(error_of([&] { check_probe_output(file, true); }),
              HasSubstr("output folder " + file + " is a file"));
  const std::string dir = mechlab::testing::temp_path("probe_run", "out");
  std::filesystem::create_directories(dir);
  { std::ofstream(dir + "/probes.svg") << "<svg/>"; }
  EXPECT_THAT(error_of([&] { check_probe_output(dir, false); }),
              HasSubstr("probes.svg already exists; pass `overwrite`"));
  check_probe_output(dir, true);
}

// --ablate's losses are those of forwards whose hook projects the probe's
// raw weight vector out (written here as a plain hook, unnormalised), and
// the loss without ablation is the plain forward's.
TEST(ProbeRun, AblationLossesEqualForwardsWithTheDirectionProjectedOut) {
  const std::string model_path = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  const std::string data = mechlab::testing::temp_path("probe_run", "induction.h5");
  core::save_dataset(data, core::tasks::make_task("induction", {{"n", 40}, {"seed", 3}, {"d_vocab", 256}}));
  const ProbeRunResult r = run_probes(model_path, data,
                                      ProbeRunOptions()
                                          .hooks({"hook_embed", "blocks.0.hook_resid_post"})
                                          .label("repeated")
                                          .resamples(20)
                                          .ablate(true)
                                          .ablate_examples(6));
  ASSERT_TRUE(r.ablated_loss.defined());
  ASSERT_EQ(r.ablated_loss.size(0), 2);
  auto model = hooks::HookedTransformer::from_pretrained(model_path);
  const at::Tensor tokens = core::load_dataset(data).tokens.slice(0, 0, 6).to(at::kLong);  // [6, T]
  EXPECT_NEAR(r.clean_loss, core::mean_loss(model.forward(tokens), tokens).item<double>(), 1e-6);
  for (int64_t p = 0; p < 2; ++p) {
    const at::Tensor w = r.probes.weight[p].select(1, 0).to(at::kDouble);  // [d_model]
    const at::Tensor logits = model.run_with_hooks(
        tokens, {{r.names[static_cast<size_t>(p)], [&](at::Tensor& x, const hooks::HookPoint&) {
                    const at::Tensor xd = x.to(at::kDouble);  // [batch, pos, d_model]
                    x = (xd - (xd * w).sum(-1, true) / w.dot(w) * w).to(x.scalar_type());
                  }}});
    const double want = core::mean_loss(logits, tokens).item<double>();
    EXPECT_NEAR(r.ablated_loss[p].item<double>(), want, 1e-5) << r.names[static_cast<size_t>(p)];
    EXPECT_NE(r.ablated_loss[p].item<double>(), r.clean_loss);  // the edit did something
  }
}

// On a GPU the model's forwards (and --ablate's) and the fits run there;
// the result is the CPU run's up to rounding (float32 GEMMs in another
// order move borderline rows and the loss's last digits) and on the CPU.
TEST(ProbeRun, OnTheGpuTheRunEqualsTheCpusAndItsResultIsOnTheCpu) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  const std::string model_path = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  const std::string data = mechlab::testing::temp_path("probe_run", "induction_gpu.h5");
  core::save_dataset(data, core::tasks::make_task("induction", {{"n", 40}, {"seed", 3}, {"d_vocab", 256}}));
  const ProbeRunOptions o = ProbeRunOptions()
                                .hooks({"hook_embed", "blocks.*.hook_resid_post"})
                                .label("repeated")
                                .resamples(50)
                                .ablate(true)
                                .ablate_examples(6);
  const ProbeRunResult cpu = run_probes(model_path, data, o);
  const ProbeRunResult gpu = run_probes(model_path, data, ProbeRunOptions(o).device(at::Device(at::kCUDA)));
  ASSERT_EQ(gpu.names, cpu.names);
  for (const at::Tensor* t : {&gpu.probes.weight, &gpu.probes.converged, &gpu.control_probes.weight, &gpu.accuracy,
                              &gpu.auroc, &gpu.ablated_loss}) {
    EXPECT_TRUE(t->device().is_cpu());
  }
  EXPECT_LE((gpu.accuracy - cpu.accuracy).abs().max().item<double>(), 0.01);
  EXPECT_LE((gpu.control_accuracy - cpu.control_accuracy).abs().max().item<double>(), 0.01);
  EXPECT_LE((gpu.auroc - cpu.auroc).abs().max().item<double>(), 0.01);
  const at::Tensor wg = gpu.probes.weight.to(at::kDouble).flatten(1), wc = cpu.probes.weight.to(at::kDouble).flatten(1);
  EXPECT_GE(at::cosine_similarity(wg, wc, 1).min().item<double>(), 0.999);
  EXPECT_NEAR(gpu.clean_loss, cpu.clean_loss, 1e-4);
  EXPECT_LE((gpu.ablated_loss - cpu.ablated_loss).abs().max().item<double>(), 1e-3);
  EXPECT_EQ(nlohmann::json::parse(gpu.config).at("device").get<std::string>(), "cuda");
}

// split_heads: one probe per layer and head of hook_z, in (layer, head)
// order, each the fit of that head's vectors alone (fitted here by hand on
// the slice z[:, :, h] of a plain run's cache, on the run's train rows),
// and --ablate projects its direction out of that head only (checked
// against a plain hook on the slice).
TEST(ProbeRun, SplitHeadsFitsEachHeadsVectorsAndAblatesThatHeadOnly) {
  const std::string model_path = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  const std::string data = mechlab::testing::temp_path("probe_run", "induction_heads.h5");
  core::save_dataset(data, core::tasks::make_task("induction", {{"n", 40}, {"seed", 3}, {"d_vocab", 256}}));
  const ProbeRunResult r = run_probes(
      model_path, data,
      ProbeRunOptions().hooks({"blocks.*.attn.hook_z"}).split_heads(true).label("repeated").resamples(20).ablate(true)
          .ablate_examples(6));
  auto model = hooks::HookedTransformer::from_pretrained(model_path);
  const int64_t L = model.cfg().n_layers, H = model.cfg().n_heads;
  ASSERT_EQ(static_cast<int64_t>(r.names.size()), L * H);
  const core::Dataset ds = core::load_dataset(data);
  const at::Tensor tokens = ds.tokens.to(at::kLong);  // [N, T], no padding
  const at::Tensor labels = token_labels("repeated", tokens, {}, data).reshape({-1});
  const at::Tensor labelled = labels.ge(0).nonzero().squeeze(1);
  auto [logits, cache] = model.run_with_cache(tokens, hooks::NamesFilter::glob("*.attn.hook_z"));
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t h = 0; h < H; ++h) {
      const size_t p = static_cast<size_t>(l * H + h);
      const std::string hook = "blocks." + std::to_string(l) + ".attn.hook_z";
      EXPECT_EQ(r.names[p], hook + " head " + std::to_string(h));
      EXPECT_EQ(r.hooks[p], hook);
      EXPECT_EQ(r.heads[p], h);
      const at::Tensor z = cache[hook].select(2, h).reshape({-1, model.cfg().d_head}).to(at::kFloat);  // [N*T, d_head]
      const at::Tensor x = z.index_select(0, labelled).index_select(0, r.split.train);
      const LinearProbes alone = fit_logistic(x, labels.index_select(0, labelled).index_select(0, r.split.train),
                                              ProbeOptions().num_classes(2));
      const at::Tensor want = alone.weight[0], got = r.probes.weight[static_cast<int64_t>(p)];
      EXPECT_LE((got - want).abs().max().item<double>(), 1e-4 * want.abs().max().item<double>()) << r.names[p];
    }
  }
  // The ablation of head 1 of layer 1 against a plain hook on that slice.
  const int64_t p = H + 1;
  const at::Tensor few = tokens.slice(0, 0, 6);
  const at::Tensor w = r.probes.weight[p].select(1, 0).to(at::kDouble);  // [d_head]
  const at::Tensor ablated = model.run_with_hooks(
      few, {{"blocks.1.attn.hook_z", [&](at::Tensor& z, const hooks::HookPoint&) {
               const at::Tensor zd = z.select(2, 1).to(at::kDouble);
               z = z.clone();
               z.select(2, 1).copy_(zd - (zd * w).sum(-1, true) / w.dot(w) * w);
             }}});
  EXPECT_NEAR(r.ablated_loss[p].item<double>(), core::mean_loss(ablated, few).item<double>(), 1e-5);
  EXPECT_NEAR(r.clean_loss, core::mean_loss(model.forward(few), few).item<double>(), 1e-6);
  // Every hook must have heads.
  EXPECT_THAT(error_of([&] {
                run_probes(model_path, data,
                           ProbeRunOptions().hooks({"blocks.0.hook_resid_post"}).split_heads(true).label("repeated"));
              }),
              HasSubstr("hook 'blocks.0.hook_resid_post' has per-token shape ["));
}

// `position`: one row per prompt, the fit of that position's vectors
// (fitted here by hand on a plain run's cache at that position, on the
// run's train rows); -1 is the last token (these prompts have no padding);
// a position outside the prompts is refused by name.
TEST(ProbeRun, APositionProbesOneTokenPerPrompt) {
  const std::string model_path = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  const std::string data = mechlab::testing::temp_path("probe_run", "probe_task.h5");
  core::save_dataset(
      data, core::tasks::make_probe(core::tasks::ProbeOptions().n(200).seq_len(24).pool(8).d_vocab(256).seed(4)));
  const ProbeRunOptions o =
      ProbeRunOptions().hooks({"blocks.1.hook_resid_post"}).label("labels").position(12).resamples(20);
  const ProbeRunResult r = run_probes(model_path, data, o);
  EXPECT_EQ(r.rows, 200);
  const core::Dataset ds = core::load_dataset(data);
  auto model = hooks::HookedTransformer::from_pretrained(model_path);
  auto [logits, cache] =
      model.run_with_cache(ds.tokens.to(at::kLong), hooks::NamesFilter::glob("blocks.1.hook_resid_post"));
  const at::Tensor x = cache["blocks.1.hook_resid_post"].select(1, 12).to(at::kFloat);  // [200, d_model]
  const at::Tensor y = ds.labels.select(1, 12).to(at::kLong);                           // [200]
  ASSERT_TRUE(y.ge(0).all().item<bool>());
  const LinearProbes alone = fit_logistic(x.index_select(0, r.split.train), y.index_select(0, r.split.train),
                                          ProbeOptions().num_classes(2));
  const at::Tensor want = alone.weight[0];
  EXPECT_LE((r.probes.weight[0] - want).abs().max().item<double>(), 1e-4 * want.abs().max().item<double>());
  EXPECT_EQ(nlohmann::json::parse(r.config).at("position").get<int64_t>(), 12);
  // -1: the last token, here position 23.
  const ProbeRunResult last = run_probes(model_path, data, ProbeRunOptions(o).position(-1));
  const ProbeRunResult at23 = run_probes(model_path, data, ProbeRunOptions(o).position(23));
  EXPECT_TRUE(at::equal(last.probes.weight, at23.probes.weight));
  EXPECT_TRUE(at::equal(last.accuracy, at23.accuracy));
  EXPECT_FALSE(at::equal(last.probes.weight, r.probes.weight));
  EXPECT_THAT(error_of([&] { run_probes(model_path, data, ProbeRunOptions(o).position(24)); }),
              HasSubstr("has a token at `ProbeRunOptions::position` 24 (24 positions)"));
  // Before the model is read (here, it does not exist).
  EXPECT_THAT(error_of([&] { run_probes("absent.h5", data, ProbeRunOptions(o).position(24)); }),
              HasSubstr("`ProbeRunOptions::position` 24 (24 positions)"));
  EXPECT_THAT(error_of([&] { run_probes(model_path, data, ProbeRunOptions(o).position(-25)); }),
              HasSubstr("`ProbeRunOptions::position` -25"));
}

// `attach`: an SAE with its error term at blocks.0.hook_resid_post makes
// its latents a hook to probe, and the probe on them is the fit of the
// SAE's encoding of a plain run's residual (fitted here by hand); the
// model's own hooks are as without it; ablation at an attached module's
// point and attachments with a store are refused before any work.
TEST(ProbeRun, AnAttachedSaesLatentsAreProbedAsItsEncodingOfTheResidual) {
  const std::string model_path = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  const std::string data = mechlab::testing::temp_path("probe_run", "induction_sae.h5");
  core::save_dataset(data, core::tasks::make_task("induction", {{"n", 40}, {"seed", 3}, {"d_vocab", 256}}));
  auto model = hooks::HookedTransformer::from_pretrained(model_path);
  const std::string host = "blocks.0.hook_resid_post", latents = host + ".sae.hook_sae_acts_post";
  std::shared_ptr<sae::Sae> s = sae::make_sae(
      sae::SaeConfig().architecture("relu").d_in(model.cfg().d_model).d_sae(64).hook_name(host));
  {
    at::NoGradGuard no_grad;
    at::manual_seed(5);
    for (const auto& [name, t] : s->named_parameters()) s->param(name).copy_(at::randn(t.sizes()) * 0.2);
  }
  s->use_error_term(true);
  const ProbeRunOptions o = ProbeRunOptions()
                                .hooks({latents, "blocks.1.hook_resid_post"})
                                .label("repeated")
                                .resamples(20)
                                .attach({ProbeAttachment{host, s, "random relu SAE"}});
  const ProbeRunResult r = run_probes(model_path, data, o);
  ASSERT_EQ(r.names, (std::vector<std::string>{latents, "blocks.1.hook_resid_post"}));
  const core::Dataset ds = core::load_dataset(data);
  const at::Tensor tokens = ds.tokens.to(at::kLong);
  const at::Tensor labels = token_labels("repeated", tokens, {}, data).reshape({-1});
  const at::Tensor labelled = labels.ge(0).nonzero().squeeze(1);
  auto [logits, cache] = model.run_with_cache(tokens, std::vector<std::string>{host, "blocks.1.hook_resid_post"});
  auto fit_alone = [&](const at::Tensor& rows) {  // rows [N*T, D]
    const at::Tensor x = rows.index_select(0, labelled).index_select(0, r.split.train);
    return fit_logistic(x, labels.index_select(0, labelled).index_select(0, r.split.train),
                        ProbeOptions().num_classes(2)).weight[0];
  };
  const at::Tensor acts = s->encode(cache[host].reshape({-1, model.cfg().d_model})).detach();  // [N*T, 64]: d_sae = d_model, so both hooks are one sweep
  for (const auto& [p, want] : {std::make_pair(0, fit_alone(acts)),
                                std::make_pair(1, fit_alone(cache["blocks.1.hook_resid_post"].reshape({-1, 64})))}) {
    EXPECT_LE((r.probes.weight[p] - want).abs().max().item<double>(), 1e-4 * want.abs().max().item<double>())
        << r.names[static_cast<size_t>(p)];
  }
  EXPECT_EQ(nlohmann::json::parse(r.config).at("attach")[0].at("source").get<std::string>(), "random relu SAE");
  EXPECT_THAT(error_of([&] { run_probes(model_path, data, ProbeRunOptions(o).ablate(true)); }),
              HasSubstr("`ProbeRunOptions::ablate` projects at the model's own hooks, but " + latents +
                        " is a point of an attached module"));
  const std::string store = mechlab::testing::temp_path("probe_run", "sae_store.h5");
  std::filesystem::remove(store);
  hooks::cache_activations(model, ds, store, hooks::CacheOptions().hooks({host}).progress(false));
  EXPECT_THAT(error_of([&] { run_probes(store, data, ProbeRunOptions(o).hooks({host})); }),
              HasSubstr("`ProbeRunOptions::attach` needs a model to run, but " + store + " is an activation store"));
}

// The classes are the labels present (scikit-learn's classes_): labels 1
// and 2 are a binary probe, the fit of the same rows labelled 0 and 1.
TEST(ProbeRun, ClassesAreTheLabelsPresent) {
  const std::string model_path = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  core::Dataset ds = core::tasks::make_probe(
      core::tasks::ProbeOptions().n(60).seq_len(24).pool(8).d_vocab(256).label("position_parity").seed(4));
  const std::string plain = mechlab::testing::temp_path("probe_run", "parity.h5");
  const std::string shifted = mechlab::testing::temp_path("probe_run", "parity_plus_one.h5");
  core::save_dataset(plain, ds);
  ds.labels = at::where(ds.labels.ge(0), ds.labels + 1, ds.labels);  // 1, 2; -1 stays
  core::save_dataset(shifted, ds);
  const ProbeRunOptions o = ProbeRunOptions().hooks({"blocks.0.hook_resid_post"}).resamples(20);
  const ProbeRunResult a = run_probes(model_path, plain, o), b = run_probes(model_path, shifted, o);
  EXPECT_EQ(b.num_classes, 2);
  EXPECT_TRUE(at::equal(b.classes, at::tensor({1, 2}, at::kLong)));
  EXPECT_TRUE(at::equal(a.classes, at::tensor({0, 1}, at::kLong)));
  EXPECT_EQ(b.probes.weight.size(2), 1);  // binary: one logit
  EXPECT_TRUE(at::equal(a.probes.weight, b.probes.weight));
  EXPECT_TRUE(at::equal(a.accuracy, b.accuracy));
  // The chance line is scikit-learn's DummyClassifier(most_frequent): the
  // train rows' most frequent label, scored on the test rows.
  const at::Tensor labels = ds.labels.reshape({-1});
  const at::Tensor y = labels.index_select(0, labels.ge(0).nonzero().squeeze(1));
  const int64_t mode = at::bincount(y.index_select(0, b.split.train)).argmax().item<int64_t>();
  const at::Tensor test_labels = y.index_select(0, b.split.test);
  EXPECT_DOUBLE_EQ(b.majority.item<double>(), test_labels.eq(mode).to(at::kDouble).mean().item<double>());
  EXPECT_DOUBLE_EQ(a.majority.item<double>(), b.majority.item<double>());
}

// A 3-class label (the position mod 3): --ablate projects out each probe's
// two weight differences w_1 - w_0, w_2 - w_0 (rank 2), checked against
// forwards whose hook subtracts the projection A pinv(A) x (the projector by
// SVD, apart from the module's Gram-Schmidt); the AUROC is one-vs-rest and
// its interval brackets it.
TEST(ProbeRun, MulticlassAblationProjectsOutTheSpanOfTheWeightDifferences) {
  const std::string model_path = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  const std::string data = mechlab::testing::temp_path("probe_run", "induction3.h5");
  core::Dataset ds = core::tasks::make_task("induction", {{"n", 40}, {"seed", 3}, {"d_vocab", 256}});
  const int64_t T = ds.tokens.size(1);
  ds.labels = (at::arange(T, at::kLong) % 3).unsqueeze(0).expand({ds.tokens.size(0), T}).contiguous();
  core::save_dataset(data, ds);
  const ProbeRunResult r = run_probes(model_path, data,
                                      ProbeRunOptions()
                                          .hooks({"hook_embed", "blocks.0.hook_resid_post"})
                                          .label("labels")
                                          .resamples(50)
                                          .ablate(true)
                                          .ablate_examples(6));
  ASSERT_EQ(r.num_classes, 3);
  ASSERT_TRUE(r.ablated_loss.defined());
  EXPECT_TRUE(at::equal(r.ablated_dims, at::full({2}, 2, at::kLong)));
  auto model = hooks::HookedTransformer::from_pretrained(model_path);
  const at::Tensor tokens = core::load_dataset(data).tokens.slice(0, 0, 6).to(at::kLong);  // [6, T]
  EXPECT_NEAR(r.clean_loss, core::mean_loss(model.forward(tokens), tokens).item<double>(), 1e-6);
  for (int64_t p = 0; p < 2; ++p) {
    const at::Tensor w = r.probes.weight[p].to(at::kDouble);               // [d_model, 3]
    const at::Tensor a = w.narrow(1, 1, 2) - w.narrow(1, 0, 1);            // [d_model, 2]
    const at::Tensor proj = at::matmul(a, at::linalg_pinv(a));             // [d_model, d_model]
    const at::Tensor logits = model.run_with_hooks(
        tokens, {{r.names[static_cast<size_t>(p)], [&](at::Tensor& x, const hooks::HookPoint&) {
                    const at::Tensor xd = x.to(at::kDouble);  // [batch, pos, d_model]
                    x = (xd - at::matmul(xd, proj)).to(x.scalar_type());
                  }}});
    const double want = core::mean_loss(logits, tokens).item<double>();
    EXPECT_NEAR(r.ablated_loss[p].item<double>(), want, 1e-5) << r.names[static_cast<size_t>(p)];
    EXPECT_NE(r.ablated_loss[p].item<double>(), r.clean_loss);
    const double auc = r.auroc[p].item<double>();
    EXPECT_LE(r.auroc_ci.lower[p].item<double>(), auc);
    EXPECT_GE(r.auroc_ci.upper[p].item<double>(), auc);
  }
  // The AUROC is the probes' one-vs-rest AUROC on the test rows, recomputed
  // here from one forward over all 40 prompts (every token is a row, in
  // example order) and the run's seeded split.
  const at::Tensor all = core::load_dataset(data).tokens.to(at::kLong);  // [40, T]
  auto [logits, cache] = model.run_with_cache(
      all, hooks::NamesFilter::predicate([](const std::string& n) {
        return n == "hook_embed" || n == "blocks.0.hook_resid_post";
      }));
  const at::Tensor x = features_from_cache(cache, r.names).x;  // [2, R, d_model]
  ASSERT_EQ(x.size(1), r.rows);
  // Rows in example order, T per example (no padding, every token labelled);
  // the run splits by example.
  const at::Tensor example = at::arange(40, at::kLong).repeat_interleave(T);
  ASSERT_TRUE(at::equal(r.row_example, example));
  const at::Tensor test = group_split(example, SplitOptions().test_fraction(0.2).seed(0)).test;
  const at::Tensor y = ds.labels.reshape({-1}).index_select(0, test);
  const at::Tensor want = probe_auroc(r.probes, x.index_select(1, test), y);
  EXPECT_TRUE(at::allclose(r.auroc, want, 0, 1e-6)) << r.auroc << want;
  EXPECT_EQ(r.auroc_ci.defined.min().item<int64_t>(), 50);
}

// Each option is checked before any file is read, alone, naming itself.
TEST(ProbeRun, EachOptionIsRefusedByNameBeforeAnyWork) {
  const ProbeRunOptions ok = ProbeRunOptions().hooks({"hook_embed"});
  auto refusal = [&](const ProbeRunOptions& o) { return error_of([&] { run_probes("absent.h5", "absent.h5", o); }); };
  EXPECT_EQ(refusal(ProbeRunOptions(ok).resamples(-1)),
            "`ProbeRunOptions::resamples` must be >= 2 (a percentile interval needs resamples), got -1");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).resamples(1)),
            "`ProbeRunOptions::resamples` must be >= 2 (a percentile interval needs resamples), got 1");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).batch_size(0)), "`ProbeRunOptions::batch_size` must be >= 1, got 0");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).max_examples(-3)),
            "`ProbeRunOptions::max_examples` must be >= 0 (0: all), got -3");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).probe(ProbeOptions().C(-1))), "`ProbeOptions::C` must be > 0, got -1");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).probe(ProbeOptions().max_iter(0))),
            "`ProbeOptions::max_iter` must be >= 1, got 0");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).test_fraction(1)),
            "`ProbeRunOptions::test_fraction` must be in (0, 1), exclusive, got 1");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).confidence(0)),
            "`ProbeRunOptions::confidence` must be in (0, 1), exclusive, got 0");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).split_by("prompt")),
            "`ProbeRunOptions::split_by` must be example or token, got 'prompt'");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).ablate_examples(0)), "`ProbeRunOptions::ablate_examples` must be >= 1, got 0");
  EXPECT_EQ(refusal(ProbeRunOptions(ok).device(at::Device(at::kMeta))),
            "`ProbeRunOptions::device` is meta, but only cpu and cuda run; use cpu");
  if (!at::hasCUDA()) {
    EXPECT_EQ(refusal(ProbeRunOptions(ok).device(at::Device(at::kCUDA))),
              "`ProbeRunOptions::device` is cuda, but no CUDA GPU is available here; use cpu");
  }
  // Every option in range: the next refusal is the missing dataset's.
  EXPECT_THAT(refusal(ok), HasSubstr("absent.h5"));
}

const std::string kInductionModel = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";

// A store is read with the dataset it was cached from: another dataset of
// the same shape (another seed) would pair its rows with other tokens'
// labels; refused by the fingerprint the store records, and, for a store
// without one, by its /token_ids.
TEST(ProbeRun, AStoreWithAnotherDatasetIsRefused) {
  const std::string own = mechlab::testing::temp_path("probe_run", "own.h5");
  const std::string other = mechlab::testing::temp_path("probe_run", "other.h5");
  const std::string store = mechlab::testing::temp_path("probe_run", "own_acts.h5");
  core::save_dataset(own, core::tasks::make_probe(core::tasks::ProbeOptions().n(30).seq_len(16).seed(1)));
  core::save_dataset(other, core::tasks::make_probe(core::tasks::ProbeOptions().n(30).seq_len(16).seed(2)));
  std::filesystem::remove(store);
  auto model = hooks::HookedTransformer::from_pretrained(kInductionModel);
  hooks::cache_activations(model, core::load_dataset(own), store,
                           hooks::CacheOptions().hooks({"blocks.0.hook_resid_post"}).dtype(at::kFloat).progress(false).dataset_path(own));
  const ProbeRunOptions o = ProbeRunOptions().hooks({"blocks.0.hook_resid_post"}).label("repeated").resamples(20);
  const ProbeRunResult r = run_probes(store, own, o);
  EXPECT_EQ(r.rows, 30 * 15) << "every token but BOS";
  const std::string fp_own = hooks::dataset_fingerprint(core::load_dataset(own));
  const std::string fp_other = hooks::dataset_fingerprint(core::load_dataset(other));
  ASSERT_NE(fp_own, fp_other);
  EXPECT_EQ(error_of([&] { run_probes(store, other, o); }),
            str_cat("activation store ", store, " was cached from ", own, " (dataset fingerprint ", fp_own,
                    "), not from ", other, " (", fp_other,
                    "); give the dataset the store was cached from, or cache this one"));
  // An older store's job without a fingerprint: its /token_ids decide.
  {
    core::H5File f = core::H5File::open_readwrite(store);
    f.write_attr("", "job", std::string("{}"));
    f.close();
  }
  EXPECT_THAT(error_of([&] { run_probes(store, other, o); }),
              HasSubstr("activation store " + store + " holds other tokens than dataset " + other + " (first at row "));
  EXPECT_EQ(run_probes(store, own, o).rows, r.rows);
}

// Labels that are noise per prompt (a fair coin per example, every token of
// it carrying the draw) give a probe nothing to learn: split by example, the
// AUROC interval holds 0.5 at every hook. Split by token, the same probes
// read the prompt from its tokens (each prompt draws its own pool of 8 ids)
// and come out "significant": the leak the example split closes.
TEST(ProbeRun, NoiseLabelsPerPromptStayAtChanceWhenSplitByExample) {
  const std::string data = mechlab::testing::temp_path("probe_run", "noise.h5");
  core::Dataset ds = core::tasks::make_probe(core::tasks::ProbeOptions().n(100).seq_len(32).pool(8).seed(6));
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(17);
  ds.labels = at::randint(2, {100}, gen, at::TensorOptions().dtype(at::kLong));
  core::save_dataset(data, ds);
  const ProbeRunOptions o = ProbeRunOptions()
                                .hooks({"hook_embed", "blocks.1.hook_resid_post"})
                                .label("labels")
                                .resamples(300);
  const ProbeRunResult r = run_probes(kInductionModel, data, o);
  ASSERT_EQ(r.split_by, "example");
  EXPECT_EQ(r.test_examples, 20);
  EXPECT_EQ(r.train_examples, 80);
  // No example has tokens on both sides.
  const at::Tensor train_ex = r.row_example.index_select(0, r.split.train);
  const at::Tensor test_ex = r.row_example.index_select(0, r.split.test);
  EXPECT_FALSE(at::isin(test_ex, train_ex).any().item<bool>());
  EXPECT_EQ(r.train_rows + r.test_rows, r.rows);
  for (int64_t p = 0; p < 2; ++p) {
    EXPECT_LT(r.auroc_ci.lower[p].item<double>(), 0.5) << r.names[static_cast<size_t>(p)] << r.auroc;
    EXPECT_GT(r.auroc_ci.upper[p].item<double>(), 0.5) << r.names[static_cast<size_t>(p)] << r.auroc;
  }
  const ProbeRunResult t = run_probes(kInductionModel, data, ProbeRunOptions(o).split_by("token"));
  EXPECT_GT(t.auroc_ci.lower.max().item<double>(), 0.5) << t.auroc_ci.lower;
  EXPECT_TRUE(at::isin(t.row_example.index_select(0, t.split.test), t.row_example.index_select(0, t.split.train))
                  .any()
                  .item<bool>());
}

// The probes (the table, the file, the picture) are in forward order: by
// layer, then by site as the block computes them, whatever order the hooks
// were given in (probes of one depth, ln1 and attn_out, too).
TEST(ProbeRun, ProbesAreInForwardOrder) {
  const std::string data = mechlab::testing::temp_path("probe_run", "order.h5");
  core::save_dataset(data, core::tasks::make_probe(core::tasks::ProbeOptions().n(12).seq_len(12).seed(3)));
  const ProbeRunResult r = run_probes(kInductionModel, data,
                                      ProbeRunOptions()
                                          .hooks({"blocks.1.hook_resid_pre", "blocks.0.hook_resid_post",
                                                  "blocks.0.hook_attn_out", "blocks.0.hook_resid_pre", "hook_embed",
                                                  "blocks.0.ln1.hook_normalized"})
                                          .label("repeated")
                                          .resamples(5));
  EXPECT_EQ(r.names, (std::vector<std::string>{"hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized",
                                               "blocks.0.hook_attn_out", "blocks.0.hook_resid_post",
                                               "blocks.1.hook_resid_pre"}));
  EXPECT_EQ(r.depth, (std::vector<double>{0, 0, 0.5, 0.5, 1, 1}));
}

}  // namespace
}  // namespace mechlab::probes
