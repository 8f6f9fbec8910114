// Hugging Face folders that must be refused, and the messages a user sees:
// config.json mistakes (missing keys, wrong types, unsupported variants),
// weights that disagree with the config, broken shard indexes, pickle-only
// folders and paths that are not models.
#include "core/hf/hf_model.h"
#include "core/hf/model_loader.h"
#include "core/formats/safetensors.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>

namespace mechlab::core {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using mechlab::testing::error_of;
using nlohmann::json;

std::string fixture(const std::string& name) { return std::string(MECHLAB_TEST_DATA) + "/hf/" + name; }

/// A fresh copy of a fixture folder (files copied one by one).
std::string copy_fixture(const std::string& name, const std::string& as) {
  const std::string dir = mechlab::testing::temp_path("hf_errors_test", as);
  fs::create_directories(dir);
  for (const auto& entry : fs::directory_iterator(dir)) fs::remove(entry.path());
  for (const auto& entry : fs::directory_iterator(fixture(name))) {
    fs::copy_file(entry.path(), dir + "/" + entry.path().filename().string());
  }
  return dir;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

/// A copy of `name` whose config.json is edited by `edit`.
std::string with_config(const std::string& name, const std::string& as,
                        const std::function<void(json&)>& edit) {
  const std::string dir = copy_fixture(name, as);
  json j = read_json(dir + "/config.json");
  edit(j);
  write_text(dir + "/config.json", j.dump(2));
  return dir;
}

std::string load_error(const std::string& dir) {
  return error_of([&] { load_model(dir); });
}

TEST(HfConfigErrors, MissingKeyIsNamed) {
  const auto dir = with_config("llama", "missing", [](json& j) { j.erase("hidden_size"); });
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr(dir + "/config.json"),
                                     HasSubstr("key 'hidden_size' is missing")));
  const auto gpt2 = with_config("gpt2", "missing_gpt2", [](json& j) { j.erase("n_layer"); });
  EXPECT_THAT(load_error(gpt2), HasSubstr("key 'n_layer' is missing"));
  const auto null = with_config("neox", "null_key", [](json& j) { j["vocab_size"] = nullptr; });
  EXPECT_THAT(load_error(null), HasSubstr("key 'vocab_size' is missing"));
}

TEST(HfConfigErrors, WrongTypesAreNamed) {
  const auto dir = with_config("llama", "string_int", [](json& j) { j["num_hidden_layers"] = "2"; });
  EXPECT_THAT(load_error(dir),
              HasSubstr("key 'num_hidden_layers' must be an integer, got a string \"2\""));
  const auto flt = with_config("gpt2", "float_int", [](json& j) { j["n_embd"] = 32.5; });
  EXPECT_THAT(load_error(flt), HasSubstr("key 'n_embd' must be an integer, got a float 32.5"));
  const auto eps = with_config("llama", "eps", [](json& j) { j["rms_norm_eps"] = "1e-5"; });
  EXPECT_THAT(load_error(eps), HasSubstr("key 'rms_norm_eps' must be a number"));
  const auto tie = with_config("qwen2", "tie", [](json& j) { j["tie_word_embeddings"] = 1; });
  EXPECT_THAT(load_error(tie), HasSubstr("key 'tie_word_embeddings' must be true or false"));
  const auto neg = with_config("neox", "negative", [](json& j) { j["num_attention_heads"] = -4; });
  EXPECT_THAT(load_error(neg), HasSubstr("key 'num_attention_heads' must be a positive integer"));
  const auto arch = with_config("gpt2", "arch_type", [](json& j) { j["architectures"] = "GPT2"; });
  EXPECT_THAT(load_error(arch), HasSubstr("key 'architectures' must be a non-empty list"));
}

TEST(HfConfigErrors, UnknownArchitectureListsSupportedOnes) {
  const auto dir = with_config("llama", "unknown_arch", [](json& j) {
    j["architectures"] = {"FalconForCausalLM"};
  });
  EXPECT_THAT(load_error(dir),
              AllOf(HasSubstr("architecture 'FalconForCausalLM' is not supported"),
                    HasSubstr("GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM, "
                              "MistralForCausalLM, Qwen2ForCausalLM")));
  // Without "architectures", model_type decides.
  const auto by_type = with_config("qwen2", "model_type", [](json& j) { j.erase("architectures"); });
  EXPECT_EQ(hf::read_hf_config(by_type).n_kv_heads, 2);
}

TEST(HfConfigErrors, UnsupportedVariantsAreRefused) {
  const auto scaling = with_config("llama", "rope_scaling", [](json& j) {
    j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 8.0}};
  });
  EXPECT_THAT(load_error(scaling),
              HasSubstr("key 'rope_scaling' has rope_type \"dynamic\", which mechlab does not "
                        "implement (supported: default, linear, llama3)"));
  const auto act = with_config("neox", "act", [](json& j) { j["hidden_act"] = "quick_gelu"; });
  EXPECT_THAT(load_error(act), HasSubstr("key 'hidden_act' is \"quick_gelu\", which mechlab does "
                                         "not implement"));
  const auto mlp_bias = with_config("llama", "mlp_bias", [](json& j) { j["mlp_bias"] = true; });
  EXPECT_THAT(load_error(mlp_bias), HasSubstr("key 'mlp_bias' is true"));
  const auto gqa = with_config("llama", "gqa", [](json& j) { j["num_key_value_heads"] = 3; });
  EXPECT_THAT(load_error(gqa), HasSubstr("key 'num_key_value_heads' (3) must divide"));
  const auto rot = with_config("neox", "rot", [](json& j) {
    j["rotary_pct"] = 0.1;
    j["partial_rotary_factor"] = 0.1;
  });
  EXPECT_THAT(load_error(rot), HasSubstr("gives 0 rotary dimensions"));
}

/// The message `load_model` gives for `name` with config.json's rope_scaling
/// replaced by `scaling`.
std::string rope_error(const std::string& name, const json& scaling) {
  return load_error(
      with_config(name, "rope_" + name, [&](json& j) { j["rope_scaling"] = scaling; }));
}

TEST(HfConfigErrors, RopeScalingIsReadOrRefused) {
  const json llama3 = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 16}};
  // Accepted: llama3 and linear, under "rope_type" or the older "type"; "default" is none.
  const auto neox =
      with_config("neox", "neox_llama3", [&](json& j) { j["rope_scaling"] = llama3; });
  const ModelConfig n = hf::read_hf_config(neox);
  ASSERT_TRUE(n.rope_scaling.has_value());
  EXPECT_EQ(n.rope_scaling->kind, RopeScalingKind::llama3);
  EXPECT_EQ(n.rope_scaling->original_max_position_embeddings, 16);
  const auto old_key = with_config("qwen2", "old_key", [](json& j) {
    j["rope_scaling"] = {{"type", "linear"}, {"factor", 2}};
  });
  const ModelConfig q = hf::read_hf_config(old_key);
  ASSERT_TRUE(q.rope_scaling.has_value());
  EXPECT_EQ(q.rope_scaling->kind, RopeScalingKind::linear);
  EXPECT_EQ(q.rope_scaling->factor, 2.0);
  const auto plain = with_config("mistral", "default", [](json& j) {
    j["rope_scaling"] = {{"rope_type", "default"}};
  });
  EXPECT_FALSE(hf::read_hf_config(plain).rope_scaling.has_value());

  // Refused: other types, with the supported ones listed.
  for (const char* type : {"yarn", "longrope", "dynamic"}) {
    EXPECT_THAT(rope_error("neox", {{"rope_type", type}, {"factor", 2.0}}),
                AllOf(HasSubstr("key 'rope_scaling' has rope_type \"" + std::string(type) + "\""),
                      HasSubstr("(supported: default, linear, llama3)")));
  }
  // Refused: unusable values and missing or ill-typed keys.
  EXPECT_THAT(rope_error("llama", {{"rope_type", "linear"}, {"factor", 0.0}}),
              HasSubstr("key 'rope_scaling' of type \"linear\": factor must be positive, got 0"));
  json negative = llama3;
  negative["factor"] = -2.0;
  EXPECT_THAT(rope_error("llama", negative),
              HasSubstr("key 'rope_scaling' of type \"llama3\": factor must be positive, got -2"));
  json inverted = llama3;
  inverted["high_freq_factor"] = 1.0;
  EXPECT_THAT(rope_error("llama", inverted),
              HasSubstr("high_freq_factor (1) must be greater than low_freq_factor (1)"));
  json no_ctx = llama3;
  no_ctx.erase("original_max_position_embeddings");
  EXPECT_THAT(rope_error("llama", no_ctx),
              HasSubstr("of type \"llama3\" needs \"original_max_position_embeddings\""));
  json text_factor = llama3;
  text_factor["factor"] = "8";
  EXPECT_THAT(rope_error("llama", text_factor),
              HasSubstr("\"factor\" must be a number, got a string \"8\""));
  EXPECT_THAT(rope_error("llama", {{"factor", 2.0}}), HasSubstr("has no \"rope_type\""));
  EXPECT_THAT(rope_error("llama", {{"rope_type", "linear"}, {"type", "yarn"}, {"factor", 2.0}}),
              HasSubstr("which disagree"));
  EXPECT_THAT(rope_error("llama", 8.0), HasSubstr("key 'rope_scaling' must be an object"));
}

TEST(HfConfigErrors, InvalidJsonAndMissingConfig) {
  const auto dir = copy_fixture("gpt2", "bad_json");
  write_text(dir + "/config.json", "{\"n_layer\": 2,");
  EXPECT_THAT(load_error(dir), HasSubstr("config.json '" + dir + "/config.json' is not valid JSON"));
  write_text(dir + "/config.json", "[1]");
  EXPECT_THAT(load_error(dir), HasSubstr("is not a JSON object"));
  fs::remove(dir + "/config.json");
  EXPECT_THAT(load_error(dir), HasSubstr("is a folder without config.json"));
}

TEST(HfWeightErrors, ConfigAndWeightsDisagree) {
  const auto dir = with_config("llama", "disagree", [](json& j) { j["intermediate_size"] = 40; });
  EXPECT_THAT(load_error(dir),
              AllOf(HasSubstr("tensor 'model.layers.0.mlp.gate_proj.weight'"),
                    HasSubstr("has shape [48, 32] but config.json implies [40, 32]")));
}

TEST(HfWeightErrors, MissingAndUnexpectedTensors) {
  const auto dir = copy_fixture("qwen2", "tensors");
  const std::string file = dir + "/model.safetensors";
  std::vector<std::pair<std::string, at::Tensor>> all;
  {
    const SafetensorsFile f = SafetensorsFile::open(file);
    for (const std::string& name : f.names()) all.emplace_back(name, f.tensor(name).clone());
  }
  auto without = all;
  without.erase(std::remove_if(without.begin(), without.end(),
                               [](const auto& p) { return p.first == "model.layers.1.self_attn.k_proj.bias"; }),
                without.end());
  save_safetensors(file, without);
  EXPECT_THAT(load_error(dir), HasSubstr("has no tensor 'model.layers.1.self_attn.k_proj.bias'"));

  auto extra = all;
  extra.emplace_back("model.layers.0.self_attn.q_norm.weight", at::ones({8}));
  save_safetensors(file, extra);
  EXPECT_THAT(load_error(dir),
              AllOf(HasSubstr("tensor 'model.layers.0.self_attn.q_norm.weight'"),
                    HasSubstr("is not part of Qwen2ForCausalLM as mechlab models it")));

  auto ints = all;
  ints[0].second = ints[0].second.to(at::kInt);
  save_safetensors(file, ints);
  EXPECT_THAT(load_error(dir), HasSubstr("has dtype I32; model weights must be"));
}

TEST(HfWeightErrors, NonFiniteWeightsAreRefusedByName) {
  // Before: a NaN weight loaded silently, and the fused attention path could
  // return finite numbers for it where the materialised path gave NaN.
  const auto dir = copy_fixture("gpt2", "nonfinite");
  const std::string file = dir + "/model.safetensors";
  std::vector<std::pair<std::string, at::Tensor>> all;
  {
    const SafetensorsFile f = SafetensorsFile::open(file);
    for (const std::string& name : f.names()) all.emplace_back(name, f.tensor(name).clone());
  }
  const std::string target = "transformer.h.0.attn.c_attn.weight";
  auto it = std::find_if(all.begin(), all.end(), [&](const auto& p) { return p.first == target; });
  ASSERT_NE(it, all.end());
  it->second.view(-1)[7] = std::numeric_limits<float>::quiet_NaN();
  it->second.view(-1)[9] = std::numeric_limits<float>::infinity();
  save_safetensors(file, all);
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("tensor '" + target + "'"), HasSubstr(file),
                                     HasSubstr("holds 2 NaN or infinite values")));
}

TEST(HfWeightErrors, BrokenShardIndex) {
  const auto dir = copy_fixture("llama_sharded", "index");
  const std::string index_path = dir + "/model.safetensors.index.json";
  const json index = read_json(index_path);
  const std::string tensor = "model.layers.0.mlp.up_proj.weight";
  const std::string shard = index["weight_map"][tensor];

  json outside = index;
  outside["weight_map"][tensor] = "../" + shard;
  write_text(index_path, outside.dump());
  EXPECT_THAT(load_error(dir), HasSubstr("which is not a file name inside the folder"));

  json missing = index;
  missing["weight_map"][tensor] = "model-00009-of-00009.safetensors";
  write_text(index_path, missing.dump());
  EXPECT_THAT(load_error(dir), HasSubstr("lists shard 'model-00009-of-00009.safetensors'"));

  json moved = index;
  const std::string other = shard == "model-00001-of-00004.safetensors"
                                ? "model-00002-of-00004.safetensors"
                                : "model-00001-of-00004.safetensors";
  moved["weight_map"][tensor] = other;
  write_text(index_path, moved.dump());
  EXPECT_THAT(load_error(dir), HasSubstr("places tensor '" + tensor + "' in '" + other + "'"));

  json unlisted = index;
  unlisted["weight_map"].erase(tensor);
  write_text(index_path, unlisted.dump());
  EXPECT_THAT(load_error(dir), HasSubstr("tensor '" + tensor + "' in '"));
  EXPECT_THAT(load_error(dir), HasSubstr("is not listed in"));

  write_text(index_path, R"({"metadata": {}})");
  EXPECT_THAT(load_error(dir), HasSubstr("has no \"weight_map\" object"));

  // A corrupt shard is refused by the safetensors reader, naming it.
  write_text(index_path, index.dump());
  write_text(dir + "/" + shard, "garbage");
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr(dir + "/" + shard), HasSubstr("fewer than the 8-byte")));
}

TEST(HfWeightErrors, PickleOnlyFolderAndNonModelPaths) {
  const auto dir = copy_fixture("gpt2", "pickle");
  fs::remove(dir + "/model.safetensors");
  write_text(dir + "/pytorch_model.bin", "not read");
  EXPECT_THAT(load_error(dir), HasSubstr("mechlab never unpickles"));
  EXPECT_THAT(load_error(dir + "/pytorch_model.bin"), HasSubstr("looks like a pickle file"));
  EXPECT_THAT(load_error(fixture("gpt2/model.safetensors")),
              HasSubstr("is a safetensors file; pass the folder"));
  EXPECT_THAT(load_error(fixture("no_such_model")), HasSubstr("no model at"));
  EXPECT_THAT(error_of([&] { load_model(fixture("gpt2"), LoadOptions().dtype(at::kDouble)); }),
              HasSubstr("choose float32, bfloat16 or float16"));
}

}  // namespace
}  // namespace mechlab::core
