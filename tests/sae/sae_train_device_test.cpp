// The SAE trainer's device (SaeTrainConfig::device, SAELens's `device`):
// refused in one line when it names no device mechlab trains on, or CUDA
// where there is none; not part of the identity a resume checks (the
// checkpoint holds CPU tensors and its stored config has no device). Where a
// CUDA device exists (skipped otherwise; a failure under
// MECHLAB_REQUIRE_CUDA=1): a run on the GPU follows the CPU run, a checkpoint
// written on the GPU resumes on the CPU and the reverse, and live activations
// come from the model loaded on the GPU.
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "sae/live_source.h"
#include "sae/trainer.h"
#include "tests/test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using mechlab::testing::error_of;
using mechlab::testing::temp_path;
using nlohmann::json;

const std::string kModel = std::string(MECHLAB_TEST_DATA) + "/runtime/gpt2_like.h5";

json toy_config(const std::string& device) {
  json j = json::parse(R"({"sae": {"architecture": "topk", "d_in": 32, "d_sae": 64, "k": 4},
      "data": {"toy": {"n_features": 48, "d": 32, "p_active": 0.1}},
      "steps": 8, "batch_size": 64, "lr": 3e-3, "eval_every": 4, "eval_rows": 64, "checkpoint_every": 4,
      "dead_feature_window": 3, "b_dec_init": "geometric_median", "seed": 5})");
  j["device"] = device;
  return j;
}

std::string fresh_dir(const std::string& name) {
  const std::string dir = temp_path("sae_device", name);
  for (const char* f : {"checkpoint.h5", "train_log.csv", "train_log.svg", "sae_log.csv", "sae_log.svg",
                        "config.json", "sae/cfg.json", "sae/sae_weights.safetensors"}) {
    fs::remove(fs::path(dir) / f);
  }
  fs::remove(fs::path(dir) / "sae");
  fs::remove(dir);
  return dir;
}

TEST(SaeTrainDevice, UnknownDevicesAndMissingCudaAreRefusedInOneLine) {
  for (const std::string bad : {"gpu", "cuda:x", "mps", ""}) {
    EXPECT_EQ(error_of([&] { training_device(bad); }),
              "SAE training config: \"device\" must be cpu, cuda or cuda:N, got \"" + bad + "\"");
  }
  EXPECT_EQ(training_device("cpu"), at::Device(at::kCPU));
  // Through the trainer: its config is validated before anything runs.
  EXPECT_THAT(error_of([&] { SaeTrainer t(SaeTrainConfig::from_json(toy_config("gpu")), SaeTrainerOptions().progress(false)); }),
              HasSubstr("\"device\" must be cpu, cuda or cuda:N"));
  if (!at::hasCUDA()) {
    const std::string want = "SAE training config: \"device\" is \"cuda\" but no CUDA GPU is available here; set device to cpu";
    EXPECT_EQ(error_of([&] { training_device("cuda"); }), want);
    EXPECT_EQ(error_of([&] { SaeTrainer t(SaeTrainConfig::from_json(toy_config("cuda")), SaeTrainerOptions().progress(false)); }),
              want);
    // Live data: refused before the model is loaded (its path does not exist).
    json live = toy_config("cuda:1");
    live["data"] = {{"model", "/nonexistent/model.h5"}, {"dataset", "/nonexistent/data.h5"}, {"hook", "blocks.0.hook_resid_post"}};
    live["sae"]["d_in"] = 0;
    EXPECT_THAT(error_of([&] { SaeTrainer t(SaeTrainConfig::from_json(live), SaeTrainerOptions().progress(false)); }),
                HasSubstr("\"device\" is \"cuda:1\" but no CUDA GPU is available here; set device to cpu"));
    // The CLI: one line, exit 1.
    const std::string dir = fresh_dir("cli_refusal");
    fs::create_directories(dir);
    {
      std::ofstream out(dir + "/cfg.json");
      out << toy_config("cpu").dump();
      ASSERT_TRUE(out.good());
    }
    const testing::CliResult r =
        testing::run_cli("sae train " + dir + "/cfg.json --out " + dir + "/run --no-progress --set device=cuda");
    EXPECT_EQ(r.rc, 1) << r.output;
    EXPECT_EQ(r.output, "mechlab: error: " + want + "\n");
  } else {
    const auto n = static_cast<int64_t>(at::getNumGPUs());
    EXPECT_THAT(error_of([&] { training_device("cuda:" + std::to_string(n)); }),
                HasSubstr("\" but this machine has " + std::to_string(n) + " CUDA GPU"));
    EXPECT_TRUE(training_device("cuda").is_cuda());
  }
}

TEST(SaeTrainDevice, IsWrittenToTheConfigButIsNotPartOfTheResumeIdentity) {
  const SaeTrainConfig cfg = SaeTrainConfig::from_json(toy_config("cpu"));
  EXPECT_EQ(cfg.device(), "cpu");
  EXPECT_EQ(cfg.to_json()["device"], "cpu");
  EXPECT_EQ(SaeTrainConfig::from_json(cfg.to_json()).device(), "cpu");
  EXPECT_EQ(SaeTrainConfig::from_json(json::parse(R"({"sae": {"architecture": "relu", "d_in": 4, "d_sae": 8},
      "data": {"toy": {"d": 4, "n_features": 6}}})")).device(), "cpu");  // the default
  const std::string dir = fresh_dir("identity");
  SaeTrainer t(cfg, SaeTrainerOptions().out_dir(dir).progress(false));
  // The identity a resume compares: everything but the device, with the
  // toy's defaults written out (ToyOptions: max_magnitude 1, seed 0).
  json identity = cfg.to_json();
  identity.erase("device");
  identity["data"]["toy"]["max_magnitude"] = 1.0;
  identity["data"]["toy"]["seed"] = 0;
  const json own = t.trainable().config();
  EXPECT_FALSE(own.contains("device"));
  EXPECT_EQ(own, identity);
  t.run();
  // The checkpoint stores that identity, and its tensors say nothing of where they were.
  const core::H5File f = core::H5File::open_read(dir + "/checkpoint.h5");
  const json stored = json::parse(f.read_attr_string("train", "config"));
  EXPECT_FALSE(stored.contains("device")) << stored.dump();
  EXPECT_EQ(stored, t.trainable().config());
  // config.json, the record of the run, keeps it.
  std::ifstream written(dir + "/config.json");
  EXPECT_EQ(json::parse(written)["device"], "cpu");
}

// ---------------------------------------------------------------- CUDA

double max_relative_difference(Sae& a, Sae& b) {
  double worst = 0;
  for (const auto& [n, t] : a.named_parameters()) {
    const at::Tensor x = t.detach().cpu(), y = b.param(n).detach().cpu();
    const double scale = std::max(x.abs().max().item<double>(), 1e-12);
    worst = std::max(worst, (x - y).abs().max().item<double>() / scale);
  }
  return worst;
}

// The bound is the data-parallel test's for TopK (sae_data_parallel_test.cpp):
// the same kind of difference, float summation order (GPU GEMMs and
// reductions against the CPU's), over fewer steps.
constexpr double kDeviceTol = 1e-4;

TEST(SaeTrainDevice, OnCudaTrainsAsOnTheCpuAndCheckpointsResumeAcrossDevices) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  const SaeTrainConfig cpu = SaeTrainConfig::from_json(toy_config("cpu"));
  const SaeTrainConfig gpu = SaeTrainConfig::from_json(toy_config("cuda"));
  SaeTrainer reference(cpu, SaeTrainerOptions().progress(false));
  reference.run();

  SaeTrainer on_gpu(gpu, SaeTrainerOptions().progress(false));
  EXPECT_TRUE(on_gpu.sae().device().is_cuda());
  on_gpu.run();
  EXPECT_TRUE(on_gpu.sae().device().is_cuda());
  EXPECT_LE(max_relative_difference(reference.sae(), on_gpu.sae()), kDeviceTol);
  EXPECT_NEAR(on_gpu.trainable().last_eval().fvu, reference.trainable().last_eval().fvu, 1e-4);

  // Four steps on one device, four on the other, both ways.
  for (const bool gpu_first : {true, false}) {
    const std::string dir = fresh_dir(gpu_first ? "gpu_then_cpu" : "cpu_then_gpu");
    {
      SaeTrainer first(gpu_first ? gpu : cpu, SaeTrainerOptions().out_dir(dir).progress(false));
      EXPECT_EQ(first.run(4).steps, 4);
    }
    SaeTrainer second(gpu_first ? cpu : gpu, SaeTrainerOptions().out_dir(dir).resume(true).progress(false));
    EXPECT_EQ(second.sae().device().is_cuda(), !gpu_first);
    EXPECT_EQ(second.run().steps, 8);
    EXPECT_LE(max_relative_difference(reference.sae(), second.sae()), kDeviceTol) << dir;
  }
}

TEST(SaeTrainDevice, LiveActivationsComeFromTheModelOnCuda) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  core::Dataset ds;
  ds.d_vocab = 61;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(4);
  ds.tokens = at::randint(1, ds.d_vocab, {8, 6}, g, at::kLong).to(at::kInt);
  const std::string ds_path = temp_path("sae_device", "prompts.h5");
  fs::remove(ds_path);
  core::save_dataset(ds_path, ds);
  const auto opts = LiveSourceOptions().hook("blocks.0.hook_resid_post").batch_size(16).buffer_rows(32).prompts_per_forward(4);
  auto on_cpu = live_source(kModel, ds_path, opts, at::kCPU);
  auto on_gpu = live_source(kModel, ds_path, opts, at::Device(at::kCUDA, 0));
  at::Generator rng = at::make_generator<at::CPUGeneratorImpl>(0);
  const at::Tensor a = on_cpu->batch(0, 16, rng), b = on_gpu->batch(0, 16, rng);
  EXPECT_TRUE(b.device().is_cpu());  // rows come back to the CPU's mixing buffer
  EXPECT_TRUE(at::allclose(a, b, 1e-4, 1e-5));
  // And a whole run from the config: the model runs where the SAE trains.
  json j = toy_config("cuda");
  j["sae"]["d_in"] = 0;
  j["batch_size"] = 16;
  j["eval_rows"] = 16;
  j["data"] = {{"model", kModel}, {"dataset", ds_path}, {"hook", "blocks.0.hook_resid_post"}, {"buffer_rows", 32},
               {"prompts_per_forward", 4}};
  SaeTrainer live(SaeTrainConfig::from_json(j), SaeTrainerOptions().progress(false));
  EXPECT_EQ(live.run().steps, 8);
  EXPECT_TRUE(live.sae().device().is_cuda());
  fs::remove(ds_path);
}

}  // namespace
}  // namespace mechlab::sae
