// mechlab bench train: training speed of a recipe (default: the induction
// recipe, apps/models/induction.json) — whole Trainer steps against the
// forward + backward alone and the forward alone, on the same batches.
// scripts/bench/train_vs_pytorch.sh runs this and a plain PyTorch loop on
// the same model shape side by side.
#include "apps/bench/bench_util.h"
#include "apps/cli/commands.h"
#include "core/train/objective.h"
#include "core/train/trainer.h"

#include <ATen/Parallel.h>

#include <cstdio>

namespace mechlab::cli {

void add_bench_train(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "train",
      "Training speed of a recipe: full Trainer steps (forward, backward, clipping, AdamW) vs "
      "forward + backward alone vs forward alone, in tokens/s. The last line, "
      "'train_tokens_per_s N', is what scripts/bench/train_vs_pytorch.sh compares.");
  struct Args {
    std::string config = "apps/models/induction.json", device = "cpu";
    int steps = 50, warmup = 5;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--config", a->config, "Training config (JSON) whose model, data and batch "
                  "size are measured")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_option("--steps", a->steps, "Timed steps per case")->capture_default_str()
      ->check(positive());
  cmd->add_option("--warmup", a->warmup, "Untimed steps first")->capture_default_str()
      ->check(non_negative());
  cmd->callback([a] {
    const at::Device device = parse_device(a->device);
    core::train::TrainConfig cfg = core::train::TrainConfig::load(a->config);
    cfg.steps = std::max<int64_t>(cfg.steps, (a->warmup + a->steps) * 3 + 1);
    core::train::Trainer trainer(cfg, core::train::TrainerOptions().device(device).progress(false));
    const core::train::Split& train = trainer.data().train;
    const int64_t batch = cfg.batch_size == 0 ? train.size() : std::min(cfg.batch_size, train.size());
    const core::train::Split fixed = train.head(batch).to(device);
    const double tokens = static_cast<double>(batch * train.tokens.size(1));

    core::Transformer& model = trainer.model();
    auto forward = [&] {
      core::ForwardOptions fwd;
      fwd.attention_mask(fixed.mask);
      return model.forward(fixed.tokens, fwd);
    };
    const bench::Stats ms_step = bench::time_ms([&] { trainer.step(); }, a->warmup, a->steps, device);
    const bench::Stats ms_fwd_bwd = bench::time_ms(
        [&] {
          at::Tensor loss = core::train::objective_loss(cfg.objective, forward(), fixed);
          loss.backward();
          for (auto& [name, p] : model.named_parameters()) p.mutable_grad() = at::Tensor();
        },
        a->warmup, a->steps, device);
    const bench::Stats ms_fwd = bench::time_ms(
        [&] {
          at::NoGradGuard no_grad;
          forward();
        },
        a->warmup, a->steps, device);
    const std::string shape = std::to_string(batch) + " x " + std::to_string(train.tokens.size(1)) +
                              " tokens, " + std::to_string(model.config().parameter_count()) +
                              " parameters";
    bench::print_table("mechlab bench train: " + cfg.name + " (" + shape + ", " + a->device +
                           ", " + std::to_string(at::get_num_threads()) + " threads)",
                       {{"train step", ms_step, "Trainer::step: forward, backward, clip, AdamW"},
                        {"forward + backward", ms_fwd_bwd, "same batch, no optimizer"},
                        {"forward (no grad)", ms_fwd, "same batch"}},
                       "forward + backward", tokens, "tokens");
    std::printf("train_tokens_per_s %.1f\n", tokens / (ms_step.median / 1e3));
  });
}

}  // namespace mechlab::cli
