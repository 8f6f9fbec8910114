// mechlab attach-tokenizer: store a dataset's tokenizer (a toy task's word
// vocabulary) in a mechlab checkpoint, so that run/generate read and print
// words. The checkpoint is rewritten whole (write-then-rename) and its
// parameters are read back and compared byte for byte before the command
// reports success: the weights never change.
#include "apps/cli/commands.h"
#include "core/data/dataset.h"
#include "core/data/tokenizer/word_tokenizer.h"
#include "core/formats/hdf5_file.h"
#include "core/formats/output_file.h"
#include "core/model/checkpoint.h"
#include "core/util/error.h"

#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <cstring>
#include <iostream>

namespace mechlab::cli {
namespace {

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

}  // namespace

void add_attach_tokenizer_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "attach-tokenizer",
      "Store a dataset's word vocabulary in a mechlab checkpoint (weights unchanged, checked "
      "byte for byte), so that `mechlab run MODEL --prompt TEXT` reads and prints words");
  struct Args {
    std::string model, dataset;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "mechlab checkpoint (.h5) to update in place")->required();
  cmd->add_option("--from", a->dataset,
                  "mechlab dataset whose tokenizer to store (e.g. from `mechlab dataset make "
                  "ioi`)")
      ->required();
  cmd->callback([a] {
    core::require_not_same_file(a->model, "the model", a->dataset, "the dataset");
    const core::Dataset ds = core::load_dataset(a->dataset);
    MECHLAB_CHECK(!ds.tokenizer.empty(), "'", a->dataset,
                  "' records no tokenizer (its ids are raw); make the dataset with a task that "
                  "has a word vocabulary (ioi, induction, modular_addition, ...)");
    const core::WordTokenizer words = core::WordTokenizer::from_json_string(ds.tokenizer);
    const core::Checkpoint before = core::load_checkpoint(a->model);
    MECHLAB_CHECK(words.size() <= before.config.d_vocab, "the vocabulary of '", a->dataset,
                  "' has ", words.size(), " words but the model's d_vocab is ",
                  before.config.d_vocab, "; use the dataset the model was trained on");
    {
      // Only a model checkpoint: a training checkpoint's other groups (its
      // optimizer state) would be lost in the rewrite.
      const core::H5File f = core::H5File::open_read(a->model);
      for (const std::string& name : f.list("")) {
        MECHLAB_CHECK(name == "params", "'", a->model, "' holds '/", name,
                      "' besides its parameters (a training checkpoint?); attach the tokenizer "
                      "to the run's model.h5 instead");
      }
    }
    core::save_checkpoint(a->model, before.config, before.params, [&](core::H5File& f) {
      f.write_attr("", core::kCheckpointTokenizerAttr, words.to_json_string());
    });
    const core::Checkpoint after = core::load_checkpoint(a->model);
    MECHLAB_CHECK(after.params.size() == before.params.size(), "internal error: '", a->model,
                  "' lost parameters in the rewrite");
    for (size_t i = 0; i < after.params.size(); ++i) {
      MECHLAB_CHECK(after.params[i].first == before.params[i].first &&
                        same_bytes(after.params[i].second, before.params[i].second),
                    "internal error: parameter '", before.params[i].first, "' of '", a->model,
                    "' changed in the rewrite");
    }
    std::cout << "stored a word vocabulary of " << words.size() << " words in " << a->model
              << "; " << after.params.size() << " parameters verified unchanged\n";
  });
}

}  // namespace mechlab::cli
