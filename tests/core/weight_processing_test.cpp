// core/model/weight_processing.h: every step keeps the output distribution, on every
// runtime fixture (tests/data/runtime) and Hugging Face fixture folder
// (tests/data/hf); refusals; checkpoints of processed models.
//
// Tolerance for "the distribution is unchanged": log-softmax of the logits
// before and after processing, normwise relative error max|a - b| / max|b|
// <= 1e-5 in float32. Processing rewrites each weight with one or two float32
// roundings (~6e-8 relative each) and the forward then rounds differently;
// measured <= 3.7e-7 over all 55 cases (TransformerLens's own processed models drift by up to
// 3.8e-6 absolute on log-probs of magnitude ~5, i.e. ~8e-7 relative, on the
// same runtime fixtures). Log-probs, not logits: center_unembed moves every
// logit of a position by the same constant.
#include "core/model/weight_processing.h"
#include "core/formats/hdf5_file.h"
#include "core/hf/model_loader.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

namespace mechlab::core {
namespace {

using mechlab::testing::close;
using mechlab::testing::error_of;
using ::testing::HasSubstr;

constexpr double kLogProbTol = 1e-5;

std::string runtime_fixture(const std::string& name) {
  return std::string(MECHLAB_TEST_DATA) + "/runtime/" + name + ".h5";
}
std::string hf_fixture(const std::string& name) {
  return std::string(MECHLAB_TEST_DATA) + "/hf/" + name;
}

/// A model source and the tokens to run it on ([batch, pos] int64).
struct Source {
  std::string path;
  at::Tensor tokens;
};

Source source(const std::string& id) {
  const bool hf = id.rfind("hf/", 0) == 0;
  const std::string name = hf ? id.substr(3) : id;
  Source s;
  s.path = hf ? hf_fixture(name) : runtime_fixture(name);
  H5File f = H5File::open_read(hf ? hf_fixture(name + ".ref.h5") : s.path);
  s.tokens = f.read_tensor(hf ? "tokens" : "reference/tokens").to(at::kLong);
  return s;
}

at::Tensor log_probs(const Transformer& model, const at::Tensor& tokens) {
  at::NoGradGuard no_grad;
  return at::log_softmax(model.forward(tokens).to(at::kFloat), -1);
}

/// The options for one step by name, or for all four ("all": TL's defaults).
ProcessOptions options_for(const std::string& step) {
  if (step == "all") return ProcessOptions::all();
  ProcessOptions o;
  if (step == "fold_ln") o.fold_ln(true);
  if (step == "center_writing_weights") o.center_writing_weights(true);
  if (step == "center_unembed") o.center_unembed(true);
  if (step == "fold_value_biases") o.fold_value_biases(true);
  EXPECT_TRUE(o.any()) << "unknown step " << step;
  return o;
}

// ---------------------------------------------------------------- invariance

class Invariance : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(Invariance, LogProbsAreUnchanged) {
  const auto& [id, step] = GetParam();
  const Source src = source(id);
  const Transformer plain = load_model(src.path);
  const ModelConfig& cfg = plain.config();
  LoadOptions load;
  load.process(options_for(step));
  if (step == "center_writing_weights" && !cfg.norm_centres()) {
    // Refused without LayerNorm (checked in detail below); nothing to compare.
    EXPECT_THAT(error_of([&] { load_model(src.path, load); }),
                HasSubstr("cannot apply center_writing_weights"));
    return;
  }
  const Transformer processed = load_model(src.path, load);
  const at::Tensor before = log_probs(plain, src.tokens);
  const at::Tensor after = log_probs(processed, src.tokens);
  EXPECT_TRUE(close(after, before, kLogProbTol, id + " " + step));
  const double err =
      (after - before).abs().max().item<double>() / before.abs().max().item<double>();
  std::printf("[ measured ] %-22s %-24s log-prob relative error %.2e\n", id.c_str(), step.c_str(),
              err);

  // The config says what was done, and the weights changed where it says so.
  const ModelConfig& pc = processed.config();
  EXPECT_FALSE(pc.processed.empty());
  if (step == "fold_ln" || step == "all") {
    EXPECT_TRUE(pc.was_processed(ProcessingStep::fold_ln));
    EXPECT_EQ(pc.norm,
              cfg.norm == NormKind::layernorm ? NormKind::layernorm_pre : NormKind::rmsnorm_pre);
    for (const auto& [name, t] : processed.named_parameters()) {
      EXPECT_EQ(name.find("ln"), std::string::npos) << name << " survived fold_ln";
    }
  }
  if (step == "all") {
    EXPECT_EQ(pc.was_processed(ProcessingStep::center_writing_weights), cfg.norm_centres());
  }
  if (pc.was_processed(ProcessingStep::center_writing_weights)) {
    // Every writer has zero mean over d_model.
    const auto& w = processed.weights();
    EXPECT_LT(w.W_E.mean(-1).abs().max().item<double>(), 1e-6);
    EXPECT_LT(w.blocks[0].W_O.mean(-1).abs().max().item<double>(), 1e-6);
  }
  if (pc.was_processed(ProcessingStep::center_unembed)) {
    const auto& w = processed.weights();
    EXPECT_LT(w.W_U.mean(-1).abs().max().item<double>(), 1e-6);
    EXPECT_LT(std::abs(w.b_U.mean().item<double>()), 1e-6);
  }
  if (pc.was_processed(ProcessingStep::fold_value_biases)) {
    for (const auto& b : processed.weights().blocks)
      EXPECT_EQ(b.b_V.abs().max().item<double>(), 0.0);
  }
}

const std::vector<std::string> kSteps = {"fold_ln", "center_writing_weights", "center_unembed",
                                         "fold_value_biases", "all"};

INSTANTIATE_TEST_SUITE_P(
    WeightProcessing, Invariance,
    ::testing::Combine(::testing::Values(std::string("gpt2_like"), "attn_only", "llama_like",
                                         "neox_like", "hf/gpt2", "hf/neox", "hf/neox_seq",
                                         "hf/llama", "hf/llama_sharded", "hf/mistral", "hf/qwen2"),
                       ::testing::ValuesIn(kSteps)),
    [](const auto& info) {
      std::string id = std::get<0>(info.param);
      for (char& c : id) c = c == '/' ? '_' : c;
      return id + "_" + std::get<1>(info.param);
    });

// ---------------------------------------------------------------- the API

TEST(WeightProcessing, LeavesTheInputModelUntouched) {
  const Transformer model = load_model(hf_fixture("gpt2"));  // tied embeddings
  ASSERT_TRUE(model.config().tied_embeddings);
  std::vector<at::Tensor> before;
  for (const auto& [name, t] : model.named_parameters()) before.push_back(t.clone());
  const Transformer processed = process_weights(model, ProcessOptions::all());
  size_t i = 0;
  for (const auto& [name, t] : model.named_parameters()) {
    EXPECT_TRUE(at::equal(t, before[i++])) << name << " was modified in place";
  }
  EXPECT_TRUE(model.config().processed.empty());
  // W_E and W_U change differently, so processing unties them.
  EXPECT_FALSE(processed.config().tied_embeddings);
  EXPECT_EQ(processed.config().parameter_count(),
            model.config().parameter_count() +
                int64_t(model.config().d_model) * model.config().d_vocab -
                int64_t(model.config().n_layers * 4 + 2) * model.config().d_model);
}

TEST(WeightProcessing, HalfPrecisionIsProcessedInFloat32) {
  // bf16 stored weights; asking for float32 widens before processing, so the
  // result equals processing the float32 load of the same weights.
  const std::string path = hf_fixture("llama_bf16");
  LoadOptions f32;
  f32.dtype(at::kFloat);
  LoadOptions f32_processed = f32;
  f32_processed.process(ProcessOptions::all());
  const Transformer widened = load_model(path, f32_processed);
  const Transformer reference = process_weights(load_model(path, f32), ProcessOptions::all());
  for (const auto& [name, t] : widened.named_parameters()) {
    for (const auto& [rname, r] : reference.named_parameters()) {
      if (rname == name) {
        EXPECT_TRUE(at::equal(t, r)) << name;
      }
    }
  }
  // Kept in bfloat16: one rounding of the float32 result, so within bf16's
  // 2^-9 relative rounding of it (twice that, for ties and the max-norm scale).
  LoadOptions bf16;
  bf16.process(ProcessOptions::all());
  const Transformer narrow = load_model(path, bf16);
  ASSERT_EQ(narrow.dtype(), at::kBFloat16);
  const auto ref_params = reference.named_parameters();
  size_t i = 0;
  for (const auto& [name, t] : narrow.named_parameters()) {
    ASSERT_EQ(name, ref_params[i].first);
    EXPECT_TRUE(close(t, ref_params[i++].second, 2.0 / 512, name));
  }
}

TEST(WeightProcessing, GatedLayerNormWithZeroLn2BiasFolds) {
  // LayerNorm + gated MLP: exact only when ln2's bias is zero (see the refusal
  // below); random gains and every other bias random.
  ModelConfig c;
  c.name = "ln_gated";
  c.n_layers = 2, c.d_model = 16, c.n_heads = 4, c.d_head = 4, c.d_mlp = 24, c.d_vocab = 30;
  c.n_ctx = 8, c.mlp = MlpKind::gated, c.act = Activation::silu;
  TransformerWeights w = init_weights(c, 7, 0.3);
  at::manual_seed(3);
  for (ParamSlot& slot : param_slots(c, w)) {
    if (slot.name.find("ln2.b") != std::string::npos) continue;
    *slot.tensor =
        slot.tensor->defined() ? *slot.tensor + 0.2 * at::randn(slot.shape) : *slot.tensor;
  }
  const Transformer model(c, w);
  const at::Tensor tokens = at::randint(0, c.d_vocab, {2, 8}, at::kLong);
  const Transformer folded = process_weights(model, ProcessOptions::all());
  EXPECT_TRUE(close(log_probs(folded, tokens), log_probs(model, tokens), kLogProbTol, "ln gated"));

  TransformerWeights biased = model.weights();
  biased.blocks[1].ln2_b = at::full({c.d_model}, 0.1);
  const Transformer with_bias(c, biased);
  EXPECT_THAT(error_of([&] { process_weights(with_bias, ProcessOptions().fold_ln(true)); }),
              HasSubstr("a non-zero ln2 bias (LayerNorm) cannot be folded"));
}

// ---------------------------------------------------------------- refusals

TEST(WeightProcessingErrors, CenterWritingWeightsNeedsLayerNorm) {
  const Transformer rms = load_model(runtime_fixture("llama_like"));
  EXPECT_THAT(
      error_of([&] { process_weights(rms, ProcessOptions().center_writing_weights(true)); }),
      HasSubstr("cannot apply center_writing_weights to model 'llama_like': it is exact "
                "only when LayerNorm reads the residual stream, and norm is \"rmsnorm\""));
  // Through the loader the message also names the file.
  LoadOptions load;
  load.process().center_writing_weights(true);
  EXPECT_THAT(error_of([&] { load_model(runtime_fixture("llama_like"), load); }),
              HasSubstr("llama_like.h5: weight processing: cannot apply center_writing_weights"));

  ModelConfig c = rms.config();
  c.norm = NormKind::none;
  c.final_norm = false;
  EXPECT_THAT(error_of([&] {
                process_weights(Transformer(c, 1), ProcessOptions().center_writing_weights(true));
              }),
              HasSubstr("norm is \"none\""));
  EXPECT_THAT(error_of([&] { process_weights(Transformer(c, 1), ProcessOptions().fold_ln(true)); }),
              HasSubstr("cannot apply fold_ln to model 'llama_like': the model has no norm"));

  ModelConfig no_final = load_model(runtime_fixture("gpt2_like")).config();
  no_final.final_norm = false;
  EXPECT_THAT(error_of([&] {
                process_weights(Transformer(no_final, 1),
                                ProcessOptions().center_writing_weights(true));
              }),
              HasSubstr("unembeds without a final norm"));
}

TEST(WeightProcessingErrors, SkipInapplicableSkipsAsTransformerLensDoes) {
  const Transformer rms = load_model(runtime_fixture("llama_like"));
  const Transformer p = process_weights(rms, ProcessOptions::all());
  EXPECT_EQ(p.config().processed,
            (std::vector<ProcessingStep>{ProcessingStep::fold_ln, ProcessingStep::center_unembed,
                                         ProcessingStep::fold_value_biases}));
  // Nothing to do at all is not an error either, and changes nothing.
  ModelConfig c = rms.config();
  c.norm = NormKind::none;
  c.final_norm = false;
  const Transformer bare(c, 1);
  const Transformer same = process_weights(
      bare, ProcessOptions().fold_ln(true).center_writing_weights(true).skip_inapplicable(true));
  EXPECT_TRUE(same.config().processed.empty());
}

TEST(WeightProcessingErrors, AnErrorChangesNothing) {
  // fold_ln is fine for RMSNorm, center_writing_weights is not: the whole
  // call is refused before any weight is touched.
  ModelConfig cfg = load_model(runtime_fixture("llama_like")).config();
  TransformerWeights w = load_model(runtime_fixture("llama_like")).weights();
  const at::Tensor W_Q = w.blocks[0].W_Q;
  EXPECT_THAT(error_of([&] {
                process_weights(cfg, w,
                                ProcessOptions().fold_ln(true).center_writing_weights(true));
              }),
              HasSubstr("center_writing_weights"));
  EXPECT_EQ(cfg.norm, NormKind::rmsnorm);
  EXPECT_TRUE(cfg.processed.empty());
  EXPECT_TRUE(w.blocks[0].W_Q.is_same(W_Q));
  EXPECT_TRUE(w.blocks[0].ln1_w.defined());
}

TEST(WeightProcessingErrors, FoldingTwiceIsRefused) {
  const Transformer once = process_weights(load_model(runtime_fixture("gpt2_like")),
                                           ProcessOptions().fold_ln(true).center_unembed(true));
  EXPECT_THAT(error_of([&] { process_weights(once, ProcessOptions().fold_ln(true)); }),
              HasSubstr("weight processing: fold_ln was already applied to this model"));
  // --process on an already processed model is refused too (never skipped).
  EXPECT_THAT(error_of([&] { process_weights(once, ProcessOptions::all()); }),
              HasSubstr("fold_ln was already applied"));
  EXPECT_THAT(error_of([&] { process_weights(once, ProcessOptions().center_unembed(true)); }),
              HasSubstr("center_unembed was already applied"));
  // Steps not yet applied still can be.
  const Transformer twice = process_weights(once, ProcessOptions().fold_value_biases(true));
  EXPECT_EQ(twice.config().processed.size(), 3u);

  // A model built with LNPre norms (no record of folding) has nothing to fold.
  ModelConfig pre = once.config();
  pre.processed.clear();
  EXPECT_THAT(
      error_of([&] { process_weights(Transformer(pre, 1), ProcessOptions().fold_ln(true)); }),
      HasSubstr("norm is \"layernorm_pre\", which has no weights to fold"));
}

TEST(WeightProcessingErrors, UnknownOrInconsistentStepsInAConfigAreRefused) {
  nlohmann::json j = load_model(runtime_fixture("gpt2_like")).config().to_json();
  j["processed"] = nlohmann::json::array({"fold_layernorm"});
  EXPECT_THAT(error_of([&] { ModelConfig::from_json(j); }),
              HasSubstr("config: \"processed\": unknown weight-processing step \"fold_layernorm\"; "
                        "expected one of: fold_ln, center_writing_weights, center_unembed, "
                        "fold_value_biases"));
  j["processed"] = "fold_ln";
  EXPECT_THAT(error_of([&] { ModelConfig::from_json(j); }),
              HasSubstr("\"processed\" must be a list of step names"));
  j["processed"] = nlohmann::json::array({"center_unembed", "center_unembed"});
  EXPECT_THAT(error_of([&] { ModelConfig::from_json(j); }),
              HasSubstr("lists \"center_unembed\" twice"));
  j["processed"] = nlohmann::json::array({"fold_ln"});  // norm is still "layernorm"
  EXPECT_THAT(error_of([&] { ModelConfig::from_json(j); }),
              HasSubstr("lists fold_ln but norm is \"layernorm\""));
  j["norm"] = "layernorm_pree";
  EXPECT_THAT(error_of([&] { ModelConfig::from_json(j); }),
              HasSubstr("expected one of: layernorm, rmsnorm, none, layernorm_pre, rmsnorm_pre"));
  EXPECT_THAT(error_of([&] { parse_processing_step("fold_layer_norm", "--steps"); }),
              HasSubstr("--steps: unknown weight-processing step \"fold_layer_norm\""));
}

// ---------------------------------------------------------------- checkpoints

TEST(WeightProcessing, ProcessedCheckpointsRoundTrip) {
  for (const char* name : {"gpt2_like", "llama_like"}) {
    SCOPED_TRACE(name);
    const Transformer p = process_weights(load_model(runtime_fixture(name)), ProcessOptions::all());
    const std::string path =
        mechlab::testing::temp_path("weight_processing", std::string(name) + ".h5");
    p.save(path);
    const Transformer back = load_model(path);
    EXPECT_EQ(back.config().to_json(), p.config().to_json());
    EXPECT_EQ(back.config().hash(), p.config().hash());
    EXPECT_EQ(back.config().to_json()["norm"],
              std::string(name) == "gpt2_like" ? "layernorm_pre" : "rmsnorm_pre");
    const auto a = p.named_parameters(), b = back.named_parameters();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
    }
    const at::Tensor tokens = source(name).tokens;
    EXPECT_TRUE(at::equal(log_probs(back, tokens), log_probs(p, tokens)));
    // Processing again from the file is refused like processing again in memory.
    LoadOptions again;
    again.process().fold_ln(true);
    EXPECT_THAT(error_of([&] { load_model(path, again); }),
                HasSubstr("fold_ln was already applied"));
    std::remove(path.c_str());
  }
  // Unprocessed configs keep their JSON (and so their hash): no "processed" key.
  EXPECT_FALSE(load_model(runtime_fixture("gpt2_like")).config().to_json().contains("processed"));
}

}  // namespace
}  // namespace mechlab::core
