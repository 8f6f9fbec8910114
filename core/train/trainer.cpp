#include "core/train/trainer.h"

#include "core/formats/hdf5_file.h"
#include "core/formats/text_file.h"
#include "core/model/checkpoint.h"

#include <filesystem>

namespace mechlab::core::train {

LoopOptions loop_options(const TrainConfig& config, const TrainerOptions& options) {
  return LoopOptions()
      .steps(config.steps)
      .lr(config.lr)
      .min_lr(config.min_lr)
      .warmup_steps(config.warmup_steps)
      .adamw(AdamWOptions()
                 .beta1(config.beta1)
                 .beta2(config.beta2)
                 .eps(config.eps)
                 .weight_decay(config.weight_decay))
      .grad_clip(config.grad_clip)
      .eval_every(config.eval_every)
      .checkpoint_every(config.checkpoint_every)
      .stop_at_accuracy(config.stop_at_accuracy)
      .seed(static_cast<uint64_t>(config.seed))
      .name(config.name)
      .out_dir(options.out_dir())
      .resume(options.resume())
      .overwrite(options.overwrite())
      .progress(options.progress());
}

Trainer::Trainer(TrainConfig config, TrainerOptions options)
    : options_(std::move(options)), trainable_(std::move(config), options_.device()) {
  loop_ = std::make_unique<TrainLoop>(trainable_, loop_options(trainable_.train_config(), options_));
  if (!options_.out_dir().empty()) {
    write_text_file((std::filesystem::path(options_.out_dir()) / "config.json").string(),
                    trainable_.train_config().to_json().dump(2) + "\n");
  }
}

TrainResult Trainer::run(int64_t max_steps) {
  const LoopResult r = loop_->run(max_steps);
  if (!options_.out_dir().empty()) {
    // model.h5 carries the dataset's tokenizer (a task's word vocabulary), so
    // that `mechlab run model.h5 --prompt TEXT` speaks words.
    const Transformer& model = trainable_.model();
    const std::string& tokenizer = trainable_.data().dataset.tokenizer;
    core::save_checkpoint((std::filesystem::path(options_.out_dir()) / "model.h5").string(), model.config(),
                    model.named_parameters(), [&tokenizer](H5File& file) {
                      if (!tokenizer.empty()) file.write_attr("", kCheckpointTokenizerAttr, tokenizer);
                    });
  }
  TrainResult result;
  result.steps = r.steps;
  result.stopped_early = r.stopped_early;
  result.already_complete = r.already_complete;
  result.test = r.eval.test;
  result.train = r.eval.train;
  return result;
}

}  // namespace mechlab::core::train
