#include "checkpoint/trainer_state.h"

#include <cmath>

#include "lorakeep/error.h"
#include "base/text.h"
#include "format/json.h"

namespace lorakeep::detail {
namespace {

[[noreturn]] void bad(const std::string& path, const std::string& key, const std::string& want) {
  throw Error(ErrorCode::kCorruption, "invalid trainer state '" + path + "': '" + key + "' must be " + want);
}

nlohmann::json number(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

// Python writes integral counts as ints; keep "step" and friends integral.
nlohmann::json log_value(const std::string& key, double v) {
  if (key == "step" && is_int64_value(v)) return static_cast<std::int64_t>(v);
  return number(v);
}

}  // namespace

std::string format_trainer_state(const TrainingState& s) {
  nlohmann::json j;
  j["best_metric"] = s.best_metric ? number(*s.best_metric) : nlohmann::json(nullptr);
  j["best_model_checkpoint"] = s.best_model_checkpoint.empty() ? nlohmann::json(nullptr)
                                                               : nlohmann::json(s.best_model_checkpoint);
  j["epoch"] = number(s.epoch);
  j["eval_steps"] = s.eval_steps;
  j["global_step"] = s.global_step;
  j["is_hyper_param_search"] = false;
  j["is_local_process_zero"] = true;
  j["is_world_process_zero"] = true;
  j["log_history"] = nlohmann::json::array();
  for (const Metrics& entry : s.log_history) {
    nlohmann::json e = nlohmann::json::object();
    for (const auto& [k, v] : entry) e[k] = log_value(k, v);
    j["log_history"].push_back(std::move(e));
  }
  j["logging_steps"] = s.logging_steps;
  j["max_steps"] = s.max_steps;
  j["num_input_tokens_seen"] = s.num_input_tokens_seen;
  if (is_int64_value(s.num_train_epochs)) {
    j["num_train_epochs"] = static_cast<std::int64_t>(s.num_train_epochs);
  } else {
    j["num_train_epochs"] = s.num_train_epochs;
  }
  j["save_steps"] = s.save_steps;
  j["total_flos"] = number(s.total_flos);
  j["train_batch_size"] = s.train_batch_size > 0 ? nlohmann::json(s.train_batch_size) : nlohmann::json(nullptr);
  j["trial_name"] = nullptr;
  j["trial_params"] = nullptr;
  return j.dump(2) + "\n";
}

void parse_trainer_state(std::string_view text, const std::string& path, TrainingState* s) {
  const OrderedJson j = parse_json_strict(text, path);
  if (!j.is_object()) throw Error(ErrorCode::kCorruption, "invalid trainer state '" + path + "': not a JSON object");
  auto integer = [&](const char* key, std::int64_t* out) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    if (!json_integer(*it, out)) bad(path, key, "a 64-bit integer");
  };
  auto real = [&](const char* key, double* out) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    if (!it->is_number()) bad(path, key, "a number");
    *out = it->get<double>();
  };
  integer("global_step", &s->global_step);
  integer("max_steps", &s->max_steps);
  integer("logging_steps", &s->logging_steps);
  integer("eval_steps", &s->eval_steps);
  integer("save_steps", &s->save_steps);
  integer("train_batch_size", &s->train_batch_size);
  integer("num_input_tokens_seen", &s->num_input_tokens_seen);
  real("epoch", &s->epoch);
  real("num_train_epochs", &s->num_train_epochs);
  real("total_flos", &s->total_flos);
  if (auto it = j.find("best_metric"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) bad(path, "best_metric", "a number or null");
    s->best_metric = it->get<double>();
  }
  if (auto it = j.find("best_global_step"); it != j.end() && !it->is_null()) {
    std::int64_t step = 0;
    if (!json_integer(*it, &step)) bad(path, "best_global_step", "a 64-bit integer or null");
    s->best_global_step = step;
  }
  if (auto it = j.find("best_model_checkpoint"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) bad(path, "best_model_checkpoint", "a string or null");
    s->best_model_checkpoint = it->get<std::string>();
  }
  if (auto it = j.find("log_history"); it != j.end()) {
    if (!it->is_array()) bad(path, "log_history", "a list");
    s->log_history.clear();
    for (const auto& entry : *it) {
      if (!entry.is_object()) bad(path, "log_history", "a list of objects");
      Metrics m;
      for (auto e = entry.begin(); e != entry.end(); ++e) {
        if (e.value().is_number()) m[e.key()] = e.value().get<double>();
        else if (e.value().is_null()) m[e.key()] = std::nan("");
        // strings and the like (Trainer logs a few) are not metrics: skipped
      }
      s->log_history.push_back(std::move(m));
    }
  }
  if (auto cbs = j.find("stateful_callbacks"); cbs != j.end() && cbs->is_object()) {
    if (auto es = cbs->find("EarlyStoppingCallback"); es != cbs->end() && es->is_object()) {
      TrainingState::EarlyStoppingState state;
      const auto args = es->find("args");
      const auto attrs = es->find("attributes");
      if (args == es->end() || attrs == es->end() || !args->is_object() || !attrs->is_object()) {
        bad(path, "stateful_callbacks.EarlyStoppingCallback", "an object with 'args' and 'attributes'");
      }
      try {
        state.patience = args->value("early_stopping_patience", 1);
        state.threshold = args->value("early_stopping_threshold", 0.0);
        state.counter = attrs->value("early_stopping_patience_counter", 0);
      } catch (const OrderedJson::exception&) {
        bad(path, "stateful_callbacks.EarlyStoppingCallback", "numbers");
      }
      s->early_stopping = state;
    }
  }
}

}  // namespace lorakeep::detail
