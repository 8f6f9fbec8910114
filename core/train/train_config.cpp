#include "core/train/train_config.h"

#include "core/data/tasks/tasks.h"
#include "core/util/error.h"

#include <fstream>
#include <functional>
#include <map>
#include <sstream>

namespace mechlab::core::train {
namespace {

// Every scalar key with its reader and writer, so that parsing, printing and
// the unknown-key check share one list.
struct Field {
  std::function<void(TrainConfig&, const nlohmann::json&)> read;
  std::function<nlohmann::json(const TrainConfig&)> write;
};

template <typename T>
Field number(T TrainConfig::*member, const char* key) {
  return {[member, key](TrainConfig& c, const nlohmann::json& v) {
            if constexpr (std::is_integral_v<T>) {
              MECHLAB_CHECK(v.is_number_integer(), "train config: \"", key,
                            "\" must be an integer, got ", v.dump());
            } else {
              MECHLAB_CHECK(v.is_number(), "train config: \"", key, "\" must be a number, got ",
                            v.dump());
            }
            c.*member = v.get<T>();
          },
          [member](const TrainConfig& c) { return nlohmann::json(c.*member); }};
}

const std::map<std::string, Field>& fields() {
  static const std::map<std::string, Field> f = {
      {"name",
       {[](TrainConfig& c, const nlohmann::json& v) {
          MECHLAB_CHECK(v.is_string(), "train config: \"name\" must be a string");
          c.name = v.get<std::string>();
        },
        [](const TrainConfig& c) { return nlohmann::json(c.name); }}},
      {"model",
       {[](TrainConfig& c, const nlohmann::json& v) {
          MECHLAB_CHECK(v.is_object(), "train config: \"model\" must be an object of ModelConfig "
                                       "keys (optionally with \"preset\")");
          c.model = v;
        },
        [](const TrainConfig& c) { return c.model; }}},
      {"data",
       {[](TrainConfig& c, const nlohmann::json& v) {
          MECHLAB_CHECK(v.is_object(), "train config: \"data\" must be an object: {\"task\": "
                                       "NAME, \"options\": {...}} or {\"path\": FILE}");
          c.data = v;
        },
        [](const TrainConfig& c) { return c.data; }}},
      {"objective",
       {[](TrainConfig& c, const nlohmann::json& v) {
          const std::string s = v.is_string() ? v.get<std::string>() : v.dump();
          MECHLAB_CHECK(s == "next_token" || s == "answer", "train config: \"objective\" must be "
                        "\"next_token\" or \"answer\", got ", s);
          c.objective = s == "answer" ? Objective::answer : Objective::next_token;
        },
        [](const TrainConfig& c) { return nlohmann::json(to_string(c.objective)); }}},
      {"train_fraction", number(&TrainConfig::train_fraction, "train_fraction")},
      {"steps", number(&TrainConfig::steps, "steps")},
      {"batch_size", number(&TrainConfig::batch_size, "batch_size")},
      {"lr", number(&TrainConfig::lr, "lr")},
      {"min_lr", number(&TrainConfig::min_lr, "min_lr")},
      {"warmup_steps", number(&TrainConfig::warmup_steps, "warmup_steps")},
      {"weight_decay", number(&TrainConfig::weight_decay, "weight_decay")},
      {"beta1", number(&TrainConfig::beta1, "beta1")},
      {"beta2", number(&TrainConfig::beta2, "beta2")},
      {"eps", number(&TrainConfig::eps, "eps")},
      {"grad_clip", number(&TrainConfig::grad_clip, "grad_clip")},
      {"eval_every", number(&TrainConfig::eval_every, "eval_every")},
      {"eval_examples", number(&TrainConfig::eval_examples, "eval_examples")},
      {"checkpoint_every", number(&TrainConfig::checkpoint_every, "checkpoint_every")},
      {"stop_at_accuracy", number(&TrainConfig::stop_at_accuracy, "stop_at_accuracy")},
      {"init_std", number(&TrainConfig::init_std, "init_std")},
      {"seed", number(&TrainConfig::seed, "seed")},
  };
  return f;
}

}  // namespace

const char* to_string(Objective o) { return o == Objective::answer ? "answer" : "next_token"; }

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  MECHLAB_CHECK(j.is_object(), "train config must be a JSON object, got ", j.type_name());
  TrainConfig c;
  for (const auto& item : j.items()) {
    auto it = fields().find(item.key());
    if (it == fields().end()) {
      std::string keys;
      for (const auto& [k, f] : fields()) keys += (keys.empty() ? "" : ", ") + k;
      throw Error(str_cat("train config: unknown key \"", item.key(), "\"; the keys are: ", keys));
    }
    it->second.read(c, item.value());
  }
  c.validate();
  return c;
}

TrainConfig TrainConfig::load(const std::string& path) {
  std::ifstream in(path);
  MECHLAB_CHECK(in.good(), "cannot read train config '", path, "': no such file or not readable");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat("train config '", path, "' is not valid JSON: ", e.what()));
  }
  try {
    return from_json(j);
  } catch (const Error& e) {
    throw Error(str_cat("'", path, "': ", e.what()));
  }
}

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [key, f] : fields()) j[key] = f.write(*this);
  return j;
}

void TrainConfig::validate() const {
  auto check = [](bool ok, const char* key, const std::string& want, const auto& got) {
    MECHLAB_CHECK(ok, "train config: \"", key, "\" must be ", want, ", got ", got);
  };
  check(steps > 0, "steps", "positive", steps);
  check(batch_size >= 0, "batch_size", ">= 0 (0 = the whole train split)", batch_size);
  check(lr > 0, "lr", "positive", lr);
  check(min_lr >= 0 && min_lr <= lr, "min_lr", "in [0, lr]", min_lr);
  check(warmup_steps >= 0 && warmup_steps <= steps, "warmup_steps", "in [0, steps]", warmup_steps);
  check(weight_decay >= 0, "weight_decay", ">= 0", weight_decay);
  check(beta1 >= 0 && beta1 < 1, "beta1", "in [0, 1)", beta1);
  check(beta2 >= 0 && beta2 < 1, "beta2", "in [0, 1)", beta2);
  check(eps > 0, "eps", "positive", eps);
  check(init_std > 0, "init_std", "positive", init_std);
  check(grad_clip >= 0, "grad_clip", ">= 0 (0 = no clipping)", grad_clip);
  check(train_fraction > 0 && train_fraction < 1, "train_fraction",
        "in (0, 1): the rest of the data is the test split", train_fraction);
  check(eval_every > 0, "eval_every", "positive", eval_every);
  check(eval_examples >= 0, "eval_examples", ">= 0 (0 = the whole test split)", eval_examples);
  check(checkpoint_every > 0, "checkpoint_every", "positive", checkpoint_every);
  check(stop_at_accuracy >= 0 && stop_at_accuracy <= 1, "stop_at_accuracy",
        "in [0, 1] (0 = never stop early)", stop_at_accuracy);
  const bool has_task = data.contains("task"), has_path = data.contains("path");
  if (has_task == has_path) {
    std::string names;
    for (const auto& t : tasks::task_names()) names += (names.empty() ? "" : ", ") + t;
    throw Error(str_cat("train config: \"data\" needs exactly one of \"task\" (a generator: ", names,
                        ") or \"path\" (a dataset file)"));
  }
  for (const auto& item : data.items()) {
    MECHLAB_CHECK(item.key() == "task" || item.key() == "options" || item.key() == "path",
                  "train config: unknown key \"data.", item.key(),
                  "\"; use \"task\" + \"options\", or \"path\"");
  }
  MECHLAB_CHECK(!has_path || data["path"].is_string(), "train config: \"data.path\" must be a string");
  MECHLAB_CHECK(!has_task || data["task"].is_string(), "train config: \"data.task\" must be a string");
  MECHLAB_CHECK(!data.contains("options") || data["options"].is_object(),
                "train config: \"data.options\" must be an object");
}

}  // namespace mechlab::core::train
